//! The schedule of a training step: [`Trainer::schedule`] lists the forward, backward and update
//! dispatches of one step exactly as docs/design.md sections 4 and 5 write them, on either
//! path. Schedules are built once per batch size and source of rows, then replayed.

use super::Trainer;
use crate::device::Gpu;
use crate::kernels::elementwise::{kl_mode, KlTerm, StepViews};
use crate::kernels::matmul::PAIR_MAX_MACS;
use crate::kernels::step::Rows;
use crate::kernels::FUSED_MAX_WIDTH;
use crate::kernels::{
    Cost, FusedBuffers, FusedLayer, FusedNet, Kernel, Kernels, Launch, MatmulVariant, PairInput, View,
};
use crate::layout::{ActivationLayout, ParamLayout, LOSS_SLOTS};
use crate::model::{Activation, CodeSelect, ModelSpec, Sparsity, RHO_HAT_EPS};
use crate::optim::Optimizer;
use crate::reference::{ColumnTransform, FireUpdate};

/// BatchTopK's running threshold: `theta = d theta + (1 - d) low` each step, as
/// saprmarks' dictionary_learning keeps it.
pub const BATCH_THRESHOLD_DECAY: f64 = 0.999;

/// How a step is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPath {
    /// One kernel per operation of docs/design.md section 4, with epilogues (any width).
    Layered,
    /// Four dispatches per step with SGD, five with a sparsity penalty, one more with another
    /// optimizer (`shaders/fused.wgsl`), for layers up to [`FUSED_MAX_WIDTH`] wide.
    Fused,
}

impl StepPath {
    /// The default: fused where it fits, on GPUs; layered on CPU adapters. There the fused
    /// kernels' per-row loops over private arrays run near 1 GFLOP/s (llvmpipe turns each
    /// per-lane array access into a loop over lanes), while the layered path's subgroup
    /// matmuls reach 5-20, so the 18 dispatches saved do not pay for themselves (measured on
    /// lavapipe, seed model at batch 256: 23.5 ms/step fused vs 4.3 layered). A rule rather
    /// than a timing, so a seed reproduces a run bit for bit.
    pub fn auto(spec: &ModelSpec, adapter: &wgpu::AdapterInfo) -> StepPath {
        if Self::fused_fits(spec) && adapter.device_type != wgpu::DeviceType::Cpu {
            StepPath::Fused
        } else {
            StepPath::Layered
        }
    }

    /// Whether every layer is narrow enough for the fused kernels, and the model is one they
    /// compute (a dense code without a pre-bias: the dictionary recipe's parts run layered).
    pub fn fused_fits(spec: &ModelSpec) -> bool {
        spec.sizes.iter().all(|&n| n <= FUSED_MAX_WIDTH) && spec.select == CodeSelect::Dense && !spec.pre_bias
    }

