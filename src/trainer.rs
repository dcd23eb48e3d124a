//! The training engine: device-resident buffers, allocated once, and the schedule of a step.
//!
//! `Trainer::schedule` is the one function to read: it lists the forward, backward and update
//! dispatches of a step exactly as SPEC.md section 4 writes them. Schedules are built once per
//! batch size and replayed. With the data resident on the device (`set_data`, `train_epoch`),
//! a step uploads nothing and many steps share one submit; the host reads back only the
//! metrics it asks for, without stalling the queue. Layers up to 128 wide take the fused path
//! (3-4 dispatches a step, `shaders/fused.wgsl`); wider ones the layered path (one kernel per
//! operation of SPEC.md section 4).

use crate::device::Gpu;
use crate::kernels::{
    align, record, FusedBuffers, FusedLayer, FusedNet, Kernels, Launch, View, FUSED_MAX_WIDTH, LOSS_SLOTS,
};
use crate::model::{LossConfig, ModelSpec, Params, Sparsity, RHO_HAT_EPS};
use crate::reference::{kl_divergence, ColumnTransform};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where each tensor sits in the flat parameter (and gradient) buffer. Weights come first,
/// biases after, each tensor aligned to 256 bytes; padding stays zero.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub weights: Vec<(usize, usize)>,
    pub biases: Vec<(usize, usize)>,
    /// Elements in the weight region (weight decay applies below this index).
    pub weights_len: usize,
    pub len: usize,
}

impl ParamLayout {
    pub fn new(spec: &ModelSpec) -> Self {
        let mut at = 0;
        let mut weights = Vec::new();
        for l in 1..=spec.layers() {
            let (n, k) = spec.shape(l);
            weights.push((at, n * k));
            at += align(n * k);
        }
        let weights_len = at;
        let mut biases = Vec::new();
        for l in 1..=spec.layers() {
            biases.push((at, spec.sizes[l]));
            at += align(spec.sizes[l]);
        }
        ParamLayout { weights, biases, weights_len, len: at }
    }

    pub fn flatten(&self, params: &Params) -> Vec<f32> {
        let mut flat = vec![0.0; self.len];
        for (l, &(at, len)) in self.weights.iter().enumerate() {
            flat[at..at + len].copy_from_slice(&params.weights[l]);
        }
        for (l, &(at, len)) in self.biases.iter().enumerate() {
            flat[at..at + len].copy_from_slice(&params.biases[l]);
        }
        flat
    }

    pub fn unflatten(&self, flat: &[f32]) -> Params {
        Params {
            weights: self.weights.iter().map(|&(at, len)| flat[at..at + len].to_vec()).collect(),
            biases: self.biases.iter().map(|&(at, len)| flat[at..at + len].to_vec()).collect(),
        }
    }
}

/// Metrics of one minibatch, measured before its update.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepMetrics {
    pub loss: f64,
    pub reconstruction: f64,
    pub weight_decay: f64,
    pub sparsity: f64,
    /// Mean squared error per element: `sum (xhat - x)^2 / (m * n_0)`.
    pub mse: f64,
    /// The differentiable rho_hat of the penalty (the mean activation when there is none).
    pub rho_hat: Vec<f64>,
    /// Hard firing frequency `(1/m) #{i : z_ij > 0}`.
    pub freq: Vec<f64>,
}

/// Metrics of a whole dataset (forward only, no update).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalMetrics {
    pub samples: usize,
    /// `reconstruction + weight_decay + sparsity`, with rho_hat over the whole set.
    pub loss: f64,
    pub reconstruction: f64,
    pub weight_decay: f64,
    pub sparsity: f64,
    pub mse: f64,
    /// Fraction of variance unexplained: squared error over that of predicting the mean.
    pub fvu: f64,
    pub rho_hat: Vec<f64>,
    pub freq: Vec<f64>,
}

/// Layout of the metrics block copied back on request, each part 256-byte aligned:
/// `[loss_value output | freq | mean activation]` in the `metrics` buffer, then rho_hat, which
/// has a buffer of its own because `loss_value` reads it while writing the loss (one buffer
/// cannot be both read-only and read-write in one dispatch).
struct MetricsLayout {
    loss: usize,
    freq: usize,
    mean: usize,
    /// Where rho_hat lands in the staging copy.
    rho_hat: usize,
    len: usize,
}

/// Z, A and delta of every layer l = 0..=L (layer 0 is X; Z_0 and delta_0 are unused), `[rows, n_l]`
/// row-major. The fused path addresses all layers of one kind through one buffer (`all`, layer l
/// at `offsets[l]`); the layered path gives each layer buffers of its own, so a matmul can read
/// A_{l-1} while its epilogue writes A_l (WebGPU forbids one buffer being read-only and
/// read-write in the same dispatch).
struct Activations {
    z: Vec<View>,
    a: Vec<View>,
    delta: Vec<View>,
    offsets: Vec<usize>,
    all: Option<[View; 3]>,
}

