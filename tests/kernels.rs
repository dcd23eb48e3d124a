//! Every kernel against its f64 twin in `reference.rs`, on every adapter present, at odd sizes
//! (not multiples of the 16x16 tile or of 256), at a batch of one, and with a per-dispatch
//! workgroup limit lowered to 3 so that every grid is split across several dispatches.
//! Outputs are poisoned with NaN first, so an element no invocation writes fails.
//!
//! The checks live in `sae_wgpu::check` (shared with `sae check`); here they run on every
//! adapter, every case and every matmul variant, and each must pass.
//!
//! Tolerances. Inputs are f32 and the reference computes in f64 from the same f32 values, so
//! the only error is the kernel's f32 rounding. A dot product of length k accumulated in f32
//! has error at most about k * 2^-24 * sum |terms| (6e-8 per term; ~sqrt(k) times that in
//! practice): for matmuls we divide the error by sum |terms| (computed as |L|·|R| by the same
//! reference) and require 1e-5, which covers k up to ~150 in the worst case and far more in
//! practice. Element-wise kernels do a handful of f32 operations (exp, tanh, a division: a few
//! ulp each), so their relative error must also be below 1e-5.

mod common;

use common::*;
use sae_wgpu::check::{self, CASES, TOL};
use sae_wgpu::kernels::{Kernels, MatmulVariant};
use sae_wgpu::model::Rng;

fn run(name: &str, check: check::Check) {
    for gpu in gpus() {
        let mut kernels = Kernels::new(&gpu).expect("kernels compile");
        // Every matmul variant this device runs (the subgroup one needs Features::SUBGROUP).
        let variants: Vec<Option<MatmulVariant>> =
            if check::is_matmul(name) { kernels.matmul_variants().into_iter().map(Some).collect() } else { vec![None] };
        for variant in &variants {
            if let Some(v) = variant {
                kernels.set_matmul_variant(*v).unwrap();
            }
            for (case, &(m, k, n, max_groups)) in CASES.iter().enumerate() {
                kernels.max_groups = max_groups.min(gpu.limits.max_compute_workgroups_per_dimension);
                let mut rng = Rng::new(1000 + case as u64);
                let err = check(&kernels, &mut rng, m, k, n);
                println!(
                    "{name:<24} {:<10} m={m:<4} k={k:<3} n={n:<3} max_groups={:<10} {:<40} max rel err {err:.2e}",
                    variant.map_or("", |v| v.name()),
                    kernels.max_groups,
                    gpu.describe()
                );
                assert!(
                    err <= TOL,
                    "{name} on {} (m={m}, k={k}, n={n}): max rel err {err:e} > {TOL:e}",
                    gpu.describe()
                );
            }
        }
    }
}

#[test]
fn matmul_forward() {
    run("matmul_forward", check::matmul_forward);
}

#[test]
fn matmul_forward_bias_activation() {
    run("matmul_forward_bias_activation", check::matmul_forward_bias_activation);
}

#[test]
fn matmul_forward_output_delta() {
    run("matmul_forward_output_delta", check::matmul_forward_output_delta);
}

#[test]
fn fire_count_rho() {
    run("fire_count_rho", check::fire_count_rho);
}

#[test]
fn matmul_backward_input_activation() {
    run("matmul_backward_input_activation", check::matmul_backward_input_activation);
}

#[test]
fn matmul_backward_weight_bias() {
    run("matmul_backward_weight_bias", check::matmul_backward_weight_bias);
}

#[test]
fn matmul_backward_weight() {
    run("matmul_backward_weight", check::matmul_backward_weight);
}

#[test]
fn matmul_backward_pair() {
    run("matmul_backward_pair", check::matmul_backward_pair);
}