    /// `--path`: `auto` (None), `fused` or `layered`.
    pub fn parse(s: &str) -> Result<Option<StepPath>, String> {
        match s {
            "auto" => Ok(None),
            "fused" => Ok(Some(StepPath::Fused)),
            "layered" => Ok(Some(StepPath::Layered)),
            other => Err(format!("unknown path '{other}': use auto, fused or layered")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StepPath::Layered => "layered",
            StepPath::Fused => "fused",
        }
    }
}

/// Whether the layered forward pass runs as one `panel_forward` dispatch (docs/design.md section
/// 5, "Panel forward"): where the subgroup matmul's vec4 kernel runs (CPU adapters with
/// subgroups), for a model the fused path could take (every width <= 128, a dense code, no
/// pre-bias) whose widths are multiples of 4, with a batch's Z (and A) of every layer in one
/// binding. A rule, as the path's choice is.
pub(crate) fn panel_fits(k: &Kernels, spec: &ModelSpec, layout: &ActivationLayout) -> bool {
    k.matmul_variant() == MatmulVariant::Subgroup
        && k.matmul_vec4()
        && Kernel::PanelForward.available(k.gpu.features)
        && StepPath::fused_fits(spec)
        && spec.sizes.iter().all(|n| n.is_multiple_of(4))
        && layout.fits_one_binding(&k.gpu.limits)
}

/// Z, A and delta of every layer l = 0..=L (layer 0 is X; Z_0 and delta_0 are unused),
/// `[rows, n_l]` row-major. The fused path addresses all layers of one kind through one buffer
/// (`all`, layer l at `layout.offsets[l]`); the layered path gives each layer buffers of its
/// own, so a matmul can read A_{l-1} while its epilogue writes A_l (WebGPU forbids one buffer
/// being read-only and read-write in the same dispatch), except with the panel forward, which
/// writes Z and A of every layer in one dispatch: then Z and A are one buffer each (`panel`,
/// with the layer table; no later launch binds two layers of one of them with a writable one)
/// and delta keeps a buffer per layer (a backward pair reads delta_l and writes delta_{l-1}).
pub(crate) struct Activations {
    pub z: Vec<View>,
    pub a: Vec<View>,
    pub delta: Vec<View>,
    pub all: Option<[View; 3]>,
    /// The panel forward's Z and A of every layer, and the layer table.
    pub panel: Option<[View; 3]>,
    /// With a pre-bias, the encoder's input `X - 1 b_L^T` (`[rows, n_0]`).
    pub centered: Option<View>,
}

impl Activations {
    /// With `panel_table` (the layer table of these offsets), the panel forward's layout.
    pub fn new(gpu: &Gpu, spec: &ModelSpec, m: usize, path: StepPath, panel_table: Option<&View>) -> Self {
        let layout = ActivationLayout::new(spec, m);
        let centered = spec.pre_bias.then(|| View::whole(&gpu.storage("x centered", m * spec.sizes[0])));
        let per_layer_of =
            |v: &View| layout.offsets.iter().zip(&layout.lens).map(|(&at, &len)| v.slice(at, len)).collect();
        match path {
            StepPath::Fused => {
                let all = ["z", "a", "delta"].map(|name| View::whole(&gpu.storage(name, layout.total)));
                Activations {
                    z: per_layer_of(&all[0]),
                    a: per_layer_of(&all[1]),
                    delta: per_layer_of(&all[2]),
                    all: Some(all),
                    panel: None,
                    centered,
                }
            }
            StepPath::Layered if panel_table.is_some() => {
                let [z, a] = ["z", "a"].map(|name| View::whole(&gpu.storage(name, layout.total)));
                let delta = layout
                    .lens
                    .iter()
                    .enumerate()
                    .map(|(l, &len)| View::whole(&gpu.storage(&format!("delta{l}"), len)))
                    .collect();
                Activations {
                    z: per_layer_of(&z),
                    a: per_layer_of(&a),
                    delta,
                    all: None,
                    panel: panel_table.map(|t| [z, a, t.clone()]),
                    centered,
                }
            }
            StepPath::Layered => {
                let per_layer = |name: &str| {
                    layout
                        .lens
                        .iter()
                        .enumerate()
                        .map(|(l, &len)| View::whole(&gpu.storage(&format!("{name}{l}"), len)))
                        .collect()
                };
                Activations {
                    z: per_layer("z"),
                    a: per_layer("a"),
                    delta: per_layer("delta"),
                    all: None,
                    panel: None,
                    centered,
                }
            }
        }
    }
}

/// `W_l` or `b_l` (`l` from 1) in a buffer with the parameter layout (parameters or gradients).
pub(crate) fn weight(buffer: &View, layout: &ParamLayout, l: usize) -> View {
    let (at, len) = layout.weights[l - 1];
    buffer.slice(at, len)
}

pub(crate) fn bias(buffer: &View, layout: &ParamLayout, l: usize) -> View {
    let (at, len) = layout.biases[l - 1];
    buffer.slice(at, len)
}

impl Activations {
    /// The encoder's input, rows `0..m`: X, or with a pre-bias `X - 1 b_L^T`.
    pub fn encoder_input(&self, spec: &ModelSpec, m: usize) -> View {
        self.centered.as_ref().unwrap_or(&self.a[0]).head(m * spec.sizes[0])
    }

