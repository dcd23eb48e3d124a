//! Kernel checks: each kernel against its f64 twin in `reference.rs` on random inputs, used by
//! `sae check` and by the test suite. Outputs are poisoned with NaN first, so an element no
//! invocation writes fails. Sizes are the caller's: odd sizes, a batch of one, and a lowered
//! per-dispatch workgroup limit (so grids are split) are what the tests and `sae check` use.
//!
//! Tolerances. Inputs are f32 and the reference computes in f64 from the same f32 values, so
//! the only error is the kernel's f32 rounding. A dot product of length k accumulated in f32
//! has error at most about k * 2^-24 * sum |terms| (6e-8 per term; ~sqrt(k) times that in
//! practice): for matmuls we divide the error by sum |terms| (computed as |L|·|R| by the same
//! reference) and require 1e-5, which covers k up to ~150 in the worst case and far more in
//! practice. Element-wise kernels do a handful of f32 operations (exp, tanh, a division: a few
//! ulp each), so their relative error must also be below 1e-5.

use crate::kernels::elementwise::{KlTerm, StepViews};
use crate::kernels::{Kernels, MatmulVariant, PairInput, View};
use crate::layout::{StepState, StepValues};
use crate::model::{Activation, Rng, Sparsity, RHO_HAT_EPS};
use crate::optim::{self, LrSchedule, Optimizer, ScheduleKind, UpdateRule};
use crate::reference::{self as r, ColumnTransform, FireUpdate};

/// Relative error every kernel must stay under (argued above).
pub const TOL: f64 = 1e-5;

/// (m, k, n, max workgroups per dispatch): odd sizes (not multiples of the tile, 64 or 256),
/// a batch of one, and limits of 3 and 2 workgroups per dispatch dimension that force
/// splitting; the fifth case spans several 64x64 tiles (`tiled64`) in both directions, and the
/// sixth has k and n multiples of 4, so the subgroup matmul's vec4 kernel runs there, and the
/// last is big enough for its wide tiles too.
pub const CASES: [(usize, usize, usize, u32); 7] = [
    (37, 53, 29, u32::MAX),
    (1, 53, 29, u32::MAX),
    (1, 7, 3, u32::MAX),
    (100, 53, 61, 3),
    (130, 67, 71, 2),
    (131, 68, 44, 2),
    // `matmul::wide_fits`: 5x4 wide tiles in the forward product, 5x5 in the input gradient,
    // the last row of them holding one row and the last column one vec4 of columns.
    (257, 260, 196, 2),
];

/// A kernel check: kernels (with their variant and dispatch limit set), rng, m, k, n.
pub type Check = fn(&Kernels, &mut Rng, usize, usize, usize) -> f64;

/// Every kernel check, by kernel name; matmul checks run once per [`MatmulVariant`].
pub const CHECKS: [(&str, Check); 32] = [
    ("matmul_forward", matmul_forward),
    ("matmul_forward_bias_activation", matmul_forward_bias_activation),
    ("matmul_forward_output_delta", matmul_forward_output_delta),
    ("matmul_backward_weight", matmul_backward_weight),
    ("matmul_backward_weight_bias", matmul_backward_weight_bias),
    ("matmul_backward_input", matmul_backward_input),
    ("matmul_backward_input_activation", matmul_backward_input_activation),
    ("matmul_backward_pair", matmul_backward_pair),
    ("panel_forward", panel_forward),
    ("kl_backward", kl_backward),
    ("column_sum", column_sum),
    ("fire_count", fire_count),
    ("fire_count_rho", fire_count_rho),
    ("output_delta", output_delta),
    ("loss_value", loss_value),
    ("sgd_update", sgd_update),
    ("momentum_update", momentum_update),
    ("adam_update", adam_update),
    ("grad_norm", grad_norm),
    ("topk", topk),
    ("topk_rank", topk_rank),
    ("center_rows", center_rows),
    ("pre_bias_backward", pre_bias_backward),
    ("decoder_project", decoder_project),
    ("decoder_normalize", decoder_normalize),
    ("auxk_delta", auxk_delta),
    ("column_norms", column_norms),
    ("l1_decoder_grad", l1_decoder_grad),
    ("batch_threshold", batch_threshold),
    ("threshold_code", threshold_code),
    ("jumprelu_forward", jumprelu_forward),
    ("jumprelu_backward", jumprelu_backward),
];

pub fn is_matmul(name: &str) -> bool {
    name.starts_with("matmul")
}

/// One row of a check report.
#[derive(Clone, Debug)]
pub struct Row {
    pub kernel: &'static str,
    pub variant: &'static str,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub max_groups: u32,
    pub max_rel_err: f64,
}

impl Row {
    pub fn pass(&self) -> bool {
        self.max_rel_err <= TOL
    }
}

/// Runs every check at every case (and every matmul variant) on `kernels`' device.
pub fn run_all(kernels: &mut Kernels) -> crate::Result<Vec<Row>> {
    let limit = kernels.gpu.limits.max_compute_workgroups_per_dimension;
    let default_variant = kernels.matmul_variant();
    let mut rows = Vec::new();
    for (kernel, check) in CHECKS {
        let variants: Vec<Option<MatmulVariant>> =
            if is_matmul(kernel) { kernels.matmul_variants().into_iter().map(Some).collect() } else { vec![None] };
        // A kernel this device cannot run (the panel forward without subgroups) is not built.
        let unavailable =
            crate::kernels::Kernel::ALL.iter().any(|k| k.name() == kernel && !k.available(kernels.gpu.features));
        if unavailable {
            continue;
        }
        for variant in variants {
            kernels.set_matmul_variant(variant.unwrap_or(default_variant))?;
            for (case, &(m, k, n, max_groups)) in CASES.iter().enumerate() {
                kernels.max_groups = max_groups.min(limit);
                let mut rng = Rng::new(1000 + case as u64);
                let err = check(kernels, &mut rng, m, k, n);
                rows.push(Row {
                    kernel,
                    variant: variant.map_or("", |v| v.name()),
                    m,
                    k,
                    n,
                    max_groups: kernels.max_groups,
                    max_rel_err: err,
                });
            }
        }
    }
    kernels.set_matmul_variant(default_variant)?;
    kernels.max_groups = limit;
    Ok(rows)
}

/// `len` values uniform in `[lo, hi)`.
pub fn random(rng: &mut Rng, len: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..len).map(|_| (lo + (hi - lo) * rng.next_f64()) as f32).collect()
}

/// The same values in f64, as the reference takes them.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn abs(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| (*x as f64).abs()).collect()
}

/// Largest `|gpu - reference| / scale`; a non-finite GPU value (an element never written, since
/// outputs are poisoned with NaN first) makes it infinite, so it can never pass.
pub fn max_rel_err(gpu: &[f32], reference: &[f64], scale: &[f64]) -> f64 {
    assert_eq!(gpu.len(), reference.len(), "length mismatch");
    let mut worst: f64 = 0.0;
    for i in 0..gpu.len() {
        let g = gpu[i] as f64;
        if !g.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max((g - reference[i]).abs() / scale[i].max(1e-30));
    }
    worst
}

/// Element-wise magnitudes `max(|r|, floor)`.
fn magnitudes(reference: &[f64], floor: f64) -> Vec<f64> {
    reference.iter().map(|r| r.abs().max(floor)).collect()
}

/// A step state at the first step, a step-values table whose `beta_scale` is `share` (the
/// kernels that apply beta read it there) and a clipping coefficient of 1.
fn beta_share(k: &Kernels, share: f64) -> (View, View, View) {
    let values = [StepValues { lr: 0.0, step_size: 0.0, bc2_sqrt: 1.0, beta_scale: share as f32 }];
    let state = k.gpu.upload_bytes("step state", bytemuck::bytes_of(&StepState::default()));
    (state, k.gpu.upload_bytes("step values", bytemuck::cast_slice(&values)), k.gpu.upload("clip", &[1.0]))
}

/// A tensor's contents; a read-back that fails gives NaN, which fails the check.
fn download(k: &Kernels, v: &View) -> Vec<f32> {
    k.gpu.download(v).unwrap_or_else(|_| vec![f32::NAN; v.len])
}

fn poisoned(k: &Kernels, len: usize) -> View {
    k.gpu.upload("poisoned output", &vec![f32::NAN; len])
}

/// `matmul_forward` against its reference twin; returns the max relative error.
pub fn matmul_forward(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let a = random(rng, m * k, -1.0, 1.0);
    let w = random(rng, n * k, -1.0, 1.0);
    let out = poisoned(kern, m * n);
    kern.gpu.run(&[kern.matmul_forward(&kern.gpu.upload("a", &a), &kern.gpu.upload("w", &w), &out, m, k, n)]);
    let want = r::matmul_forward(&widen(&a), &widen(&w), m, k, n);
    let scale = r::matmul_forward(&abs(&a), &abs(&w), m, k, n);
    max_rel_err(&download(kern, &out), &want, &scale)
}