/// The panel forward where it runs (adapters with subgroups); where it cannot, the trainer
/// takes the per-layer launches instead (15 a seed step, not 10), so nothing asks for it.
#[test]
fn panel_forward() {
    use sae_wgpu::kernels::Kernel;
    use sae_wgpu::model::{LossConfig, ModelSpec, Params};
    for gpu in gpus() {
        let subgroups = gpu.features.contains(wgpu::Features::SUBGROUP);
        assert_eq!(Kernel::PanelForward.available(gpu.features), subgroups);
        let spec = ModelSpec::seed();
        let mut trainer =
            sae_wgpu::Trainer::new(&gpu, &spec, LossConfig::default(), 0.1, 64, &Params::init(&spec, 1)).unwrap();
        let labels: Vec<String> = trainer.step_launches(64).iter().map(|l| l.cost.label.clone()).collect();
        let panel = labels.iter().any(|l| l.starts_with("panel_forward"));
        assert_eq!(panel, subgroups, "{}: {labels:?}", gpu.describe());
        assert_eq!(labels.len(), if subgroups { 10 } else { 15 }, "{}: {labels:?}", gpu.describe());
        if !subgroups {
            continue;
        }
        let kernels = Kernels::new(&gpu).expect("kernels compile");
        for (case, &(m, k, n, _)) in CASES.iter().enumerate() {
            let mut rng = Rng::new(1000 + case as u64);
            let err = check::panel_forward(&kernels, &mut rng, m, k, n);
            assert!(err <= TOL, "panel_forward on {} (m={m}, k={k}, n={n}): {err:e}", gpu.describe());
        }
    }
}

#[test]
fn matmul_backward_input() {
    run("matmul_backward_input", check::matmul_backward_input);
}

#[test]
fn kl_backward() {
    run("kl_backward", check::kl_backward);
}

#[test]
fn column_sum() {
    run("column_sum", check::column_sum);
}

#[test]
fn output_delta() {
    run("output_delta", check::output_delta);
}

#[test]
fn loss_value() {
    run("loss_value", check::loss_value);
}

#[test]
fn sgd_update() {
    run("sgd_update", check::sgd_update);
}

#[test]
fn momentum_update() {
    run("momentum_update", check::momentum_update);
}

#[test]
fn adam_update() {
    run("adam_update", check::adam_update);
}

#[test]
fn fire_count() {
    run("fire_count", check::fire_count);
}

#[test]
fn topk() {
    run("topk", check::topk);
}

#[test]
fn topk_rank() {
    run("topk_rank", check::topk_rank);
}

#[test]
fn center_rows() {
    run("center_rows", check::center_rows);
}

#[test]
fn pre_bias_backward() {
    run("pre_bias_backward", check::pre_bias_backward);
}

#[test]
fn decoder_project() {
    run("decoder_project", check::decoder_project);
}

#[test]
fn jumprelu_forward() {
    run("jumprelu_forward", check::jumprelu_forward);
}

#[test]
fn jumprelu_backward() {
    run("jumprelu_backward", check::jumprelu_backward);
}

#[test]
fn batch_threshold() {
    run("batch_threshold", check::batch_threshold);
}

#[test]
fn threshold_code() {
    run("threshold_code", check::threshold_code);
}

#[test]
fn column_norms() {
    run("column_norms", check::column_norms);
}

#[test]
fn l1_decoder_grad() {
    run("l1_decoder_grad", check::l1_decoder_grad);
}

#[test]
fn auxk_delta() {
    run("auxk_delta", check::auxk_delta);
}

#[test]
fn decoder_normalize() {
    run("decoder_normalize", check::decoder_normalize);
}

#[test]
fn grad_norm() {
    run("grad_norm", check::grad_norm);
}

#[test]
fn every_kernel_is_checked() {
    // `sae check` and these tests share the list; make sure no entry point is left out.
    let checked: Vec<&str> = check::CHECKS.iter().map(|(n, _)| *n).collect();
    use sae_wgpu::kernels::{Kernel, MatmulOp};
    let mut all: Vec<&str> = MatmulOp::ALL.iter().map(|op| op.name()).collect();
    all.extend(Kernel::ALL.iter().filter(|k| k.checked_alone()).map(|k| k.name()));
    for entry in all {
        assert!(checked.contains(&entry), "no check for {entry}");
    }
}

