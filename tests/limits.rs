//! Adapters with small limits (issue: portable and hard to break). With WebGPU's default limits
//! (8 storage buffers per stage, 128 MiB bindings) the engine trains and a batch too large for a
//! binding is refused with a clear message; with the downlevel defaults (4 storage buffers per
//! stage) the kernels are refused up front, naming the limit. Errors the device reports are
//! runtime failures, never panics.

mod common;

use sae_wgpu::device::{adapters, AdapterRequest, Gpu};
use sae_wgpu::kernels::Kernels;
use sae_wgpu::model::{LossConfig, ModelSpec, Params, Sparsity};
use sae_wgpu::{Error, Trainer};

fn with(limits: wgpu::Limits) -> sae_wgpu::Result<Gpu> {
    let adapter = adapters(&AdapterRequest::default())
        .expect("adapters")
        .into_iter()
        .next()
        .expect("GPU tests need a WebGPU adapter; in CI, .ci/run installs mesa-vulkan-drivers");
    Gpu::with_limits(adapter, limits)
}

#[test]
fn webgpu_default_limits_train_and_refuse_what_does_not_fit() {
    let gpu = with(wgpu::Limits::default()).unwrap();
    let spec = ModelSpec::seed();
    let loss = LossConfig { weight_decay: 0.0, sparsity: Sparsity::Kl { rho: 0.05, beta: 3.0 } };
    let mut t = Trainer::new(&gpu, &spec, loss, 0.1, 37, &Params::init(&spec, 0)).unwrap();
    let x = common::random(&mut sae_wgpu::model::Rng::new(1), 37 * 20, 0.0, 1.0);
    let m = t.step_with_metrics(&x).unwrap();
    assert!(m.loss.is_finite());
    // 20 M rows of the 80-wide layer need 6.4 GB in one binding: more than 128 MiB allows.
    let e = Trainer::new(&gpu, &spec, loss, 0.1, 20_000_000, &Params::init(&spec, 0)).err().expect("refused");
    assert!(matches!(e, Error::Input(_)), "{e}");
    assert!(e.to_string().contains("binding"), "{e}");
}

#[test]
fn downlevel_limits_are_refused_naming_the_limit() {
    let gpu = with(wgpu::Limits::downlevel_defaults()).unwrap();
    let e = Kernels::new(&gpu).err().expect("refused");
    assert!(matches!(e, Error::Runtime(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("storage buffers per shader stage") && text.contains("sae adapters"), "{text}");
}

/// An error the device reports outside any error scope (here an out-of-bounds write, standing
/// in for a lost device or an allocation that ran out of memory, which a software adapter
/// cannot be made to produce) is a runtime failure naming the adapter at the next wait, not a
/// panic; and an allocation made through `Gpu::allocating` reports its failure the same way.
#[test]
fn device_errors_are_runtime_failures_not_panics() {
    let gpu = common::gpu();
    gpu.wait().expect("a fresh device has nothing to report");
    let small = gpu.storage("small", 1);
    gpu.queue.write_buffer(&small, 64, &[0u8; 4]);
    let e = gpu.wait().expect_err("the bad write is reported");
    assert!(matches!(e, Error::Runtime(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("reported an error") && text.contains(&gpu.info.name), "{text}");
    // An allocation inside the out-of-memory scope that succeeds gives its value.
    let other = common::gpu();
    let b = other.allocating("a small buffer", || other.storage("ok", 16)).unwrap();
    assert_eq!(b.size(), 64);
}

/// A pipeline the adapter rejects, found when a launcher first asks for it (pipelines are made
/// on first use), is a runtime failure at the next wait naming the kernel and the adapter, not
/// a panic: here `tiled64`'s 16x16 workgroups on a device allowing 8 invocations along y.
#[test]
fn a_pipeline_the_adapter_rejects_fails_the_next_wait() {
    let limits = wgpu::Limits { max_compute_workgroup_size_y: 8, ..wgpu::Limits::default() };
    let gpu = with(limits).unwrap();
    let mut kernels = Kernels::new(&gpu).expect("the up-front limits check passes: it checks x only");
    kernels.set_matmul_variant(sae_wgpu::kernels::MatmulVariant::Tiled64).unwrap();
    let (a, w) = (gpu.upload("a", &[0.5; 12]), gpu.upload("w", &[0.25; 8]));
    let z = gpu.upload("z", &[0.0; 6]);
    gpu.run(&[kernels.matmul_forward(&a, &w, &z, 3, 4, 2)]);
    match gpu.wait() {
        Err(Error::Runtime(msg)) => {
            assert!(msg.contains("shader compilation of matmul_forward failed"), "{msg}");
            assert!(msg.contains(&gpu.describe()), "{msg}");
        }
        other => panic!("expected a runtime failure, got {other:?}"),
    }
}
