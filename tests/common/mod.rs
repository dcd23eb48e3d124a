//! Shared helpers for the integration tests.
#![allow(dead_code, unused_imports)]

use sae_wgpu::device::{AdapterRequest, Gpu};

/// Every adapter present. No adapter is a failure, with a message saying how to get one: a GPU
/// test that quietly passes without a GPU would prove nothing.
pub fn gpus() -> Vec<Gpu> {
    let gpus = Gpu::all(&AdapterRequest::default()).unwrap_or_else(|e| {
        panic!("GPU tests need a WebGPU adapter: {e}. In CI, .ci/run installs mesa-vulkan-drivers.")
    });
    for g in &gpus {
        eprintln!("adapter: {}", g.describe());
    }
    gpus
}

/// The preferred adapter only (for the slower whole-model tests).
pub fn gpu() -> Gpu {
    Gpu::new(&AdapterRequest::default()).unwrap_or_else(|e| {
        panic!("GPU tests need a WebGPU adapter: {e}. In CI, .ci/run installs mesa-vulkan-drivers.")
    })
}

/// `len` values uniform in [lo, hi), and the same in f64: the check module's helpers.
pub use sae_wgpu::check::{random, widen};