impl Activations {
    fn new(gpu: &Gpu, spec: &ModelSpec, m: usize, path: Path) -> Self {
        let lens: Vec<usize> = spec.sizes.iter().map(|&n| align(m * n)).collect();
        match path {
            Path::Fused => {
                let offsets: Vec<usize> =
                    lens.iter().scan(0, |at, len| Some(std::mem::replace(at, *at + len))).collect();
                let total: usize = lens.iter().sum();
                let all = ["z", "a", "delta"].map(|name| View::whole(&gpu.storage(name, total)));
                let per_layer = |v: &View| offsets.iter().zip(&lens).map(|(&at, &len)| v.slice(at, len)).collect();
                Activations {
                    z: per_layer(&all[0]),
                    a: per_layer(&all[1]),
                    delta: per_layer(&all[2]),
                    offsets,
                    all: Some(all),
                }
            }
            Path::Layered => {
                let per_layer = |name: &str| {
                    lens.iter()
                        .enumerate()
                        .map(|(l, &len)| View::whole(&gpu.storage(&format!("{name}{l}"), len)))
                        .collect()
                };
                Activations {
                    z: per_layer("z"),
                    a: per_layer("a"),
                    delta: per_layer("delta"),
                    offsets: vec![0; lens.len()],
                    all: None,
                }
            }
        }
    }
}

/// The launches of one step for one batch size and one source of minibatches.
struct Schedule {
    /// forward, backward, update.
    step: Vec<Launch>,
    /// forward, metrics, backward, update.
    step_with_metrics: Vec<Launch>,
    /// forward and metrics only (host-written minibatches).
    evaluate: Vec<Launch>,
}

/// Where a step's minibatch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    /// Written by the host into `x_staging` before the step (`Trainer::step`).
    Host,
    /// Gathered on the device from the resident data through the epoch's order
    /// (`Trainer::train_epoch`): nothing is uploaded per step.
    Resident,
}

/// How a step is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// One kernel per operation of SPEC.md section 4 (any width).
    Layered,
    /// Three or four dispatches per step (`shaders/fused.wgsl`), for layers up to
    /// [`FUSED_MAX_WIDTH`] wide.
    Fused,
}

impl Path {
    /// The default: fused where it fits, on GPUs; layered on CPU adapters. There the fused
    /// kernels' per-row loops over private arrays run near 1 GFLOP/s (llvmpipe turns each
    /// per-lane array access into a loop over lanes), while the layered path's subgroup
    /// matmuls reach 5-20, so the 35 dispatches saved do not pay for themselves (measured on
    /// lavapipe, seed model, ms/step fused vs layered: 3.2 vs 3.0 at batch 32, 18.9 vs 8.3 at
    /// 256). A rule rather than a timing, so a seed reproduces a run bit for bit.
    pub fn auto(spec: &ModelSpec, _batch: usize, adapter: &wgpu::AdapterInfo) -> Path {
        let fits = spec.sizes.iter().all(|&n| n <= FUSED_MAX_WIDTH);
        if fits && adapter.device_type != wgpu::DeviceType::Cpu {
            Path::Fused
        } else {
            Path::Layered
        }
    }

    pub fn parse(s: &str) -> Result<Option<Path>, String> {
        match s {
            "auto" => Ok(None),
            "fused" => Ok(Some(Path::Fused)),
            "layered" => Ok(Some(Path::Layered)),
            other => Err(format!("unknown path '{other}': use auto, fused or layered")),
        }
    }
}

/// Trains one model on one device. Every buffer is allocated in `new` (the resident data in
/// `set_data`); nothing is allocated per step.
pub struct Trainer {
    pub kernels: Kernels,
    pub spec: ModelSpec,
    pub loss: LossConfig,
    pub lr: f64,
    /// Largest minibatch the buffers hold.
    pub batch_capacity: usize,
    pub layout: ParamLayout,
    path: Path,
    params: View,
    grads: View,
    /// Z, A and delta of every layer (laid out for the path: see `Activations`).
    acts: Activations,
    /// G, the gradient w.r.t. a layer's input, shared by all layers (layered path).
    g: View,
    /// Host-written minibatch.
    x_staging: View,
    /// Resident training data, the epoch's order of its rows, and the device-side cursor
    /// (index of the current minibatch's first entry in `order`).
    data: View,
    order: View,
    cursor: View,
    /// The fused path's layer table.
    table: View,
    metrics: View,
    rho_hat: View,
    metrics_layout: MetricsLayout,
    metrics_staging: wgpu::Buffer,
    /// Staging buffers for step metrics in flight, reused across log points.
    metrics_pool: Vec<wgpu::Buffer>,
    schedules: HashMap<(usize, Source), Schedule>,
    pub steps_done: u64,
    pub stats: Stats,
    /// Largest training set `fit` keeps on the device: the adapter's largest storage binding
    /// (tests lower it to exercise streaming).
    pub max_resident_bytes: usize,
}

/// Host-device traffic, cumulative since the trainer was made: the structural figures that
/// carry over from a software adapter to a real GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queue submissions.
    pub submits: u64,
    /// Compute dispatches recorded (split grids count each part).
    pub dispatches: u64,
    /// Bytes written from the host to device buffers (minibatches, orders, parameters).
    pub bytes_uploaded: u64,
    /// Metric or parameter read-backs (device-to-host transfers the host waits for, at once
    /// or later).
    pub readbacks: u64,
}

