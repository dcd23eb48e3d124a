//! Every kernel against its f64 twin in `reference.rs`, on every adapter present, at odd sizes
//! (not multiples of the 16x16 tile or of 256), at a batch of one, and with a per-dispatch
//! workgroup limit lowered to 3 so that every grid is split across several dispatches.
//! Outputs are poisoned with NaN first, so an element no invocation writes fails.
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
use sae_wgpu::kernels::{Kernels, MatmulVariant, View};
use sae_wgpu::model::{Activation, Rng, Sparsity};
use sae_wgpu::reference::{self as r, ColumnTransform};

const TOL: f64 = 1e-5;

/// (m, k, n, max_groups): odd sizes, a batch of one, and splitting (limit 3).
const CASES: [(usize, usize, usize, u32); 4] =
    [(37, 53, 29, u32::MAX), (1, 53, 29, u32::MAX), (1, 7, 3, u32::MAX), (100, 53, 61, 3)];

fn poisoned(k: &Kernels, len: usize) -> View {
    k.gpu.upload("poisoned output", &vec![f32::NAN; len])
}

fn for_each_case(mut f: impl FnMut(&Kernels, &mut Rng, usize, usize, usize) -> (&'static str, f64)) {
    run_cases(None, &mut f);
}

fn run_cases(
    variant: Option<MatmulVariant>,
    f: &mut impl FnMut(&Kernels, &mut Rng, usize, usize, usize) -> (&'static str, f64),
) {
    for gpu in gpus() {
        let mut kernels = Kernels::new(&gpu).expect("kernels compile");
        if let Some(v) = variant {
            kernels.matmul_variant = v;
        }
        for (case, &(m, k, n, max_groups)) in CASES.iter().enumerate() {
            kernels.max_groups = max_groups.min(gpu.limits.max_compute_workgroups_per_dimension);
            let mut rng = Rng::new(1000 + case as u64);
            let (name, err) = f(&kernels, &mut rng, m, k, n);
            println!(
                "{:<24} {:<10} m={m:<4} k={k:<3} n={n:<3} max_groups={:<10} {:<40} max rel err {err:.2e}",
                name,
                if name.starts_with("matmul") { kernels.matmul_variant.name() } else { "" },
                kernels.max_groups,
                gpu.info.name
            );
            assert!(err <= TOL, "{name} on {} (m={m}, k={k}, n={n}): max rel err {err:e} > {TOL:e}", gpu.describe());
        }
    }
}

/// The matmul tests run every variant.
fn for_each_matmul_variant(mut f: impl FnMut(&Kernels, &mut Rng, usize, usize, usize) -> (&'static str, f64)) {
    for variant in MatmulVariant::ALL {
        run_cases(Some(variant), &mut f);
    }
}

fn abs(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| (*x as f64).abs()).collect()
}

#[test]
fn matmul_forward() {
    for_each_matmul_variant(|kern, rng, m, k, n| {
        let a = random(rng, m * k, -1.0, 1.0);
        let w = random(rng, n * k, -1.0, 1.0);
        let out = poisoned(kern, m * n);
        kern.gpu.run(&[kern.matmul_forward(&kern.gpu.upload("a", &a), &kern.gpu.upload("w", &w), &out, m, k, n)]);
        let want = r::matmul_forward(&widen(&a), &widen(&w), m, k, n);
        let scale = r::matmul_forward(&abs(&a), &abs(&w), m, k, n);
        ("matmul_forward", max_rel_err(&kern.gpu.download(&out), &want, &scale))
    });
}

#[test]
fn matmul_backward_weight() {
    for_each_matmul_variant(|kern, rng, m, k, n| {
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
        ("matmul_backward_weight", max_rel_err(&kern.gpu.download(&out), &want, &scale))
    });
}

#[test]
fn matmul_backward_input() {
    for_each_matmul_variant(|kern, rng, m, k, n| {
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
        ("matmul_backward_input", max_rel_err(&kern.gpu.download(&out), &want, &scale))
    });
}

#[test]
fn bias_activation() {
    for act in Activation::ALL {
        for_each_case(|kern, rng, m, _k, n| {
            let z = random(rng, m * n, -3.0, 3.0);
            let b = random(rng, n, -0.5, 0.5);
            let zv = kern.gpu.upload("z", &z);
            let out = poisoned(kern, m * n);
            kern.gpu.run(&[kern.bias_activation(&kern.gpu.upload("b", &b), &zv, &out, m, n, act)]);
            let mut zr = widen(&z);
            let want = r::bias_activation(&mut zr, &widen(&b), act, n);
            let (got_z, got_a) = {
                let mut d = kern.gpu.download_many(&[&zv, &out]);
                let a = d.pop().unwrap();
                (d.pop().unwrap(), a)
            };
            // z + b is one f32 addition. WGSL bounds exp/tanh by ulps of their inputs and
            // intermediates (tanh is "inherited from sinh/cosh"), i.e. an absolute error of a
            // few 1e-8 near zero, so values below 0.1 are judged against 0.1 (relative 1e-5
            // above it, absolute 1e-6 below).
            let err_z = max_rel_err(&got_z, &zr, &magnitudes(&zr, 1e-3));
            let err_a = max_rel_err(&got_a, &want, &magnitudes(&want, 0.1));
            ("bias_activation", err_z.max(err_a))
        });
    }
}

#[test]
fn activation_backward() {
    for act in Activation::ALL {
        for_each_case(|kern, rng, m, _k, n| {
            let g = random(rng, m * n, -1.0, 1.0);
            let z = random(rng, m * n, -3.0, 3.0);
            let a: Vec<f32> = z.iter().map(|&v| r::activate(act, v as f64) as f32).collect();
            let out = poisoned(kern, m * n);
            let up = |name, v: &[f32]| kern.gpu.upload(name, v);
            kern.gpu.run(&[kern.activation_backward(&up("g", &g), &up("z", &z), &up("a", &a), &out, m, n, act)]);
            let want = r::activation_backward(&widen(&g), &widen(&z), &widen(&a), act);
            ("activation_backward", max_rel_err(&kern.gpu.download(&out), &want, &magnitudes(&want, 1e-3)))
        });
    }
}

#[test]
fn kl_backward() {
    let modes = [
        (Activation::Sigmoid, Sparsity::Kl { rho: 0.05, beta: 3.0 }),
        (Activation::Relu, Sparsity::KlFreq { rho: 0.1, beta: 2.0, temperature: 0.5 }),
        (Activation::Sigmoid, Sparsity::KlFreq { rho: 0.05, beta: 3.0, temperature: 1.0 }),
        (Activation::Tanh, Sparsity::KlFreq { rho: 0.2, beta: 0.7, temperature: 2.0 }),
    ];
    for (act, sparsity) in modes {
        for_each_case(|kern, rng, m, _k, n| {
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
                sparsity,
            )]);
            let want = r::kl_backward(&widen(&g), &widen(&z), &widen(&a), &widen(&rho_hat), act, sparsity, m);
            // Scale: the same formula on magnitudes, so a cancellation between G and the KL
            // term is judged against the size of the terms, not of their difference.
            let abs_sparsity = match sparsity {
                Sparsity::Kl { beta, .. } => (beta, 1.0),
                Sparsity::KlFreq { beta, temperature, .. } => (beta, temperature),
                Sparsity::None => unreachable!(),
            };
            let (rho, _) = sparsity.rho_beta();
            let scale: Vec<f64> = (0..m * n)
                .map(|i| {
                    let j = i % n;
                    let q = (rho_hat[j] as f64).clamp(1e-6, 1.0 - 1e-6);
                    let dkl = abs_sparsity.0 / m as f64 * (rho / q + (1.0 - rho) / (1.0 - q));
                    let fp = r::activation_derivative(act, z[i] as f64, a[i] as f64).abs();
                    let s = r::sigmoid(z[i] as f64 / abs_sparsity.1);
                    (g[i] as f64).abs() * fp + dkl * (fp + s * (1.0 - s) / abs_sparsity.1) + 1e-12
                })
                .collect();
            ("kl_backward", max_rel_err(&kern.gpu.download(&out), &want, &scale))
        });
    }
}