/// `matmul_backward_weight` against its reference twin; returns the max relative error.
pub fn matmul_backward_weight(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let delta = random(rng, m * n, -1.0, 1.0);
    let a = random(rng, m * k, -1.0, 1.0);
    let out = poisoned(kern, n * k);
    kern.gpu.run(&[kern.matmul_backward_weight(
        &kern.gpu.upload("d", &delta),
        &kern.gpu.upload("a", &a),
        &out,
        m,
        n,
        k,
    )]);
    let want = r::matmul_backward_weight(&widen(&delta), &widen(&a), m, n, k);
    let scale = r::matmul_backward_weight(&abs(&delta), &abs(&a), m, n, k);
    max_rel_err(&download(kern, &out), &want, &scale)
}

/// `matmul_backward_input` against its reference twin; returns the max relative error.
pub fn matmul_backward_input(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let delta = random(rng, m * n, -1.0, 1.0);
    let w = random(rng, n * k, -1.0, 1.0);
    let out = poisoned(kern, m * k);
    kern.gpu.run(&[kern.matmul_backward_input(
        &kern.gpu.upload("d", &delta),
        &kern.gpu.upload("w", &w),
        &out,
        m,
        n,
        k,
    )]);
    let want = r::matmul_backward_input(&widen(&delta), &widen(&w), m, n, k);
    let scale = r::matmul_backward_input(&abs(&delta), &abs(&w), m, n, k);
    max_rel_err(&download(kern, &out), &want, &scale)
}

/// `kl_backward` against its reference twin; returns the max relative error.
pub fn kl_backward(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    // Each with a share of beta from the step-values table (a warm-up's), 1 or below, and
    // kl-freq's target annealed over some steps (the check runs step 1: 1/5 of the way).
    let kl_freq = |rho, beta, temperature| Sparsity::KlFreq { rho, beta, temperature, control: 0.01 };
    let modes = [
        (Activation::Sigmoid, Sparsity::Kl { rho: 0.05, beta: 3.0 }, 1.0, 0),
        (Activation::Relu, Sparsity::KlSoftFreq { rho: 0.1, beta: 2.0, temperature: 0.5 }, 0.5, 0),
        (Activation::Sigmoid, Sparsity::KlSoftFreq { rho: 0.05, beta: 3.0, temperature: 1.0 }, 1.0, 0),
        (Activation::Tanh, Sparsity::KlSoftFreq { rho: 0.2, beta: 0.7, temperature: 2.0 }, 0.25, 0),
        (Activation::Sigmoid, Sparsity::Kl { rho: 0.05, beta: 3.0 }, 0.125, 0),
        (Activation::Relu, kl_freq(0.05, 3.0, 0.5), 1.0, 0),
        (Activation::Identity, kl_freq(0.25, 1.5, 8.0), 0.3, 5),
        // L1 (mode 4): rho_hat holds the decoder's column norms.
        (Activation::Relu, Sparsity::L1 { coefficient: 0.3 }, 0.6, 0),
    ];
    for (act, penalty, share, anneal) in modes {
        let (state, values, clip) = beta_share(kern, share);
        let steps = StepViews { state: &state, values: &values, clip: &clip, advance_rows: 0 };
        // What the twin computes with: this step's beta and target.
        let sparsity = penalty.scaled(share).annealed(optim::beta_scale(anneal, 1));
        let g = random(rng, m * n, -0.1, 0.1);
        let z = random(rng, m * n, -3.0, 3.0);
        let a: Vec<f32> = z.iter().map(|&v| r::activate(act, v as f64) as f32).collect();
        // Include rho_hat values beyond the clamp: the gradient must pass through it.
        let mut rho_hat = random(rng, n, 0.01, 0.9);
        rho_hat[0] = 0.0;
        if n > 1 {
            rho_hat[n - 1] = 1.0;
        }
        let out = poisoned(kern, m * n);
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        kern.gpu.run(&[kern.kl_backward(
            &up("g", &g),
            &up("z", &z),
            &up("a", &a),
            &up("rho_hat", &rho_hat),
            &out,
            m,
            n,
            act,
            penalty,
            anneal,
            steps,
        )]);
        let want = r::kl_backward(&widen(&g), &widen(&z), &widen(&a), &widen(&rho_hat), act, sparsity, m);
        // Scale: the same formula on magnitudes, so a cancellation between G and the KL
        // term is judged against the size of the terms, not of their difference.
        let (rho, beta) = sparsity.rho_beta();
        let t = sparsity.temperature();
        let scale: Vec<f64> = (0..m * n)
            .map(|i| {
                let j = i % n;
                let fp = r::activation_derivative(act, z[i] as f64, a[i] as f64).abs();
                let term = match sparsity {
                    // The straight-through term: (beta/(T m)) (rho_hat - rho), judged on |rho_hat| + rho.
                    Sparsity::KlFreq { .. } => beta / (t * m as f64) * (rho_hat[j] as f64 + rho),
                    Sparsity::L1 { .. } => beta / m as f64 * (rho_hat[j] as f64) * fp,
                    _ => {
                        let q = (rho_hat[j] as f64).clamp(1e-6, 1.0 - 1e-6);
                        let dkl = beta / m as f64 * (rho / q + (1.0 - rho) / (1.0 - q));
                        let s = r::sigmoid(z[i] as f64 / t);
                        dkl * (fp + s * (1.0 - s) / t)
                    }
                };
                (g[i] as f64).abs() * fp + term + 1e-12
            })
            .collect();
        let err = max_rel_err(&download(kern, &out), &want, &scale);
        worst = worst.max(err);
    }
    worst
}

/// `column_sum` against its reference twin; returns the max relative error.
pub fn column_sum(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    let transforms = [
        (ColumnTransform::Value, 1.0),
        (ColumnTransform::Value, 0.25),
        (ColumnTransform::Fires, 0.5),
        (ColumnTransform::SoftFires { temperature: 0.3 }, 1.0),
    ];
    for (t, scale) in transforms {
        // A fraction of exact zeros checks the strict `x > 0` of the firing indicator.
        let mut x = random(rng, m * n, -1.0, 1.0);
        for v in x.iter_mut().step_by(7) {
            *v = 0.0;
        }
        let out = poisoned(kern, n);
        kern.gpu.run(&[kern.column_sum(&kern.gpu.upload("x", &x), &out, m, n, t, scale)]);
        let want = r::column_sum(&widen(&x), m, n, t, scale);
        // Sum of m terms: judge against the sum of their magnitudes.
        let mag = r::column_sum(&abs(&x), m, n, ColumnTransform::Value, scale.abs());
        let sc: Vec<f64> = match t {
            ColumnTransform::Value => mag,
            _ => magnitudes(&want, scale / m as f64),
        };
        let err = max_rel_err(&download(kern, &out), &want, &sc);
        worst = worst.max(err);
    }
    worst
}

/// `fire_count` against its reference twin: the frequencies and the moved bias by relative
/// error, the counters exactly (a wrong counter scores 1).
pub fn fire_count(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    // A training step's, one during a warm-up and an anneal (step 1 of 4), one without a
    // controller, evaluation's.
    let modes = [
        FireUpdate { track: true, rho: 0.05, control: 0.01, anneal: 0 },
        FireUpdate { track: true, rho: 0.25, control: 0.5, anneal: 4 },
        FireUpdate { track: true, rho: 0.0, control: 0.0, anneal: 0 },
        FireUpdate::NONE,
    ];
    for (i, update) in modes.into_iter().enumerate() {
        let share = if i == 1 { 0.3 } else { 1.0 };
        let (state, values, clip) = beta_share(kern, share);
        let steps = StepViews { state: &state, values: &values, clip: &clip, advance_rows: 0 };
        // Exact zeros (the strict z > 0), and a unit that never fires in these rows.
        let mut z = random(rng, m * n, -1.0, 1.0);
        for v in z.iter_mut().step_by(5) {
            *v = 0.0;
        }
        for row in z.chunks_mut(n) {
            row[n - 1] = -row[n - 1].abs();
        }
        // Counters near saturation too.
        let mut since: Vec<u32> = (0..n).map(|_| (rng.next_f64() * 1e6) as u32).collect();
        since[0] = u32::MAX - 1;
        let bias = random(rng, n, -1.0, 1.0);
        let (freq_out, since_view, bias_view) = (
            poisoned(kern, n),
            kern.gpu.upload_bytes("since", bytemuck::cast_slice(&since)),
            kern.gpu.upload("bias", &bias),
        );
        let z_view = kern.gpu.upload("z", &z);
        kern.gpu.run(&[kern.fire_count(&z_view, &freq_out, &since_view, &bias_view, m, n, update, steps)]);
        let mut want_bias = widen(&bias);
        let want = r::fire_count(&widen(&z), m, n, &mut since, &mut want_bias, update, share, 1);
        worst = worst.max(max_rel_err(&download(kern, &freq_out), &want, &magnitudes(&want, 1.0 / m as f64)));
        let got: Vec<u32> = download(kern, &since_view).iter().map(|v| v.to_bits()).collect();
        if got != since {
            worst = worst.max(1.0);
        }
        let (rho, control) =
            (crate::model::annealed_rho(update.rho, optim::beta_scale(update.anneal, 1)), update.control);
        let scale: Vec<f64> =
            bias.iter().zip(&want).map(|(b, f)| (*b as f64).abs() + control * share * (f + rho) + 1e-12).collect();
        worst = worst.max(max_rel_err(&download(kern, &bias_view), &want_bias, &scale));
    }
    worst
}