/// Options of `Trainer::train_epoch`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpochOptions {
    /// Step metrics every N steps (counted over the trainer's life, like `steps_done`).
    pub log_every: Option<usize>,
    /// Steps recorded into one submit; `None` chooses (up to 64, and a log step ends a submit).
    pub steps_per_submit: Option<usize>,
}

/// A metrics read-back in flight.
struct Pending {
    step: u64,
    m: usize,
    staging: wgpu::Buffer,
    ready: Arc<AtomicBool>,
}

impl Trainer {
    pub fn new(
        gpu: &Gpu,
        spec: &ModelSpec,
        loss: LossConfig,
        lr: f64,
        batch_capacity: usize,
        init: &Params,
    ) -> Result<Self, String> {
        Self::with_kernels(Kernels::new(gpu)?, spec, loss, lr, batch_capacity, init)
    }

    pub fn with_kernels(
        kernels: Kernels,
        spec: &ModelSpec,
        loss: LossConfig,
        lr: f64,
        batch_capacity: usize,
        init: &Params,
    ) -> Result<Self, String> {
        spec.validate()?;
        loss.validate(spec)?;
        init.check_shapes(spec)?;
        if batch_capacity == 0 {
            return Err("batch size must be at least 1".into());
        }
        let gpu = kernels.gpu.clone();
        let max_binding = gpu.limits.max_storage_buffer_binding_size as usize;
        let m = batch_capacity;
        let widest = *spec.sizes.iter().max().unwrap();
        // Each layer's [m, n_l] activations are one binding on the layered path (all layers
        // together on the fused one, which falls back to layered when they do not fit), and so
        // are the parameters.
        if m * widest * 4 > max_binding {
            return Err(format!(
                "a batch of {m} x {widest} activations ({} bytes) exceeds this adapter's largest storage binding ({max_binding} bytes): use a smaller --batch-size",
                m * widest * 4
            ));
        }
        let layout = ParamLayout::new(spec);
        if layout.len * 4 > max_binding {
            return Err(format!(
                "the model's {} parameters exceed this adapter's largest storage binding ({max_binding} bytes)",
                spec.parameter_count()
            ));
        }
        let params = gpu.upload("params", &layout.flatten(init));
        let grads = View::whole(&gpu.storage("grads", layout.len));
        let nc = spec.code_width();
        let metrics_layout = MetricsLayout {
            loss: 0,
            freq: align(LOSS_SLOTS),
            mean: align(LOSS_SLOTS) + align(nc),
            rho_hat: align(LOSS_SLOTS) + 2 * align(nc),
            len: align(LOSS_SLOTS) + 3 * align(nc),
        };
        let metrics_staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("metrics staging"),
            size: (metrics_layout.len * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let fused_fits = spec.sizes.iter().map(|&n| align(m * n)).sum::<usize>() * 4 <= max_binding;
        let path = if fused_fits { Path::auto(spec, batch_capacity, &gpu.info) } else { Path::Layered };
        let mut trainer = Trainer {
            table: View::whole(&gpu.storage("layer table", 1)),
            kernels,
            spec: spec.clone(),
            loss,
            lr,
            batch_capacity,
            layout,
            path,
            params,
            grads,
            acts: Activations::new(&gpu, spec, m, path),
            g: View::whole(&gpu.storage("g", m * widest)),
            x_staging: View::whole(&gpu.storage("x staging", m * spec.sizes[0])),
            data: View::whole(&gpu.storage("data", 1)),
            order: View::whole(&gpu.storage("order", 1)),
            cursor: View::whole(&gpu.storage("cursor", 1)),
            metrics: View::whole(&gpu.storage("metrics", metrics_layout.rho_hat)),
            rho_hat: View::whole(&gpu.storage("rho_hat", nc)),
            metrics_layout,
            metrics_staging,
            metrics_pool: Vec::new(),
            schedules: HashMap::new(),
            steps_done: 0,
            stats: Stats::default(),
            max_resident_bytes: max_binding,
        };
        trainer.table = gpu.upload_bytes("layer table", bytemuck::cast_slice(&trainer.layer_table()));
        Ok(trainer)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.kernels.gpu
    }

    pub fn path(&self) -> Path {
        self.path
    }

    /// Chooses the step path (the fused one only where every width fits).
    pub fn set_path(&mut self, path: Path) -> Result<(), String> {
        if path == Path::Fused && self.spec.sizes.iter().any(|&n| n > FUSED_MAX_WIDTH) {
            return Err(format!("the fused path takes layers up to {FUSED_MAX_WIDTH} wide"));
        }
        let all_layers = self.spec.sizes.iter().map(|&n| align(self.batch_capacity * n)).sum::<usize>() * 4;
        if path == Path::Fused && all_layers > self.kernels.gpu.limits.max_storage_buffer_binding_size as usize {
            return Err(format!(
                "the fused path keeps a batch's activations in one binding: {all_layers} bytes is too many here"
            ));
        }
        if path != self.path {
            self.path = path;
            self.acts = Activations::new(&self.kernels.gpu, &self.spec, self.batch_capacity, path);
            self.table = self.kernels.gpu.upload_bytes("layer table", bytemuck::cast_slice(&self.layer_table()));
            self.schedules.clear();
        }
        Ok(())
    }

    /// The fused kernels' description of the layers (`Layer` in `shaders/fused.wgsl`).
    fn layer_table(&self) -> Vec<FusedLayer> {
        let mut start = 0;
        (1..=self.spec.layers())
            .map(|l| {
                let (n, k) = self.spec.shape(l);
                let entry = FusedLayer {
                    n_out: n as u32,
                    n_in: k as u32,
                    act: self.spec.activation(l).code(),
                    w_off: self.layout.weights[l - 1].0 as u32,
                    b_off: self.layout.biases[l - 1].0 as u32,
                    in_off: self.acts.offsets[l - 1] as u32,
                    out_off: self.acts.offsets[l] as u32,
                    param_start: start as u32,
                };
                start += n * k + n;
                entry
            })
            .collect()
    }

    fn w(&self, l: usize) -> View {
        let (at, len) = self.layout.weights[l - 1];
        self.params.slice(at, len)
    }
    fn b(&self, l: usize) -> View {
        let (at, len) = self.layout.biases[l - 1];
        self.params.slice(at, len)
    }
    fn dw(&self, l: usize) -> View {
        let (at, len) = self.layout.weights[l - 1];
        self.grads.slice(at, len)
    }
    fn db(&self, l: usize) -> View {
        let (at, len) = self.layout.biases[l - 1];
        self.grads.slice(at, len)
    }
    fn freq(&self) -> View {
        self.metrics.slice(self.metrics_layout.freq, self.spec.code_width())
    }
    fn mean_activation(&self) -> View {
        self.metrics.slice(self.metrics_layout.mean, self.spec.code_width())
    }
    fn loss_out(&self) -> View {
        self.metrics.slice(self.metrics_layout.loss, LOSS_SLOTS)
    }
    /// Rows `0..m` of layer `l` of one of `acts.z`, `acts.a`, `acts.delta`.
    fn rows(&self, per_layer: &[View], l: usize, m: usize) -> View {
        per_layer[l].slice(0, m * self.spec.sizes[l])
    }

    /// The dispatches of one training step on a minibatch of `m` rows: SPEC.md section 4.
    fn schedule(&self, m: usize, source: Source) -> Schedule {
        let k = &self.kernels;
        let spec = &self.spec;
        let layers = spec.layers();
        let c = spec.code_layer;
        let nc = spec.code_width();
        let n0 = spec.sizes[0];
        let z = |l: usize| self.rows(&self.acts.z, l, m);
        let a = |l: usize| self.rows(&self.acts.a, l, m);
        let delta = |l: usize| self.rows(&self.acts.delta, l, m);
        let g = |n: usize| self.g.slice(0, m * n);
        let inv_m = 1.0 / m as f64;
        let (data, gather) = match source {
            Source::Host => (&self.x_staging, false),
            Source::Resident => (&self.data, true),
        };

        // rho_hat of the current minibatch, before any backward dispatch.
        let rho_hat = match self.loss.sparsity {
            Sparsity::None => None,
            Sparsity::Kl { .. } => Some(k.column_sum(&a(c), &self.rho_hat, m, nc, ColumnTransform::Value, inv_m)),
            Sparsity::KlFreq { temperature, .. } => {
                Some(k.column_sum(&z(c), &self.rho_hat, m, nc, ColumnTransform::SoftFires { temperature }, inv_m))
            }
        };

        // Metrics (on request): loss terms, hard firing frequency, mean code activation.
        let metrics = vec![
            k.column_sum(&z(c), &self.freq(), m, nc, ColumnTransform::Fires, inv_m),
            k.column_sum(&a(c), &self.mean_activation(), m, nc, ColumnTransform::Value, inv_m),
            k.loss_value(
                &a(layers),
                &a(0),
                &self.params.slice(0, self.layout.weights_len),
                &self.rho_hat,
                &self.loss_out(),
                m,
                n0,
                self.loss.weight_decay,
                self.loss.sparsity,
            ),
        ];

        let (forward, backward, update) = match self.path {
            Path::Layered => {
                // Forward: X = the minibatch ; Z_l = A_{l-1} W_l^T + 1 b_l^T ; A_l = f_l(Z_l)
                let mut forward = vec![k.gather_rows(data, &self.order, &self.cursor, &a(0), m, n0, gather)];
                for l in 1..=layers {
                    let (n, kk) = spec.shape(l);
                    let act = spec.activation(l);
                    forward.push(k.matmul_forward_bias_activation(
                        &a(l - 1),
                        &self.w(l),
                        &self.b(l),
                        &z(l),
                        &a(l),
                        m,
                        kk,
                        n,
                        act,
                    ));
                }
                forward.extend(rho_hat);

                // Backward: delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)
                let mut backward =
                    vec![k.output_delta(&a(layers), &a(0), &z(layers), &delta(layers), m, n0, spec.activation(layers))];
                for l in (1..=layers).rev() {
                    let (n, kk) = spec.shape(l);
                    // dW_l = delta_l^T A_{l-1} (lambda W_l is added by sgd_update) ; db_l = sum_i delta_l,
                    // one dispatch
                    backward.push(k.matmul_backward_weight_bias(
                        &delta(l),
                        &a(l - 1),
                        &self.dw(l),
                        &self.db(l),
                        m,
                        n,
                        kk,
                    ));
                    if l == 1 {
                        break;
                    }
                    // G = delta_l W_l ; delta_{l-1} = G ⊙ f_{l-1}'(Z_{l-1}), one dispatch, or at the
                    // code layer with a penalty, G then the KL term
                    let act = spec.activation(l - 1);
                    if l - 1 == c && self.loss.sparsity != Sparsity::None {
                        backward.push(k.matmul_backward_input(&delta(l), &self.w(l), &g(kk), m, n, kk));
                        backward.push(k.kl_backward(
                            &g(kk),
                            &z(c),
                            &a(c),
                            &self.rho_hat,
                            &delta(c),
                            m,
                            kk,
                            act,
                            self.loss.sparsity,
                        ));
                    } else {
                        backward.push(k.matmul_backward_input_activation(
                            &delta(l),
                            &self.w(l),
                            &z(l - 1),
                            &a(l - 1),
                            &delta(l - 1),
                            m,
                            n,
                            kk,
                            act,
                        ));
                    }
                }

                // Update: W <- W - lr (dW + lambda W), b <- b - lr db, every parameter in one
                // dispatch; then the cursor moves to the next minibatch.
                let update = vec![
                    k.sgd_update(&self.grads, &self.params, self.layout.weights_len, self.lr, self.loss.weight_decay),
                    k.advance_cursor(&self.cursor, m),
                ];
                (forward, backward, update)
            }
            Path::Fused => {
                // The same equations, a row per invocation (see shaders/fused.wgsl).
                let net = self.fused_net(m, gather);
                let all = self.acts.all.as_ref().expect("the fused path lays activations out in one buffer each");
                let buffers = FusedBuffers {
                    table: self.table.clone(),
                    params: self.params.clone(),
                    order: self.order.clone(),
                    cursor: self.cursor.clone(),
                    z: all[0].clone(),
                    a: all[1].clone(),
                    delta: all[2].clone(),
                    rho_hat: self.rho_hat.clone(),
                };
                let mut forward = vec![k.fused_forward(&net, &buffers, data)];
                forward.extend(rho_hat);
                (forward, vec![k.fused_backward(&net, &buffers)], vec![k.fused_update(&net, &buffers)])
            }
        };

        let concat = |parts: &[&[Launch]]| parts.iter().flat_map(|p| p.iter().cloned()).collect::<Vec<_>>();
        Schedule {
            step: concat(&[&forward, &backward, &update]),
            step_with_metrics: concat(&[&forward, &metrics, &backward, &update]),
            evaluate: concat(&[&forward, &metrics]),
        }
    }

    fn fused_net(&self, m: usize, gather: bool) -> FusedNet {
        let (mode, rho, beta, temperature) = match self.loss.sparsity {
            Sparsity::None => (0, 0.05, 0.0, 1.0),
            Sparsity::Kl { rho, beta } => (1, rho, beta, 1.0),
            Sparsity::KlFreq { rho, beta, temperature } => (2, rho, beta, temperature),
        };
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
            lr: self.lr as f32,
            lambda: self.loss.weight_decay as f32,
            eps: RHO_HAT_EPS as f32,
            total_params: self.spec.parameter_count() as u32,
            gather: u32::from(gather),
            x_off: 0,
            _pad: 0,
        }
    }

