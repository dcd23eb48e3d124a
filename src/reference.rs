//! The f64 CPU reference: the same model, loss, gradients and optimizer updates as the GPU engine,
//! written to be read. Each kernel in `shaders/` has a twin here with the same name; the whole
//! step (`forward`, `loss`, `backward`, `update`) reads as docs/design.md sections 2-4.
//!
//! Matrices are row-major `Vec<f64>` with their shape passed beside them.

use crate::model::{Activation, LossConfig, ModelSpec, Params, Sparsity, RHO_HAT_EPS};
use crate::optim::{LrSchedule, Optimizer, ScheduleKind};

// ---------------------------------------------------------------------------------------------
// Kernel twins
// ---------------------------------------------------------------------------------------------

/// `Z[m,n] = A[m,k] W[n,k]^T` (twin of `matmul_forward`).
pub fn matmul_forward(a: &[f64], w: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut z = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            z[i * n + j] = (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum();
        }
    }
    z
}

/// `dW[n,k] = delta[m,n]^T A[m,k]` (twin of `matmul_backward_weight`).
pub fn matmul_backward_weight(delta: &[f64], a: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut dw = vec![0.0; n * k];
    for j in 0..n {
        for p in 0..k {
            dw[j * k + p] = (0..m).map(|i| delta[i * n + j] * a[i * k + p]).sum();
        }
    }
    dw
}

/// `G[m,k] = delta[m,n] W[n,k]` (twin of `matmul_backward_input`).
pub fn matmul_backward_input(delta: &[f64], w: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut g = vec![0.0; m * k];
    for i in 0..m {
        for p in 0..k {
            g[i * k + p] = (0..n).map(|j| delta[i * n + j] * w[j * k + p]).sum();
        }
    }
    g
}

/// `Z = A W^T + 1 b^T`, `A_out = f(Z)` (twin of `matmul_forward_bias_activation`, the matmul
/// with bias and activation in its epilogue).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_bias_activation(
    a: &[f64],
    w: &[f64],
    b: &[f64],
    m: usize,
    k: usize,
    n: usize,
    act: Activation,
) -> (Vec<f64>, Vec<f64>) {
    let mut z = matmul_forward(a, w, m, k, n);
    let a_out = bias_activation(&mut z, b, act, n);
    (z, a_out)
}

/// `(Z, A_out, delta)`: `matmul_forward_bias_activation` then `output_delta` against the
/// target `x` (twin of `matmul_forward_output_delta`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_output_delta(
    a: &[f64],
    w: &[f64],
    b: &[f64],
    x: &[f64],
    m: usize,
    k: usize,
    n: usize,
    act: Activation,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (z, a_out) = matmul_forward_bias_activation(a, w, b, m, k, n, act);
    let delta = output_delta(&a_out, x, &z, act, m);
    (z, a_out, delta)
}

/// One layer's `(Z_l, A_l)`.
pub type LayerOutput = (Vec<f64>, Vec<f64>);

/// Twin of `panel_forward`: each layer's `(Z_l, A_l)` from `inputs[l - 1]` (its input A_{l-1},
/// X for l = 1), as `matmul_forward_bias_activation` computes it, and with `output_delta` the
/// last layer's delta against X = `inputs[0]`, as `matmul_forward_output_delta`. Taking each
/// layer's input apart lets a check judge every layer from what the kernel fed it.
pub fn panel_forward(
    inputs: &[Vec<f64>],
    spec: &ModelSpec,
    params: &Params,
    m: usize,
    output_delta: bool,
) -> (Vec<LayerOutput>, Option<Vec<f64>>) {
    let layers = spec.layers();
    let mut out = Vec::new();
    let mut delta = None;
    for l in 1..=layers {
        let (n, k) = spec.shape(l);
        let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (w, b) = (widen(&params.weights[l - 1]), widen(&params.biases[l - 1]));
        if l == layers && output_delta {
            let (z, a, d) =
                matmul_forward_output_delta(&inputs[l - 1], &w, &b, &inputs[0], m, k, n, spec.activation(l));
            delta = Some(d);
            out.push((z, a));
        } else {
            out.push(matmul_forward_bias_activation(&inputs[l - 1], &w, &b, m, k, n, spec.activation(l)));
        }
    }
    (out, delta)
}

/// `(dW, db) = (delta^T A, column sums of delta)` (twin of `matmul_backward_weight_bias`).
pub fn matmul_backward_weight_bias(delta: &[f64], a: &[f64], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    (matmul_backward_weight(delta, a, m, n, k), column_sum(delta, m, n, ColumnTransform::Value, 1.0))
}

/// `(delta W) ⊙ f'(Z, A)` (twin of `matmul_backward_input_activation`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_input_activation(
    delta: &[f64],
    w: &[f64],
    z: &[f64],
    a: &[f64],
    m: usize,
    n: usize,
    k: usize,
    act: Activation,
) -> Vec<f64> {
    activation_backward(&matmul_backward_input(delta, w, m, n, k), z, a, act)
}

/// What the pair's input product becomes (`kernels::PairInput`): G, `G ⊙ f'(Z, A)`, or the
/// code layer's delta with the KL gradient's column term `t` (kl_backward's formulas with `t`
/// for its `(beta/m) KL'(rho_hat_j)`; kl-soft-freq's form where `temperature` is given).
#[derive(Clone, Copy)]
pub enum PairInput<'a> {
    Plain,
    Derivative { z: &'a [f64] },
    Penalty { z: &'a [f64], term: &'a [f64], temperature: Option<f64> },
}

