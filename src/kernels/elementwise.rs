//! Element-wise kernels and reductions: `shaders/sparsity.wgsl`, `reduce.wgsl`, `fires.wgsl`,
//! `loss.wgsl` and `update.wgsl`. Their FLOP counts are napkin math, one per add,
//! multiply or transcendental; what bounds them is the bytes they move.

use super::{Cost, Kernel, Kernels, Launch, View};
use crate::layout::LOSS_SLOTS;
use crate::model::{Activation, Sparsity, RHO_HAT_EPS};
use crate::optim::{Optimizer, UpdateRule};
use crate::reference::{ColumnTransform, FireUpdate};
use bytemuck::{Pod, Zeroable};

// Uniform blocks, laid out as the WGSL structs of the same name.

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Kl {
    rows: u32,
    cols: u32,
    act: u32,
    mode: u32,
    rho: f32,
    beta_over_m: f32,
    temperature: f32,
    eps: f32,
    anneal_steps: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Reduce {
    rows: u32,
    cols: u32,
    transform: u32,
    _pad: u32,
    scale: f32,
    temperature: f32,
    _pad1: u32,
    _pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Fires {
    rows: u32,
    cols: u32,
    track: u32,
    anneal_steps: u32,
    scale: f32,
    rho: f32,
    control: f32,
    rho_transform: u32,
    temperature: f32,
    kl_rho: f32,
    beta_over_m: f32,
    eps: f32,
    term_at: u32,
    _pad: [u32; 3],
}

/// The KL gradient's column term that `fire_count_rho` can write beside rho_hat, at `at` in
/// the rho_hat binding (an aligned offset past rho_hat): `(beta/m) beta_scale KL'(rho_hat_j)`,
/// kl_backward's `dkl` for kl and kl-soft-freq, which the code layer's backward pair then adds
/// in its epilogue ([`super::PairInput::Penalty`]).
#[derive(Clone, Copy, Debug)]
pub struct KlTerm {
    pub at: usize,
    pub rho: f64,
    /// beta over the rows of the backward pass.
    pub beta_over_m: f64,
}

impl Fires {
    /// Over `[m, n]`, as `update` asks; `rho_transform` is fire_count_rho's column_term code
    /// (unread by fire_count).
    fn new(m: usize, n: usize, update: FireUpdate, rho_transform: u32, temperature: f64) -> Fires {
        Fires {
            rows: m as u32,
            cols: n as u32,
            track: u32::from(update.track),
            anneal_steps: update.anneal as u32,
            scale: (1.0 / m as f64) as f32,
            rho: update.rho as f32,
            control: update.control as f32,
            rho_transform,
            temperature: temperature as f32,
            kl_rho: 0.0,
            beta_over_m: 0.0,
            eps: RHO_HAT_EPS as f32,
            term_at: 0,
            _pad: [0; 3],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Loss {
    rows: u32,
    cols: u32,
    act: u32,
    weights_len: u32,
    inv_m: f32,
    half_lambda: f32,
    rho: f32,
    beta: f32,
    code_width: u32,
    sparsity: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Update {
    len: u32,
    weights_len: u32,
    lambda: f32,
    decoupled: u32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    max_norm: f32,
    advance_rows: u32,
    _pad: [u32; 2],
}

impl Update {
    fn new(len: usize, weights_len: usize, rule: &UpdateRule) -> Update {
        let (momentum, (beta1, beta2, eps)) = match rule.optimizer {
            Optimizer::Sgd => (0.0, (0.0, 0.0, 0.0)),
            Optimizer::Momentum { momentum } => (momentum, (0.0, 0.0, 0.0)),
            Optimizer::Adam { beta1, beta2, eps } | Optimizer::AdamW { beta1, beta2, eps } => {
                (0.0, (beta1, beta2, eps))
            }
        };
        Update {
            len: len as u32,
            weights_len: weights_len as u32,
            lambda: rule.weight_decay as f32,
            decoupled: u32::from(rule.optimizer.decoupled_weight_decay()),
            momentum: momentum as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: eps as f32,
            max_norm: rule.clip_grad_norm.unwrap_or(0.0) as f32,
            advance_rows: 0,
            _pad: [0; 2],
        }
    }
}

/// The step state and the step-values table, which every update kernel reads (and the kernels
/// that apply beta), and the gradient-clipping coefficient the update kernels multiply by.
#[derive(Clone, Copy)]
pub struct StepViews<'a> {
    pub state: &'a View,
    pub values: &'a View,
    pub clip: &'a View,
    /// The update kernels: ends the step, moving the cursor by this many rows and the steps
    /// done by one (docs/design.md section 5); 0 where `advance_cursor` does it.
    pub advance_rows: usize,
}

/// The cost of an element-wise launch over `elements`, `flops_each` per element, moving
/// `floats` values.
fn cost(kernel: Kernel, shape: String, elements: usize, flops_each: f64, floats: usize) -> Cost {
    Cost { label: kernel.name().to_string(), shape, flops: flops_each * elements as f64, bytes: 4.0 * floats as f64 }
}

/// The mode and settings of the KL uniform blocks (`shaders/sparsity.wgsl`, `shaders/fused.wgsl`):
/// `(mode, rho, beta, temperature)`, mode 0 none, 1 mean-activation KL, 2 hard firing-frequency
/// KL (straight-through), 3 smooth firing-frequency KL.
pub fn kl_mode(sparsity: Sparsity) -> (u32, f64, f64, f64) {
    match sparsity {
        Sparsity::None => (0, 0.05, 0.0, 1.0),
        Sparsity::Kl { rho, beta } => (1, rho, beta, 1.0),
        Sparsity::KlFreq { rho, beta, temperature, .. } => (2, rho, beta, temperature),
        Sparsity::KlSoftFreq { rho, beta, temperature } => (3, rho, beta, temperature),
        Sparsity::L1 { coefficient } => (4, 0.05, coefficient, 1.0),
        // JumpReLU's L0 reaches the thresholds only (jumprelu_backward); measured on the host.
        Sparsity::L0 { coefficient } => (5, 0.05, coefficient, 1.0),
    }
}

impl Kernels {
    /// The code layer's delta with the KL sparsity gradient (docs/design.md section 4), beta
    /// times this step's `beta_scale` from the step-values table; kl-freq's target annealed
    /// over `anneal_steps` steps (section 11; 0: none).
    /// `sparsity` is a KL penalty: without one the code layer takes the plain
    /// activation-derivative epilogue instead.
    #[allow(clippy::too_many_arguments)]
    pub fn kl_backward(
        &self,
        g: &View,
        z: &View,
        a: &View,
        rho_hat: &View,
        delta: &View,
        m: usize,
        n: usize,
        act: Activation,
        sparsity: Sparsity,
        anneal_steps: u64,
        steps: StepViews<'_>,
    ) -> Launch {
        let (mode, rho, beta, temperature) = kl_mode(sparsity);
        assert!(mode != 0, "kl_backward without a sparsity penalty");
        let params = Kl {
            rows: m as u32,
            cols: n as u32,
            act: act.code(),
            mode,
            rho: rho as f32,
            beta_over_m: (beta / m as f64) as f32,
            temperature: temperature as f32,
            eps: RHO_HAT_EPS as f32,
            anneal_steps: anneal_steps as u32,
            _pad: [0; 3],
        };
        let cost = cost(Kernel::KlBackward, format!("{m}x{n}"), m * n, 6.0, 4 * m * n + n);
        let tensors = [g, z, a, rho_hat, delta, steps.state, steps.values];
        self.launch(Kernel::KlBackward, params, &tensors, Self::elementwise_groups(m * n), cost)
    }

    /// `out[j] = scale * sum_i t(x[i,j])` over `[m, n]`.
    pub fn column_sum(&self, x: &View, out: &View, m: usize, n: usize, t: ColumnTransform, scale: f64) -> Launch {
        let (transform, temperature) = match t {
            ColumnTransform::Value => (0, 1.0),
            ColumnTransform::Fires => (1, 1.0),
            ColumnTransform::SoftFires { temperature } => (2, temperature),
        };
        let params = Reduce {
            rows: m as u32,
            cols: n as u32,
            transform,
            _pad: 0,
            scale: scale as f32,
            temperature: temperature as f32,
            _pad1: 0,
            _pad2: 0,
        };
        let cost = cost(Kernel::ColumnSum, format!("{m}x{n}"), m * n, 1.0, m * n + n);
        self.launch(Kernel::ColumnSum, params, &[x, out], [n.div_ceil(64), 1], cost)
    }

    /// `freq[j] = (1/m) #{i : z_ij > 0}` over `[m, n]`, and what `update` asks: the samples since
    /// each unit last fired (`since_fired`, u32) and the frequency controller's move of the code
    /// `bias` (docs/design.md section 11), at this step's beta share.
    #[allow(clippy::too_many_arguments)]
    pub fn fire_count(
        &self,
        z: &View,
        freq: &View,
        since_fired: &View,
        bias: &View,
        m: usize,
        n: usize,
        update: FireUpdate,
        steps: StepViews<'_>,
    ) -> Launch {
        let params = Fires::new(m, n, update, 0, 1.0);
        let cost = cost(Kernel::FireCount, format!("{m}x{n}"), m * n, 1.0, m * n + 4 * n);
        let tensors = [z, freq, since_fired, bias, steps.state, steps.values];
        self.launch(Kernel::FireCount, params, &tensors, [n.div_ceil(64), 1], cost)
    }

    /// `fire_count`, and in the same launch the penalty's `rho_hat = (1/m) sum_i t(x_i)` as
    /// `column_sum` computes it: `rho` is `(x, rho_hat, soft)`, `t` the value, or with
    /// `soft = Some(T)` the soft fires `sigmoid(x / T)`; with `term`, the KL gradient's column
    /// term too, into the same binding ([`KlTerm`]).
    #[allow(clippy::too_many_arguments)]
    pub fn fire_count_rho(
        &self,
        z: &View,
        freq: &View,
        since_fired: &View,
        bias: &View,
        (m, n): (usize, usize),
        update: FireUpdate,
        steps: StepViews<'_>,
        rho: (&View, &View, Option<f64>),
        term: Option<KlTerm>,
    ) -> Launch {
        let (rho_transform, temperature) = match rho.2 {
            // column_term's codes (shaders/common.wgsl), as column_sum passes them.
            None => (0, 1.0),
            Some(temperature) => (2, temperature),
        };
        let mut params = Fires::new(m, n, update, rho_transform, temperature);
        if let Some(t) = term {
            assert!(t.at >= n && rho.1.len >= t.at + n, "fire_count_rho: no room for the KL term");
            // As kl_backward's launcher rounds them, so that the two agree bit for bit.
            (params.kl_rho, params.beta_over_m, params.term_at) = (t.rho as f32, t.beta_over_m as f32, t.at as u32);
        }
        let cost = cost(Kernel::FireCountRho, format!("{m}x{n}"), 2 * m * n, 1.0, 2 * m * n + 5 * n);
        let tensors = [z, freq, since_fired, bias, steps.state, steps.values, rho.0, rho.1];
        self.launch(Kernel::FireCountRho, params, &tensors, [n.div_ceil(64), 1], cost)
    }

    /// `delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)` over `[m, n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn output_delta(
        &self,
        xhat: &View,
        x: &View,
        z: &View,
        delta: &View,
        m: usize,
        n: usize,
        act: Activation,
    ) -> Launch {
        let params = loss_params(m, n, act, 0, 0.0, Sparsity::None, 0);
        let cost = cost(Kernel::OutputDelta, format!("{m}x{n}"), m * n, 3.0, 4 * m * n);
        self.launch(Kernel::OutputDelta, params, &[xhat, x, z, delta], Self::elementwise_groups(m * n), cost)
    }

    /// `out = [J, reconstruction, weight_decay, sparsity, sum of squared errors]`, beta times this
    /// step's `beta_scale` from the step-values table.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_value(
        &self,
        xhat: &View,
        x: &View,
        weights: &View,
        rho_hat: &View,
        out: &View,
        m: usize,
        n: usize,
        weight_decay: f64,
        sparsity: Sparsity,
        steps: StepViews<'_>,
    ) -> Launch {
        let params = loss_params(m, n, Activation::Identity, weights.len, weight_decay, sparsity, rho_hat.len);
        let floats = 2 * m * n + weights.len + rho_hat.len + LOSS_SLOTS;
        let cost = cost(Kernel::LossValue, format!("{m}x{n}"), 2 * m * n + 2 * weights.len, 1.0, floats);
        let tensors = [xhat, x, weights, rho_hat, out, steps.state, steps.values];
        self.launch(Kernel::LossValue, params, &tensors, [1, 1], cost)
    }

    /// `p <- p - lr (g + lambda p)` on the first `weights_len` elements, `p <- p - lr g` after,
    /// with the learning rate of the step the step state (`layout::StepState`) is at, from the
    /// step-values table (`layout::StepValues`).
    pub fn sgd_update(
        &self,
        grads: &View,
        params: &View,
        steps: StepViews<'_>,
        weights_len: usize,
        rule: &UpdateRule,
    ) -> Launch {
        let tensors = [grads, params, steps.state, steps.values, steps.clip];
        self.update(Kernel::SgdUpdate, &tensors, (weights_len, steps.advance_rows), rule, 4.0, 3)
    }

    /// PyTorch's SGD with momentum: `v <- mu v + (g + lambda p)`, `p <- p - lr v`.
    pub fn momentum_update(
        &self,
        grads: &View,
        params: &View,
        steps: StepViews<'_>,
        velocity: &View,
        weights_len: usize,
        rule: &UpdateRule,
    ) -> Launch {
        let tensors = [grads, params, steps.state, steps.values, steps.clip, velocity];
        self.update(Kernel::MomentumUpdate, &tensors, (weights_len, steps.advance_rows), rule, 5.0, 5)
    }

    /// PyTorch's Adam, or AdamW (`rule.optimizer` says which), with the learning rate and bias
    /// corrections of the step the step state is at, from the step-values table.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_update(
        &self,
        grads: &View,
        params: &View,
        steps: StepViews<'_>,
        m: &View,
        v: &View,
        weights_len: usize,
        rule: &UpdateRule,
    ) -> Launch {
        let tensors = [grads, params, steps.state, steps.values, steps.clip, m, v];
        self.update(Kernel::AdamUpdate, &tensors, (weights_len, steps.advance_rows), rule, 12.0, 7)
    }

    /// `clip[0] = min(1, max_norm / (||grads|| + 1e-6))` over every gradient, `max_norm` from
    /// `rule.clip_grad_norm`: PyTorch's `clip_grad_norm_` (one workgroup, a fixed order).
    pub fn grad_norm(&self, grads: &View, clip: &View, rule: &UpdateRule) -> Launch {
        let len = grads.len;
        let uniform = Update::new(len, 0, rule);
        let cost = cost(Kernel::GradNorm, format!("{len} params"), len, 2.0, len + 1);
        self.launch(Kernel::GradNorm, uniform, &[grads, clip], [1, 1], cost)
    }

    /// An update kernel over `tensors[1]` (the parameters), `flops_each` and `floats_each`
    /// moved per parameter.
    fn update(
        &self,
        kernel: Kernel,
        tensors: &[&View],
        (weights_len, advance_rows): (usize, usize),
        rule: &UpdateRule,
        flops_each: f64,
        floats_each: usize,
    ) -> Launch {
        let len = tensors[1].len;
        let uniform = Update { advance_rows: advance_rows as u32, ..Update::new(len, weights_len, rule) };
        let cost = cost(kernel, format!("{len} params"), len, flops_each, floats_each * len);
        // PER_INVOCATION = 4 parameters per invocation (shaders/update.wgsl).
        self.launch(kernel, uniform, tensors, [len.div_ceil(1024), 1], cost)
    }
}

#[allow(clippy::too_many_arguments)]
fn loss_params(
    m: usize,
    n: usize,
    act: Activation,
    weights_len: usize,
    weight_decay: f64,
    sparsity: Sparsity,
    code_width: usize,
) -> Loss {
    let (mode, rho, beta, _) = kl_mode(sparsity);
    Loss {
        rows: m as u32,
        cols: n as u32,
        act: act.code(),
        weights_len: weights_len as u32,
        inv_m: (1.0 / m as f64) as f32,
        half_lambda: (0.5 * weight_decay) as f32,
        rho: rho as f32,
        beta: beta as f32,
        code_width: code_width as u32,
        sparsity: u32::from(mode != 0),
        eps: RHO_HAT_EPS as f32,
        _pad: 0,
    }
}