    fn ensure_schedule(&mut self, m: usize, source: Source) {
        if !self.schedules.contains_key(&(m, source)) {
            let s = self.schedule(m, source);
            self.schedules.insert((m, source), s);
        }
    }

    fn check_batch(&self, x: &[f32]) -> Result<usize, String> {
        let n0 = self.spec.input_width();
        if x.is_empty() || !x.len().is_multiple_of(n0) {
            return Err(format!(
                "a minibatch must be a non-empty multiple of the input width {n0}, got {} values",
                x.len()
            ));
        }
        let m = x.len() / n0;
        if m > self.batch_capacity {
            return Err(format!("minibatch of {m} rows exceeds the trainer's capacity {}", self.batch_capacity));
        }
        Ok(m)
    }

    /// Dispatches (kernel launches, counting split ones) in one step of `m` rows.
    pub fn dispatches_per_step(&mut self, m: usize) -> usize {
        self.ensure_schedule(m, Source::Resident);
        self.schedules[&(m, Source::Resident)].step.iter().map(Launch::dispatch_count).sum()
    }

    /// Wall-clock seconds per launch of each kernel of a resident step of `m` rows, each run
    /// `reps` times in one submit, alone. For benchmarks: it trains on whatever the buffers
    /// hold, so the parameters change.
    pub fn time_step_kernels(&mut self, m: usize, reps: usize) -> Vec<(&'static str, f64)> {
        self.ensure_schedule(m, Source::Resident);
        let launches = self.schedules[&(m, Source::Resident)].step.clone();
        let gpu = self.kernels.gpu.clone();
        let cursor = self.cursor.clone();
        launches
            .iter()
            .map(|launch| {
                let run = |n: usize| {
                    gpu.queue.write_buffer(&cursor.buffer, 0, bytemuck::cast_slice(&[0u32]));
                    let mut encoder = gpu.device.create_command_encoder(&Default::default());
                    record(&mut encoder, &vec![launch.clone(); n]);
                    gpu.queue.submit([encoder.finish()]);
                    gpu.wait();
                };
                run(1);
                let t0 = std::time::Instant::now();
                run(reps);
                (launch.name, t0.elapsed().as_secs_f64() / reps as f64)
            })
            .collect()
    }