/// `(dW, db, out)`: a layer's two backward products, `G = delta W` through `input` (twin of
/// `matmul_backward_pair`; `a` is both dW's right operand and f's output).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_pair(
    delta: &[f64],
    w: &[f64],
    a: &[f64],
    input: PairInput<'_>,
    m: usize,
    n: usize,
    k: usize,
    act: Activation,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (dw, db) = matmul_backward_weight_bias(delta, a, m, n, k);
    let g = matmul_backward_input(delta, w, m, n, k);
    let out = match input {
        PairInput::Plain => g,
        PairInput::Derivative { z } => activation_backward(&g, z, a, act),
        PairInput::Penalty { z, term, temperature } => (0..m * k)
            .map(|i| {
                let (t, fprime) = (term[i % k], activation_derivative(act, z[i], a[i]));
                match temperature {
                    None => (g[i] + t) * fprime,
                    Some(temp) => {
                        let s = sigmoid(z[i] / temp);
                        g[i] * fprime + t * s * (1.0 - s) / temp
                    }
                }
            })
            .collect(),
    };
    (dw, db, out)
}

/// The KL gradient's column term `(beta/m) beta_scale KL'(rho_hat_j)` (`fire_count_rho` writes
/// it beside rho_hat; kl_backward's `dkl`).
pub fn kl_term(rho_hat: &[f64], rho: f64, beta_over_m: f64, beta_scale: f64) -> Vec<f64> {
    rho_hat.iter().map(|&q| beta_over_m * beta_scale * kl_derivative(rho, q)).collect()
}

pub fn activate(act: Activation, z: f64) -> f64 {
    match act {
        Activation::Identity => z,
        Activation::Relu => z.max(0.0),
        Activation::Sigmoid => sigmoid(z),
        Activation::Tanh => z.tanh(),
    }
}

/// `f'(z)`, from the output `a = f(z)` (docs/design.md section 4); ReLU's `[a > 0]` is also 0
/// for a unit a TopK selection zeroed (section 12).
pub fn activation_derivative(act: Activation, _z: f64, a: f64) -> f64 {
    match act {
        Activation::Identity => 1.0,
        Activation::Relu => {
            if a > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Sigmoid => a * (1.0 - a),
        Activation::Tanh => 1.0 - a * a,
    }
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `Z += 1 b^T` in place, returns `A = f(Z)`: the epilogue of `matmul_forward_bias_activation`.
pub fn bias_activation(z: &mut [f64], b: &[f64], act: Activation, n: usize) -> Vec<f64> {
    for (idx, v) in z.iter_mut().enumerate() {
        *v += b[idx % n];
    }
    z.iter().map(|&v| activate(act, v)).collect()
}

/// `delta = G ⊙ f'(Z)`: the epilogue of `matmul_backward_input_activation`.
pub fn activation_backward(g: &[f64], z: &[f64], a: &[f64], act: Activation) -> Vec<f64> {
    (0..g.len()).map(|i| g[i] * activation_derivative(act, z[i], a[i])).collect()
}

/// What `column_sum` sums: the value itself, the hard firing indicator `[x > 0]`, or the smooth
/// firing estimate `sigmoid(x / T)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColumnTransform {
    Value,
    Fires,
    SoftFires { temperature: f64 },
}

impl ColumnTransform {
    pub fn apply(self, x: f64) -> f64 {
        match self {
            ColumnTransform::Value => x,
            ColumnTransform::Fires => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            ColumnTransform::SoftFires { temperature } => sigmoid(x / temperature),
        }
    }
}

/// `out[j] = scale * sum_i t(x[i,j])` (twin of `column_sum`): batch means with `scale = 1/m`,
/// bias gradients with `scale = 1`.
pub fn column_sum(x: &[f64], m: usize, n: usize, t: ColumnTransform, scale: f64) -> Vec<f64> {
    (0..n).map(|j| scale * (0..m).map(|i| t.apply(x[i * n + j])).sum::<f64>()).collect()
}

/// What `fire_count` does besides counting: in a training step it tracks the samples since each
/// unit last fired and, under kl-freq, moves the code bias toward the target frequency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FireUpdate {
    pub track: bool,
    /// The frequency controller's target, rate (0: off) and target anneal in steps (0: none).
    pub rho: f64,
    pub control: f64,
    pub anneal: u64,
}

impl FireUpdate {
    /// Counting only (evaluation).
    pub const NONE: FireUpdate = FireUpdate { track: false, rho: 0.0, control: 0.0, anneal: 0 };

    /// A training step's: tracking, and kl-freq's controller (without an anneal).
    pub fn for_step(sparsity: Sparsity) -> FireUpdate {
        FireUpdate { track: true, rho: sparsity.rho_beta().0, control: sparsity.control(), anneal: 0 }
    }
}

/// The firing frequency `freq[j] = (1/m) #{i : z_ij > 0}` (twin of `fire_count`), and what a
/// training step's `update` asks: `since_fired[j]` reset to 0 if unit j fired, else advanced by
/// m (saturating), and kl-freq's controller `bias[j] -= control * beta_scale * (freq[j] - rho_t)`
/// with `beta_scale` step t's (1-based) share of beta and `rho_t` its target (`annealed_rho`;
/// docs/design.md section 11).
#[allow(clippy::too_many_arguments)]
pub fn fire_count(
    z: &[f64],
    m: usize,
    n: usize,
    since_fired: &mut [u32],
    bias: &mut [f64],
    update: FireUpdate,
    beta_scale: f64,
    t: u64,
) -> Vec<f64> {
    let counts: Vec<usize> = (0..n).map(|j| (0..m).filter(|&i| z[i * n + j] > 0.0).count()).collect();
    let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / m as f64).collect();
    if update.track {
        for (s, &c) in since_fired.iter_mut().zip(&counts) {
            *s = if c > 0 { 0 } else { s.saturating_add(m as u32) };
        }
    }
    if update.control != 0.0 {
        let rho = crate::model::annealed_rho(update.rho, crate::optim::beta_scale(update.anneal, t));
        for (b, f) in bias.iter_mut().zip(&freq) {
            *b -= update.control * beta_scale * (f - rho);
        }
    }
    freq
}