/// `fire_count_rho` against its twin: the counts, counters and bias as `fire_count`'s check
/// judges them, and rho_hat as `column_sum`'s (the value against the sum of the terms'
/// magnitudes; soft fires, each in (0, 1), against rho_hat plus 1/m), in a training step with
/// the frequency controller, for both transforms; and the KL gradient's column term with a
/// share of beta below 1, against the magnitudes of KL' = -rho/q + (1-rho)/(1-q)'s two parts
/// (times beta/m and the share): the two parts cancel where q is near rho, and the f32 error of
/// each is a few ulp of its own size.
pub fn fire_count_rho(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    let update = FireUpdate { track: true, rho: 0.05, control: 0.01, anneal: 0 };
    let share = 0.5;
    for soft in [None, Some(0.3)] {
        let (state, values, clip) = beta_share(kern, share);
        let steps = StepViews { state: &state, values: &values, clip: &clip, advance_rows: 0 };
        let mut z = random(rng, m * n, -1.0, 1.0);
        for v in z.iter_mut().step_by(5) {
            *v = 0.0;
        }
        let x = random(rng, m * n, -1.0, 1.0);
        let mut since: Vec<u32> = (0..n).map(|_| (rng.next_f64() * 1e6) as u32).collect();
        let bias = random(rng, n, -1.0, 1.0);
        let at = crate::layout::align(n);
        let (freq_out, rho_out) = (poisoned(kern, n), poisoned(kern, at + n));
        let since_view = kern.gpu.upload_bytes("since", bytemuck::cast_slice(&since));
        let (bias_view, z_view, x_view) =
            (kern.gpu.upload("bias", &bias), kern.gpu.upload("z", &z), kern.gpu.upload("x", &x));
        let rho = (&x_view, &rho_out, soft);
        let term = KlTerm { at, rho: 0.1, beta_over_m: 3.0 / m as f64 };
        kern.gpu.run(&[kern.fire_count_rho(
            &z_view,
            &freq_out,
            &since_view,
            &bias_view,
            (m, n),
            update,
            steps,
            rho,
            Some(term),
        )]);
        let transform = soft.map_or(ColumnTransform::Value, |temperature| ColumnTransform::SoftFires { temperature });
        let mut want_bias = widen(&bias);
        let (want_freq, want_rho) = r::fire_count_rho(
            &widen(&z),
            &widen(&x),
            (m, n),
            &mut since,
            &mut want_bias,
            update,
            (share, 1),
            transform,
        );
        worst = worst.max(max_rel_err(&download(kern, &freq_out), &want_freq, &magnitudes(&want_freq, 1.0 / m as f64)));
        let rho_scale = match soft {
            None => r::column_sum(&abs(&x), m, n, ColumnTransform::Value, 1.0 / m as f64),
            Some(_) => magnitudes(&want_rho, 1.0 / m as f64),
        };
        let got_rho = download(kern, &rho_out);
        worst = worst.max(max_rel_err(&got_rho[..n], &want_rho, &rho_scale));
        // The term from the kernel's own rho_hat (its error is judged above).
        let rho_f32 = widen(&got_rho[..n]);
        let want_term = r::kl_term(&rho_f32, term.rho, term.beta_over_m, share);
        let term_scale: Vec<f64> = rho_f32
            .iter()
            .map(|&q| {
                let q = q.clamp(RHO_HAT_EPS, 1.0 - RHO_HAT_EPS);
                term.beta_over_m * share * (term.rho / q + (1.0 - term.rho) / (1.0 - q))
            })
            .collect();
        worst = worst.max(max_rel_err(&got_rho[at..], &want_term, &term_scale));
        let got: Vec<u32> = download(kern, &since_view).iter().map(|v| v.to_bits()).collect();
        if got != since {
            worst = worst.max(1.0);
        }
        let scale: Vec<f64> = bias
            .iter()
            .zip(&want_freq)
            .map(|(b, f)| (*b as f64).abs() + update.control * (f + update.rho) + 1e-12)
            .collect();
        worst = worst.max(max_rel_err(&download(kern, &bias_view), &want_bias, &scale));
    }
    worst
}

/// `output_delta` against its reference twin; returns the max relative error.
pub fn output_delta(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    for act in [Activation::Sigmoid, Activation::Identity, Activation::Relu, Activation::Tanh] {
        let x = random(rng, m * n, 0.0, 1.0);
        let z = random(rng, m * n, -3.0, 3.0);
        let xhat: Vec<f32> = z.iter().map(|&v| r::activate(act, v as f64) as f32).collect();
        let out = poisoned(kern, m * n);
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        kern.gpu.run(&[kern.output_delta(&up("xhat", &xhat), &up("x", &x), &up("z", &z), &out, m, n, act)]);
        let want = r::output_delta(&widen(&xhat), &widen(&x), &widen(&z), act, m);
        let err = max_rel_err(&download(kern, &out), &want, &magnitudes(&want, 1e-9));
        worst = worst.max(err);
    }
    worst
}

/// `matmul_forward_output_delta` against its twin, for every activation: Z and A judged as in
/// [`matmul_forward_bias_activation`]; delta = (A - X) f'(Z, A) / m moves by at most
/// 2 |dA| / m (f' and its slope in A are at most 1 in magnitude here), so it is judged against
/// the scale (scale_A + |X|) / m of its terms.
pub fn matmul_forward_output_delta(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    for act in Activation::ALL {
        let a = random(rng, m * k, -1.0, 1.0);
        let w = random(rng, n * k, -1.0, 1.0);
        let b = random(rng, n, -0.5, 0.5);
        let x = random(rng, m * n, 0.0, 1.0);
        let (z_out, a_out, delta) = (poisoned(kern, m * n), poisoned(kern, m * n), poisoned(kern, m * n));
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        let x_view = up("x", &x);
        kern.gpu.run(&[kern.matmul_forward_output_delta(
            &up("a", &a),
            &up("w", &w),
            &up("b", &b),
            (&z_out, &a_out),
            (&x_view, &delta),
            (m, k, n),
            act,
        )]);
        let (want_z, want_a, want_d) =
            r::matmul_forward_output_delta(&widen(&a), &widen(&w), &widen(&b), &widen(&x), m, k, n, act);
        let terms = r::matmul_forward(&abs(&a), &abs(&w), m, k, n);
        let scale_z: Vec<f64> = (0..m * n).map(|i| terms[i] + (b[i % n] as f64).abs()).collect();
        let scale_a: Vec<f64> = scale_z.iter().map(|s| s + 0.1).collect();
        let scale_d: Vec<f64> = (0..m * n).map(|i| (scale_a[i] + (x[i] as f64).abs()) / m as f64).collect();
        let got = [download(kern, &z_out), download(kern, &a_out), download(kern, &delta)];
        worst = worst
            .max(max_rel_err(&got[0], &want_z, &scale_z))
            .max(max_rel_err(&got[1], &want_a, &scale_a))
            .max(max_rel_err(&got[2], &want_d, &scale_d));
    }
    worst
}