    /// Records one part of the schedule for `m` rows from `source` (no copies of it per step).
    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        m: usize,
        source: Source,
        part: fn(&Schedule) -> &[Launch],
    ) {
        self.ensure_schedule(m, source);
        let launches = part(&self.schedules[&(m, source)]);
        record(encoder, launches);
        self.stats.dispatches += launches.iter().map(|l| l.dispatch_count() as u64).sum::<u64>();
    }

    fn upload(&mut self, view: &View, bytes: &[u8]) {
        self.kernels.gpu.queue.write_buffer(&view.buffer, view.byte_offset(), bytes);
        self.stats.bytes_uploaded += bytes.len() as u64;
    }

    fn submit(&mut self, encoder: wgpu::CommandEncoder) {
        self.kernels.gpu.queue.submit([encoder.finish()]);
        self.stats.submits += 1;
    }

    /// One SGD step on a host minibatch `x` (row-major, `m x n_0`): one upload, one submit, no
    /// wait. `train_epoch` is the fast way to train on a whole dataset.
    pub fn step(&mut self, x: &[f32]) -> Result<(), String> {
        let m = self.check_batch(x)?;
        self.ensure_schedule(m, Source::Host);
        let staging = self.x_staging.clone();
        self.upload(&staging, bytemuck::cast_slice(x));
        let mut encoder = self.kernels.gpu.device.create_command_encoder(&Default::default());
        self.record(&mut encoder, m, Source::Host, |s| &s.step);
        self.submit(encoder);
        self.steps_done += 1;
        Ok(())
    }

    /// One SGD step on a host minibatch that also returns its metrics, measured before the update.
    pub fn step_with_metrics(&mut self, x: &[f32]) -> Result<StepMetrics, String> {
        let m = self.check_batch(x)?;
        self.ensure_schedule(m, Source::Host);
        let staging = self.x_staging.clone();
        self.upload(&staging, bytemuck::cast_slice(x));
        let mut encoder = self.kernels.gpu.device.create_command_encoder(&Default::default());
        self.record(&mut encoder, m, Source::Host, |s| &s.step_with_metrics);
        self.copy_metrics(&mut encoder, &self.metrics_staging, 0);
        self.submit(encoder);
        self.steps_done += 1;
        let raw = self.read_metrics();
        Ok(self.step_metrics(&raw, m))
    }

    /// Whether `len` floats of training data fit in one storage binding (`set_data`).
    pub fn fits_resident(&self, len: usize) -> bool {
        len * 4 <= self.max_resident_bytes
    }

    /// Makes `data` (`n x n_0`, row-major) resident on the device for `train_epoch`.
    pub fn set_data(&mut self, data: &[f32]) -> Result<(), String> {
        let n0 = self.spec.input_width();
        if data.is_empty() || !data.len().is_multiple_of(n0) {
            return Err(format!("training data must be a non-empty multiple of the input width {n0}"));
        }
        let max = self.kernels.gpu.limits.max_storage_buffer_binding_size as usize;
        if data.len() * 4 > max {
            return Err(format!(
                "the training data ({} bytes) exceeds this adapter's largest storage binding ({max} bytes)",
                data.len() * 4
            ));
        }
        let gpu = self.kernels.gpu.clone();
        self.data = gpu.upload("data", data);
        self.order = View::whole(&gpu.storage("order", data.len() / n0));
        self.stats.bytes_uploaded += (data.len() * 4) as u64;
        // Bind groups of resident schedules point at the old buffers.
        self.schedules.retain(|(_, source), _| *source == Source::Host);
        Ok(())
    }

    /// One epoch over the resident data (`set_data`) in the given order of rows: minibatches of
    /// `batch_capacity` rows (the last one may be smaller) are gathered on the device, so the
    /// epoch uploads only `order`. Steps are recorded many to a submit; every `log_every` steps
    /// the metrics of that step (before its update) are copied out and read back without
    /// stalling the queue, and `on_step` sees them in order.
    pub fn train_epoch(
        &mut self,
        order: &[u32],
        opts: EpochOptions,
        mut on_step: impl FnMut(u64, &StepMetrics) -> Result<(), String>,
    ) -> Result<(), String> {
        let n = self.data.len / self.spec.input_width();
        if order.is_empty() || order.len() > n || order.iter().any(|&i| i as usize >= n) {
            return Err(format!("an epoch order must hold row indices below {n} (set_data first)"));
        }
        let (order_view, cursor) = (self.order.clone(), self.cursor.clone());
        self.upload(&order_view, bytemuck::cast_slice(order));
        self.upload(&cursor, bytemuck::cast_slice(&[0u32]));
        let cap = self.batch_capacity;
        let per_submit = opts.steps_per_submit.unwrap_or(64).max(1);
        let log_every = opts.log_every.filter(|&k| k > 0).map(|k| k as u64);
        let device = self.kernels.gpu.device.clone();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut encoder = device.create_command_encoder(&Default::default());
        let mut in_encoder = 0;
        for rows in order.chunks(cap) {
            let m = rows.len();
            self.ensure_schedule(m, Source::Resident);
            let step = self.steps_done + 1;
            let log = log_every.is_some_and(|k| step.is_multiple_of(k));
            if log {
                self.record(&mut encoder, m, Source::Resident, |s| &s.step_with_metrics);
                let staging = self.metrics_pool.pop().unwrap_or_else(|| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("step metrics"),
                        size: (self.metrics_layout.len * 4) as u64,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                });
                self.copy_metrics(&mut encoder, &staging, 0);
                pending.push_back(Pending { step, m, staging, ready: Arc::new(AtomicBool::new(false)) });
            } else {
                self.record(&mut encoder, m, Source::Resident, |s| &s.step);
            }
            self.steps_done += 1;
            in_encoder += 1;
            if log || in_encoder == per_submit {
                let full = std::mem::replace(&mut encoder, device.create_command_encoder(&Default::default()));
                self.submit(full);
                in_encoder = 0;
                if log {
                    let p = pending.back().expect("just queued");
                    let ready = p.ready.clone();
                    p.staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                        r.expect("mapping step metrics failed");
                        ready.store(true, Ordering::Release);
                    });
                }
                // Collect finished read-backs without waiting for the rest of the queue.
                let _ = device.poll(wgpu::PollType::Poll);
                self.drain(&mut pending, false, &mut on_step)?;
            }
        }
        if in_encoder > 0 {
            self.submit(encoder);
        }
        self.drain(&mut pending, true, &mut on_step)
    }

    /// Hands finished metric read-backs to `on_step`, in step order; with `wait`, all of them.
    fn drain(
        &mut self,
        pending: &mut VecDeque<Pending>,
        wait: bool,
        on_step: &mut impl FnMut(u64, &StepMetrics) -> Result<(), String>,
    ) -> Result<(), String> {
        while let Some(p) = pending.front() {
            if !p.ready.load(Ordering::Acquire) {
                if !wait {
                    return Ok(());
                }
                self.kernels.gpu.wait();
                continue;
            }
            let p = pending.pop_front().expect("non-empty");
            let raw: Vec<f32> = bytemuck::cast_slice(&p.staging.slice(..).get_mapped_range().expect("mapped")).to_vec();
            p.staging.unmap();
            self.metrics_pool.push(p.staging);
            self.stats.readbacks += 1;
            let metrics = self.step_metrics(&raw, p.m);
            on_step(p.step, &metrics)?;
        }
        Ok(())
    }

    /// Copies the metrics block (`MetricsLayout`) into `dst` at byte offset `at`.
    fn copy_metrics(&self, encoder: &mut wgpu::CommandEncoder, dst: &wgpu::Buffer, at: u64) {
        encoder.copy_buffer_to_buffer(&self.metrics.buffer, 0, dst, at, self.metrics.byte_len());
        let rho_at = at + (self.metrics_layout.rho_hat * 4) as u64;
        encoder.copy_buffer_to_buffer(&self.rho_hat.buffer, 0, dst, rho_at, self.rho_hat.byte_len());
    }

    fn read_metrics(&mut self) -> Vec<f32> {
        self.stats.readbacks += 1;
        let bytes = self.kernels.gpu.map_read(&self.metrics_staging);
        bytemuck::cast_slice(&bytes).to_vec()
    }

    fn step_metrics(&self, raw: &[f32], m: usize) -> StepMetrics {
        let ml = &self.metrics_layout;
        let nc = self.spec.code_width();
        let vec_at = |at: usize| raw[at..at + nc].iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let rho_hat = if self.loss.sparsity == Sparsity::None { vec_at(ml.mean) } else { vec_at(ml.rho_hat) };
        StepMetrics {
            loss: raw[0] as f64,
            reconstruction: raw[1] as f64,
            weight_decay: raw[2] as f64,
            sparsity: raw[3] as f64,
            mse: raw[4] as f64 / (m * self.spec.input_width()) as f64,
            rho_hat,
            freq: vec_at(ml.freq),
        }
    }

    /// Forward pass over `data` (`n x n_0`, row-major) in minibatches of the trainer's capacity,
    /// without updating. `feature_means` (per input feature) gives the FVU denominator.
    pub fn evaluate(&mut self, data: &[f32], feature_means: &[f64]) -> Result<EvalMetrics, String> {
        let n0 = self.spec.input_width();
        let nc = self.spec.code_width();
        let n = data.len() / n0;
        if n == 0 || !data.len().is_multiple_of(n0) {
            return Err(format!("evaluation data must be a non-empty multiple of the input width {n0}"));
        }
        let cap = self.batch_capacity;
        let batches = n.div_ceil(cap);
        let slot = (self.metrics_layout.len * 4) as u64;
        let gpu = self.kernels.gpu.clone();
        let results = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("evaluation results"),
            size: slot * batches as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        for bi in 0..batches {
            let rows = &data[bi * cap * n0..((bi + 1) * cap).min(n) * n0];
            let m = rows.len() / n0;
            self.ensure_schedule(m, Source::Host);
            let staging = self.x_staging.clone();
            self.upload(&staging, bytemuck::cast_slice(rows));
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            self.record(&mut encoder, m, Source::Host, |s| &s.evaluate);
            self.copy_metrics(&mut encoder, &results, slot * bi as u64);
            self.submit(encoder);
        }
        self.stats.readbacks += 1;
        let bytes = gpu.map_read(&results);
        let raw: &[f32] = bytemuck::cast_slice(&bytes);
        let ml = &self.metrics_layout;
        let per = ml.len;
        let mut sum_sq = 0.0;
        let mut weight_decay = 0.0;
        let mut rho = vec![0.0; nc];
        let mut freq = vec![0.0; nc];
        let mut mean = vec![0.0; nc];
        for bi in 0..batches {
            let m = (((bi + 1) * cap).min(n) - bi * cap) as f64;
            let r = &raw[bi * per..(bi + 1) * per];
            sum_sq += r[4] as f64;
            weight_decay = r[2] as f64;
            for j in 0..nc {
                rho[j] += m * r[ml.rho_hat + j] as f64;
                freq[j] += m * r[ml.freq + j] as f64;
                mean[j] += m * r[ml.mean + j] as f64;
            }
        }
        let nf = n as f64;
        rho.iter_mut().chain(freq.iter_mut()).chain(mean.iter_mut()).for_each(|v| *v /= nf);
        let rho_hat = if self.loss.sparsity == Sparsity::None { mean } else { rho };
        let (target, beta) = self.loss.sparsity.rho_beta();
        let sparsity = if self.loss.sparsity == Sparsity::None {
            0.0
        } else {
            beta * rho_hat.iter().map(|&q| kl_divergence(target, q)).sum::<f64>()
        };
        let reconstruction = 0.5 * sum_sq / nf;
        let mut var = 0.0;
        for row in data.chunks_exact(n0) {
            for (v, mu) in row.iter().zip(feature_means) {
                var += (*v as f64 - mu) * (*v as f64 - mu);
            }
        }
        Ok(EvalMetrics {
            samples: n,
            loss: reconstruction + weight_decay + sparsity,
            reconstruction,
            weight_decay,
            sparsity,
            mse: sum_sq / (nf * n0 as f64),
            fvu: if var > 0.0 { sum_sq / var } else { f64::NAN },
            rho_hat,
            freq,
        })
    }

    /// Current parameters (a read-back: call between steps, not inside a loop that must be fast).
    pub fn params(&self) -> Params {
        let flat = self.kernels.gpu.download(&self.params);
        self.layout.unflatten(&flat)
    }

    /// Replaces the parameters (e.g. from a checkpoint).
    pub fn set_params(&mut self, params: &Params) -> Result<(), String> {
        params.check_shapes(&self.spec)?;
        let flat = self.layout.flatten(params);
        let view = self.params.clone();
        self.upload(&view, bytemuck::cast_slice(&flat));
        Ok(())
    }

    /// Activations of layer `l` (e.g. the code layer) for `x`, computed by the forward pass.
    pub fn activations(&mut self, x: &[f32], l: usize) -> Result<Vec<f32>, String> {
        let n0 = self.spec.input_width();
        let nl = self.spec.sizes[l];
        let cap = self.batch_capacity;
        let mut out = Vec::with_capacity(x.len() / n0 * nl);
        for rows in x.chunks(cap * n0) {
            let m = self.check_batch(rows)?;
            self.ensure_schedule(m, Source::Host);
            let staging = self.x_staging.clone();
            self.upload(&staging, bytemuck::cast_slice(rows));
            let mut encoder = self.kernels.gpu.device.create_command_encoder(&Default::default());
            self.record(&mut encoder, m, Source::Host, |s| &s.evaluate);
            self.submit(encoder);
            self.stats.readbacks += 1;
            out.extend(self.kernels.gpu.download(&self.rows(&self.acts.a, l, m)));
        }
        Ok(out)
    }
}

/// Per-feature means of a row-major `n x width` matrix (the FVU baseline).
pub fn feature_means(data: &[f32], width: usize) -> Vec<f64> {
    let n = data.len() / width;
    let mut means = vec![0.0; width];
    for row in data.chunks_exact(width) {
        for (m, v) in means.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    means.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    means
}