/// `(freq, rho_hat)`: `fire_count`, then `column_sum(x, t, 1/m)` (twin of `fire_count_rho`).
#[allow(clippy::too_many_arguments)]
pub fn fire_count_rho(
    z: &[f64],
    x: &[f64],
    (m, n): (usize, usize),
    since_fired: &mut [u32],
    bias: &mut [f64],
    update: FireUpdate,
    (beta_scale, t): (f64, u64),
    transform: ColumnTransform,
) -> (Vec<f64>, Vec<f64>) {
    let freq = fire_count(z, m, n, since_fired, bias, update, beta_scale, t);
    (freq, column_sum(x, m, n, transform, 1.0 / m as f64))
}

// ---------------------------------------------------------------------------------------------
// Dictionary learning (docs/design.md section 12)
// ---------------------------------------------------------------------------------------------

/// TopK over `[m, n]`: `max(z, 0)` for the `k` largest values of each row (ties to the lower
/// index), 0 elsewhere. Ordered as the kernel orders f32 (-0 below +0). With `dead` (one flag
/// a column), only those columns take part: AuxK's selection among the dead latents.
pub fn topk(z: &[f64], m: usize, n: usize, k: usize, dead: Option<&[bool]>) -> Vec<f64> {
    let mut a = vec![0.0; m * n];
    let eligible: Vec<usize> = (0..n).filter(|&j| dead.is_none_or(|d| d[j])).collect();
    for i in 0..m {
        let row = &z[i * n..(i + 1) * n];
        let mut order = eligible.clone();
        order.sort_by(|&p, &q| row[q].total_cmp(&row[p]).then(p.cmp(&q)));
        for &j in order.iter().take(k) {
            a[i * n + j] = row[j].max(0.0);
        }
    }
    a
}

/// BatchTopK's running threshold after a step whose kept activations are `a`: the smallest
/// positive one, averaged into `theta` with `decay` (taken as it is while `theta < 0`); `theta`
/// unchanged when nothing was kept.
pub fn batch_threshold(a: &[f64], theta: f64, decay: f64) -> f64 {
    let low = a.iter().copied().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min);
    if low.is_infinite() {
        theta
    } else if theta < 0.0 {
        low
    } else {
        decay * theta + (1.0 - decay) * low
    }
}

/// BatchTopK's code at inference: `z` where `z > theta`, else 0.
pub fn threshold_code(z: &[f64], theta: f64) -> Vec<f64> {
    z.iter().map(|&v| if v > theta { v } else { 0.0 }).collect()
}

/// Twin of the narrow rows' entry point: the same selection as [`topk`].
pub fn topk_rank(z: &[f64], m: usize, n: usize, k: usize, dead: Option<&[bool]>) -> Vec<f64> {
    topk(z, m, n, k, dead)
}

/// `delta[i] = scale (recons[i] - (x[i] - xhat[i]))`: AuxK's output delta (scale = C/m).
pub fn auxk_delta(recons: &[f64], x: &[f64], xhat: &[f64], scale: f64) -> Vec<f64> {
    (0..x.len()).map(|i| scale * (recons[i] - (x[i] - xhat[i]))).collect()
}

/// The same from the residual `x - xhat` itself.
fn auxk_delta_of(recons: &[f64], residual: &[f64], scale: f64) -> Vec<f64> {
    (0..residual.len()).map(|i| scale * (recons[i] - residual[i])).collect()
}

/// `||w_j||` of each column of `w` (`[rows, cols]`).
pub fn column_norms(w: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols).map(|j| (0..rows).map(|i| w[i * cols + j] * w[i * cols + j]).sum::<f64>().sqrt()).collect()
}

/// `dw_j += coef (sum_i |a_ij|) w_j / ||w_j||` over `a` `[m, cols]`, skipping zero columns:
/// the L1 term's decoder gradient (`coef` = C/m).
pub fn l1_decoder_grad(a: &[f64], m: usize, w: &[f64], dw: &mut [f64], rows: usize, cols: usize, coef: f64) {
    let norms = column_norms(w, rows, cols);
    for j in 0..cols {
        if norms[j] > 0.0 {
            let total: f64 = (0..m).map(|i| a[i * cols + j].abs()).sum();
            for i in 0..rows {
                dw[i * cols + j] += coef * total / norms[j] * w[i * cols + j];
            }
        }
    }
}

/// `x[i, k] - b[k]` over `[m, n]`: the encoder's input with the pre-bias.
pub fn center_rows(x: &[f64], b: &[f64], m: usize, n: usize) -> Vec<f64> {
    (0..m * n).map(|i| x[i] - b[i % n]).collect()
}

/// `db_out[k] -= sum_j db_1[j] W_1[j, k]`: the pre-bias path's term of `dJ/db_L`.
pub fn pre_bias_backward(db1: &[f64], w1: &[f64], db_out: &mut [f64]) {
    let n = db_out.len();
    for (k, out) in db_out.iter_mut().enumerate() {
        *out -= (0..db1.len()).map(|j| db1[j] * w1[j * n + k]).sum::<f64>();
    }
}

/// `dw_j -= (dw_j . w_j / ||w_j||^2) w_j` for each column j of `w`, `dw` (`[rows, cols]`),
/// skipping zero columns.
pub fn decoder_project(w: &[f64], dw: &mut [f64], rows: usize, cols: usize) {
    for j in 0..cols {
        let dot: f64 = (0..rows).map(|i| dw[i * cols + j] * w[i * cols + j]).sum();
        let norm2: f64 = (0..rows).map(|i| w[i * cols + j] * w[i * cols + j]).sum();
        if norm2 > 0.0 {
            for i in 0..rows {
                dw[i * cols + j] -= dot / norm2 * w[i * cols + j];
            }
        }
    }
}