#[test]
fn column_sum() {
    let transforms = [
        (ColumnTransform::Value, 1.0),
        (ColumnTransform::Value, 0.25),
        (ColumnTransform::Fires, 0.5),
        (ColumnTransform::SoftFires { temperature: 0.3 }, 1.0),
    ];
    for (t, scale) in transforms {
        for_each_case(|kern, rng, m, _k, n| {
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
            ("column_sum", max_rel_err(&kern.gpu.download(&out), &want, &sc))
        });
    }
}

#[test]
fn output_delta() {
    for act in [Activation::Sigmoid, Activation::Identity, Activation::Relu, Activation::Tanh] {
        for_each_case(|kern, rng, m, _k, n| {
            let x = random(rng, m * n, 0.0, 1.0);
            let z = random(rng, m * n, -3.0, 3.0);
            let xhat: Vec<f32> = z.iter().map(|&v| r::activate(act, v as f64) as f32).collect();
            let out = poisoned(kern, m * n);
            let up = |name, v: &[f32]| kern.gpu.upload(name, v);
            kern.gpu.run(&[kern.output_delta(&up("xhat", &xhat), &up("x", &x), &up("z", &z), &out, m, n, act)]);
            let want = r::output_delta(&widen(&xhat), &widen(&x), &widen(&z), act, m);
            ("output_delta", max_rel_err(&kern.gpu.download(&out), &want, &magnitudes(&want, 1e-9)))
        });
    }
}

