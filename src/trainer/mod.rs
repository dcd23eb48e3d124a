//! The training engine: device-resident buffers, allocated once, and the steps that run on them.
//!
//! * [`schedule`]: the dispatches of one step on either path (`Trainer::schedule` is the
//!   function to read: docs/design.md sections 4 and 5, line by line).
//! * [`full_batch`]: J and its gradient over a whole dataset, for L-BFGS.
//! * [`metrics`]: step metrics read back without stalling the queue, and whole-set evaluation.
//!
//! With the data resident on the device (`set_data`, `train_epoch`) a step uploads nothing and
//! many steps share one submit. Values that change between steps live on the device: the cursor
//! and the step count in the step state (`layout::StepState`), each step's learning rate and
//! Adam's bias corrections in the step-values table (`layout::StepValues`), so recorded
//! schedules stay valid as they change; the settings a schedule was built from are private and
//! change only through methods that rebuild what depends on them.

pub mod full_batch;
pub mod metrics;
pub mod schedule;

pub use metrics::{Baseline, EvalMetrics, StepMetrics};
pub use schedule::StepPath;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::step::Rows;
use crate::kernels::{record, Kernels, Launch, View};
use crate::layout::{ActivationLayout, MetricsLayout, ParamLayout, StepState};
use crate::model::{AuxK, LossConfig, ModelSpec, Params, Sparsity};
use crate::optim::{step_values, LrSchedule, Optimizer, UpdateRule};
use metrics::Pending;
use schedule::{panel_fits, Activations, Schedule};
use std::collections::{HashMap, VecDeque};

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

/// Time to the first completed step (docs/design.md section 13): the trainer submits its first
/// step alone and waits for it, once.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FirstStep {
    /// From recording the first step to the device finishing it: building its launches, the
    /// pipelines created for them, and the driver's compilation at first dispatch.
    pub seconds: f64,
    /// The pipelines created by then (the trainer's own and those of the first step).
    pub pipelines: crate::kernels::PipelineStats,
}

/// Options of `Trainer::train_epoch`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpochOptions {
    /// Step metrics every N steps (counted over the trainer's life, like `steps_done`).
    pub log_every: Option<usize>,
    /// Steps recorded into one submit; `None` chooses (up to 64, and a log step ends a submit).
    pub steps_per_submit: Option<usize>,
    /// When this is set (a Ctrl-C handler), the epoch ends at the next submit boundary.
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
}

/// The device buffers a trainer owns.
pub(crate) struct Buffers {
    /// Every parameter, laid out by `ParamLayout`; the gradients in the same layout.
    pub params: View,
    pub grads: View,
    /// Z, A and delta of every layer (laid out for the path: see `Activations`).
    pub acts: Activations,
    /// G, the gradient w.r.t. a layer's input, shared by all layers (layered path).
    pub g: View,
    /// Host-written minibatch.
    pub x_staging: View,
    /// Resident training data and the epoch's order of its rows.
    pub data: View,
    pub order: View,
    /// `layout::StepState`: the cursor and the step count.
    pub state: View,
    /// `layout::StepValues` of every step of the run: learning rate, Adam's bias corrections.
    pub step_values: View,
    /// The gradient-clipping coefficient `grad_norm` writes (1 without clipping).
    pub clip: View,
    /// The fused path's layer table.
    pub table: View,
    /// `MetricsLayout` up to rho_hat, and rho_hat.
    pub metrics: View,
    pub rho_hat: View,
    /// rho_hat's buffer: rho_hat, then at the next aligned offset the KL gradient's column term
    /// `fire_count_rho` writes for the code layer's backward pair (`kernels::KlTerm`).
    pub rho_hat_and_term: View,
    /// Samples since each code unit last fired (u32; `fire_count` keeps it).
    pub since_fired: View,
    /// BatchTopK's running threshold (one value; below 0 while unset).
    pub threshold: View,
    /// The optimizer's state in the parameter layout: velocity, or first and second moments
    /// (one-element placeholders where the optimizer has fewer).
    pub moments: [View; 2],
}