/// `w_j /= ||w_j||` for each non-zero column j of `w` (`[rows, cols]`).
pub fn decoder_normalize(w: &mut [f64], rows: usize, cols: usize) {
    for j in 0..cols {
        let norm = (0..rows).map(|i| w[i * cols + j] * w[i * cols + j]).sum::<f64>().sqrt();
        if norm > 0.0 {
            for i in 0..rows {
                w[i * cols + j] /= norm;
            }
        }
    }
}

/// `dKL(rho || q)/dq` with q clamped to [eps, 1-eps]; the clamp passes the gradient through.
pub fn kl_derivative(rho: f64, rho_hat: f64) -> f64 {
    let q = rho_hat.clamp(RHO_HAT_EPS, 1.0 - RHO_HAT_EPS);
    -rho / q + (1.0 - rho) / (1.0 - q)
}

pub fn kl_divergence(rho: f64, rho_hat: f64) -> f64 {
    let q = rho_hat.clamp(RHO_HAT_EPS, 1.0 - RHO_HAT_EPS);
    rho * (rho / q).ln() + (1.0 - rho) * ((1.0 - rho) / (1.0 - q)).ln()
}

/// delta at the code layer when the sparsity term enters (twin of `kl_backward`):
/// mean-activation KL: `delta = (G + (beta/m) KL'(rho_hat_j)) ⊙ f_c'(Z_c)`;
/// hard firing-frequency KL, straight-through: `delta = G ⊙ f_c'(Z_c) + (beta/(T m)) (rho_hat_j - rho)`;
/// smooth firing-frequency KL: `delta = G ⊙ f_c'(Z_c) + (beta/m) KL'(rho_hat_j) s(1-s)/T`, `s = sigmoid(Z_c/T)`.
pub fn kl_backward(
    g: &[f64],
    z: &[f64],
    a: &[f64],
    rho_hat: &[f64],
    act: Activation,
    sparsity: Sparsity,
    m: usize,
) -> Vec<f64> {
    let n = rho_hat.len();
    (0..g.len())
        .map(|idx| {
            let j = idx % n;
            let fprime = activation_derivative(act, z[idx], a[idx]);
            match sparsity {
                Sparsity::None => g[idx] * fprime,
                Sparsity::Kl { rho, beta } => (g[idx] + beta / m as f64 * kl_derivative(rho, rho_hat[j])) * fprime,
                Sparsity::KlFreq { rho, beta, temperature, .. } => {
                    g[idx] * fprime + beta / (temperature * m as f64) * (rho_hat[j] - rho)
                }
                Sparsity::KlSoftFreq { rho, beta, temperature } => {
                    let s = sigmoid(z[idx] / temperature);
                    g[idx] * fprime + beta / m as f64 * kl_derivative(rho, rho_hat[j]) * s * (1.0 - s) / temperature
                }
                // rho_hat holds the decoder's column norms; a >= 0 (a ReLU code): |a|' = f'.
                Sparsity::L1 { coefficient } => (g[idx] + coefficient / m as f64 * rho_hat[j]) * fprime,
                // JumpReLU's L0 reaches the thresholds only.
                Sparsity::L0 { .. } => g[idx] * fprime,
            }
        })
        .collect()
}

/// `delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)` (twin of `output_delta`).
pub fn output_delta(xhat: &[f64], x: &[f64], z: &[f64], act: Activation, m: usize) -> Vec<f64> {
    (0..x.len()).map(|i| (xhat[i] - x[i]) / m as f64 * activation_derivative(act, z[i], xhat[i])).collect()
}

/// `p <- p - lr * (g + decay * p)` (twin of `sgd_update`; decay = lambda for weights, 0 for biases).
pub fn sgd_update(p: &mut [f64], g: &[f64], lr: f64, decay: f64) {
    for (pi, gi) in p.iter_mut().zip(g) {
        *pi -= lr * (gi + decay * *pi);
    }
}

/// PyTorch's `SGD(momentum)`: `v <- mu v + (g + decay p)`, `p <- p - lr v` (twin of
/// `momentum_update`).
pub fn momentum_update(p: &mut [f64], g: &[f64], v: &mut [f64], lr: f64, decay: f64, momentum: f64) {
    for i in 0..p.len() {
        v[i] = momentum * v[i] + (g[i] + decay * p[i]);
        p[i] -= lr * v[i];
    }
}

/// PyTorch's `Adam` (`decoupled = false`: `decay p` joins the gradient) or `AdamW`
/// (`decoupled`: `p <- p (1 - lr decay)` first), at step `t` (1-based) for the bias corrections
/// (twin of `adam_update`).
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    lr: f64,
    decay: f64,
    (beta1, beta2, eps): (f64, f64, f64),
    t: u64,
    decoupled: bool,
) {
    let bc1 = 1.0 - beta1.powf(t as f64);
    let bc2 = 1.0 - beta2.powf(t as f64);
    for i in 0..p.len() {
        let mut d = g[i];
        if decoupled {
            p[i] *= 1.0 - lr * decay;
        } else {
            d += decay * p[i];
        }
        m[i] = beta1 * m[i] + (1.0 - beta1) * d;
        v[i] = beta2 * v[i] + (1.0 - beta2) * d * d;
        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
    }
}

