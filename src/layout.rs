//! Every size and offset in one place: the flat parameter buffer (and the gradients and any
//! optimizer state, which share its layout), the activations of a batch, the metrics block, the
//! step state, the checkpoint's tensor names, and the adapter's binding-size limit they must
//! respect. See docs/design.md section 7.

use crate::error::{Error, Result};
use crate::model::{ModelSpec, Params};
use bytemuck::{Pod, Zeroable};

/// Storage-buffer bindings at an offset must be aligned to `min_storage_buffer_offset_alignment`,
/// which WebGPU caps at 256 bytes; aligning every tensor to 256 bytes is valid on any adapter.
pub const ALIGN_FLOATS: usize = 64;

/// `n` rounded up to a whole number of [`ALIGN_FLOATS`].
pub fn align(n: usize) -> usize {
    n.div_ceil(ALIGN_FLOATS) * ALIGN_FLOATS
}

/// The row where AuxK's rows start after a batch of `m` rows in the activation buffers
/// (docs/design.md section 12): `m` rounded up to [`ALIGN_FLOATS`] rows, so each layer's AuxK
/// rows start at an aligned offset whatever its width.
pub fn auxk_row(m: usize) -> usize {
    align(m)
}

/// Fails with bad input when `bytes` of `what` do not fit one storage binding of an adapter
/// with `limits`; `advice` says what to change.
pub fn check_binding(limits: &wgpu::Limits, what: &str, bytes: usize, advice: &str) -> Result<()> {
    let max = limits.max_storage_buffer_binding_size as usize;
    if bytes <= max {
        return Ok(());
    }
    let advice = if advice.is_empty() { String::new() } else { format!(": {advice}") };
    Err(Error::input(format!(
        "{what} take {bytes} bytes, more than this adapter's largest storage binding ({max} bytes){advice}"
    )))
}

/// Where each tensor sits in the flat parameter buffer. Weights come first, biases after, each
/// tensor aligned to 256 bytes; padding stays zero. Gradients and the optimizer's state (velocity,
/// moments) use the same layout, so one dispatch updates every parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// `(offset, len)` of `W_l` at index `l - 1`.
    pub weights: Vec<(usize, usize)>,
    /// `(offset, len)` of `b_l` at index `l - 1`.
    pub biases: Vec<(usize, usize)>,
    /// Elements in the weight region (weight decay applies below this index).
    pub weights_len: usize,
    /// `(offset, len)` of a JumpReLU code's `log theta` after the biases (len 0 otherwise).
    pub thresholds: (usize, usize),
    /// Elements in the whole buffer.
    pub len: usize,
}

impl ParamLayout {
    pub fn new(spec: &ModelSpec) -> Self {
        // Places tensors of the given lengths one after another from `start`, each aligned.
        let place = |start: usize, lens: Vec<usize>| {
            let mut at = start;
            let places = lens
                .into_iter()
                .map(|len| {
                    let start = at;
                    at += align(len);
                    (start, len)
                })
                .collect();
            (places, at)
        };
        let (weights, weights_len) = place(0, (1..=spec.layers()).map(|l| spec.shape(l).0 * spec.shape(l).1).collect());
        let (biases, thresholds_at) = place(weights_len, spec.sizes[1..].to_vec());
        let count = spec.threshold_count();
        let len = thresholds_at + align(count);
        ParamLayout { weights, biases, weights_len, thresholds: (thresholds_at, count), len }
    }

    pub fn flatten(&self, params: &Params) -> Vec<f32> {
        let mut flat = vec![0.0; self.len];
        let tensors = self.weights.iter().zip(&params.weights).chain(self.biases.iter().zip(&params.biases));
        for (&(at, len), values) in tensors {
            flat[at..at + len].copy_from_slice(values);
        }
        let (at, len) = self.thresholds;
        flat[at..at + len].copy_from_slice(&params.thresholds);
        flat
    }

    pub fn unflatten(&self, flat: &[f32]) -> Params {
        let take = |places: &[(usize, usize)]| places.iter().map(|&(at, len)| flat[at..at + len].to_vec()).collect();
        let (at, len) = self.thresholds;
        Params { weights: take(&self.weights), biases: take(&self.biases), thresholds: flat[at..at + len].to_vec() }
    }

    /// Checks that the parameters fit one storage binding.
    pub fn check(&self, spec: &ModelSpec, limits: &wgpu::Limits) -> Result<()> {
        check_binding(limits, &format!("the model's {} parameters", spec.parameter_count()), self.len * 4, "")
    }
}