/// Pipelines are created when a launcher first asks for them (docs/design.md section 13): none
/// at `Kernels::new`, a step's worth at the first step, none more at the next, and every one
/// the device runs with `create_all` (what `sae check` does).
#[test]
fn pipelines_are_created_on_first_use() {
    use sae_wgpu::model::{LossConfig, ModelSpec, Params};
    for gpu in gpus() {
        let kernels = Kernels::new(&gpu).expect("kernels");
        assert_eq!(kernels.pipeline_stats().created, 0, "{}", gpu.describe());
        let variants = kernels.matmul_variants();
        let spec = ModelSpec::seed();
        let mut trainer =
            sae_wgpu::Trainer::new(kernels, &spec, LossConfig::default(), 0.1, 5, &Params::init(&spec, 1))
                .expect("trainer");
        let x: Vec<f32> = (0..5 * spec.input_width()).map(|i| (i % 7) as f32 / 7.0).collect();
        trainer.step(&x).unwrap();
        let after_one = trainer.kernels().pipeline_stats().created;
        trainer.step(&x).unwrap();
        trainer.wait_idle().unwrap();
        assert_eq!(trainer.kernels().pipeline_stats().created, after_one, "a second step creates none");
        let first = trainer.first_step().expect("the first step is timed");
        assert_eq!(first.pipelines.created, after_one);
        // Every variant's operation/epilogue pairs, and those of the subgroup one's vec4 kernel
        // and its wide forward where subgroups run.
        let pairs = |v: MatmulVariant| v.ops().iter().map(|op| op.epilogues().len()).sum::<usize>();
        let mut every_variant = variants.clone();
        if every_variant.contains(&MatmulVariant::Subgroup) {
            every_variant.extend([MatmulVariant::SubgroupVec4, MatmulVariant::SubgroupWide]);
        }
        let kernels_here = sae_wgpu::kernels::Kernel::ALL.iter().filter(|k| k.available(gpu.features)).count();
        let every = kernels_here + every_variant.into_iter().map(pairs).sum::<usize>();
        assert!(after_one > 0 && after_one < every / 2, "{after_one} of {every} pipelines for a step");
        let all = Kernels::new(&gpu).unwrap();
        all.create_all().expect("every pipeline compiles");
        assert_eq!(all.pipeline_stats().created, every, "{}", gpu.describe());
    }
}

/// The subgroup matmul's vec4 kernel (taken where the widths are multiples of 4) gives the f32
/// kernel's results bit for bit in all three layouts and every epilogue the step uses: the same
/// sums in the same order, the same f32 arithmetic after. Odd batch sizes, a batch of one,
/// outputs wider than a tile and grids split over dispatches; on an adapter without subgroups
/// the launcher never takes it.
#[test]
fn vec4_subgroup_matmul_matches_the_f32_kernel_bit_for_bit() {
    use sae_wgpu::model::Activation;
    for gpu in gpus() {
        let mut kernels = Kernels::new(&gpu).expect("kernels");
        let subgroups = kernels.matmul_variants().contains(&MatmulVariant::Subgroup);
        if subgroups {
            kernels.set_matmul_variant(MatmulVariant::Subgroup).unwrap();
        }
        for (case, &(m, n, k, max_groups)) in
            [(1, 4, 4, u32::MAX), (37, 44, 68, u32::MAX), (257, 80, 20, 2), (130, 8, 132, 1)].iter().enumerate()
        {
            kernels.max_groups = max_groups.min(gpu.limits.max_compute_workgroups_per_dimension);
            let mut rng = Rng::new(77 + case as u64);
            let mut up = |name: &str, len: usize, lo: f64| gpu.upload(name, &check::random(&mut rng, len, lo, 1.0));
            // delta [m, n], A [m, k], W [n, k], b [n], the target X [m, n], Z and A of the layer
            // below [m, k].
            let (delta, a, w, b, x) = (
                up("delta", m * n, -1.0),
                up("a", m * k, -1.0),
                up("w", n * k, -1.0),
                up("b", n, -1.0),
                up("x", m * n, 0.0),
            );
            let (z_below, a_below) = (up("z", m * k, -1.0), up("a below", m * k, 0.0));
            let run = |kernels: &mut Kernels, vec4: bool| {
                kernels.set_matmul_vec4(vec4);
                let nan = |name: &str, len: usize| gpu.upload(name, &vec![f32::NAN; len]);
                let outs = [
                    nan("dw", n * k),
                    nan("db", n),
                    nan("z", m * n),
                    nan("a", m * n),
                    nan("d", m * n),
                    nan("g", m * k),
                ];
                let launches = [
                    kernels.matmul_backward_weight_bias(&delta, &a, &outs[0], &outs[1], m, n, k),
                    kernels.matmul_forward_output_delta(
                        &a,
                        &w,
                        &b,
                        (&outs[2], &outs[3]),
                        (&x, &outs[4]),
                        (m, k, n),
                        Activation::Sigmoid,
                    ),
                    kernels.matmul_backward_input_activation(
                        &delta,
                        &w,
                        &z_below,
                        &a_below,
                        &outs[5],
                        m,
                        n,
                        k,
                        Activation::Relu,
                    ),
                ];
                for l in &launches {
                    assert_eq!(l.cost.label.contains(" vec4"), vec4 && subgroups, "{}", l.cost.label);
                }
                gpu.run(&launches);
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
                outs.iter().map(|o| bits(gpu.download(o).unwrap())).collect::<Vec<_>>()
            };
            let plain = run(&mut kernels, false);
            let vec4 = run(&mut kernels, true);
            assert!(plain.iter().flatten().all(|&b| !f32::from_bits(b).is_nan()), "every output written");
            assert!(plain == vec4, "m={m} n={n} k={k} on {}: vec4 differs", gpu.describe());
        }
    }
}