#[test]
fn loss_value() {
    use sae_wgpu::model::{LossConfig, ModelSpec, Params};
    for sparsity in [Sparsity::None, Sparsity::Kl { rho: 0.05, beta: 3.0 }] {
        for_each_case(|kern, rng, m, _k, n| {
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
                sparsity,
            )]);
            let got = kern.gpu.download(&out);
            let model = r::Model::new(&spec, &params);
            let mut fwd = r::forward(&model, &cfg, &widen(&x), m);
            // Evaluate the loss at the given xhat and rho_hat rather than a forward pass.
            *fwd.a.last_mut().unwrap() = widen(&xhat);
            fwd.rho_hat = if sparsity == Sparsity::None { Vec::new() } else { widen(&rho_hat) };
            let parts = r::loss(&model, &cfg, &fwd, &widen(&x), r::Terms::ALL);
            let sum_sq = 2.0 * parts.reconstruction * m as f64;
            let want = [parts.total, parts.reconstruction, parts.weight_decay, parts.sparsity, sum_sq];
            // Every term is a sum of non-negative values: plain relative error.
            ("loss_value", max_rel_err(&got, &want, &magnitudes(&want, 1e-12)))
        });
    }
}

#[test]
fn sgd_update() {
    for_each_case(|kern, rng, m, k, n| {
        let len = m * k + n; // weights region, then biases
        let weights_len = m * k;
        let p = random(rng, len, -1.0, 1.0);
        let g = random(rng, len, -1.0, 1.0);
        let pv = kern.gpu.upload("p", &p);
        let (lr, lambda) = (0.3, 0.01);
        kern.gpu.run(&[kern.sgd_update(&kern.gpu.upload("g", &g), &pv, weights_len, lr, lambda)]);
        let mut want = widen(&p);
        r::sgd_update(&mut want[..weights_len], &widen(&g[..weights_len]), lr, lambda);
        r::sgd_update(&mut want[weights_len..], &widen(&g[weights_len..]), lr, 0.0);
        // p - lr (g + lambda p): judged against |p| + lr (|g| + lambda |p|).
        let scale: Vec<f64> = (0..len).map(|i| (p[i].abs() + 0.3 * (g[i].abs() + 0.01 * p[i].abs())) as f64).collect();
        ("sgd_update", max_rel_err(&kern.gpu.download(&pv), &want, &scale))
    });
}