/// Trains one model on one device. Every buffer is allocated in `new` (the resident data in
/// `set_data`); nothing is allocated per step.
pub struct Trainer {
    kernels: Kernels,
    spec: ModelSpec,
    loss: LossConfig,
    lr: f64,
    optimizer: Optimizer,
    schedule: LrSchedule,
    /// Steps over which the sparsity weight ramps up from beta/N to beta (0: none).
    beta_warmup: u64,
    /// Steps over which kl-freq's target anneals to rho (0: none).
    rho_anneal: u64,
    /// The global gradient norm gradients are clipped to (PyTorch's `clip_grad_norm_`).
    clip_grad_norm: Option<f64>,
    /// Unit-norm decoder columns (docs/design.md section 12).
    decoder_norm: bool,
    /// AuxK's auxiliary loss (section 12): its rows follow the main rows through the backward
    /// pass, so the activations hold twice the batch.
    auxk: Option<AuxK>,
    /// Largest minibatch the buffers hold.
    batch_capacity: usize,
    layout: ParamLayout,
    metrics_layout: MetricsLayout,
    path: StepPath,
    buffers: Buffers,
    metrics_staging: wgpu::Buffer,
    /// Staging buffers for step metrics in flight, reused across log points.
    metrics_pool: Vec<wgpu::Buffer>,
    /// Read-back buffers of the full-batch objective, one per size, reused across evaluations.
    objective_staging: HashMap<u64, wgpu::Buffer>,
    /// The parameters as `set_flat_params` last wrote them, while no step has changed them
    /// since: the full-batch objective's weight-decay term reads them instead of the device.
    host_params: Option<Vec<f32>>,
    schedules: HashMap<(usize, Rows), Schedule>,
    steps_done: u64,
    stats: Stats,
    first_step: Option<FirstStep>,
    /// Largest training set `fit` keeps on the device: the adapter's largest storage binding
    /// (tests lower it to exercise streaming).
    max_resident_bytes: usize,
}

/// What a trainer runs on: a device (its kernels are compiled for the trainer), or kernels
/// already compiled (tests lower their `max_groups`).
pub trait IntoKernels {
    fn into_kernels(self) -> Result<Kernels>;
}

impl IntoKernels for &Gpu {
    fn into_kernels(self) -> Result<Kernels> {
        Kernels::new(self)
    }
}

impl IntoKernels for Kernels {
    fn into_kernels(self) -> Result<Kernels> {
        Ok(self)
    }
}