/// `(name, shape)` of every tensor in checkpoint order, as a PyTorch module with attributes
/// `enc1..encK`, `dec1..decK` names them: weight `[out, in]` then bias `[out]` per layer.
pub fn tensor_names(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    (1..=spec.layers())
        .flat_map(|l| {
            let (n_out, n_in) = spec.shape(l);
            let name = spec.layer_name(l);
            [(format!("{name}.weight"), vec![n_out, n_in]), (format!("{name}.bias"), vec![n_out])]
        })
        .chain(
            (spec.threshold_count() > 0)
                .then(|| (format!("{}.log_threshold", spec.layer_name(spec.code_layer)), vec![spec.code_width()])),
        )
        .collect()
}

/// Z, A and delta of a batch of `rows`: layer `l` (0 = the input X) is `[rows, n_l]` row-major,
/// `lens[l]` elements (aligned). The fused path keeps all layers of one kind in one buffer, layer
/// `l` at `offsets[l]`; the layered path gives each layer a buffer of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationLayout {
    pub lens: Vec<usize>,
    pub offsets: Vec<usize>,
    /// Elements of all layers together.
    pub total: usize,
}

impl ActivationLayout {
    pub fn new(spec: &ModelSpec, rows: usize) -> Self {
        let lens: Vec<usize> = spec.sizes.iter().map(|&n| align(rows * n)).collect();
        let offsets = lens.iter().scan(0, |at, len| Some(std::mem::replace(at, *at + len))).collect();
        ActivationLayout { total: lens.iter().sum(), lens, offsets }
    }

    /// Every layer's activations must fit one binding (the layered path binds them one by one).
    pub fn check_layers(spec: &ModelSpec, rows: usize, limits: &wgpu::Limits) -> Result<()> {
        let widest = spec.sizes.iter().copied().max().unwrap_or(1);
        // Checked: a batch size comes from a flag.
        let bytes = rows.checked_mul(widest).and_then(|n| n.checked_mul(4)).unwrap_or(usize::MAX);
        check_binding(limits, &format!("a batch of {rows} x {widest} activations"), bytes, "use a smaller --batch-size")
    }

    /// Whether all layers together fit one binding, as the fused path binds them.
    pub fn fits_one_binding(&self, limits: &wgpu::Limits) -> bool {
        self.total * 4 <= limits.max_storage_buffer_binding_size as usize
    }
}

/// Values of `loss_value`'s output, in order: J, reconstruction, weight decay, sparsity, and
/// the sum of squared errors.
pub const LOSS_SLOTS: usize = 5;

/// Layout of the metrics block copied back on request, each part 256-byte aligned:
/// `[loss_value output | freq | mean activation]` in the metrics buffer, then rho_hat and the
/// samples since each code unit last fired (u32), which have buffers of their own: `loss_value`
/// reads rho_hat while writing the loss (one buffer cannot be both read-only and read-write in
/// one dispatch), and `fire_count` writes the frequency beside the counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricsLayout {
    pub loss: usize,
    pub freq: usize,
    pub mean: usize,
    /// Where rho_hat lands in the staging copy (= the metrics buffer's length).
    pub rho_hat: usize,
    /// Where the samples since each unit fired land in the staging copy.
    pub since_fired: usize,
    /// Elements of the whole staging copy.
    pub len: usize,
}

impl MetricsLayout {
    pub fn new(code_width: usize) -> Self {
        let nc = align(code_width);
        let loss = align(LOSS_SLOTS);
        MetricsLayout {
            loss: 0,
            freq: loss,
            mean: loss + nc,
            rho_hat: loss + 2 * nc,
            since_fired: loss + 3 * nc,
            len: loss + 4 * nc,
        }
    }
}

/// The step state: the position of the current minibatch's first row in the epoch's order (the
/// cursor) and the steps taken, in a small device buffer that the kernels read and advance (the
/// `STATE_*` words in `shaders/common.wgsl`), so that many steps recorded into one submit each
/// see their own. See docs/design.md section 5.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct StepState {
    pub cursor: u32,
    /// The step count this step's kernels read (`t = step + 1`).
    pub step: u32,
    /// Steps completed: what a layered step's update advances and the next `gather_rows`
    /// copies into `step` (equal to `step` between steps).
    pub done: u32,
    pub _pad: u32,
}

impl StepState {
    /// Elements (4-byte words) of the buffer.
    pub const WORDS: usize = 4;
}

/// What the update kernels apply at step `t` (1-based): entry `t - 1` of the step-values
/// table, computed on the host in f64 for the whole run (the last entry serves every later
/// step), so that a schedule's cosine and Adam's bias corrections do not depend on an adapter's
/// `cos` and `pow`. See `optim::step_values` and docs/design.md section 5.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct StepValues {
    /// The learning rate of the step.
    pub lr: f32,
    /// Adam: `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// Adam: `sqrt(1 - beta2^t)`.
    pub bc2_sqrt: f32,
    /// The share of the sparsity weight beta this step applies (`--beta-warmup-steps`).
    pub beta_scale: f32,
}
