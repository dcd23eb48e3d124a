//! Shared helpers for the integration tests.
#![allow(dead_code)]

use sae_wgpu::device::{AdapterRequest, Gpu};
use sae_wgpu::model::Rng;

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

/// `len` values uniform in [lo, hi), never all zero.
pub fn random(rng: &mut Rng, len: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..len).map(|_| (lo + (hi - lo) * rng.next_f64()) as f32).collect()
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