/// `loss_value` against its reference twin; returns the max relative error.
pub fn loss_value(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    use crate::model::{LossConfig, ModelSpec, Params};
    let kl = Sparsity::Kl { rho: 0.05, beta: 3.0 };
    for (penalty, share) in [(Sparsity::None, 1.0), (kl, 1.0), (kl, 0.375)] {
        let (state, values, clip) = beta_share(kern, share);
        let steps = StepViews { state: &state, values: &values, clip: &clip, advance_rows: 0 };
        let sparsity = penalty.scaled(share);
        let x = random(rng, m * n, 0.0, 1.0);
        let xhat = random(rng, m * n, 0.0, 1.0);
        // A one-layer model n -> n supplies the weights for the decay term.
        let spec =
            ModelSpec::new(&[n, n], &[n], Activation::Sigmoid, Activation::Sigmoid, Activation::Sigmoid).unwrap();
        let mut params = Params::init(&spec, 7);
        params.weights.iter_mut().flatten().for_each(|w| *w += 0.01);
        let weights: Vec<f32> = params.weights.concat();
        let code = n;
        let rho_hat = random(rng, code, 0.01, 0.99);
        let out = poisoned(kern, 5);
        let cfg = LossConfig { weight_decay: 0.003, sparsity };
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        kern.gpu.run(&[kern.loss_value(
            &up("xhat", &xhat),
            &up("x", &x),
            &up("w", &weights),
            &up("rho_hat", &rho_hat),
            &out,
            m,
            n,
            cfg.weight_decay,
            penalty,
            steps,
        )]);
        let got = download(kern, &out);
        let model = r::Model::new(&spec, &params);
        let mut fwd = r::forward(&model, &cfg, &widen(&x), m);
        // Evaluate the loss at the given xhat and rho_hat rather than a forward pass.
        *fwd.a.last_mut().unwrap() = widen(&xhat);
        fwd.rho_hat = if sparsity == Sparsity::None { Vec::new() } else { widen(&rho_hat) };
        let parts = r::loss(&model, &cfg, &fwd, &widen(&x), r::Terms::ALL);
        let sum_sq = 2.0 * parts.reconstruction * m as f64;
        let want = [parts.total, parts.reconstruction, parts.weight_decay, parts.sparsity, sum_sq];
        // Every term is a sum of non-negative values: plain relative error.
        let err = max_rel_err(&got, &want, &magnitudes(&want, 1e-12));
        worst = worst.max(err);
    }
    worst
}

/// An update kernel against its twin: `m*k` weights then `n` biases at step `t` of `rule` with
/// peak rate `lr`, from random parameters, gradients and optimizer state. Each output is judged
/// against the magnitudes of the terms that make it: a parameter against `|p| + |change|`, a
/// velocity or first moment against `mu |v| + |g + lambda p|`, a second moment (a sum of
/// non-negative terms) against itself. The step-values table is the f64 schedule rounded to f32
/// (relative 6e-8), and each update is a handful of f32 operations: well under 1e-5.
fn update_check(
    kern: &Kernels,
    rng: &mut Rng,
    (m, k, n): (usize, usize, usize),
    rule: UpdateRule,
    (lr, t, clip): (f64, u64, f64),
) -> f64 {
    // The kernel gets its settings as f32: the twin takes the same values (1 - beta2 is 1e-3,
    // and f32's rounding of 0.999 moves it by 1.3e-5 relative).
    let f32_exact = |x: f64| x as f32 as f64;
    let optimizer = match rule.optimizer {
        Optimizer::Sgd => Optimizer::Sgd,
        Optimizer::Momentum { momentum } => Optimizer::Momentum { momentum: f32_exact(momentum) },
        Optimizer::Adam { beta1, beta2, eps } => {
            Optimizer::Adam { beta1: f32_exact(beta1), beta2: f32_exact(beta2), eps: f32_exact(eps) }
        }
        Optimizer::AdamW { beta1, beta2, eps } => {
            Optimizer::AdamW { beta1: f32_exact(beta1), beta2: f32_exact(beta2), eps: f32_exact(eps) }
        }
    };
    let rule = UpdateRule { optimizer, weight_decay: f32_exact(rule.weight_decay), ..rule };
    let len = m * k + n;
    let wl = m * k;
    let p = random(rng, len, -1.0, 1.0);
    let g = random(rng, len, -1.0, 1.0);
    let m1 = random(rng, len, -0.5, 0.5);
    let m2 = random(rng, len, 0.0, 0.5);
    let up = |name, v: &[f32]| kern.gpu.upload(name, v);
    let (pv, gv, m1v, m2v) = (up("p", &p), up("g", &g), up("m1", &m1), up("m2", &m2));
    let state = StepState { step: (t - 1) as u32, done: (t - 1) as u32, ..Default::default() };
    let state = kern.gpu.upload_bytes("step state", bytemuck::bytes_of(&state));
    let values = optim::step_values(rule.optimizer, &rule.schedule, lr, 0);
    let values = kern.gpu.upload_bytes("step values", bytemuck::cast_slice(&values));
    // The clipping coefficient grad_norm would have written (exact in f32).
    let clip_view = kern.gpu.upload("clip", &[clip as f32]);
    let steps = StepViews { state: &state, values: &values, clip: &clip_view, advance_rows: 0 };
    let launch = match rule.optimizer {
        Optimizer::Sgd => kern.sgd_update(&gv, &pv, steps, wl, &rule),
        Optimizer::Momentum { .. } => kern.momentum_update(&gv, &pv, steps, &m1v, wl, &rule),
        Optimizer::Adam { .. } | Optimizer::AdamW { .. } => kern.adam_update(&gv, &pv, steps, &m1v, &m2v, wl, &rule),
    };
    kern.gpu.run(&[launch]);

    let lr_t = r::scheduled_lr(&rule.schedule, lr, t);
    let wg: Vec<f64> = g.iter().map(|&x| x as f64 * clip).collect();
    let (mut wp, mut wm1, mut wm2) = (widen(&p), widen(&m1), widen(&m2));
    for (range, decay) in [(0..wl, rule.weight_decay), (wl..len, 0.0)] {
        let (p, g) = (&mut wp[range.clone()], &wg[range.clone()]);
        let (m1, m2) = (&mut wm1[range.clone()], &mut wm2[range]);
        match rule.optimizer {
            Optimizer::Sgd => r::sgd_update(p, g, lr_t, decay),
            Optimizer::Momentum { momentum } => r::momentum_update(p, g, m1, lr_t, decay, momentum),
            Optimizer::Adam { beta1, beta2, eps } => {
                r::adam_update(p, g, m1, m2, lr_t, decay, (beta1, beta2, eps), t, false)
            }
            Optimizer::AdamW { beta1, beta2, eps } => {
                r::adam_update(p, g, m1, m2, lr_t, decay, (beta1, beta2, eps), t, true)
            }
        }
    }
    let decay_at = |i: usize| if i < wl { rule.weight_decay } else { 0.0 };
    let term = |i: usize| wg[i].abs() + decay_at(i) * (p[i] as f64).abs();
    let scale_p: Vec<f64> = (0..len).map(|i| (p[i] as f64).abs() + (wp[i] - p[i] as f64).abs()).collect();
    let mut worst = max_rel_err(&download(kern, &pv), &wp, &scale_p);
    let keep = match rule.optimizer {
        Optimizer::Sgd => 0.0,
        Optimizer::Momentum { momentum } => momentum,
        Optimizer::Adam { beta1, .. } | Optimizer::AdamW { beta1, .. } => beta1,
    };
    if rule.optimizer != Optimizer::Sgd {
        let scale_m1: Vec<f64> = (0..len).map(|i| keep * (m1[i] as f64).abs() + term(i) + 1e-12).collect();
        worst = worst.max(max_rel_err(&download(kern, &m1v), &wm1, &scale_m1));
    }
    if rule.optimizer.state_tensors() == 2 {
        worst = worst.max(max_rel_err(&download(kern, &m2v), &wm2, &magnitudes(&wm2, 1e-12)));
    }
    worst
}

/// `grad_norm` against its twin: the clipping coefficient of `m*k + n` gradients, with the norm
/// above the limit (coefficient ~0.3) and below it (exactly 1). A sum of squares has only
/// non-negative terms; each invocation adds at most `len/256` of them and a tree of 8 levels
/// adds the partial sums, so f32 rounds at most `len/256 + 8` times (3e-6 relative at
/// `len = 5361`), and the square root halves that: under 1e-5.
pub fn grad_norm(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let g = random(rng, m * k + n, -1.0, 1.0);
    let norm = widen(&g).iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut worst: f64 = 0.0;
    for max_norm in [(0.3 * norm) as f32 as f64, 2.0 * norm] {
        let rule = UpdateRule { clip_grad_norm: Some(max_norm), ..Default::default() };
        let out = poisoned(kern, 1);
        kern.gpu.run(&[kern.grad_norm(&kern.gpu.upload("g", &g), &out, &rule)]);
        let want = r::grad_norm(widen(&g).into_iter(), max_norm);
        worst = worst.max(max_rel_err(&download(kern, &out), &[want], &[want]));
    }
    worst
}

/// `sgd_update` against its reference twin, on a cosine schedule past its warm-up; returns the
/// max relative error.
pub fn sgd_update(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let schedule = LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 3, total_steps: 10, lr_min: 0.01 };
    let rule = UpdateRule { optimizer: Optimizer::Sgd, weight_decay: 0.01, schedule, clip_grad_norm: None };
    update_check(kern, rng, (m, k, n), rule, (0.3, 5, 1.0))
}

/// `momentum_update` against its twin, on a linear schedule, at a step of the warm-up and one
/// after it with clipped gradients.
pub fn momentum_update(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let schedule = LrSchedule { kind: ScheduleKind::Linear, warmup_steps: 2, total_steps: 20, lr_min: 0.0 };
    let rule = UpdateRule {
        optimizer: Optimizer::Momentum { momentum: 0.9 },
        weight_decay: 0.01,
        schedule,
        clip_grad_norm: None,
    };
    // The second with the gradients clipped to 0.375 of their size.
    [(1, 1.0), (7, 0.375)]
        .iter()
        .map(|&(t, c)| update_check(kern, rng, (m, k, n), rule, (0.1, t, c)))
        .fold(0.0, f64::max)
}