/// The vec4 kernel's wide tiles (64x64, taken for big forward and input-gradient products:
/// `matmul::wide_fits`) give the 32x32 tiles' results bit for bit, and those of the f32 kernel,
/// in every epilogue the step uses there: the same chain of fma per output in the same order.
/// Sizes that are not multiples of the tile (a last tile of one row, of one vec4 of columns),
/// the smallest inner widths, and grids split over dispatches; the weight gradient, which keeps
/// 32x32 tiles, beside them. The launch labels say which tile ran; the plain products are
/// judged against their f64 twins too.
#[test]
fn wide_tiles_match_the_32x32_tiles_bit_for_bit() {
    use sae_wgpu::kernels::matmul::wide_fits;
    use sae_wgpu::kernels::MatmulOp;
    use sae_wgpu::model::Activation;
    use sae_wgpu::reference as r;
    for gpu in gpus() {
        let mut kernels = Kernels::new(&gpu).expect("kernels");
        let subgroups = kernels.matmul_variants().contains(&MatmulVariant::Subgroup);
        if subgroups {
            kernels.set_matmul_variant(MatmulVariant::Subgroup).unwrap();
        }
        for (case, &(m, k, n, max_groups)) in
            [(257, 260, 196, u32::MAX), (130, 1028, 516, 3), (1000, 4, 64, 3), (65, 8, 1028, 2), (1000, 64, 4, 1)]
                .iter()
                .enumerate()
        {
            // Where each launch below takes the wide tile, by the launcher's rule.
            let fits = [
                wide_fits(MatmulOp::Forward, (m, n, k)),
                wide_fits(MatmulOp::Forward, (m, n, k)),
                wide_fits(MatmulOp::Forward, (m, n, k)),
                wide_fits(MatmulOp::BackwardInput, (m, k, n)),
                wide_fits(MatmulOp::BackwardInput, (m, k, n)),
                wide_fits(MatmulOp::BackwardWeight, (n, k, m)),
                wide_fits(MatmulOp::BackwardWeight, (n, k + 1, m)),
            ];
            assert!(fits[0] && fits[3] == (case != 3) && !fits[5] && !fits[6], "case {case}");
            kernels.max_groups = max_groups.min(gpu.limits.max_compute_workgroups_per_dimension);
            let mut rng = Rng::new(55 + case as u64);
            let mut up = |name: &str, len: usize, lo: f64| gpu.upload(name, &check::random(&mut rng, len, lo, 1.0));
            let (a, w, b, x) = (up("a", m * k, -1.0), up("w", n * k, -1.0), up("b", n, -1.0), up("x", m * n, 0.0));
            let (delta, z_below, a_below) = (up("delta", m * n, -1.0), up("z", m * k, -1.0), up("a below", m * k, 0.0));
            // (vec4, wide): the f32 kernel, the 32x32 vec4 tiles, the wide tiles.
            let run = |kernels: &mut Kernels, (vec4, wide): (bool, bool)| {
                kernels.set_matmul_vec4(vec4);
                kernels.set_matmul_wide(wide);
                let nan = |name: &str, len: usize| gpu.upload(name, &vec![f32::NAN; len]);
                let outs = [
                    nan("z plain", m * n),
                    nan("z", m * n),
                    nan("a", m * n),
                    nan("z last", m * n),
                    nan("a last", m * n),
                    nan("delta", m * n),
                    nan("g plain", m * k),
                    nan("g", m * k),
                    nan("dw plain", n * k),
                    nan("dw", n * k),
                    nan("db", n),
                ];
                let launches = [
                    kernels.matmul_forward(&a, &w, &outs[0], m, k, n),
                    kernels.matmul_forward_bias_activation(&a, &w, &b, &outs[1], &outs[2], m, k, n, Activation::Tanh),
                    kernels.matmul_forward_output_delta(
                        &a,
                        &w,
                        &b,
                        (&outs[3], &outs[4]),
                        (&x, &outs[5]),
                        (m, k, n),
                        Activation::Relu,
                    ),
                    kernels.matmul_backward_input(&delta, &w, &outs[6], m, n, k),
                    kernels.matmul_backward_input_activation(
                        &delta,
                        &w,
                        &z_below,
                        &a_below,
                        &outs[7],
                        m,
                        n,
                        k,
                        Activation::Sigmoid,
                    ),
                    kernels.matmul_backward_weight(&delta, &a, &outs[8], m, n, k),
                    kernels.matmul_backward_weight_bias(&delta, &a, &outs[9], &outs[10], m, n, k),
                ];
                for (l, fits) in launches.iter().zip(fits) {
                    assert_eq!(l.cost.label.contains(" wide"), vec4 && wide && subgroups && fits, "{}", l.cost.label);
                }
                gpu.run(&launches);
                outs.iter().map(|o| gpu.download(o).unwrap()).collect::<Vec<_>>()
            };
            let bits = |outs: &[Vec<f32>]| outs.iter().flatten().map(|v| v.to_bits()).collect::<Vec<u32>>();
            let f32_kernel = run(&mut kernels, (false, false));
            let tiles32 = run(&mut kernels, (true, false));
            let wide = run(&mut kernels, (true, true));
            kernels.set_matmul_wide(true);
            assert!(f32_kernel.iter().flatten().all(|v| !v.is_nan()), "every output written");
            assert!(bits(&tiles32) == bits(&f32_kernel), "m={m} k={k} n={n} on {}: 32x32 vec4 differs", gpu.describe());
            assert!(bits(&wide) == bits(&tiles32), "m={m} k={k} n={n} on {}: the wide tiles differ", gpu.describe());
            // The plain products against their f64 twins, as the check table judges them.
            let f64_of = |v: &sae_wgpu::kernels::View| check::widen(&gpu.download(v).unwrap());
            let (a64, w64, d64) = (f64_of(&a), f64_of(&w), f64_of(&delta));
            let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<f64>>();
            let z_err = check::max_rel_err(
                &wide[0],
                &r::matmul_forward(&a64, &w64, m, k, n),
                &r::matmul_forward(&abs(&a64), &abs(&w64), m, k, n),
            );
            let g_err = check::max_rel_err(
                &wide[6],
                &r::matmul_backward_input(&d64, &w64, m, n, k),
                &r::matmul_backward_input(&abs(&d64), &abs(&w64), m, n, k),
            );
            let dw_err = check::max_rel_err(
                &wide[8],
                &r::matmul_backward_weight(&d64, &a64, m, n, k),
                &r::matmul_backward_weight(&abs(&d64), &abs(&a64), m, n, k),
            );
            let worst = z_err.max(g_err).max(dw_err);
            assert!(worst <= TOL, "m={m} k={k} n={n}: max rel err {z_err:.2e}, {g_err:.2e}, {dw_err:.2e} > {TOL:.0e}");
        }
    }
}