/// The clipping coefficient `min(1, max_norm / (||g|| + 1e-6))` of the gradients `g` (twin of
/// `grad_norm`; PyTorch's `clip_grad_norm_`).
pub fn grad_norm(g: impl Iterator<Item = f64>, max_norm: f64) -> f64 {
    let norm = g.map(|v| v * v).sum::<f64>().sqrt();
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The learning rate of step `t` (1-based) under `schedule` from the peak rate `lr`: `lr t / w`
/// during a warm-up of `w` steps, then `lr` (constant) or a decay to `lr_min` at the run's last
/// step, `p = (t - w) / (total - w)` of the way: linear `lr_min + (lr - lr_min)(1 - p)`, cosine
/// `lr_min + (lr - lr_min)(1 + cos(pi p)) / 2`. The device reads it, rounded to f32, from the
/// step-values table (`optim::step_values`) rather than computing it with WGSL's `cos`, whose
/// error bound is loose.
pub fn scheduled_lr(schedule: &LrSchedule, lr: f64, t: u64) -> f64 {
    let w = schedule.warmup_steps;
    if t <= w {
        return lr * t as f64 / w as f64;
    }
    let span = schedule.total_steps.max(w + 1) - w;
    let p = ((t - w) as f64 / span as f64).min(1.0);
    let lr_min = schedule.lr_min;
    match schedule.kind {
        ScheduleKind::Constant => lr,
        ScheduleKind::Linear => lr_min + (lr - lr_min) * (1.0 - p),
        ScheduleKind::Cosine => lr_min + (lr - lr_min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
    }
}

// ---------------------------------------------------------------------------------------------
// The model in f64
// ---------------------------------------------------------------------------------------------

/// Parameters in f64 (`w[l-1]` is `W_l`, `[n_l, n_{l-1}]`).
#[derive(Clone, Debug)]
pub struct Model {
    pub spec: ModelSpec,
    pub w: Vec<Vec<f64>>,
    pub b: Vec<Vec<f64>>,
    /// A JumpReLU code's `log theta` (empty otherwise).
    pub t: Vec<f64>,
}

impl Model {
    pub fn new(spec: &ModelSpec, params: &Params) -> Self {
        let widen = |t: &Vec<Vec<f32>>| t.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
        let t = params.thresholds.iter().map(|&x| x as f64).collect();
        Model { spec: spec.clone(), w: widen(&params.weights), b: widen(&params.biases), t }
    }
    pub fn to_params(&self) -> Params {
        let narrow = |t: &Vec<Vec<f64>>| t.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect();
        let thresholds = self.t.iter().map(|&x| x as f32).collect();
        Params { weights: narrow(&self.w), biases: narrow(&self.b), thresholds }
    }
}

/// JumpReLU's code: `a = z` where `z > exp(t_j)`, else 0, over `[m, n]` (`t` the log thresholds).
pub fn jumprelu_forward(z: &[f64], t: &[f64]) -> Vec<f64> {
    let n = t.len();
    (0..z.len()).map(|i| if z[i] > t[i % n].exp() { z[i] } else { 0.0 }).collect()
}

/// JumpReLU's backward at the code (docs/design.md section 12): `delta = g [z > theta]`, and the
/// log thresholds' straight-through gradient with the rectangle kernel `K(u) = [|u| < 1/2]`,
/// `u = (z - theta) / eps`:
/// `dt_j = theta_j sum_i K(u_ij) (-(theta_j / eps) g_ij - c / eps)`, `c` the L0 weight over m.
/// Returns (delta, dt).
pub fn jumprelu_backward(g: &[f64], z: &[f64], t: &[f64], eps: f64, c: f64) -> (Vec<f64>, Vec<f64>) {
    let n = t.len();
    let delta = (0..z.len()).map(|i| if z[i] > t[i % n].exp() { g[i] } else { 0.0 }).collect();
    let dt = (0..n)
        .map(|j| {
            let theta = t[j].exp();
            let sum: f64 = (j..z.len())
                .step_by(n)
                .filter(|&i| ((z[i] - theta) / eps).abs() < 0.5)
                .map(|i| -(theta / eps) * g[i] - c / eps)
                .sum();
            theta * sum
        })
        .collect();
    (delta, dt)
}

/// Everything the forward pass keeps for backward: `z[l]` and `a[l]` for l = 0..=L
/// (`a[0] = X`, `z[0]` unused), plus the code layer's statistics.
#[derive(Clone, Debug)]
pub struct Forward {
    pub m: usize,
    pub z: Vec<Vec<f64>>,
    pub a: Vec<Vec<f64>>,
    /// The differentiable rho_hat the sparsity term uses (empty without sparsity).
    pub rho_hat: Vec<f64>,
    /// Batch mean of the code activations (always; equals rho_hat for mean-activation KL).
    pub mean_activation: Vec<f64>,
    /// Hard firing frequency `(1/m) #{i : z_ij > 0}`: measured, never differentiated.
    pub freq: Vec<f64>,
    /// AuxK's rows (`with_auxk`), when the step has them.
    pub aux: Option<AuxRows>,
}

/// AuxK's part of a forward pass: its coefficient, the dead latents' selected activations
/// `A_aux` `[m, n_c]`, their decoding `recons = A_aux W_L^T + b_L` `[m, n_0]`, and the
/// residual `X - Xhat` they are trained toward, a constant of the term.
#[derive(Clone, Debug)]
pub struct AuxRows {
    pub coefficient: f64,
    pub a: Vec<f64>,
    pub recons: Vec<f64>,
    pub residual: Vec<f64>,
}

/// `fwd` with AuxK's rows: the `auxk.k` largest pre-activations of the latents `dead` flags,
/// decoded (docs/design.md section 12). A two-layer TopK model.
pub fn with_auxk(model: &Model, mut fwd: Forward, x: &[f64], auxk: crate::model::AuxK, dead: &[bool]) -> Forward {
    let spec = &model.spec;
    let (m, c) = (fwd.m, spec.code_layer);
    let (n0, nc) = (spec.sizes[0], spec.code_width());
    let a = topk(&fwd.z[c], m, nc, auxk.k, Some(dead));
    let mut recons = matmul_forward(&a, &model.w[1], m, nc, n0);
    bias_activation(&mut recons, &model.b[1], Activation::Identity, n0);
    let residual = x.iter().zip(fwd.xhat()).map(|(x, xhat)| x - xhat).collect();
    fwd.aux = Some(AuxRows { coefficient: auxk.coefficient, a, recons, residual });
    fwd
}

impl Forward {
    pub fn xhat(&self) -> &[f64] {
        self.a.last().unwrap()
    }
}

/// What a code unit's firing is read from: `Z_c > 0`, or for a ReLU code `A_c > 0` (the same
/// for a dense code; for a TopK code only the selected units fire).
pub fn fires_source<'a>(spec: &ModelSpec, z: &'a [Vec<f64>], a: &'a [Vec<f64>]) -> &'a [f64] {
    let c = spec.code_layer;
    if spec.activation(c) == Activation::Relu {
        &a[c]
    } else {
        &z[c]
    }
}

/// `A_0 = X; Z_l = A_{l-1} W_l^T + 1 b_l^T; A_l = f_l(Z_l)`; with a pre-bias layer 1 reads
/// `X - 1 b_L^T`, and a TopK code keeps the K largest of each row of `Z_c` (section 12).
pub fn forward(model: &Model, loss: &LossConfig, x: &[f64], m: usize) -> Forward {
    let spec = &model.spec;
    let layers = spec.layers();
    let c = spec.code_layer;
    let mut z = vec![Vec::new()];
    let mut a = vec![x.to_vec()];
    // With a pre-bias the encoder sees X - 1 b_L^T.
    let centered = spec.pre_bias.then(|| center_rows(x, &model.b[layers - 1], m, spec.sizes[0]));
    for l in 1..=layers {
        let (n, k) = spec.shape(l);
        let input = if l == 1 { centered.as_ref().unwrap_or(&a[0]) } else { &a[l - 1] };
        let mut zl = matmul_forward(input, &model.w[l - 1], m, k, n);
        let mut al = bias_activation(&mut zl, &model.b[l - 1], spec.activation(l), n);
        match (l == c, spec.select) {
            (true, crate::model::CodeSelect::TopK { k }) => al = topk(&zl, m, n, k, None),
            // BatchTopK in training: the K m largest of the minibatch.
            (true, crate::model::CodeSelect::BatchTopK { k, .. }) => al = topk(&zl, 1, m * n, k * m, None),
            (true, crate::model::CodeSelect::JumpRelu { .. }) => al = jumprelu_forward(&zl, &model.t),
            _ => {}
        }
        z.push(zl);
        a.push(al);
    }
    let nc = spec.code_width();
    let inv_m = 1.0 / m as f64;
    let mean_activation = column_sum(&a[c], m, nc, ColumnTransform::Value, inv_m);
    let freq = column_sum(fires_source(spec, &z, &a), m, nc, ColumnTransform::Fires, inv_m);
    let rho_hat = match loss.sparsity {
        Sparsity::None => Vec::new(),
        Sparsity::Kl { .. } => mean_activation.clone(),
        Sparsity::KlFreq { .. } => freq.clone(),
        Sparsity::KlSoftFreq { temperature, .. } => {
            column_sum(&z[c], m, nc, ColumnTransform::SoftFires { temperature }, inv_m)
        }
        Sparsity::L1 { .. } => {
            let (rows, cols) = spec.shape(layers);
            column_norms(&model.w[layers - 1], rows, cols)
        }
        Sparsity::L0 { .. } => freq.clone(),
    };
    Forward { m, z, a, rho_hat, mean_activation, freq, aux: None }
}

/// Which terms of J to include; the gradient check takes them one at a time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Terms {
    pub reconstruction: bool,
    pub weight_decay: bool,
    pub sparsity: bool,
}

impl Terms {
    pub const ALL: Terms = Terms { reconstruction: true, weight_decay: true, sparsity: true };
}

/// The terms of J (docs/design.md section 3) and their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    /// `(1/m) sum_i 0.5 ||xhat_i - x_i||^2`
    pub reconstruction: f64,
    /// `(lambda/2) sum_l ||W_l||_F^2`
    pub weight_decay: f64,
    /// `beta * sum_j KL(rho || rho_hat_j)`
    pub sparsity: f64,
    pub total: f64,
}

