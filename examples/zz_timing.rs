use sae_wgpu::kernels::*;
use sae_wgpu::*;
use std::time::Instant;
fn main() {
    let gpu = Gpu::new(&Default::default()).unwrap();
    let spec = ModelSpec::seed();
    let loss = LossConfig { weight_decay: 0.0, sparsity: sae_wgpu::bench::SPARSITY };
    let m = 256;
    let n = 256 * 64;
    let data: Vec<f32> = (0..n * 20).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    for (variant, vec4) in [
        (MatmulVariant::Subgroup, false),
        (MatmulVariant::Subgroup, true),
        (MatmulVariant::Subgroup, false),
        (MatmulVariant::Subgroup, true),
        (MatmulVariant::Subgroup, false),
        (MatmulVariant::Subgroup, true),
    ] {
        let mut k = Kernels::new(&gpu).unwrap();
        k.set_matmul_variant(variant).unwrap();
        k.set_matmul_vec4(vec4);
        let mut t = Trainer::new(k, &spec, loss, 0.1, m, &Params::init(&spec, 0)).unwrap();
        t.set_data(&data).unwrap();
        let order: Vec<u32> = (0..n as u32).collect();
        t.train_epoch(&order, Default::default(), |_, _| Ok(())).unwrap();
        t.wait_idle().unwrap();
        let s = Instant::now();
        for _ in 0..3 {
            t.train_epoch(&order, Default::default(), |_, _| Ok(())).unwrap();
        }
        t.wait_idle().unwrap();
        let per = s.elapsed().as_secs_f64() / (3.0 * 64.0);
        eprintln!("{variant:?} vec4 {vec4}: {:.3} ms/step {:.0} samples/s", per * 1e3, m as f64 / per);
    }
}