/// `adam_update` against its twin: Adam at the first step and a later one, AdamW (decoupled
/// decay) during a warm-up and after it, with other betas and eps; the later ones with clipped
/// gradients.
pub fn adam_update(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let adam = UpdateRule {
        optimizer: Optimizer::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
        weight_decay: 0.01,
        ..Default::default()
    };
    let adamw = UpdateRule {
        optimizer: Optimizer::AdamW { beta1: 0.8, beta2: 0.99, eps: 1e-6 },
        weight_decay: 0.05,
        schedule: LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 4, total_steps: 50, lr_min: 1e-4 },
        clip_grad_norm: None,
    };
    [(adam, 1, 1.0), (adam, 9, 0.625), (adamw, 3, 1.0), (adamw, 30, 0.25)]
        .iter()
        .map(|&(rule, t, clip)| update_check(kern, rng, (m, k, n), rule, (0.01, t, clip)))
        .fold(0.0, f64::max)
}

/// What `training_steps` found.
#[derive(Clone, Copy, Debug)]
pub struct StepsCheck {
    /// Largest parameter difference, relative to each tensor's size (max |reference|).
    pub max_rel_err: f64,
    /// Weights that moved from their init (zero would mean the comparison proves nothing).
    pub moved: usize,
}

/// A whole training step: `steps` SGD steps of `spec` on the GPU (on `path`, or the trainer's
/// default) and on the f64 reference, from the same init and minibatches.
#[allow(clippy::too_many_arguments)]
pub fn training_steps(
    gpu: &crate::Gpu,
    spec: &crate::ModelSpec,
    cfg: crate::LossConfig,
    m: usize,
    lr: f64,
    steps: usize,
    path: Option<crate::trainer::StepPath>,
) -> crate::Result<StepsCheck> {
    let setup = StepsSetup {
        lr,
        optimizer: Optimizer::Sgd,
        schedule: LrSchedule::default(),
        beta_warmup: 0,
        rho_anneal: 0,
        clip_grad_norm: None,
        decoder_norm: false,
        auxk: None,
    };
    training_steps_with(gpu, spec, cfg, m, setup, steps, path)
}

/// How `training_steps_with` trains.
#[derive(Clone, Copy, Debug)]
pub struct StepsSetup {
    pub lr: f64,
    pub optimizer: Optimizer,
    pub schedule: LrSchedule,
    /// Steps of the sparsity weight's warm-up (0: none).
    pub beta_warmup: u64,
    /// Steps of kl-freq's target anneal (0: none).
    pub rho_anneal: u64,
    /// The global gradient norm to clip to.
    pub clip_grad_norm: Option<f64>,
    /// Unit-norm decoder columns.
    pub decoder_norm: bool,
    /// AuxK's auxiliary loss.
    pub auxk: Option<crate::model::AuxK>,
}

/// The same with any optimizer, learning-rate schedule and beta warm-up.
#[allow(clippy::too_many_arguments)]
pub fn training_steps_with(
    gpu: &crate::Gpu,
    spec: &crate::ModelSpec,
    cfg: crate::LossConfig,
    m: usize,
    StepsSetup { lr, optimizer, schedule, beta_warmup, rho_anneal, clip_grad_norm, decoder_norm, auxk }: StepsSetup,
    steps: usize,
    path: Option<crate::trainer::StepPath>,
) -> crate::Result<StepsCheck> {
    let init = crate::Params::init(spec, 5);
    let mut trainer = crate::Trainer::new(gpu, spec, cfg, lr, m, &init)?;
    if let Some(p) = path {
        trainer.set_path(p)?;
    }
    trainer.set_optimizer(optimizer)?;
    trainer.set_lr_schedule(schedule)?;
    trainer.set_beta_warmup(beta_warmup)?;
    trainer.set_rho_anneal(rho_anneal)?;
    trainer.set_clip_grad_norm(clip_grad_norm)?;
    trainer.set_decoder_norm(decoder_norm)?;
    if auxk.is_some() {
        trainer.set_auxk(auxk)?;
    }
    let mut model = r::Model::new(spec, &init);
    let mut optim = r::Optim::new(&model, optimizer, schedule, lr, cfg.weight_decay);
    optim.beta_warmup = beta_warmup;
    optim.rho_anneal = rho_anneal;
    optim.clip_grad_norm = clip_grad_norm;
    optim.decoder_norm = decoder_norm;
    optim.auxk = auxk;
    let mut rng = Rng::new(77);
    for _ in 0..steps {
        let x = random(&mut rng, m * spec.input_width(), 0.0, 1.0);
        trainer.step(&x)?;
        r::step_with(&mut model, &cfg, &widen(&x), m, &mut optim);
    }
    let got = trainer.params()?;
    let want = model.to_params();
    let mut worst: f64 = 0.0;
    let tensors =
        |p: &crate::Params| p.weights.iter().chain(&p.biases).chain([&p.thresholds]).cloned().collect::<Vec<_>>();
    for (g, w) in tensors(&got).iter().zip(&tensors(&want)) {
        let size = w.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64)).max(1e-3);
        for (a, b) in g.iter().zip(w) {
            let e = if a.is_finite() { (*a as f64 - *b as f64).abs() / size } else { f64::INFINITY };
            worst = worst.max(e);
        }
    }
    // The samples since each code unit fired are counts: they must agree exactly.
    if trainer.since_fired()? != optim.since_fired {
        worst = f64::INFINITY;
    }
    let moved = got.weights.iter().flatten().zip(init.weights.iter().flatten()).filter(|(a, b)| a != b).count();
    Ok(StepsCheck { max_rel_err: worst, moved })
}

/// `matmul_forward_bias_activation` against its twin, for every activation. Z is judged like a
/// matmul (relative to the sum of the magnitudes of its terms, bias included); A = f(Z) moves
/// by at most |dZ| (every f' here is at most 1) plus f's own absolute error (a few 1e-8 near
/// zero, as WGSL bounds exp and tanh), so A is judged against that scale plus 0.1.
pub fn matmul_forward_bias_activation(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    for act in Activation::ALL {
        let a = random(rng, m * k, -1.0, 1.0);
        let w = random(rng, n * k, -1.0, 1.0);
        let b = random(rng, n, -0.5, 0.5);
        let (z_out, a_out) = (poisoned(kern, m * n), poisoned(kern, m * n));
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        kern.gpu.run(&[kern.matmul_forward_bias_activation(
            &up("a", &a),
            &up("w", &w),
            &up("b", &b),
            &z_out,
            &a_out,
            m,
            k,
            n,
            act,
        )]);
        let (want_z, want_a) = r::matmul_forward_bias_activation(&widen(&a), &widen(&w), &widen(&b), m, k, n, act);
        let terms = r::matmul_forward(&abs(&a), &abs(&w), m, k, n);
        let scale_z: Vec<f64> = (0..m * n).map(|i| terms[i] + (b[i % n] as f64).abs()).collect();
        let scale_a: Vec<f64> = scale_z.iter().map(|s| s + 0.1).collect();
        let got = [download(kern, &z_out), download(kern, &a_out)];
        worst = worst.max(max_rel_err(&got[0], &want_z, &scale_z)).max(max_rel_err(&got[1], &want_a, &scale_a));
    }
    worst
}

/// `matmul_backward_input_activation` against its twin, for every activation: relative to the
/// sum of the magnitudes of the product's terms times |f'|.
pub fn matmul_backward_input_activation(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    for act in Activation::ALL {
        let delta = random(rng, m * n, -1.0, 1.0);
        let w = random(rng, n * k, -1.0, 1.0);
        let z = random(rng, m * k, -3.0, 3.0);
        let a: Vec<f32> = z.iter().map(|&v| r::activate(act, v as f64) as f32).collect();
        let out = poisoned(kern, m * k);
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        kern.gpu.run(&[kern.matmul_backward_input_activation(
            &up("d", &delta),
            &up("w", &w),
            &up("z", &z),
            &up("a", &a),
            &out,
            m,
            n,
            k,
            act,
        )]);
        let want =
            r::matmul_backward_input_activation(&widen(&delta), &widen(&w), &widen(&z), &widen(&a), m, n, k, act);
        let terms = r::matmul_backward_input(&abs(&delta), &abs(&w), m, n, k);
        let scale: Vec<f64> = (0..m * k)
            .map(|i| terms[i] * r::activation_derivative(act, z[i] as f64, a[i] as f64).abs() + 1e-30)
            .collect();
        worst = worst.max(max_rel_err(&download(kern, &out), &want, &scale));
    }
    worst
}