/// A layer's two backward products in one dispatch (`matmul_backward_pair`) give what the
/// launches they replace give, bit for bit, in every variant (and the subgroup one's vec4
/// kernel): with the activation derivative (vs the weight gradient and
/// `matmul_backward_input_activation`), plain (vs `matmul_backward_input`), and with the KL
/// gradient's column term that `fire_count_rho` writes (vs `matmul_backward_input` then
/// `kl_backward` from the same rho_hat, under kl and kl-soft-freq). Odd sizes, a batch of one, a
/// weight job whose grid is wider or narrower than the input job's, and grids split over
/// dispatches (the jobs' boundary then falls inside a dispatch or between two).
#[test]
fn backward_pair_matches_the_launches_it_replaces_bit_for_bit() {
    use sae_wgpu::kernels::elementwise::{KlTerm, StepViews};
    use sae_wgpu::kernels::PairInput;
    use sae_wgpu::layout::{align, StepState, StepValues};
    use sae_wgpu::model::{Activation, Sparsity};
    use sae_wgpu::reference::FireUpdate;
    let kl = Sparsity::Kl { rho: 0.1, beta: 3.0 };
    let soft = Sparsity::KlSoftFreq { rho: 0.1, beta: 3.0, temperature: 0.5 };
    for gpu in gpus() {
        let mut kernels = Kernels::new(&gpu).expect("kernels");
        let mut variants: Vec<(MatmulVariant, bool)> =
            kernels.matmul_variants().into_iter().map(|v| (v, false)).collect();
        if variants.iter().any(|&(v, _)| v == MatmulVariant::Subgroup) {
            variants.push((MatmulVariant::Subgroup, true));
        }
        // A warm-up's share of beta, read by fire_count_rho and kl_backward alike.
        let values = [StepValues { lr: 0.0, step_size: 0.0, bc2_sqrt: 1.0, beta_scale: 0.75 }];
        let (state, values, clip) = (
            gpu.upload_bytes("state", bytemuck::bytes_of(&StepState::default())),
            gpu.upload_bytes("values", bytemuck::cast_slice(&values)),
            gpu.upload("clip", &[1.0]),
        );
        let steps = StepViews { state: &state, values: &values, clip: &clip, advance_rows: 0 };
        for (variant, vec4) in variants {
            kernels.set_matmul_variant(variant).unwrap();
            kernels.set_matmul_vec4(vec4);
            for (case, &(m, n, k, max_groups)) in
                [(1, 4, 4, u32::MAX), (37, 29, 53, u32::MAX), (257, 80, 20, 2), (130, 8, 132, 1), (64, 68, 44, 3)]
                    .iter()
                    .enumerate()
            {
                kernels.max_groups = max_groups.min(gpu.limits.max_compute_workgroups_per_dimension);
                let mut rng = Rng::new(91 + case as u64);
                let mut up = |name: &str, len: usize, lo: f64| gpu.upload(name, &check::random(&mut rng, len, lo, 1.0));
                let (delta, w, z, a) =
                    (up("delta", m * n, -1.0), up("w", n * k, -1.0), up("z", m * k, -1.0), up("a", m * k, 0.0));
                // rho_hat of A (and for kl-soft-freq of Z's soft fires) with the KL term beside it.
                let at = align(k);
                let rho_for = |sparsity: Sparsity| {
                    let rho_and_term = gpu.upload("rho", &vec![f32::NAN; at + k]);
                    let (freq, since, bias) = (
                        gpu.upload("f", &vec![0.0; k]),
                        gpu.upload("s", &vec![0.0; k]),
                        gpu.upload("b", &vec![0.0; k]),
                    );
                    let (x, temperature) = match sparsity {
                        Sparsity::KlSoftFreq { temperature, .. } => (&z, Some(temperature)),
                        _ => (&a, None),
                    };
                    let term = KlTerm { at, rho: 0.1, beta_over_m: 3.0 / m as f64 };
                    let launch = kernels.fire_count_rho(
                        &z,
                        &freq,
                        &since,
                        &bias,
                        (m, k),
                        FireUpdate::NONE,
                        steps,
                        (x, &rho_and_term, temperature),
                        Some(term),
                    );
                    gpu.run(&[launch]);
                    rho_and_term
                };
                let rhos = [rho_for(kl), rho_for(soft)];
                for form in 0..4 {
                    let run = |paired: bool| {
                        let nan = |name: &str, len: usize| gpu.upload(name, &vec![f32::NAN; len]);
                        let outs = [nan("dw", n * k), nan("db", n), nan("out", m * k), nan("g", m * k)];
                        let (sparsity, rho) = if form == 3 { (soft, &rhos[1]) } else { (kl, &rhos[0]) };
                        let term = rho.slice(at, k);
                        let temperature = (form == 3).then_some(0.5);
                        let launches = if paired {
                            let input = match form {
                                0 => PairInput::Derivative { z: &z },
                                1 => PairInput::Plain,
                                _ => PairInput::Penalty { z: &z, term: &term, temperature },
                            };
                            let t = (&delta, &w, &a);
                            vec![kernels.matmul_backward_pair(
                                t,
                                input,
                                (&outs[0], &outs[1]),
                                &outs[2],
                                (m, n, k),
                                Activation::Tanh,
                            )]
                        } else {
                            let mut launches =
                                vec![kernels.matmul_backward_weight_bias(&delta, &a, &outs[0], &outs[1], m, n, k)];
                            match form {
                                0 => launches.push(kernels.matmul_backward_input_activation(
                                    &delta,
                                    &w,
                                    &z,
                                    &a,
                                    &outs[2],
                                    m,
                                    n,
                                    k,
                                    Activation::Tanh,
                                )),
                                1 => launches.push(kernels.matmul_backward_input(&delta, &w, &outs[2], m, n, k)),
                                _ => {
                                    launches.push(kernels.matmul_backward_input(&delta, &w, &outs[3], m, n, k));
                                    let rho_hat = rho.head(k);
                                    launches.push(kernels.kl_backward(
                                        &outs[3],
                                        &z,
                                        &a,
                                        &rho_hat,
                                        &outs[2],
                                        m,
                                        k,
                                        Activation::Tanh,
                                        sparsity,
                                        0,
                                        steps,
                                    ));
                                }
                            }
                            launches
                        };
                        gpu.run(&launches);
                        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
                        outs[..3].iter().map(|o| bits(gpu.download(o).unwrap())).collect::<Vec<_>>()
                    };
                    let (apart, one) = (run(false), run(true));
                    assert!(apart.iter().flatten().all(|&b| !f32::from_bits(b).is_nan()), "every output written");
                    assert!(
                        one == apart,
                        "{} (vec4 {vec4}) m={m} n={n} k={k}, form {form}, on {}: the pair differs",
                        variant.name(),
                        gpu.describe()
                    );
                }
            }
        }
    }
}