    /// Where the code's firing is read, rows `0..m` (`reference::fires_source`): `Z_c`, or for
    /// a ReLU code `A_c` (only the units a TopK selection kept fire).
    pub fn fires_source(&self, spec: &ModelSpec, m: usize) -> View {
        let c = spec.code_layer;
        let per_layer = if spec.activation(c) == Activation::Relu { &self.a } else { &self.z };
        per_layer[c].head(m * spec.sizes[c])
    }
}

/// The layered forward pass, shared by training and inference (`training`: BatchTopK selects
/// over the minibatch; at inference, by its threshold):
/// `X = the rows` ; `Z_l = A_{l-1} W_l^T + 1 b_l^T`, `A_l = f_l(Z_l)` in one dispatch a layer;
/// with a pre-bias layer 1 reads `X - 1 b_L^T`, and a TopK code keeps the K largest of each
/// row of `Z_c` (docs/design.md section 12).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layered_forward(
    k: &Kernels,
    spec: &ModelSpec,
    params: &View,
    layout: &ParamLayout,
    acts: &Activations,
    (data, order, state): (&View, &View, &View),
    from: Rows,
    m: usize,
    training: bool,
    output_delta: Option<&View>,
) -> Vec<Launch> {
    let rows = |v: &[View], l: usize| v[l].head(m * spec.sizes[l]);
    let mut forward = vec![k.gather_rows(data, order, state, &rows(&acts.a, 0), m, spec.sizes[0], from)];
    if let Some([z, a, table]) = &acts.panel {
        // Every layer in one dispatch (a model panel_fits takes: dense, no pre-bias).
        forward.push(k.panel_forward(table, params, (z, a), output_delta, m, spec));
        return forward;
    }
    if let Some(centered) = &acts.centered {
        let b_out = bias(params, layout, spec.layers());
        forward.push(k.center_rows(&rows(&acts.a, 0), &b_out, &centered.head(m * spec.sizes[0]), m, spec.sizes[0]));
    }
    for l in 1..=spec.layers() {
        let (n, kk) = spec.shape(l);
        let input = if l == 1 { acts.encoder_input(spec, m) } else { rows(&acts.a, l - 1) };
        let (w, b) = (weight(params, layout, l), bias(params, layout, l));
        let (z, a) = (rows(&acts.z, l), rows(&acts.a, l));
        let launch = match output_delta {
            // The backward pass's delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L) in the last layer's
            // epilogue, X the gathered rows.
            Some(delta) if l == spec.layers() => {
                let x = rows(&acts.a, 0);
                k.matmul_forward_output_delta(&input, &w, &b, (&z, &a), (&x, delta), (m, kk, n), spec.activation(l))
            }
            _ => k.matmul_forward_bias_activation(&input, &w, &b, &z, &a, m, kk, n, spec.activation(l)),
        };
        forward.push(launch.at_layer(l));
        match (l == spec.code_layer, spec.select) {
            (true, CodeSelect::TopK { k: topk }) => {
                forward.push(k.topk(&rows(&acts.z, l), &rows(&acts.a, l), m, n, topk))
            }
            (true, CodeSelect::BatchTopK { k: topk, .. }) if training => {
                let dims = (1, m * n, topk * m);
                forward.push(k.topk_with(
                    crate::kernels::Kernel::TopK,
                    &rows(&acts.z, l),
                    &rows(&acts.a, l),
                    dims,
                    None,
                ));
            }
            (true, CodeSelect::BatchTopK { threshold, .. }) => {
                forward.push(k.threshold_code(&rows(&acts.z, l), &rows(&acts.a, l), m, n, threshold))
            }
            (true, CodeSelect::JumpRelu { .. }) => {
                let (at, len) = layout.thresholds;
                forward.push(k.jumprelu_forward(&rows(&acts.z, l), &params.slice(at, len), &rows(&acts.a, l), m, n))
            }
            _ => {}
        }
    }
    forward
}

/// The launches of one step for one batch size and one source of rows.
pub(crate) struct Schedule {
    /// forward, backward, update.
    pub step: Vec<Launch>,
    /// forward, metrics, backward, update.
    pub step_with_metrics: Vec<Launch>,
    /// forward, metrics, and the cursor moved past the rows (no step counted).
    pub evaluate: Vec<Launch>,
    /// forward and backward with rho_hat as the host wrote it (the whole set's, for a
    /// full-batch gradient), the gradients left in `grads`, and the cursor moved past the rows.
    pub gradient: Vec<Launch>,
    /// forward, rho_hat, metrics and backward: J and its gradient in one pass, for a set that
    /// is one minibatch (its rho_hat is then the whole set's).
    pub evaluate_gradient: Vec<Launch>,
}

impl Trainer {
    /// Rows `0..m` of layer `l` of one of `acts.z`, `acts.a`, `acts.delta`.
    fn rows(&self, per_layer: &[View], l: usize, m: usize) -> View {
        per_layer[l].head(m * self.spec.sizes[l])
    }