/// The loss value (twin of `loss_value`).
pub fn loss(model: &Model, cfg: &LossConfig, fwd: &Forward, x: &[f64], terms: Terms) -> LossParts {
    let sq: f64 = fwd.xhat().iter().zip(x).map(|(p, q)| (p - q) * (p - q)).sum();
    let reconstruction = if terms.reconstruction { 0.5 * sq / fwd.m as f64 } else { 0.0 };
    let weight_decay = if terms.weight_decay {
        0.5 * cfg.weight_decay * model.w.iter().flatten().map(|w| w * w).sum::<f64>()
    } else {
        0.0
    };
    let (rho, beta) = cfg.sparsity.rho_beta();
    let mut sparsity = match (terms.sparsity, cfg.sparsity) {
        (false, _) => 0.0,
        // C sum_j mean_i |a_ij| ||w_j||
        (true, Sparsity::L1 { coefficient }) => {
            coefficient * fwd.mean_activation.iter().zip(&fwd.rho_hat).map(|(a, n)| a * n).sum::<f64>()
        }
        // C (1/m) #{z > theta}: the firing frequencies' sum.
        (true, Sparsity::L0 { coefficient }) => coefficient * fwd.freq.iter().sum::<f64>(),
        (true, _) => beta * fwd.rho_hat.iter().map(|&q| kl_divergence(rho, q)).sum::<f64>(),
    };
    // AuxK's term counts with the sparsity terms (it serves the code, not the reconstruction).
    if let (true, Some(aux)) = (terms.sparsity, &fwd.aux) {
        let residual_err: f64 = (0..x.len()).map(|i| (aux.recons[i] - aux.residual[i]).powi(2)).sum();
        sparsity += 0.5 * aux.coefficient * residual_err / fwd.m as f64;
    }
    LossParts { reconstruction, weight_decay, sparsity, total: reconstruction + weight_decay + sparsity }
}