/// A training step with the panel forward gives the per-layer launches' parameters bit for bit:
/// the seed model under its KL penalty, three steps of 37 rows (a last panel of 5), on an
/// adapter with subgroups, against the same trainer without the vec4 kernel (which turns the
/// panel off; the f32 subgroup kernel is the vec4 one's bit for bit, tested above).
#[test]
fn the_panel_forward_trains_as_the_per_layer_launches_do() {
    use sae_wgpu::model::{LossConfig, ModelSpec, Params, Sparsity};
    for gpu in gpus().into_iter().filter(|g| g.features.contains(wgpu::Features::SUBGROUP)) {
        let spec = ModelSpec::seed();
        let cfg = LossConfig { weight_decay: 1e-3, sparsity: Sparsity::Kl { rho: 0.05, beta: 3.0 } };
        let m = 37;
        let mut rng = Rng::new(8);
        let batches: Vec<Vec<f32>> = (0..3).map(|_| check::random(&mut rng, m * 20, 0.0, 1.0)).collect();
        let run = |vec4: bool| {
            let mut kernels = Kernels::new(&gpu).unwrap();
            kernels.set_matmul_variant(MatmulVariant::Subgroup).unwrap();
            kernels.set_matmul_vec4(vec4);
            let mut t = sae_wgpu::Trainer::new(kernels, &spec, cfg, 0.3, m, &Params::init(&spec, 4)).unwrap();
            for b in &batches {
                t.step(b).unwrap();
            }
            (t.params().unwrap(), t.dispatches_per_step(m))
        };
        let ((panel, d_panel), (layers, d_layers)) = (run(true), run(false));
        assert_eq!((d_panel, d_layers), (10, 15), "{}", gpu.describe());
        assert!(panel == layers, "{}: the panel forward changed the result", gpu.describe());
    }
}
