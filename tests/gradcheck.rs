//! Central-difference gradient check of the f64 CPU reference (docs/design.md section 4): every term
//! of J alone and all together, on models with two or more hidden layers and a batch of 9.
//! eps = 1e-6; the bound ||g_num - g|| / ||g_num + g|| < 1e-7 holds because the truncation
//! error of central differences is O(eps^2) ~ 1e-12 relative and the round-off is about
//! 1e-16 * |J| / eps ~ 1e-10 absolute, both far below 1e-7 of gradients of size ~1e-2..1.

mod common;

use sae_wgpu::model::{Activation, LossConfig, ModelSpec, Params, Rng, Sparsity};
use sae_wgpu::reference::{self as r, Terms};

const EPS: f64 = 1e-6;
const BOUND: f64 = 1e-7;
const M: usize = 9;

fn check(spec: &ModelSpec, cfg: LossConfig, terms: Terms, label: &str) {
    check_with(spec, cfg, terms, label, &|_, fwd, _| fwd);
}

/// The same, each forward pass completed by `complete` (AuxK's rows), the base model's first.
fn check_with(
    spec: &ModelSpec,
    cfg: LossConfig,
    terms: Terms,
    label: &str,
    complete: &dyn Fn(&r::Model, r::Forward, &[f64]) -> r::Forward,
) {
    let mut params = Params::init(spec, 3);
    // Non-zero biases so their gradients are exercised away from the init.
    let mut rng = Rng::new(11);
    for b in params.biases.iter_mut().flatten() {
        *b = (rng.next_f64() * 0.4 - 0.2) as f32;
    }
    let model = r::Model::new(spec, &params);
    let x: Vec<f64> = (0..M * spec.input_width()).map(|_| rng.next_f64()).collect();
    let fwd = complete(&model, r::forward(&model, &cfg, &x, M), &x);
    let grads = r::backward(&model, &cfg, &fwd, &x, terms);
    let j = |m: &r::Model| {
        let f = complete(m, r::forward(m, &cfg, &x, M), &x);
        r::loss(m, &cfg, &f, &x, terms).total
    };
    let (mut diff2, mut sum2) = (0.0, 0.0);
    for l in 0..spec.layers() {
        for (is_bias, len) in [(false, model.w[l].len()), (true, model.b[l].len())] {
            for i in 0..len {
                let mut plus = model.clone();
                let mut minus = model.clone();
                let (p, mi, g) = if is_bias {
                    (&mut plus.b[l][i], &mut minus.b[l][i], grads.db[l][i])
                } else {
                    (&mut plus.w[l][i], &mut minus.w[l][i], grads.dw[l][i])
                };
                *p += EPS;
                *mi -= EPS;
                let num = (j(&plus) - j(&minus)) / (2.0 * EPS);
                diff2 += (num - g) * (num - g);
                sum2 += (num + g) * (num + g);
            }
        }
    }
    let rel = diff2.sqrt() / sum2.sqrt();
    println!("{label:<48} ||g_num - g|| / ||g_num + g|| = {rel:.2e}");
    assert!(sum2 > 0.0, "{label}: the gradient is identically zero, nothing was checked");
    assert!(rel < BOUND, "{label}: relative difference {rel:e} >= {BOUND:e}");
}

fn seed_like(code: Activation) -> ModelSpec {
    // Two hidden layers on each side of the code: 6-5-4-3-4-5-6.
    ModelSpec::mirrored(&[6, 5, 4, 3], Activation::Tanh, code, Activation::Sigmoid).unwrap()
}

const ONLY_RECON: Terms = Terms { reconstruction: true, weight_decay: false, sparsity: false };
const ONLY_DECAY: Terms = Terms { reconstruction: false, weight_decay: true, sparsity: false };
const ONLY_SPARSITY: Terms = Terms { reconstruction: false, weight_decay: false, sparsity: true };

#[test]
fn reconstruction_alone() {
    check(&seed_like(Activation::Sigmoid), LossConfig::default(), ONLY_RECON, "reconstruction (tanh hidden)");
    let relu =
        ModelSpec::mirrored(&[6, 5, 4, 3], Activation::Relu, Activation::Identity, Activation::Identity).unwrap();
    check(&relu, LossConfig::default(), ONLY_RECON, "reconstruction (relu hidden, identity code/output)");
}

#[test]
fn weight_decay_alone() {
    let cfg = LossConfig { weight_decay: 0.01, sparsity: Sparsity::None };
    check(&seed_like(Activation::Sigmoid), cfg, ONLY_DECAY, "weight decay");
}

#[test]
fn mean_activation_kl_alone() {
    let cfg = LossConfig { weight_decay: 0.0, sparsity: Sparsity::Kl { rho: 0.05, beta: 3.0 } };
    check(&seed_like(Activation::Sigmoid), cfg, ONLY_SPARSITY, "mean-activation KL");
}

#[test]
fn firing_frequency_kl_alone() {
    for (code, t) in [(Activation::Relu, 0.5), (Activation::Sigmoid, 1.0), (Activation::Tanh, 2.0)] {
        let cfg =
            LossConfig { weight_decay: 0.0, sparsity: Sparsity::KlSoftFreq { rho: 0.1, beta: 2.0, temperature: t } };
        check(&seed_like(code), cfg, ONLY_SPARSITY, &format!("firing-frequency KL ({code} code, T={t})"));
    }
}