/// `matmul_backward_weight_bias` against its twin: dW like a matmul, db like a column sum
/// (relative to the sum of the magnitudes of the terms).
pub fn matmul_backward_weight_bias(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let delta = random(rng, m * n, -1.0, 1.0);
    let a = random(rng, m * k, -1.0, 1.0);
    let (dw, db) = (poisoned(kern, n * k), poisoned(kern, n));
    let up = |name, v: &[f32]| kern.gpu.upload(name, v);
    kern.gpu.run(&[kern.matmul_backward_weight_bias(&up("d", &delta), &up("a", &a), &dw, &db, m, n, k)]);
    let (want_w, want_b) = r::matmul_backward_weight_bias(&widen(&delta), &widen(&a), m, n, k);
    let scale_w = r::matmul_backward_weight(&abs(&delta), &abs(&a), m, n, k);
    let scale_b = r::column_sum(&abs(&delta), m, n, ColumnTransform::Value, 1.0);
    let got = [download(kern, &dw), download(kern, &db)];
    max_rel_err(&got[0], &want_w, &scale_w).max(max_rel_err(&got[1], &want_b, &scale_b))
}

/// `matmul_backward_pair` against its twin, with the plain input product, with the activation
/// derivative for every activation, and with the KL gradient's column term (kl's form and
/// kl-soft-freq's): dW and db as in [`matmul_backward_weight_bias`], the input product as in
/// [`matmul_backward_input`] or [`matmul_backward_input_activation`] (the same arithmetic),
/// the term's part against its magnitude times the factor it meets (|f'|, or s (1 - s) / T).
pub fn matmul_backward_pair(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    #[derive(Clone, Copy)]
    enum Form {
        Plain,
        Derivative,
        Penalty(Option<f64>),
    }
    let mut forms: Vec<(Form, Activation)> = vec![(Form::Plain, Activation::Identity)];
    forms.extend(Activation::ALL.map(|act| (Form::Derivative, act)));
    forms.extend([(Form::Penalty(None), Activation::Sigmoid), (Form::Penalty(Some(0.5)), Activation::Relu)]);
    let mut worst: f64 = 0.0;
    for (form, f) in forms {
        let delta = random(rng, m * n, -1.0, 1.0);
        let w = random(rng, n * k, -1.0, 1.0);
        let z = random(rng, m * k, -3.0, 3.0);
        let term = random(rng, k, -0.3, 0.3);
        let a: Vec<f32> = z.iter().map(|&v| r::activate(f, v as f64) as f32).collect();
        let (dw, db, out) = (poisoned(kern, n * k), poisoned(kern, n), poisoned(kern, m * k));
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        let (d_in, w_in, a_in, z_in, t_in) = (up("d", &delta), up("w", &w), up("a", &a), up("z", &z), up("t", &term));
        let input = match form {
            Form::Plain => PairInput::Plain,
            Form::Derivative => PairInput::Derivative { z: &z_in },
            Form::Penalty(temperature) => PairInput::Penalty { z: &z_in, term: &t_in, temperature },
        };
        kern.gpu.run(&[kern.matmul_backward_pair((&d_in, &w_in, &a_in), input, (&dw, &db), &out, (m, n, k), f)]);
        let (z64, t64) = (widen(&z), widen(&term));
        let twin_input = match form {
            Form::Plain => r::PairInput::Plain,
            Form::Derivative => r::PairInput::Derivative { z: &z64 },
            Form::Penalty(temperature) => r::PairInput::Penalty { z: &z64, term: &t64, temperature },
        };
        let (want_w, want_b, want_g) =
            r::matmul_backward_pair(&widen(&delta), &widen(&w), &widen(&a), twin_input, m, n, k, f);
        let scale_w = r::matmul_backward_weight(&abs(&delta), &abs(&a), m, n, k);
        let scale_b = r::column_sum(&abs(&delta), m, n, ColumnTransform::Value, 1.0);
        let terms = r::matmul_backward_input(&abs(&delta), &abs(&w), m, n, k);
        let scale_g: Vec<f64> = (0..m * k)
            .map(|i| {
                let fprime = r::activation_derivative(f, z[i] as f64, a[i] as f64).abs();
                let t = (term[i % k] as f64).abs();
                1e-30
                    + match form {
                        Form::Plain => terms[i],
                        Form::Derivative => terms[i] * fprime,
                        Form::Penalty(None) => (terms[i] + t) * fprime,
                        Form::Penalty(Some(temp)) => {
                            let s = r::sigmoid(z[i] as f64 / temp);
                            terms[i] * fprime + t * s * (1.0 - s) / temp
                        }
                    }
            })
            .collect();
        let got = [download(kern, &dw), download(kern, &db), download(kern, &out)];
        worst = worst
            .max(max_rel_err(&got[0], &want_w, &scale_w))
            .max(max_rel_err(&got[1], &want_b, &scale_b))
            .max(max_rel_err(&got[2], &want_g, &scale_g));
    }
    worst
}

/// `panel_forward` against its twin on a 4-layer model whose widths are the case's k and n
/// rounded up to multiples of 4 (k4 -> n4 -> 8 -> n4 -> k4, every activation in turn), with the
/// output delta: each layer judged from the input the kernel gave it, as
/// [`matmul_forward_bias_activation`] and [`matmul_forward_output_delta`] judge one layer.
pub fn panel_forward(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let (k4, n4) = (k.div_ceil(4) * 4, n.div_ceil(4) * 4);
    let mut worst: f64 = 0.0;
    for (hidden, code, output) in [
        (Activation::Relu, Activation::Sigmoid, Activation::Sigmoid),
        (Activation::Tanh, Activation::Identity, Activation::Relu),
    ] {
        let spec = crate::ModelSpec::mirrored(&[k4, n4, 8], hidden, code, output).expect("a valid model");
        let mut params = crate::Params::init(&spec, rng.next_u64());
        for b in params.biases.iter_mut() {
            *b = random(rng, b.len(), -0.5, 0.5);
        }
        let layout = crate::layout::ParamLayout::new(&spec);
        let acts = crate::layout::ActivationLayout::new(&spec, m);
        let table = crate::Trainer::layer_table(&spec, &layout, &acts);
        let x = random(rng, m * k4, 0.0, 1.0);
        let mut a_init = vec![f32::NAN; acts.total];
        a_init[..m * k4].copy_from_slice(&x);
        let up = |name, v: &[f32]| kern.gpu.upload(name, v);
        let (z_all, a_all) = (poisoned(kern, acts.total), up("a", &a_init));
        let delta = poisoned(kern, m * k4);
        let table_view = kern.gpu.upload_bytes("table", bytemuck::cast_slice(&table));
        let params_view = up("params", &layout.flatten(&params));
        kern.gpu.run(&[kern.panel_forward(&table_view, &params_view, (&z_all, &a_all), Some(&delta), m, &spec)]);
        let (zs, as_) = (download(kern, &z_all), download(kern, &a_all));
        let layer = |v: &[f32], l: usize| v[acts.offsets[l]..acts.offsets[l] + m * spec.sizes[l]].to_vec();
        let inputs: Vec<Vec<f64>> = (0..spec.layers()).map(|l| widen(&layer(&as_, l))).collect();
        let (want, want_delta) = r::panel_forward(&inputs, &spec, &params, m, true);
        for l in 1..=spec.layers() {
            let (nl, kl) = spec.shape(l);
            let terms = r::matmul_forward(
                &inputs[l - 1].iter().map(|v| v.abs()).collect::<Vec<_>>(),
                &abs(&params.weights[l - 1]),
                m,
                kl,
                nl,
            );
            let scale_z: Vec<f64> =
                (0..m * nl).map(|i| terms[i] + (params.biases[l - 1][i % nl] as f64).abs()).collect();
            let scale_a: Vec<f64> = scale_z.iter().map(|s| s + 0.1).collect();
            worst = worst.max(max_rel_err(&layer(&zs, l), &want[l - 1].0, &scale_z)).max(max_rel_err(
                &layer(&as_, l),
                &want[l - 1].1,
                &scale_a,
            ));
            if l == spec.layers() {
                let scale_d: Vec<f64> = (0..m * nl).map(|i| (scale_a[i] + (x[i] as f64).abs()) / m as f64).collect();
                let want_d = want_delta.as_ref().expect("the output delta");
                worst = worst.max(max_rel_err(&download(kern, &delta), want_d, &scale_d));
            }
        }
    }
    worst
}

/// How far the device's full-batch J and gradient are from the reference's.
#[derive(Clone, Copy, Debug)]
pub struct FullBatchCheck {
    /// `|J - J_ref| / |J_ref|`.
    pub loss_rel_err: f64,
    /// Largest gradient error relative to its tensor's largest reference value.
    pub grad_rel_err: f64,
    /// Dispatches the evaluation took (both passes).
    pub dispatches: u64,
}