impl Trainer {
    /// A trainer for `spec` on `device` from the parameters `init`. Settings that are wrong or
    /// do not fit the adapter are bad input; kernels the adapter rejects, a runtime failure.
    pub fn new(
        device: impl IntoKernels,
        spec: &ModelSpec,
        loss: LossConfig,
        lr: f64,
        batch_capacity: usize,
        init: &Params,
    ) -> Result<Self> {
        let kernels = device.into_kernels()?;
        spec.validate().map_err(Error::Input)?;
        loss.validate(spec).map_err(Error::Input)?;
        init.check_shapes(spec).map_err(Error::Input)?;
        check_lr(lr)?;
        if batch_capacity == 0 {
            return Err(Error::input("batch size must be at least 1"));
        }
        let gpu = kernels.gpu.clone();
        let m = batch_capacity;
        // Each layer's [m, n_l] activations are one binding on the layered path (all layers
        // together on the fused one, which falls back to layered when they do not fit), and so
        // are the parameters.
        ActivationLayout::check_layers(spec, m, &gpu.limits)?;
        let layout = ParamLayout::new(spec);
        layout.check(spec, &gpu.limits)?;
        let metrics_layout = MetricsLayout::new(spec.code_width());
        let path = if ActivationLayout::new(spec, m).fits_one_binding(&gpu.limits)
            && !matches!(loss.sparsity, Sparsity::L1 { .. })
        {
            StepPath::auto(spec, &gpu.info)
        } else {
            StepPath::Layered
        };
        let acts_layout = ActivationLayout::new(spec, m);
        let values = step_values(Optimizer::Sgd, &LrSchedule::default(), lr, 0);
        let widest = spec.sizes.iter().copied().max().unwrap_or(1);
        let buffers = gpu.allocating("the trainer's buffers", || {
            let nc = spec.code_width();
            let rho_hat_and_term = View::whole(&gpu.storage("rho_hat", crate::layout::align(nc) + nc));
            let table =
                gpu.upload_bytes("layer table", bytemuck::cast_slice(&Self::layer_table(spec, &layout, &acts_layout)));
            let panel = path == StepPath::Layered && panel_fits(&kernels, spec, &acts_layout);
            Buffers {
                params: gpu.upload("params", &layout.flatten(init)),
                grads: View::whole(&gpu.storage("grads", layout.len)),
                acts: Activations::new(&gpu, spec, m, path, panel.then_some(&table)),
                table,
                g: View::whole(&gpu.storage("g", m * widest)),
                x_staging: View::whole(&gpu.storage("x staging", m * spec.sizes[0])),
                data: View::whole(&gpu.storage("data", 1)),
                order: View::whole(&gpu.storage("order", 1)),
                state: gpu.upload_bytes("step state", bytemuck::bytes_of(&StepState::default())),
                step_values: gpu.upload_bytes("step values", bytemuck::cast_slice(&values)),
                clip: gpu.upload("clip", &[1.0]),
                metrics: View::whole(&gpu.storage("metrics", metrics_layout.rho_hat)),
                rho_hat: rho_hat_and_term.head(spec.code_width()),
                rho_hat_and_term,
                since_fired: View::whole(&gpu.storage("since fired", spec.code_width())),
                threshold: gpu.upload(
                    "threshold",
                    &[match spec.select {
                        crate::model::CodeSelect::BatchTopK { threshold, .. } if threshold > 0.0 => threshold,
                        _ => -1.0,
                    }],
                ),
                moments: ["moment 1", "moment 2"].map(|name| View::whole(&gpu.storage(name, 1))),
            }
        })?;
        Ok(Trainer {
            metrics_staging: gpu.staging("metrics staging", (metrics_layout.len * 4) as u64),
            kernels,
            spec: spec.clone(),
            loss,
            lr,
            optimizer: Optimizer::Sgd,
            schedule: LrSchedule::default(),
            beta_warmup: 0,
            rho_anneal: 0,
            clip_grad_norm: None,
            decoder_norm: false,
            auxk: None,
            batch_capacity,
            layout,
            metrics_layout,
            path,
            buffers,
            metrics_pool: Vec::new(),
            objective_staging: HashMap::new(),
            host_params: None,
            schedules: HashMap::new(),
            steps_done: 0,
            stats: Stats::default(),
            first_step: None,
            max_resident_bytes: gpu.limits.max_storage_buffer_binding_size as usize,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.kernels.gpu
    }
    /// Time to the first completed step, once one has run.
    pub fn first_step(&self) -> Option<FirstStep> {
        self.first_step
    }
    /// After the first step's submit: waits for it and notes the time since `started`.
    fn note_first_step(&mut self, started: std::time::Instant) -> Result<()> {
        if self.first_step.is_none() {
            self.wait_idle()?;
            self.first_step =
                Some(FirstStep { seconds: started.elapsed().as_secs_f64(), pipelines: self.kernels.pipeline_stats() });
        }
        Ok(())
    }
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    pub fn loss(&self) -> LossConfig {
        self.loss
    }
    pub fn lr(&self) -> f64 {
        self.lr
    }
    pub fn batch_capacity(&self) -> usize {
        self.batch_capacity
    }
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    pub fn path(&self) -> StepPath {
        self.path
    }
    /// Training steps taken so far.
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sets the (peak) learning rate of the steps submitted from now on: the step-values table
    /// is rewritten in place (16 bytes for SGD or momentum at a constant rate) and recorded
    /// schedules stay valid.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr(lr)?;
        self.schedule.validate(lr).map_err(Error::Input)?;
        self.lr = lr;
        self.refresh_step_values()
    }

    /// Writes the step-values table for the current optimizer, schedule and rate: in place
    /// when its length is unchanged, else in a new buffer (and the schedules that bind the old
    /// one are dropped).
    fn refresh_step_values(&mut self) -> Result<()> {
        let values = step_values(self.optimizer, &self.schedule, self.lr, self.beta_warmup);
        let what = format!("a step-values table of {} steps", values.len());
        crate::layout::check_binding(&self.gpu().limits, &what, values.len() * 16, "use fewer steps")?;
        if values.len() == self.buffers.step_values.len / 4 {
            let view = self.buffers.step_values.clone();
            self.upload(&view, bytemuck::cast_slice(&values));
        } else {
            self.buffers.step_values = self.kernels.gpu.upload_bytes("step values", bytemuck::cast_slice(&values));
            self.stats.bytes_uploaded += (values.len() * 16) as u64;
            self.schedules.clear();
        }
        Ok(())
    }

    pub fn optimizer(&self) -> Optimizer {
        self.optimizer
    }

    pub fn lr_schedule(&self) -> LrSchedule {
        self.schedule
    }

    /// The learning rate of step `t` (1-based), as the step-values table holds it (in f64; the
    /// kernels apply it rounded to f32).
    pub fn lr_at(&self, t: u64) -> f64 {
        self.schedule.lr_at(self.lr, t)
    }

    /// What the update kernels apply.
    pub(crate) fn update_rule(&self) -> UpdateRule {
        UpdateRule {
            optimizer: self.optimizer,
            weight_decay: self.loss.weight_decay,
            schedule: self.schedule,
            clip_grad_norm: self.clip_grad_norm,
        }
    }

    /// Chooses the optimizer (SGD by default). Its state starts at zero, in buffers laid out as
    /// the parameters; schedules are rebuilt.
    pub fn set_optimizer(&mut self, optimizer: Optimizer) -> Result<()> {
        optimizer.validate().map_err(Error::Input)?;
        let gpu = self.kernels.gpu.clone();
        let len = self.layout.len;
        let tensors = optimizer.state_tensors();
        let sized = |i: usize, name: &str| View::whole(&gpu.storage(name, if i < tensors { len } else { 1 }));
        self.buffers.moments = [sized(0, "moment 1"), sized(1, "moment 2")];
        self.optimizer = optimizer;
        self.schedules.clear();
        self.refresh_step_values()
    }

    /// Ramps the sparsity weight linearly from beta/N to beta over the first `steps` steps (0,
    /// the default: none); the step-values table is rewritten.
    pub fn set_beta_warmup(&mut self, steps: u64) -> Result<()> {
        if steps > u32::MAX as u64 {
            return Err(Error::input("--beta-warmup-steps must stay below 2^32"));
        }
        self.beta_warmup = steps;
        self.refresh_step_values()
    }

    /// Anneals kl-freq's target geometrically from `max(0.5, rho)` to rho over the first `steps`
    /// steps (0, the default: none; docs/design.md section 11); schedules are rebuilt. Only
    /// kl-freq's push and controller follow it; J is measured at rho.
    pub fn set_rho_anneal(&mut self, steps: u64) -> Result<()> {
        if steps > u32::MAX as u64 {
            return Err(Error::input("--rho-anneal-steps must stay below 2^32"));
        }
        if steps > 0 && !matches!(self.loss.sparsity, crate::model::Sparsity::KlFreq { .. }) {
            return Err(Error::input("--rho-anneal-steps: a setting of --sparsity kl-freq"));
        }
        self.rho_anneal = steps;
        self.schedules.clear();
        Ok(())
    }

    /// Clips the gradients to a global norm of `max_norm` before each update (None, the default:
    /// no clipping), as PyTorch's `clip_grad_norm_`: one more dispatch a step.
    pub fn set_clip_grad_norm(&mut self, max_norm: Option<f64>) -> Result<()> {
        if let Some(c) = max_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::input(format!("--clip-grad-norm {c}: must be a finite number > 0")));
            }
        }
        self.clip_grad_norm = max_norm;
        self.schedules.clear();
        Ok(())
    }

    /// The share of beta that step `t` (1-based) applies.
    pub fn beta_scale_at(&self, t: u64) -> f64 {
        crate::optim::beta_scale(self.beta_warmup, t)
    }

    /// Sets the learning-rate schedule (constant by default); schedules are rebuilt.
    pub fn set_lr_schedule(&mut self, schedule: LrSchedule) -> Result<()> {
        schedule.validate(self.lr).map_err(Error::Input)?;
        self.schedule = schedule;
        self.schedules.clear();
        self.refresh_step_values()
    }

    /// Caps the training data `fit` keeps resident (tests set 0 to exercise streaming).
    pub fn set_max_resident_bytes(&mut self, bytes: usize) {
        self.max_resident_bytes = bytes;
    }

    /// Unit-norm decoder columns (`--decoder-norm unit`, docs/design.md section 12): each
    /// step removes from dW_L its component along each column of W_L, and renormalises the
    /// columns after the update. The layered path runs it (a fused trainer turns layered).
    pub fn set_decoder_norm(&mut self, on: bool) -> Result<()> {
        if on && self.path == StepPath::Fused {
            self.set_path(StepPath::Layered)?;
        }
        self.decoder_norm = on;
        self.schedules.clear();
        Ok(())
    }

    pub fn decoder_norm(&self) -> bool {
        self.decoder_norm
    }

    /// AuxK's auxiliary loss (`--auxk`, docs/design.md section 12) for a TopK dictionary trained
    /// without another penalty; the layered path runs it, with activations for twice the batch
    /// (the AuxK rows after the main ones).
    pub fn set_auxk(&mut self, auxk: Option<AuxK>) -> Result<()> {
        if let Some(a) = auxk {
            a.validate(&self.spec).map_err(Error::Input)?;
            if self.loss.sparsity != Sparsity::None {
                return Err(Error::input(format!(
                    "--auxk: a TopK dictionary's term, trained without --sparsity {}: drop one",
                    self.loss.sparsity.name()
                )));
            }
            let rows = crate::layout::auxk_row(self.batch_capacity) + self.batch_capacity;
            ActivationLayout::check_layers(&self.spec, rows, &self.gpu().limits)?;
        }
        if auxk == self.auxk {
            return Ok(());
        }
        self.auxk = auxk;
        // AuxK runs on the layered path; turning it off keeps the path the trainer has.
        if auxk.is_some() {
            self.path = StepPath::Layered;
        }
        self.buffers.acts = self.activations(self.path);
        self.schedules.clear();
        Ok(())
    }

    pub fn auxk(&self) -> Option<AuxK> {
        self.auxk
    }

    /// The model as a checkpoint holds it: with BatchTopK, the threshold training has reached
    /// (a read-back).
    pub fn checkpoint_spec(&self) -> Result<ModelSpec> {
        match self.spec.select {
            crate::model::CodeSelect::BatchTopK { k, .. } => {
                let threshold = self.kernels.gpu.download(&self.buffers.threshold)?[0];
                let select = crate::model::CodeSelect::BatchTopK { k, threshold };
                Ok(ModelSpec { select, ..self.spec.clone() })
            }
            _ => Ok(self.spec.clone()),
        }
    }

    /// Rows the activation buffers hold: the batch, and with AuxK its rows after them from an
    /// aligned row (`layout::auxk_row`).
    /// Activations for `path` at the trainer's rows, with the layer table rebuilt for their
    /// offsets (the fused path's kernels and the panel forward read it).
    fn activations(&mut self, path: StepPath) -> Activations {
        let gpu = self.kernels.gpu.clone();
        let rows = self.activation_rows();
        let layout = ActivationLayout::new(&self.spec, rows);
        let table = Self::layer_table(&self.spec, &self.layout, &layout);
        self.buffers.table = gpu.upload_bytes("layer table", bytemuck::cast_slice(&table));
        let panel = path == StepPath::Layered && self.auxk.is_none() && panel_fits(&self.kernels, &self.spec, &layout);
        Activations::new(&gpu, &self.spec, rows, path, panel.then_some(&self.buffers.table))
    }

    fn activation_rows(&self) -> usize {
        let m = self.batch_capacity;
        if self.auxk.is_some() {
            crate::layout::auxk_row(m) + m
        } else {
            m
        }
    }

    /// Chooses the step path (the fused one only where every width, and a batch's activations
    /// in one binding, fit, and the model and settings are ones it computes).
    pub fn set_path(&mut self, path: StepPath) -> Result<()> {
        if path == StepPath::Fused && !StepPath::fused_fits(&self.spec) {
            return Err(Error::input(format!(
                "the fused path takes layers up to {} wide, a dense code and no pre-bias: use the layered path",
                crate::kernels::FUSED_MAX_WIDTH
            )));
        }
        if path == StepPath::Fused
            && (self.decoder_norm || self.auxk.is_some() || matches!(self.loss.sparsity, Sparsity::L1 { .. }))
        {
            return Err(Error::input("the fused path has no decoder normalisation, AuxK or L1: use the layered path"));
        }
        let acts = ActivationLayout::new(&self.spec, self.batch_capacity);
        if path == StepPath::Fused && !acts.fits_one_binding(&self.gpu().limits) {
            return Err(Error::input(format!(
                "the fused path keeps a batch's activations in one binding: {} bytes is too many here",
                acts.total * 4
            )));
        }
        if path != self.path {
            let gpu = self.kernels.gpu.clone();
            self.path = path;
            self.buffers.acts = self.activations(path);
            self.schedules.clear();
            // The fused kernels read the step count without a gather_rows to bring it up to
            // the steps done (section 5 of docs/design.md): make the two agree.
            let done = self.steps_done as u32;
            let state = &self.buffers.state;
            gpu.queue.write_buffer(&state.buffer, state.byte_offset() + 4, bytemuck::cast_slice(&[done, done]));
        }
        Ok(())
    }

    /// Records one part of the schedule for `m` rows from `from` (no copies of it per step).
    fn record(&mut self, encoder: &mut wgpu::CommandEncoder, m: usize, from: Rows, part: fn(&Schedule) -> &[Launch]) {
        self.ensure_schedule(m, from);
        let launches = part(&self.schedules[&(m, from)]);
        record(encoder, launches);
        self.stats.dispatches += launches.iter().map(|l| l.dispatch_count() as u64).sum::<u64>();
    }

    fn upload(&mut self, view: &View, bytes: &[u8]) {
        self.kernels.gpu.queue.write_buffer(&view.buffer, view.byte_offset(), bytes);
        self.stats.bytes_uploaded += bytes.len() as u64;
    }

    /// Puts the cursor of the step state at `at` (the rest of the state stays).
    fn set_cursor(&mut self, at: u32) {
        let state = self.buffers.state.clone();
        self.upload(&state, bytemuck::bytes_of(&at));
    }

    fn submit(&mut self, encoder: wgpu::CommandEncoder) {
        self.kernels.gpu.queue.submit([encoder.finish()]);
        self.stats.submits += 1;
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.kernels.gpu.device.create_command_encoder(&Default::default())
    }

    /// Writes a host minibatch to the staging rows; returns its row count.
    fn stage(&mut self, x: &[f32]) -> Result<usize> {
        let m = self.check_batch(x)?;
        let staging = self.buffers.x_staging.clone();
        self.upload(&staging, bytemuck::cast_slice(x));
        Ok(m)
    }

    /// Waits until the device has run everything submitted.
    pub fn wait_idle(&self) -> Result<()> {
        self.kernels
            .gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Runtime(format!("{}: the device stopped responding ({e})", self.gpu().describe())))
    }

    /// One SGD step on a host minibatch `x` (row-major, `m x n_0`): one upload, one submit, no
    /// wait. `train_epoch` is the fast way to train on a whole dataset.
    pub fn step(&mut self, x: &[f32]) -> Result<()> {
        let started = std::time::Instant::now();
        self.host_params = None;
        let m = self.stage(x)?;
        let mut encoder = self.encoder();
        self.record(&mut encoder, m, Rows::Host, |s| &s.step);
        self.submit(encoder);
        self.steps_done += 1;
        self.note_first_step(started)
    }

    /// One SGD step on a host minibatch that also returns its metrics, measured before the update.
    pub fn step_with_metrics(&mut self, x: &[f32]) -> Result<StepMetrics> {
        let started = std::time::Instant::now();
        self.host_params = None;
        let m = self.stage(x)?;
        let mut encoder = self.encoder();
        self.record(&mut encoder, m, Rows::Host, |s| &s.step_with_metrics);
        self.copy_metrics(&mut encoder, &self.metrics_staging, 0);
        self.submit(encoder);
        self.steps_done += 1;
        self.note_first_step(started)?;
        let raw = self.read_metrics()?;
        Ok(self.step_metrics(&raw, m, self.steps_done))
    }

    /// Whether `len` floats of training data fit in one storage binding (`set_data`).
    pub fn fits_resident(&self, len: usize) -> bool {
        len * 4 <= self.max_resident_bytes
    }

    /// Rows of resident data (`set_data`), 0 before any.
    pub fn resident_rows(&self) -> usize {
        self.buffers.data.len / self.spec.input_width()
    }

    /// Makes `data` (`n x n_0`, row-major) resident on the device for `train_epoch` and
    /// `evaluate_resident`.
    pub fn set_data(&mut self, data: &[f32]) -> Result<()> {
        let n0 = self.spec.input_width();
        if data.is_empty() || !data.len().is_multiple_of(n0) {
            return Err(Error::input(format!("training data must be a non-empty multiple of the input width {n0}")));
        }
        crate::layout::check_binding(&self.gpu().limits, "the training data", data.len() * 4, "")?;
        let gpu = self.kernels.gpu.clone();
        let (data_view, order) = gpu.allocating("the training data", || {
            (gpu.upload("data", data), View::whole(&gpu.storage("order", data.len() / n0)))
        })?;
        self.buffers.data = data_view;
        self.buffers.order = order;
        self.stats.bytes_uploaded += (data.len() * 4) as u64;
        // Bind groups of resident schedules point at the old buffers.
        self.schedules.retain(|(_, from), _| *from == Rows::Host);
        Ok(())
    }

    /// One epoch over the resident data (`set_data`) in the given order of rows: minibatches of
    /// `batch_capacity` rows (the last one may be smaller) are gathered on the device, so the
    /// epoch uploads only `order` and the cursor. Steps are recorded many to a submit; every
    /// `log_every` steps the metrics of that step (before its update) are copied out and read
    /// back without stalling the queue, and `on_step` sees them in order. Returns the steps
    /// taken: all of the order's minibatches, or fewer when `opts.stop` was set at a submit
    /// boundary (everything submitted has then run, and its metrics were seen).
    pub fn train_epoch(
        &mut self,
        order: &[u32],
        opts: EpochOptions,
        mut on_step: impl FnMut(u64, &StepMetrics) -> Result<()>,
    ) -> Result<usize> {
        self.host_params = None;
        let n = self.resident_rows();
        if order.is_empty() || order.len() > n || order.iter().any(|&i| i as usize >= n) {
            return Err(Error::input(format!("an epoch order must hold row indices below {n} (set_data first)")));
        }
        let started = std::time::Instant::now();
        // The first step of the trainer's life goes alone, to time it (`first_step`).
        let mut first = self.first_step.is_none();
        let order_view = self.buffers.order.clone();
        self.upload(&order_view, bytemuck::cast_slice(order));
        self.set_cursor(0);
        let per_submit = opts.steps_per_submit.unwrap_or(64).max(1);
        let log_every = opts.log_every.filter(|&k| k > 0).map(|k| k as u64);
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut encoder = self.encoder();
        let mut in_encoder = 0;
        let mut taken = 0;
        let stop = || opts.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed));
        for rows in order.chunks(self.batch_capacity) {
            let m = rows.len();
            let step = self.steps_done + 1;
            let log = log_every.is_some_and(|k| step.is_multiple_of(k));
            if log {
                self.record(&mut encoder, m, Rows::Order, |s| &s.step_with_metrics);
                let staging = self.metrics_buffer();
                self.copy_metrics(&mut encoder, &staging, 0);
                pending.push_back(Pending::new(step, m, staging));
            } else {
                self.record(&mut encoder, m, Rows::Order, |s| &s.step);
            }
            self.steps_done += 1;
            taken += 1;
            in_encoder += 1;
            if log || in_encoder == per_submit || first {
                let full = std::mem::replace(&mut encoder, self.encoder());
                self.submit(full);
                in_encoder = 0;
                if log {
                    pending.back().expect("just queued").map();
                }
                if std::mem::take(&mut first) {
                    self.note_first_step(started)?;
                }
                // Collect finished read-backs without waiting for the rest of the queue.
                let _ = self.kernels.gpu.device.poll(wgpu::PollType::Poll);
                self.drain(&mut pending, false, &mut on_step)?;
                if stop() {
                    break;
                }
            }
        }
        if in_encoder > 0 {
            self.submit(encoder);
        }
        self.drain(&mut pending, true, &mut on_step)?;
        Ok(taken)
    }

    /// The optimizer's state: each state tensor (velocity, or first and second moments), flat in
    /// the parameter layout (a read-back).
    pub fn optimizer_state(&self) -> Result<Vec<Vec<f32>>> {
        let tensors = self.optimizer.state_tensors();
        self.buffers.moments[..tensors].iter().map(|v| self.kernels.gpu.download(v)).collect()
    }

    /// Continues a run: `steps_done` steps taken, and the optimizer state `optimizer_state`
    /// returned then (set the parameters with `set_params`).
    pub fn restore(&mut self, steps_done: u64, state: &[Vec<f32>]) -> Result<()> {
        let tensors = self.optimizer.state_tensors();
        if state.len() != tensors || state.iter().any(|t| t.len() != self.layout.len) {
            return Err(Error::input(format!(
                "the saved optimizer state holds {} tensors of {:?} values; {} needs {tensors} of {}",
                state.len(),
                state.iter().map(Vec::len).collect::<Vec<_>>(),
                self.optimizer.name(),
                self.layout.len
            )));
        }
        if steps_done > u32::MAX as u64 {
            return Err(Error::input("the saved step count exceeds 2^32"));
        }
        for (view, values) in self.buffers.moments.clone().iter().zip(state) {
            self.upload(view, bytemuck::cast_slice(values));
        }
        let at = StepState { step: steps_done as u32, done: steps_done as u32, ..Default::default() };
        let view = self.buffers.state.clone();
        self.upload(&view, bytemuck::bytes_of(&at));
        self.steps_done = steps_done;
        Ok(())
    }

    /// Samples since each code unit last fired, over the steps taken (a read-back).
    pub fn since_fired(&self) -> Result<Vec<u32>> {
        let raw = self.kernels.gpu.download(&self.buffers.since_fired)?;
        Ok(raw.iter().map(|v| v.to_bits()).collect())
    }

    /// Sets the samples since each code unit last fired (a resumed run's, from its train state).
    pub fn set_since_fired(&mut self, since: &[u32]) -> Result<()> {
        if since.len() != self.spec.code_width() {
            return Err(Error::input(format!(
                "{} firing counters for a code layer of {} units",
                since.len(),
                self.spec.code_width()
            )));
        }
        let view = self.buffers.since_fired.clone();
        self.upload(&view, bytemuck::cast_slice(since));
        Ok(())
    }

    /// Current parameters (a read-back: call between steps, not inside a loop that must be fast).
    pub fn params(&self) -> Result<Params> {
        let flat = self.kernels.gpu.download(&self.buffers.params)?;
        Ok(self.layout.unflatten(&flat))
    }

    /// Replaces the parameters (e.g. from a checkpoint).
    pub fn set_params(&mut self, params: &Params) -> Result<()> {
        self.host_params = None;
        params.check_shapes(&self.spec).map_err(Error::Input)?;
        let flat = self.layout.flatten(params);
        let view = self.buffers.params.clone();
        self.upload(&view, bytemuck::cast_slice(&flat));
        Ok(())
    }

    fn check_batch(&self, x: &[f32]) -> Result<usize> {
        let n0 = self.spec.input_width();
        if x.is_empty() || !x.len().is_multiple_of(n0) {
            return Err(Error::input(format!(
                "a minibatch must be a non-empty multiple of the input width {n0}, got {} values",
                x.len()
            )));
        }
        let m = x.len() / n0;
        if m > self.batch_capacity {
            return Err(Error::input(format!(
                "minibatch of {m} rows exceeds the trainer's capacity {}",
                self.batch_capacity
            )));
        }
        Ok(m)
    }
}

fn check_lr(lr: f64) -> Result<()> {
    crate::model::check_lr(lr).map_err(Error::Input)
}