#[test]
fn all_terms_together() {
    let kl = LossConfig { weight_decay: 0.003, sparsity: Sparsity::Kl { rho: 0.05, beta: 3.0 } };
    check(&seed_like(Activation::Sigmoid), kl, Terms::ALL, "all terms, mean-activation KL");
    let freq =
        LossConfig { weight_decay: 0.003, sparsity: Sparsity::KlSoftFreq { rho: 0.05, beta: 3.0, temperature: 0.7 } };
    let relu = ModelSpec::mirrored(&[6, 5, 4, 3], Activation::Relu, Activation::Relu, Activation::Sigmoid).unwrap();
    check(&relu, freq, Terms::ALL, "all terms, firing-frequency KL (relu)");
}

/// The dictionary model's gradients (docs/design.md section 12): the pre-bias path into b_L, on a
/// dense ReLU code and on a TopK code (piecewise linear: at eps = 1e-6 no selection changes
/// on these random inputs, so central differences see one linear piece, and the check fails
/// if the backward pass let a zeroed unit's gradient through).
#[test]
fn dictionary_pre_bias_and_topk() {
    use sae_wgpu::model::CodeSelect;
    let dense = ModelSpec::mirrored(&[7, 11], Activation::Relu, Activation::Relu, Activation::Identity).unwrap();
    let cfg = LossConfig { weight_decay: 0.0, sparsity: Sparsity::None };
    let pre_bias = ModelSpec { pre_bias: true, ..dense.clone() };
    check(&pre_bias, cfg, Terms::ALL, "dense relu code, pre-bias");
    let topk = dense.clone().with_code(CodeSelect::TopK { k: 3 }, true).unwrap();
    check(&topk, cfg, Terms::ALL, "topk 3 code, pre-bias");
    let deep = ModelSpec::mirrored(&[7, 9, 11], Activation::Tanh, Activation::Relu, Activation::Identity)
        .unwrap()
        .with_code(CodeSelect::TopK { k: 2 }, true)
        .unwrap();
    check(&deep, cfg, Terms::ALL, "7-9-11-9-7 topk 2, pre-bias");
}

/// The L1 term weighted by the decoder's column norms (docs/design.md section 12), alone and
/// with the rest, on a dense ReLU code and a TopK one with a pre-bias.
#[test]
fn l1_term() {
    use sae_wgpu::model::CodeSelect;
    let dense = ModelSpec::mirrored(&[7, 11], Activation::Relu, Activation::Relu, Activation::Identity).unwrap();
    let cfg = LossConfig { weight_decay: 0.0, sparsity: Sparsity::L1 { coefficient: 0.4 } };
    let only = Terms { reconstruction: false, weight_decay: false, sparsity: true };
    check(&dense, cfg, only, "l1 alone");
    check(&dense, cfg, Terms::ALL, "reconstruction and l1");
    let topk = dense.with_code(CodeSelect::TopK { k: 3 }, true).unwrap();
    check(&topk, cfg, Terms::ALL, "topk 3, pre-bias, reconstruction and l1");
}

/// AuxK's term (docs/design.md section 12) alone and with the reconstruction, through the
/// decoder, the TopK encoder and the pre-bias: the dead latents fixed (every third), K_aux 4.
#[test]
fn auxk_term() {
    use sae_wgpu::model::{AuxK, CodeSelect};
    let spec = ModelSpec::mirrored(&[7, 11], Activation::Relu, Activation::Relu, Activation::Identity)
        .unwrap()
        .with_code(CodeSelect::TopK { k: 2 }, true)
        .unwrap();
    let cfg = LossConfig { weight_decay: 0.0, sparsity: Sparsity::None };
    let dead: Vec<bool> = (0..11).map(|j| j % 3 == 0).collect();
    let auxk = AuxK { k: 4, coefficient: 0.7, dead_after: 1 };
    // The residual X - Xhat is a constant of the term (its gradient does not flow into the main
    // reconstruction): J is differenced with the residual of the unperturbed model.
    let residual = std::cell::RefCell::new(None::<Vec<f64>>);
    let complete = |m: &r::Model, fwd: r::Forward, x: &[f64]| {
        let mut f = r::with_auxk(m, fwd, x, auxk, &dead);
        let aux = f.aux.as_mut().unwrap();
        let mut frozen = residual.borrow_mut();
        match frozen.as_ref() {
            Some(r) => aux.residual = r.clone(),
            None => *frozen = Some(aux.residual.clone()),
        }
        f
    };
    let only = Terms { reconstruction: false, weight_decay: false, sparsity: true };
    check_with(&spec, cfg, only, "auxk alone", &complete);
    residual.borrow_mut().take();
    check_with(&spec, cfg, Terms::ALL, "reconstruction and auxk", &complete);
}

/// A JumpReLU code (thresholds fixed at 0.1): the weights' and biases' gradients through
/// `z [z > theta]` and the pre-bias, with its L0 term (piecewise constant in them: no gradient,
/// as the analytic one says). The thresholds' straight-through gradient is not a gradient of J
/// and is checked against its twin instead (`check::jumprelu_backward`).
#[test]
fn jumprelu_code() {
    use sae_wgpu::model::CodeSelect;
    let spec = ModelSpec::mirrored(&[7, 11], Activation::Relu, Activation::Relu, Activation::Identity)
        .unwrap()
        .with_code(CodeSelect::JumpRelu { bandwidth: 0.05, threshold_init: 0.1 }, true)
        .unwrap();
    let cfg = LossConfig { weight_decay: 0.0, sparsity: Sparsity::L0 { coefficient: 0.3 } };
    check(&spec, cfg, Terms::ALL, "jumprelu, pre-bias, reconstruction and l0");
}