/// `Trainer::loss_and_gradient` (L-BFGS's objective, docs/design.md section 9) over `n` random
/// rows in chunks of `chunk` against the reference's forward and backward over all `n` rows at
/// once (rho_hat over the whole set, `lambda W` included).
pub fn full_batch_gradient(
    gpu: &crate::Gpu,
    spec: &crate::ModelSpec,
    cfg: crate::LossConfig,
    n: usize,
    chunk: usize,
    path: Option<crate::trainer::StepPath>,
) -> crate::Result<FullBatchCheck> {
    let init = crate::Params::init(spec, 6);
    let mut trainer = crate::Trainer::new(gpu, spec, cfg, 0.1, chunk, &init)?;
    if let Some(p) = path {
        trainer.set_path(p)?;
    }
    let x = random(&mut Rng::new(78), n * spec.input_width(), 0.0, 1.0);
    trainer.set_data(&x)?;
    let baseline = crate::trainer::Baseline::of(&x, spec.input_width());
    let before = trainer.stats().dispatches;
    let (metrics, grad) = trainer.loss_and_gradient(&baseline)?;
    let dispatches = trainer.stats().dispatches - before;
    let model = r::Model::new(spec, &init);
    let xs = widen(&x);
    let fwd = r::forward(&model, &cfg, &xs, n);
    let want_loss = r::loss(&model, &cfg, &fwd, &xs, r::Terms::ALL).total;
    let want = r::backward(&model, &cfg, &fwd, &xs, r::Terms::ALL);
    let layout = trainer.layout();
    let mut worst: f64 = 0.0;
    let tensors = want.dw.iter().zip(&layout.weights).chain(want.db.iter().zip(&layout.biases));
    for (reference, &(at, len)) in tensors {
        assert_eq!(reference.len(), len, "layout and reference disagree");
        let size = reference.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-6);
        for (g, w) in grad[at..at + len].iter().zip(reference) {
            worst = worst.max(if g.is_finite() { (g - w).abs() / size } else { f64::INFINITY });
        }
    }
    Ok(FullBatchCheck {
        loss_rel_err: (metrics.loss - want_loss).abs() / want_loss.abs().max(1e-12),
        grad_rel_err: worst,
        dispatches,
    })
}

/// `topk` against its twin. The selection must be exact (a wrong unit is an error of 1 or
/// more relative to the largest value), so the inputs are made to be hard: values on a coarse
/// grid (many ties, at the threshold too), signed zeros, K of 1, about half, and the whole
/// width, and a row wider than the workgroup (several units per invocation, so ties are ranked
/// across chunks by the scan).
pub fn topk(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    topk_entry(kern, rng, m, n, crate::kernels::Kernel::TopK)
}

/// `topk_rank` against its twin (`reference::topk_rank`, the same selection), on the inputs of
/// [`topk`], narrow and wide rows alike.
pub fn topk_rank(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    topk_entry(kern, rng, m, n, crate::kernels::Kernel::TopKRank)
}

fn topk_entry(kern: &Kernels, rng: &mut Rng, m: usize, n: usize, kernel: crate::kernels::Kernel) -> f64 {
    let mut worst: f64 = 0.0;
    for width in [n, 3 * 256 + n] {
        let mut z: Vec<f32> = random(rng, m * width, -1.0, 1.0).iter().map(|v| (v * 4.0).round() / 4.0).collect();
        for (i, v) in z.iter_mut().enumerate().step_by(7) {
            *v = if i % 2 == 0 { 0.0 } else { -0.0 };
        }
        let z_view = kern.gpu.upload("z", &z);
        // AuxK's selection too: the units silent for 100 samples or more (about a third, the
        // counters near the threshold and at 0 and u32::MAX included).
        let since: Vec<u32> = (0..width).map(|j| [0, 99, 100, 5000, u32::MAX, 7][j % 6]).collect();
        let dead: Vec<bool> = since.iter().map(|&s| s >= 100).collect();
        let since_view = kern.gpu.upload_bytes("since", bytemuck::cast_slice(&since));
        for k in [1, width.div_ceil(2), width] {
            for among in [None, Some(&dead)] {
                // This entry point whatever the width (the launcher picks one by width).
                let out = poisoned(kern, m * width);
                let dead_view = among.map(|_| (&since_view, 100));
                kern.gpu.run(&[kern.topk_with(kernel, &z_view, &out, (m, width, k), dead_view)]);
                let twin = if kernel == crate::kernels::Kernel::TopKRank { r::topk_rank } else { r::topk };
                let want = twin(&widen(&z), m, width, k, among.map(|d| &d[..]));
                worst = worst.max(max_rel_err(&download(kern, &out), &want, &vec![1.0; want.len()]));
            }
        }
    }
    worst
}

/// `center_rows` against its twin: one f32 subtraction, relative to |x| + |b|.
pub fn center_rows(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let (x, b) = (random(rng, m * n, -2.0, 2.0), random(rng, n, -2.0, 2.0));
    let out = poisoned(kern, m * n);
    kern.gpu.run(&[kern.center_rows(&kern.gpu.upload("x", &x), &kern.gpu.upload("b", &b), &out, m, n)]);
    let want = r::center_rows(&widen(&x), &widen(&b), m, n);
    let scale: Vec<f64> = (0..m * n).map(|i| (x[i] as f64).abs() + (b[i % n] as f64).abs()).collect();
    max_rel_err(&download(kern, &out), &want, &scale)
}

/// `pre_bias_backward` against its twin: a dot product of length k per output, relative to
/// the sum of its terms' magnitudes and the value it is subtracted from.
pub fn pre_bias_backward(kern: &Kernels, rng: &mut Rng, _m: usize, k: usize, n: usize) -> f64 {
    let (db1, w1, db_out) = (random(rng, k, -1.0, 1.0), random(rng, k * n, -1.0, 1.0), random(rng, n, -1.0, 1.0));
    // The gradients' layout: db_L after db_1, with a gap.
    let g: Vec<f32> = db1.iter().chain(&[7.0; 3]).chain(&db_out).copied().collect();
    let g_view = kern.gpu.upload("g", &g);
    kern.gpu.run(&[kern.pre_bias_backward(&kern.gpu.upload("w1", &w1), &g_view, 0, k + 3, k, n)]);
    let mut want = widen(&db_out);
    r::pre_bias_backward(&widen(&db1), &widen(&w1), &mut want);
    let scale: Vec<f64> = (0..n)
        .map(|c| (db_out[c] as f64).abs() + (0..k).map(|j| (db1[j] * w1[j * n + c]) as f64).map(f64::abs).sum::<f64>())
        .collect();
    let got = download(kern, &g_view);
    // Only db_L changes.
    if got[..k + 3] != g[..k + 3] {
        return f64::INFINITY;
    }
    max_rel_err(&got[k + 3..], &want, &scale)
}

/// `decoder_project` against its twin on `[k, n]` (columns of random norms, one of them zero).
/// The coefficient `s = dw.w / ||w||^2` carries the dot products' error (k terms), so each
/// element is measured against `|dw| + (sum |dw w| / ||w||^2) |w|`.
pub fn decoder_project(kern: &Kernels, rng: &mut Rng, _m: usize, k: usize, n: usize) -> f64 {
    let mut w = random(rng, k * n, -1.0, 1.0);
    for row in w.chunks_mut(n) {
        row[0] = 0.0;
    }
    let dw = random(rng, k * n, -1.0, 1.0);
    let (w_view, dw_view) = (kern.gpu.upload("w", &w), kern.gpu.upload("dw", &dw));
    kern.gpu.run(&[kern.decoder_project(&w_view, &dw_view, k, n)]);
    let mut want = widen(&dw);
    r::decoder_project(&widen(&w), &mut want, k, n);
    let coef: Vec<f64> = (0..n)
        .map(|j| {
            let terms: f64 = (0..k).map(|i| ((dw[i * n + j] * w[i * n + j]) as f64).abs()).sum();
            let norm2: f64 = (0..k).map(|i| (w[i * n + j] as f64).powi(2)).sum();
            if norm2 > 0.0 {
                terms / norm2
            } else {
                0.0
            }
        })
        .collect();
    let scale: Vec<f64> =
        (0..k * n).map(|i| (dw[i] as f64).abs() + coef[i % n] * (w[i] as f64).abs() + 1e-30).collect();
    let err = max_rel_err(&download(kern, &dw_view), &want, &scale);
    // w is bound read-write but must not change.
    if download(kern, &w_view) != w {
        return f64::INFINITY;
    }
    err
}