/// Gradients of J: `dw[l-1] = dJ/dW_l`, `db[l-1] = dJ/db_l`.
#[derive(Clone, Debug)]
pub struct Grads {
    pub dw: Vec<Vec<f64>>,
    pub db: Vec<Vec<f64>>,
    /// The log thresholds' (straight-through) gradient, for a JumpReLU code.
    pub dt: Vec<f64>,
}

/// docs/design.md section 4, line by line. The weight-decay part `lambda W` of dW is added here so
/// the gradient is complete; the GPU adds it inside `sgd_update` instead (same arithmetic).
pub fn backward(model: &Model, cfg: &LossConfig, fwd: &Forward, x: &[f64], terms: Terms) -> Grads {
    let spec = &model.spec;
    let m = fwd.m;
    let layers = spec.layers();
    let c = spec.code_layer;
    let mut dw = vec![Vec::new(); layers];
    let mut dt = vec![0.0; model.t.len()];
    let mut db = vec![Vec::new(); layers];

    // delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)
    let mut delta = if terms.reconstruction {
        output_delta(fwd.xhat(), x, &fwd.z[layers], spec.activation(layers), m)
    } else {
        vec![0.0; m * spec.sizes[layers]]
    };
    let sparsity = if terms.sparsity { cfg.sparsity } else { Sparsity::None };
    let lambda = if terms.weight_decay { cfg.weight_decay } else { 0.0 };

    let centered = spec.pre_bias.then(|| center_rows(x, &model.b[layers - 1], m, spec.sizes[0]));
    let mut input_of: Vec<Vec<f64>> = (0..layers)
        .map(|l| if l == 0 { centered.clone().unwrap_or_else(|| x.to_vec()) } else { fwd.a[l].clone() })
        .collect();
    let mut z_of: Vec<Vec<f64>> = fwd.z.clone();
    // AuxK (a two-layer TopK model): its rows follow the main rows through the decoder and
    // encoder, so one pass over 2m rows gives both terms' gradients (docs/design.md section 12):
    // delta_2 rows m..2m = (C/m) (recons - (X - Xhat)), the decoder reads A_aux there, the
    // encoder the same input again.
    let mut m = m;
    if let (true, Some(aux)) = (terms.sparsity, &fwd.aux) {
        delta.extend(auxk_delta_of(&aux.recons, &aux.residual, aux.coefficient / m as f64));
        let again = input_of[0].clone();
        input_of[0].extend(again);
        input_of[1].extend(&aux.a);
        let zc = z_of[1].clone();
        z_of[1].extend(zc);
        m *= 2;
    }
    for l in (1..=layers).rev() {
        let (n, k) = spec.shape(l);
        // dW_l = delta_l^T A_{l-1} + lambda W_l ;  db_l = column sums of delta_l
        let input = &input_of[l - 1];
        let mut dwl = matmul_backward_weight(&delta, input, m, n, k);
        for (d, w) in dwl.iter_mut().zip(&model.w[l - 1]) {
            *d += lambda * w;
        }
        dw[l - 1] = dwl;
        db[l - 1] = column_sum(&delta, m, n, ColumnTransform::Value, 1.0);
        if l == 1 {
            // The pre-bias path: dJ/db_L -= db_1^T W_1.
            if spec.pre_bias {
                let db1 = db[0].clone();
                pre_bias_backward(&db1, &model.w[0], &mut db[layers - 1]);
            }
            break;
        }
        // G = delta_l W_l
        let g = matmul_backward_input(&delta, &model.w[l - 1], m, n, k);
        let act = spec.activation(l - 1);
        // JumpReLU: G [z > theta], and the thresholds' straight-through gradient with L0's.
        if let (true, crate::model::CodeSelect::JumpRelu { bandwidth, .. }) = (l - 1 == c, spec.select) {
            let l0 = if let Sparsity::L0 { coefficient } = sparsity { coefficient / m as f64 } else { 0.0 };
            (delta, dt) = jumprelu_backward(&g, &z_of[c], &model.t, bandwidth as f64, l0);
            continue;
        }
        delta = if l - 1 == c && sparsity != Sparsity::None {
            kl_backward(&g, &fwd.z[c], &fwd.a[c], &fwd.rho_hat, act, sparsity, m)
        } else {
            activation_backward(&g, &z_of[l - 1], &input_of[l - 1], act)
        };
    }
    // L1's decoder term: dW_L's column j gains (C/m) (sum_i |a_ij|) w_j / ||w_j||.
    if let Sparsity::L1 { coefficient } = sparsity {
        let (rows, cols) = spec.shape(layers);
        l1_decoder_grad(
            &fwd.a[c],
            fwd.m,
            &model.w[layers - 1],
            &mut dw[layers - 1],
            rows,
            cols,
            coefficient / fwd.m as f64,
        );
    }
    Grads { dw, db, dt }
}

/// An optimizer in f64 with its state: the twin of the device's update step. The state
/// tensors are per parameter tensor, weights first (`W_1..W_L`, then `b_1..b_L`), as the
/// device's parameter layout orders them.
#[derive(Clone, Debug)]
pub struct Optim {
    pub optimizer: Optimizer,
    pub schedule: LrSchedule,
    /// The peak learning rate.
    pub lr: f64,
    /// lambda: an L2 term (in J and the gradient), or decoupled for AdamW.
    pub weight_decay: f64,
    /// Steps over which beta ramps up (0: none).
    pub beta_warmup: u64,
    /// Steps over which kl-freq's target anneals to rho (0: none).
    pub rho_anneal: u64,
    /// The global gradient norm gradients are clipped to.
    pub clip_grad_norm: Option<f64>,
    /// Unit-norm decoder columns: `dW_L` projected before the update, `W_L`'s columns
    /// renormalised after it (docs/design.md section 12).
    pub decoder_norm: bool,
    /// AuxK's term, over the latents dead before the step's gradient.
    pub auxk: Option<crate::model::AuxK>,
    /// Steps taken.
    pub t: u64,
    /// Velocity or first moment, and second moment, per tensor.
    pub m: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
    /// Samples since each code unit last fired (`fire_count`).
    pub since_fired: Vec<u32>,
}