    /// The dispatches of one training step on a minibatch of `m` rows from `from`:
    /// docs/design.md section 5.
    pub(crate) fn schedule(&self, m: usize, from: Rows) -> Schedule {
        let k = &self.kernels;
        let spec = &self.spec;
        let layers = spec.layers();
        let c = spec.code_layer;
        let nc = spec.code_width();
        let n0 = spec.sizes[0];
        let b = &self.buffers;
        let z = |l: usize| self.rows(&b.acts.z, l, m);
        let a = |l: usize| self.rows(&b.acts.a, l, m);
        let delta = |l: usize| self.rows(&b.acts.delta, l, m);
        let w = |l: usize| weight(&b.params, &self.layout, l);
        let g = |n: usize| b.g.head(m * n);
        let inv_m = 1.0 / m as f64;
        let data = if from == Rows::Host { &b.x_staging } else { &b.data };
        let sparsity = self.loss.sparsity;
        let steps = StepViews { state: &b.state, values: &b.step_values, clip: &b.clip, advance_rows: 0 };
        // The weight-decay term of J: none for AdamW, whose decay is decoupled.
        let l2 = if self.optimizer.decoupled_weight_decay() { 0.0 } else { self.loss.weight_decay };

        // rho_hat of the current minibatch, before any backward dispatch; in a training step
        // also the firing counts (docs/design.md section 11): the samples since each code unit
        // fired, and kl-freq's controller on the code bias. Under kl-freq, whose rho_hat is the
        // hard frequency, one fire_count does all of it.
        let ml = &self.metrics_layout;
        // Rows of the backward pass: AuxK's dead-latent rows follow the batch's (below).
        let mb = if self.auxk.is_some() { crate::layout::auxk_row(m) + m } else { m };
        // kl and kl-soft-freq on the layered path: fire_count_rho writes the KL gradient's
        // column term, and the training step's backward pair at the code layer adds it (the
        // full-batch gradient, whose rho_hat the host writes, keeps kl_backward).
        let fold_kl =
            self.path == StepPath::Layered && matches!(sparsity, Sparsity::Kl { .. } | Sparsity::KlSoftFreq { .. });
        let kl_term = b.rho_hat_and_term.slice(crate::layout::align(nc), nc);
        let code_bias = bias(&b.params, &self.layout, c);
        let fired = b.acts.fires_source(spec, m);
        let fires = |out: &View, update: FireUpdate| {
            k.fire_count(&fired, out, &b.since_fired, &code_bias, m, nc, update, steps).noting("fires")
        };
        let smooth_rho_hat = match sparsity {
            Sparsity::None | Sparsity::KlFreq { .. } | Sparsity::L0 { .. } => None,
            Sparsity::Kl { .. } => Some(k.column_sum(&a(c), &b.rho_hat, m, nc, ColumnTransform::Value, inv_m)),
            Sparsity::KlSoftFreq { temperature, .. } => {
                Some(k.column_sum(&z(c), &b.rho_hat, m, nc, ColumnTransform::SoftFires { temperature }, inv_m))
            }
            // L1: the decoder's column norms, which weight each unit's L1 (docs/design.md section 12).
            Sparsity::L1 { .. } => {
                let (rows, cols) = spec.shape(layers);
                Some(k.column_norms(&w(layers), &b.rho_hat, rows, cols))
            }
        }
        .map(|l| l.noting("rho_hat"));
        let (mut counts, eval_counts): (Vec<Launch>, Vec<Launch>) = match sparsity {
            Sparsity::KlFreq { .. } => {
                let update = FireUpdate { anneal: self.rho_anneal, ..FireUpdate::for_step(sparsity) };
                (vec![fires(&b.rho_hat, update)], vec![fires(&b.rho_hat, FireUpdate::NONE)])
            }
            _ => {
                let freq = b.metrics.slice(ml.freq, nc);
                let update = FireUpdate::for_step(sparsity);
                // kl and kl-soft-freq: rho_hat in the counts' launch (fire_count_rho).
                let with_rho = match sparsity {
                    Sparsity::Kl { .. } => Some((a(c), None)),
                    Sparsity::KlSoftFreq { temperature, .. } => Some((z(c), Some(temperature))),
                    _ => None,
                };
                let train = match with_rho {
                    // On the layered path also the KL gradient's column term, which the code
                    // layer's backward pair adds in its epilogue instead of a kl_backward launch.
                    Some((x, soft)) => {
                        let (_, rho_value, beta, _) = kl_mode(sparsity);
                        let at = kl_term.offset - b.rho_hat.offset;
                        let term = fold_kl.then_some(KlTerm { at, rho: rho_value, beta_over_m: beta / mb as f64 });
                        let rho = (&x, if fold_kl { &b.rho_hat_and_term } else { &b.rho_hat }, soft);
                        let (freq_out, since, dims) = (&freq, &b.since_fired, (m, nc));
                        let all = k.fire_count_rho(&fired, freq_out, since, &code_bias, dims, update, steps, rho, term);
                        vec![all.noting(if fold_kl { "fires, rho_hat, KL term" } else { "fires, rho_hat" })]
                    }
                    None => smooth_rho_hat.iter().cloned().chain([fires(&freq, update)]).collect(),
                };
                (train, smooth_rho_hat.into_iter().collect())
            }
        };
        // BatchTopK: the running threshold inference uses, from this step's kept activations.
        if let CodeSelect::BatchTopK { .. } = spec.select {
            counts.push(k.batch_threshold(&a(c), &b.threshold, m, nc, BATCH_THRESHOLD_DECAY));
        }

        // Metrics (on request): loss terms, hard firing frequency, mean code activation.
        let metrics = vec![
            k.column_sum(&fired, &b.metrics.slice(ml.freq, nc), m, nc, ColumnTransform::Fires, inv_m).noting("freq"),
            k.column_sum(&a(c), &b.metrics.slice(ml.mean, nc), m, nc, ColumnTransform::Value, inv_m).noting("mean"),
            k.loss_value(
                &a(layers),
                &a(0),
                &b.params.head(self.layout.weights_len),
                &b.rho_hat,
                &b.metrics.slice(ml.loss, LOSS_SLOTS),
                m,
                n0,
                l2,
                sparsity,
                steps,
            ),
        ];

        let (forward, backward, step_backward, update, gradients) = match self.path {
            StepPath::Layered => {
                let forward = layered_forward(
                    k,
                    spec,
                    &b.params,
                    &self.layout,
                    &b.acts,
                    (data, &b.order, &b.state),
                    from,
                    m,
                    true,
                    Some(&delta(layers)),
                );

                // Backward: delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L), computed by the last forward
                // layer's epilogue.
                let mut backward = Vec::new();
                // AuxK (docs/design.md section 12): rows m..2m of a two-layer TopK dictionary are
                // the dead latents' rows. The encoder's input again; the largest pre-activations
                // among the latents dead after this step's counts; their decoding; and its delta
                // against the residual. The backward pass below then runs over 2m rows.
                let rows_back = if let Some(aux) = self.auxk {
                    // From row p = auxk_row(m) (an aligned offset); rows m..p of delta_L are
                    // zeroed by auxk_delta, so they add nothing to the gradients.
                    let p = crate::layout::auxk_row(m);
                    let second =
                        |per_layer: &[View], l: usize| per_layer[l].slice(p * spec.sizes[l], m * spec.sizes[l]);
                    backward.push(k.gather_rows(data, &b.order, &b.state, &second(&b.acts.a, 0), m, n0, from));
                    if let Some(centered) = &b.acts.centered {
                        let at = centered.slice(p * n0, m * n0);
                        backward.push(k.center_rows(
                            &second(&b.acts.a, 0),
                            &bias(&b.params, &self.layout, 2),
                            &at,
                            m,
                            n0,
                        ));
                    }
                    let dead = Some((&b.since_fired, aux.dead_after));
                    backward.push(k.topk_among(&z(1), &second(&b.acts.a, 1), m, nc, aux.k, dead).noting("auxk"));
                    backward.push(
                        k.matmul_forward_bias_activation(
                            &second(&b.acts.a, 1),
                            &w(2),
                            &bias(&b.params, &self.layout, 2),
                            &second(&b.acts.z, 2),
                            &second(&b.acts.a, 2),
                            m,
                            nc,
                            n0,
                            spec.activation(2),
                        )
                        .noting("auxk"),
                    );
                    let scale = aux.coefficient / m as f64;
                    let recons = second(&b.acts.a, 2);
                    let rows = (m * n0, p * n0);
                    backward.push(k.auxk_delta(&recons, &a(0), &a(2), &b.acts.delta[2], rows, m * n0, scale));
                    p + m
                } else {
                    m
                };
                debug_assert_eq!(rows_back, mb);
                let z = |l: usize| self.rows(&b.acts.z, l, mb);
                let a = |l: usize| self.rows(&b.acts.a, l, mb);
                let delta = |l: usize| self.rows(&b.acts.delta, l, mb);
                // The layers' backward dispatches; `fold` puts the KL term in the code layer's
                // pair (the training step's), else kl_backward takes G.
                let layers_backward = |fold: bool| {
                    let mut backward = Vec::new();
                    for l in (1..=layers).rev() {
                        let (n, kk) = spec.shape(l);
                        // dW_l = delta_l^T A_{l-1} (lambda W_l is added by sgd_update) ; db_l = sum_i delta_l,
                        // with, for l > 1, G = delta_l W_l in the same dispatch (matmul_backward_pair)
                        let (dw, db) = (weight(&b.grads, &self.layout, l), bias(&b.grads, &self.layout, l));
                        if l == 1 {
                            let input = b.acts.encoder_input(spec, mb);
                            backward.push(
                                k.matmul_backward_weight_bias(&delta(l), &input, &dw, &db, mb, n, kk).at_layer(l),
                            );
                            // The pre-bias path's term of dJ/db_L: -db_1^T W_1.
                            if spec.pre_bias {
                                let (db1_at, out_at) = (self.layout.biases[0].0, self.layout.biases[layers - 1].0);
                                backward.push(k.pre_bias_backward(&w(1), &b.grads, db1_at, out_at, n, kk));
                            }
                            break;
                        }
                        // G = delta_l W_l ; delta_{l-1} = G ⊙ f_{l-1}'(Z_{l-1}) in the pair's epilogue, or
                        // at the code layer with a penalty (or JumpReLU), G then a kernel of its own
                        let act = spec.activation(l - 1);
                        // One launch for both where the products are small enough for a
                        // launch's fixed cost to matter (PAIR_MAX_MACS); two above.
                        let small = mb * n * kk <= PAIR_MAX_MACS;
                        let paired = |input: PairInput<'_>, out: &View| {
                            let t = (&delta(l), &w(l), &a(l - 1));
                            k.matmul_backward_pair(t, input, (&dw, &db), out, (mb, n, kk), act).at_layer(l)
                        };
                        let pair = |z: Option<&View>, out: &View| -> Vec<Launch> {
                            if small {
                                let input = z.map_or(PairInput::Plain, |z| PairInput::Derivative { z });
                                return vec![paired(input, out)];
                            }
                            let (d, al) = (delta(l), a(l - 1));
                            let weight = k.matmul_backward_weight_bias(&d, &al, &dw, &db, mb, n, kk).at_layer(l);
                            let input = match z {
                                Some(z) => k.matmul_backward_input_activation(&d, &w(l), z, &al, out, mb, n, kk, act),
                                None => k.matmul_backward_input(&d, &w(l), out, mb, n, kk),
                            };
                            vec![weight, input.at_layer(l)]
                        };
                        if let (true, CodeSelect::JumpRelu { bandwidth, .. }) = (l - 1 == c, spec.select) {
                            // G = delta_l W_l, then G [z > theta] and the thresholds' gradient.
                            let (at, len) = self.layout.thresholds;
                            let (t, dt) = (b.params.slice(at, len), b.grads.slice(at, len));
                            let l0 =
                                if let Sparsity::L0 { coefficient } = sparsity { coefficient / mb as f64 } else { 0.0 };
                            backward.extend(pair(None, &g(kk)));
                            backward.push(k.jumprelu_backward(
                                (&g(kk), &z(c), &t),
                                &delta(c),
                                &dt,
                                (mb, kk),
                                bandwidth as f64,
                                l0,
                                &b.state,
                                &b.step_values,
                            ));
                        } else if l - 1 == c && fold && small {
                            let temperature = match sparsity {
                                Sparsity::KlSoftFreq { temperature, .. } => Some(temperature),
                                _ => None,
                            };
                            backward
                                .push(paired(PairInput::Penalty { z: &z(c), term: &kl_term, temperature }, &delta(c)));
                        } else if l - 1 == c && sparsity != Sparsity::None {
                            backward.extend(pair(None, &g(kk)));
                            backward.push(k.kl_backward(
                                &g(kk),
                                &z(c),
                                &a(c),
                                &b.rho_hat,
                                &delta(c),
                                mb,
                                kk,
                                act,
                                sparsity,
                                self.rho_anneal,
                                steps,
                            ));
                        } else {
                            backward.extend(pair(Some(&z(l - 1)), &delta(l - 1)));
                        }
                    }
                    // L1's decoder term: dW_L's column j gains (C/m) (sum_i |a_ij|) w_j / ||w_j||.
                    if let Sparsity::L1 { coefficient } = sparsity {
                        let (rows, cols) = spec.shape(layers);
                        let dw_out = weight(&b.grads, &self.layout, layers);
                        let dims = (mb, rows, cols);
                        let coef = coefficient / mb as f64;
                        backward.push(k.l1_decoder_grad(
                            &a(c),
                            &w(layers),
                            &dw_out,
                            dims,
                            coef,
                            &b.state,
                            &b.step_values,
                        ));
                    }
                    backward
                };
                let step_backward = [&backward[..], &layers_backward(fold_kl)].concat();
                backward.extend(layers_backward(false));

                // Update: the optimizer's rule over every parameter in one dispatch (SGD:
                // W <- W - lr (dW + lambda W), b <- b - lr db), with this step's values from the
                // step-values table; then the step state moves on to the next minibatch.
                // Unit-norm decoder columns: dW_L loses its component along each column before
                // the update (and clipping), and the columns are renormalised after it.
                let (w_out, dw_out) = (w(layers), weight(&b.grads, &self.layout, layers));
                let (rows_out, cols_out) = spec.shape(layers);
                let mut update = Vec::new();
                if self.decoder_norm {
                    update.push(k.decoder_project(&w_out, &dw_out, rows_out, cols_out));
                }
                update.extend(self.clip_launch());
                // The update also ends the step: the cursor moves past the rows and the steps
                // done count this one (the next gather_rows hands that count to its step).
                update.push(self.update_launch(m));
                if self.decoder_norm {
                    update.push(k.decoder_normalize(&w_out, &dw_out, rows_out, cols_out));
                }
                (forward, backward, step_backward, update, vec![])
            }
            StepPath::Fused => {
                // The same equations, a row per invocation (see shaders/fused.wgsl).
                // fused_update applies SGD itself; any other rule, or clipping, runs as kernels
                // after it. Then the step state moves on.
                let inline_sgd = self.optimizer == Optimizer::Sgd && self.clip_grad_norm.is_none();
                let net = self.fused_net(m, from, inline_sgd);
                let all = b.acts.all.as_ref().expect("the fused path lays activations out in one buffer each");
                let buffers = FusedBuffers {
                    table: b.table.clone(),
                    params: b.params.clone(),
                    order: b.order.clone(),
                    state: b.state.clone(),
                    step_values: b.step_values.clone(),
                    grads: b.grads.clone(),
                    z: all[0].clone(),
                    a: all[1].clone(),
                    delta: all[2].clone(),
                    rho_hat: b.rho_hat.clone(),
                };
                let [fwd, bwd, upd] = self.fused_costs(m);
                let forward = vec![k.fused_forward(&net, &buffers, data, fwd)];
                // fused_update writing only the gradients: what a full-batch gradient ends with.
                let grads_only = k.fused_update(&self.fused_net(m, from, false), &buffers, upd.clone());
                let mut update = vec![k.fused_update(&net, &buffers, upd)];
                if !inline_sgd {
                    update.extend(self.clip_launch());
                    update.push(self.update_launch(0));
                }
                update.push(k.advance_cursor(&b.state, m, 1));
                let backward = vec![k.fused_backward(&net, &buffers, bwd)];
                (forward, backward.clone(), backward, update, vec![grads_only])
            }
        };
        let concat = |parts: &[&[Launch]]| parts.iter().flat_map(|p| p.iter().cloned()).collect::<Vec<_>>();
        let skip_cursor = [k.advance_cursor(&b.state, m, 0)];
        Schedule {
            step: concat(&[&forward, &counts, &step_backward, &update]),
            step_with_metrics: concat(&[&forward, &counts, &metrics, &step_backward, &update]),
            evaluate: concat(&[&forward, &eval_counts, &metrics, &skip_cursor]),
            gradient: concat(&[&forward, &backward, &gradients, &skip_cursor]),
            evaluate_gradient: concat(&[&forward, &eval_counts, &metrics, &backward, &gradients, &skip_cursor]),
        }
    }

    /// Napkin math of the fused kernels: the same FLOPs as the layered matmuls they replace.
    fn fused_costs(&self, m: usize) -> [Cost; 3] {
        let spec = &self.spec;
        let macs: usize = (1..=spec.layers()).map(|l| spec.shape(l).0 * spec.shape(l).1).sum();
        let units: usize = spec.sizes.iter().sum();
        let params = self.layout.len;
        let cost = |label: &str, flops: usize, floats: usize| Cost {
            label: label.into(),
            shape: format!("{m} rows"),
            flops: flops as f64,
            bytes: 4.0 * floats as f64,
        };
        [
            cost("fused_forward", 2 * m * macs, params + 3 * m * units),
            cost("fused_backward", 2 * m * macs, params + 3 * m * units),
            cost("fused_update", 2 * m * (macs + units), 2 * params + 2 * m * units),
        ]
    }

    /// With clipping, the dispatch that writes the clipping coefficient from the gradients' norm.
    fn clip_launch(&self) -> Vec<Launch> {
        let b = &self.buffers;
        self.clip_grad_norm
            .map(|_| self.kernels.grad_norm(&b.grads, &b.clip, &self.update_rule()))
            .into_iter()
            .collect()
    }

    /// The optimizer's update of every parameter from the gradients (one dispatch), which on
    /// the layered path also ends the step (`advance_rows`, the step's rows; 0: it does not).
    fn update_launch(&self, advance_rows: usize) -> Launch {
        let (k, b, rule) = (&self.kernels, &self.buffers, self.update_rule());
        let wl = self.layout.weights_len;
        let [m1, m2] = &b.moments;
        let steps = StepViews { state: &b.state, values: &b.step_values, clip: &b.clip, advance_rows };
        match self.optimizer {
            Optimizer::Sgd => k.sgd_update(&b.grads, &b.params, steps, wl, &rule),
            Optimizer::Momentum { .. } => k.momentum_update(&b.grads, &b.params, steps, m1, wl, &rule),
            Optimizer::Adam { .. } | Optimizer::AdamW { .. } => {
                k.adam_update(&b.grads, &b.params, steps, m1, m2, wl, &rule)
            }
        }
    }

    fn fused_net(&self, m: usize, from: Rows, inline_sgd: bool) -> FusedNet {
        let (mode, rho, beta, temperature) = kl_mode(self.loss.sparsity);
        FusedNet {
            layers: self.spec.layers() as u32,
            code: (self.spec.code_layer - 1) as u32,
            rows: m as u32,
            n0: self.spec.sizes[0] as u32,
            sparsity: mode,
            rho: rho as f32,
            beta_over_m: (beta / m as f64) as f32,
            temperature: temperature as f32,
            inv_m: (1.0 / m as f64) as f32,
            lambda: self.loss.weight_decay as f32,
            eps: RHO_HAT_EPS as f32,
            total_params: self.spec.parameter_count() as u32,
            gather: from as u32,
            grads_only: u32::from(!inline_sgd),
            anneal_steps: self.rho_anneal as u32,
            _pad: 0,
        }
    }

    /// The fused kernels' description of the layers (`Layer` in `shaders/fused.wgsl`).
    pub(crate) fn layer_table(spec: &ModelSpec, layout: &ParamLayout, acts: &ActivationLayout) -> Vec<FusedLayer> {
        let mut start = 0;
        (1..=spec.layers())
            .map(|l| {
                let (n, k) = spec.shape(l);
                let entry = FusedLayer {
                    n_out: n as u32,
                    n_in: k as u32,
                    act: spec.activation(l).code(),
                    w_off: layout.weights[l - 1].0 as u32,
                    b_off: layout.biases[l - 1].0 as u32,
                    in_off: acts.offsets[l - 1] as u32,
                    out_off: acts.offsets[l] as u32,
                    param_start: start as u32,
                };
                start += n * k + n;
                entry
            })
            .collect()
    }

    pub(crate) fn ensure_schedule(&mut self, m: usize, from: Rows) {
        if !self.schedules.contains_key(&(m, from)) {
            let s = self.schedule(m, from);
            self.schedules.insert((m, from), s);
        }
    }

    /// The launches of one training step of `m` rows gathered from the resident data, as the
    /// training loop records them (for the benchmark, which times each one).
    pub fn step_launches(&mut self, m: usize) -> Vec<Launch> {
        self.ensure_schedule(m, Rows::Order);
        self.schedules[&(m, Rows::Order)].step.clone()
    }

    /// Dispatches (kernel launches, counting split ones) in one step of `m` rows.
    pub fn dispatches_per_step(&mut self, m: usize) -> usize {
        self.step_launches(m).iter().map(Launch::dispatch_count).sum()
    }
}