/// `decoder_normalize` against its twin on `[k, n]`: a norm of k terms then a scaling, a
/// relative error of about k f32 roundings at most.
pub fn decoder_normalize(kern: &Kernels, rng: &mut Rng, _m: usize, k: usize, n: usize) -> f64 {
    let mut w = random(rng, k * n, -3.0, 3.0);
    for row in w.chunks_mut(n) {
        row[0] = 0.0;
    }
    let (w_view, dw_view) = (kern.gpu.upload("w", &w), poisoned(kern, 1));
    kern.gpu.run(&[kern.decoder_normalize(&w_view, &dw_view, k, n)]);
    let mut want = widen(&w);
    r::decoder_normalize(&mut want, k, n);
    let scale: Vec<f64> = (0..k * n).map(|i| want[i].abs().max(1e-30)).collect();
    let got = download(kern, &w_view);
    // The zero column stays zero.
    if (0..k).any(|i| got[i * n] != 0.0) {
        return f64::INFINITY;
    }
    max_rel_err(&got, &want, &scale)
}

/// `auxk_delta` against its twin: two subtractions and a product, relative to
/// `scale (|recons| + |x| + |xhat|)`; the rows it is told to zero are exactly 0 and the rows
/// before them untouched.
pub fn auxk_delta(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let len = m * n;
    let (recons, x, xhat) = (random(rng, len, -2.0, 2.0), random(rng, len, -2.0, 2.0), random(rng, len, -2.0, 2.0));
    let scale = 0.03 / m as f64;
    let (pad_from, aux_at) = (len, crate::layout::align(len + 1));
    let before = random(rng, pad_from, -1.0, 1.0);
    let initial: Vec<f32> =
        before.iter().copied().chain(std::iter::repeat_n(f32::NAN, aux_at + len - pad_from)).collect();
    let out = kern.gpu.upload("delta", &initial);
    let up = |name, v: &[f32]| kern.gpu.upload(name, v);
    kern.gpu.run(&[kern.auxk_delta(
        &up("recons", &recons),
        &up("x", &x),
        &up("xhat", &xhat),
        &out,
        (pad_from, aux_at),
        len,
        scale,
    )]);
    let got = download(kern, &out);
    if got[..pad_from] != before[..] || got[pad_from..aux_at].iter().any(|&v| v != 0.0) {
        return f64::INFINITY;
    }
    let want = r::auxk_delta(&widen(&recons), &widen(&x), &widen(&xhat), scale);
    let size: Vec<f64> =
        (0..len).map(|i| scale * ((recons[i] as f64).abs() + (x[i] as f64).abs() + (xhat[i] as f64).abs())).collect();
    max_rel_err(&got[aux_at..], &want, &size)
}

/// `column_norms` against its twin on `[k, n]`: a sum of k squares and a square root, within
/// about k f32 roundings relative to the norm.
pub fn column_norms(kern: &Kernels, rng: &mut Rng, _m: usize, k: usize, n: usize) -> f64 {
    let w = random(rng, k * n, -2.0, 2.0);
    let out = poisoned(kern, n);
    kern.gpu.run(&[kern.column_norms(&kern.gpu.upload("w", &w), &out, k, n)]);
    let want = r::column_norms(&widen(&w), k, n);
    max_rel_err(&download(kern, &out), &want, &magnitudes(&want, 1e-30))
}

/// `l1_decoder_grad` against its twin on `a` `[m, n]`, `w` `[k, n]` (a zero column kept as it
/// is), at a warm-up share of 0.5: each element moves by `c s_j w_ij / ||w_j||`, a sum of m
/// magnitudes and a norm of k terms, so it is judged against `|dw| + c s_j |w_ij| / ||w_j||`.
pub fn l1_decoder_grad(kern: &Kernels, rng: &mut Rng, m: usize, k: usize, n: usize) -> f64 {
    let a: Vec<f32> = random(rng, m * n, -1.0, 1.0).iter().map(|v| v.max(0.0)).collect();
    let mut w = random(rng, k * n, -1.0, 1.0);
    for row in w.chunks_mut(n) {
        row[0] = 0.0;
    }
    let dw = random(rng, k * n, -1.0, 1.0);
    let (state, values, _) = beta_share(kern, 0.5);
    let coef = 0.2 / m as f64;
    let dw_view = kern.gpu.upload("dw", &dw);
    let up = |name, v: &[f32]| kern.gpu.upload(name, v);
    kern.gpu.run(&[kern.l1_decoder_grad(&up("a", &a), &up("w", &w), &dw_view, (m, k, n), coef, &state, &values)]);
    let mut want = widen(&dw);
    r::l1_decoder_grad(&widen(&a), m, &widen(&w), &mut want, k, n, coef * 0.5);
    let norms = r::column_norms(&widen(&w), k, n);
    let scale: Vec<f64> = (0..k * n)
        .map(|i| {
            let j = i % n;
            let total: f64 = (0..m).map(|r| a[r * n + j] as f64).sum();
            let moved = if norms[j] > 0.0 { coef * 0.5 * total * (w[i] as f64).abs() / norms[j] } else { 0.0 };
            (dw[i] as f64).abs() + moved + 1e-30
        })
        .collect();
    max_rel_err(&download(kern, &dw_view), &want, &scale)
}

/// `batch_threshold` against its twin: unset (theta < 0), set (a running average), and with
/// nothing kept (unchanged). The minimum is exact; the average is a product and a sum, relative
/// to |theta| + the minimum.
pub fn batch_threshold(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    let kept: Vec<f32> = random(rng, m * n, -1.0, 1.0).iter().map(|&v| if v > 0.3 { v } else { 0.0 }).collect();
    for (a, theta) in [(kept.clone(), -1.0f32), (kept, 0.7), (vec![0.0; m * n], 0.4)] {
        let theta_view = kern.gpu.upload("theta", &[theta]);
        kern.gpu.run(&[kern.batch_threshold(&kern.gpu.upload("a", &a), &theta_view, m, n, 0.999)]);
        let want = r::batch_threshold(&widen(&a), theta as f64, 0.999);
        let scale = (theta as f64).abs() + want.abs() + 1e-30;
        worst = worst.max(max_rel_err(&download(kern, &theta_view), &[want], &[scale]));
    }
    worst
}

/// `threshold_code` against its twin: a comparison and a copy, exact.
pub fn threshold_code(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let z = random(rng, m * n, -1.0, 1.0);
    let out = poisoned(kern, m * n);
    kern.gpu.run(&[kern.threshold_code(&kern.gpu.upload("z", &z), &out, m, n, 0.25)]);
    let want = r::threshold_code(&widen(&z), 0.25f32 as f64);
    max_rel_err(&download(kern, &out), &want, &vec![1.0; m * n])
}

/// Log thresholds around ln 0.5 and pre-activations spread around them: many within the
/// kernel's width of their threshold, none (with these draws) within f32 rounding of it.
fn jumprelu_inputs(rng: &mut Rng, m: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let t: Vec<f32> = random(rng, n, -1.2, -0.2);
    let z: Vec<f32> = random(rng, m * n, -0.5, 1.5);
    (z, t)
}

/// `jumprelu_forward` against its twin: a comparison with exp(t) and a copy (exact).
pub fn jumprelu_forward(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let (z, t) = jumprelu_inputs(rng, m, n);
    let out = poisoned(kern, m * n);
    kern.gpu.run(&[kern.jumprelu_forward(&kern.gpu.upload("z", &z), &kern.gpu.upload("t", &t), &out, m, n)]);
    let want = r::jumprelu_forward(&widen(&z), &widen(&t));
    max_rel_err(&download(kern, &out), &want, &vec![1.0; m * n])
}

/// `jumprelu_backward` against its twin at a warm-up share of 0.5, kernel width 0.3: delta is a
/// masked copy (exact); dt a sum of m terms, relative to theta times the sum of their magnitudes.
pub fn jumprelu_backward(kern: &Kernels, rng: &mut Rng, m: usize, _k: usize, n: usize) -> f64 {
    let (z, t) = jumprelu_inputs(rng, m, n);
    let g = random(rng, m * n, -1.0, 1.0);
    let (state, values, _) = beta_share(kern, 0.5);
    let (eps, c) = (0.3, 0.2 / m as f64);
    let (delta, dt) = (poisoned(kern, m * n), poisoned(kern, n));
    let up = |name, v: &[f32]| kern.gpu.upload(name, v);
    let inputs = (&up("g", &g), &up("z", &z), &up("t", &t));
    kern.gpu.run(&[kern.jumprelu_backward(inputs, &delta, &dt, (m, n), eps, c, &state, &values)]);
    let eps32 = eps as f32 as f64;
    let (want_delta, want_dt) = r::jumprelu_backward(&widen(&g), &widen(&z), &widen(&t), eps32, c * 0.5);
    let scale: Vec<f64> = (0..n)
        .map(|j| {
            let theta = (t[j] as f64).exp();
            let terms: f64 = (j..m * n).step_by(n).map(|i| theta / eps32 * (g[i] as f64).abs() + c * 0.5 / eps32).sum();
            theta * terms + 1e-30
        })
        .collect();
    max_rel_err(&download(kern, &delta), &want_delta, &vec![1.0; m * n]).max(max_rel_err(
        &download(kern, &dt),
        &want_dt,
        &scale,
    ))
}