impl Optim {
    pub fn new(model: &Model, optimizer: Optimizer, schedule: LrSchedule, lr: f64, weight_decay: f64) -> Optim {
        // Weights, biases, then a JumpReLU code's log thresholds (empty otherwise).
        let zeros: Vec<Vec<f64>> =
            model.w.iter().chain(&model.b).chain(std::iter::once(&model.t)).map(|t| vec![0.0; t.len()]).collect();
        Optim {
            optimizer,
            schedule,
            lr,
            weight_decay,
            beta_warmup: 0,
            rho_anneal: 0,
            clip_grad_norm: None,
            decoder_norm: false,
            auxk: None,
            t: 0,
            m: zeros.clone(),
            v: zeros,
            since_fired: vec![0; model.spec.code_width()],
        }
    }

    /// The loss settings the next step's J is computed with: AdamW's weight decay is not part
    /// of J, and beta is the next step's share during a warm-up.
    pub fn loss_config(&self, cfg: &LossConfig) -> LossConfig {
        let weight_decay = if self.optimizer.decoupled_weight_decay() { 0.0 } else { cfg.weight_decay };
        let sparsity = cfg.sparsity.scaled(crate::optim::beta_scale(self.beta_warmup, self.t + 1));
        LossConfig { weight_decay, sparsity }
    }

    /// One update from `grads`, which hold no weight-decay term (the update adds it, to the
    /// weights only).
    pub fn update(&mut self, model: &mut Model, grads: &Grads) {
        self.t += 1;
        let lr = scheduled_lr(&self.schedule, self.lr, self.t);
        let layers = model.w.len();
        let (rows, cols) = model.spec.shape(layers);
        let mut grads = grads.clone();
        if self.decoder_norm {
            decoder_project(&model.w[layers - 1], &mut grads.dw[layers - 1], rows, cols);
        }
        let coef = match self.clip_grad_norm {
            Some(max_norm) => {
                grad_norm(grads.dw.iter().chain(&grads.db).chain([&grads.dt]).flatten().copied(), max_norm)
            }
            None => 1.0,
        };
        let clipped: Vec<Vec<f64>> =
            grads.dw.iter().chain(&grads.db).chain([&grads.dt]).map(|g| g.iter().map(|v| v * coef).collect()).collect();
        let params = model.w.iter_mut().chain(model.b.iter_mut()).chain(std::iter::once(&mut model.t));
        let gs = clipped.iter();
        for (i, ((p, g), (m, v))) in params.zip(gs).zip(self.m.iter_mut().zip(self.v.iter_mut())).enumerate() {
            let decay = if i < layers { self.weight_decay } else { 0.0 };
            match self.optimizer {
                Optimizer::Sgd => sgd_update(p, g, lr, decay),
                Optimizer::Momentum { momentum } => momentum_update(p, g, m, lr, decay, momentum),
                Optimizer::Adam { beta1, beta2, eps } => {
                    adam_update(p, g, m, v, lr, decay, (beta1, beta2, eps), self.t, false)
                }
                Optimizer::AdamW { beta1, beta2, eps } => {
                    adam_update(p, g, m, v, lr, decay, (beta1, beta2, eps), self.t, true)
                }
            }
        }
        if self.decoder_norm {
            decoder_normalize(&mut model.w[layers - 1], rows, cols);
        }
    }
}

/// One step of `optim` on the minibatch `x` (`m` rows); returns the loss before the update.
pub fn step_with(model: &mut Model, cfg: &LossConfig, x: &[f64], m: usize, optim: &mut Optim) -> (LossParts, Forward) {
    let share = crate::optim::beta_scale(optim.beta_warmup, optim.t + 1);
    let target_share = crate::optim::beta_scale(optim.rho_anneal, optim.t + 1);
    let scaled = optim.loss_config(cfg);
    let fwd = forward(model, &scaled, x, m);
    let parts = loss(model, &scaled, &fwd, x, Terms::ALL);
    // Firing counts: tracking, and kl-freq's controller on the code bias.
    let (c, nc) = (model.spec.code_layer, model.spec.code_width());
    let update = FireUpdate { anneal: optim.rho_anneal, ..FireUpdate::for_step(cfg.sparsity) };
    let fires = fires_source(&model.spec, &fwd.z, &fwd.a).to_vec();
    fire_count(&fires, m, nc, &mut optim.since_fired, &mut model.b[c - 1], update, share, optim.t + 1);
    // AuxK: the latents dead after this step's counts.
    let fwd = match optim.auxk {
        Some(auxk) => {
            let dead: Vec<bool> = optim.since_fired.iter().map(|&s| s as u64 >= auxk.dead_after).collect();
            with_auxk(model, fwd, x, auxk, &dead)
        }
        None => fwd,
    };
    // J at rho; kl-freq's push at this step's target.
    let cfg = LossConfig { sparsity: scaled.sparsity.annealed(target_share), ..scaled };
    let grads = backward(model, &LossConfig { weight_decay: 0.0, ..cfg }, &fwd, x, Terms::ALL);
    optim.update(model, &grads);
    (parts, fwd)
}

/// One SGD step at a constant learning rate on the minibatch `x` (`m` rows); returns the loss
/// before the update.
pub fn step(model: &mut Model, cfg: &LossConfig, x: &[f64], m: usize, lr: f64) -> (LossParts, Forward) {
    let mut optim = Optim::new(model, Optimizer::Sgd, LrSchedule::default(), lr, cfg.weight_decay);
    step_with(model, cfg, x, m, &mut optim)
}
