//! The training engine: device-resident buffers, allocated once, and the schedule of a step.
//!
//! `Trainer::schedule` is the one function to read: it lists the forward, backward and update
//! dispatches of a step exactly as SPEC.md section 4 writes them. Schedules are built once per
//! batch size and replayed; a step is one `write_buffer` of the minibatch and one submit, with
//! no read-back unless metrics are asked for.

use crate::device::Gpu;
use crate::kernels::{align, record, Kernels, Launch, View, LOSS_SLOTS};
use crate::model::{LossConfig, ModelSpec, Params, Sparsity};
use crate::reference::{kl_divergence, ColumnTransform};
use std::collections::HashMap;

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

struct Schedule {
    /// forward, backward, update.
    step: Vec<Launch>,
    /// forward, metrics, backward, update.
    step_with_metrics: Vec<Launch>,
    /// forward and metrics only.
    evaluate: Vec<Launch>,
}

/// Trains one model on one device. Every buffer is allocated in `new`; nothing is allocated
/// per step.
pub struct Trainer {
    pub kernels: Kernels,
    pub spec: ModelSpec,
    pub loss: LossConfig,
    pub lr: f64,
    /// Largest minibatch the buffers hold.
    pub batch_capacity: usize,
    pub layout: ParamLayout,
    params: View,
    grads: View,
    /// `a[0]` is the minibatch X; `z[l]`, `a[l]` for l = 1..=L (z[0] is unused).
    z: Vec<View>,
    a: Vec<View>,
    /// `delta[l]` for l = 1..=L (delta[0] unused).
    delta: Vec<View>,
    /// G, the gradient w.r.t. a layer's input, shared by all layers.
    g: View,
    metrics: View,
    rho_hat: View,
    metrics_layout: MetricsLayout,
    metrics_staging: wgpu::Buffer,
    schedules: HashMap<usize, Schedule>,
    pub steps_done: u64,
    pub stats: Stats,
}

/// Host-device traffic, cumulative since the trainer was made: the structural figures that
/// carry over from a software adapter to a real GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queue submissions.
    pub submits: u64,
    /// Compute dispatches recorded (split grids count each part).
    pub dispatches: u64,
    /// Bytes written from the host to device buffers (minibatches, indices, parameters).
    pub bytes_uploaded: u64,
    /// Times the host waited for the device to read something back.
    pub readbacks: u64,
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
        let widest = *spec.sizes.iter().max().unwrap();
        if batch_capacity * widest * 4 > max_binding {
            return Err(format!(
                "a batch of {batch_capacity} x {widest} floats exceeds this adapter's largest storage binding ({max_binding} bytes): use a smaller --batch-size"
            ));
        }
        let layout = ParamLayout::new(spec);
        let params = gpu.upload("params", &layout.flatten(init));
        let grads = View::whole(&gpu.storage("grads", layout.len));
        let m = batch_capacity;
        let mut z = vec![View::whole(&gpu.storage("unused", 1))];
        let mut a = vec![View::whole(&gpu.storage("x", m * spec.sizes[0]))];
        let mut delta = vec![z[0].clone()];
        for l in 1..=spec.layers() {
            let n = spec.sizes[l];
            z.push(View::whole(&gpu.storage(&format!("z{l}"), m * n)));
            a.push(View::whole(&gpu.storage(&format!("a{l}"), m * n)));
            delta.push(View::whole(&gpu.storage(&format!("delta{l}"), m * n)));
        }
        let g = View::whole(&gpu.storage("g", m * widest));
        let nc = spec.code_width();
        let metrics_layout = MetricsLayout {
            loss: 0,
            freq: align(LOSS_SLOTS),
            mean: align(LOSS_SLOTS) + align(nc),
            rho_hat: align(LOSS_SLOTS) + 2 * align(nc),
            len: align(LOSS_SLOTS) + 3 * align(nc),
        };
        let metrics = View::whole(&gpu.storage("metrics", metrics_layout.rho_hat));
        let rho_hat = View::whole(&gpu.storage("rho_hat", nc));
        let metrics_staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("metrics staging"),
            size: (metrics_layout.len * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Trainer {
            kernels,
            spec: spec.clone(),
            loss,
            lr,
            batch_capacity,
            layout,
            params,
            grads,
            z,
            a,
            delta,
            g,
            metrics,
            rho_hat,
            metrics_layout,
            metrics_staging,
            schedules: HashMap::new(),
            steps_done: 0,
            stats: Stats::default(),
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.kernels.gpu
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
    fn rho_hat(&self) -> View {
        self.rho_hat.clone()
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
    /// Rows `0..m` of a `[capacity, n]` activation buffer.
    fn rows(view: &View, m: usize, n: usize) -> View {
        view.slice(0, m * n)
    }

    /// The dispatches of one training step on a minibatch of `m` rows: SPEC.md section 4.
    fn schedule(&self, m: usize) -> Schedule {
        let k = &self.kernels;
        let spec = &self.spec;
        let layers = spec.layers();
        let c = spec.code_layer;
        let nc = spec.code_width();
        let size = |l: usize| spec.sizes[l];
        let z = |l: usize| Self::rows(&self.z[l], m, size(l));
        let a = |l: usize| Self::rows(&self.a[l], m, size(l));
        let delta = |l: usize| Self::rows(&self.delta[l], m, size(l));
        let g = |n: usize| Self::rows(&self.g, m, n);
        let inv_m = 1.0 / m as f64;

        // Forward: Z_l = A_{l-1} W_l^T + 1 b_l^T ; A_l = f_l(Z_l)
        let mut forward = Vec::new();
        for l in 1..=layers {
            let (n, kk) = spec.shape(l);
            forward.push(k.matmul_forward(&a(l - 1), &self.w(l), &z(l), m, kk, n));
            forward.push(k.bias_activation(&self.b(l), &z(l), &a(l), m, n, spec.activation(l)));
        }
        // rho_hat of the current minibatch, before any backward dispatch.
        match self.loss.sparsity {
            Sparsity::None => {}
            Sparsity::Kl { .. } => {
                forward.push(k.column_sum(&a(c), &self.rho_hat(), m, nc, ColumnTransform::Value, inv_m))
            }
            Sparsity::KlFreq { temperature, .. } => forward.push(k.column_sum(
                &z(c),
                &self.rho_hat(),
                m,
                nc,
                ColumnTransform::SoftFires { temperature },
                inv_m,
            )),
        }

        // Metrics (on request): loss terms, hard firing frequency, mean code activation.
        let n0 = size(0);
        let metrics = vec![
            k.column_sum(&z(c), &self.freq(), m, nc, ColumnTransform::Fires, inv_m),
            k.column_sum(&a(c), &self.mean_activation(), m, nc, ColumnTransform::Value, inv_m),
            k.loss_value(
                &a(layers),
                &a(0),
                &self.params.slice(0, self.layout.weights_len),
                &self.rho_hat(),
                &self.loss_out(),
                m,
                n0,
                self.loss.weight_decay,
                self.loss.sparsity,
            ),
        ];

        // Backward: delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)
        let mut backward =
            vec![k.output_delta(&a(layers), &a(0), &z(layers), &delta(layers), m, n0, spec.activation(layers))];
        for l in (1..=layers).rev() {
            let (n, kk) = spec.shape(l);
            // dW_l = delta_l^T A_{l-1} (lambda W_l is added by sgd_update) ; db_l = sum_i delta_l
            backward.push(k.matmul_backward_weight(&delta(l), &a(l - 1), &self.dw(l), m, n, kk));
            backward.push(k.column_sum(&delta(l), &self.db(l), m, n, ColumnTransform::Value, 1.0));
            if l == 1 {
                break;
            }
            // G = delta_l W_l ; delta_{l-1} = G ⊙ f_{l-1}'(Z_{l-1}) (+ the KL term at the code layer)
            backward.push(k.matmul_backward_input(&delta(l), &self.w(l), &g(kk), m, n, kk));
            let act = spec.activation(l - 1);
            if l - 1 == c && self.loss.sparsity != Sparsity::None {
                backward.push(k.kl_backward(
                    &g(kk),
                    &z(c),
                    &a(c),
                    &self.rho_hat(),
                    &delta(c),
                    m,
                    kk,
                    act,
                    self.loss.sparsity,
                ));
            } else {
                backward.push(k.activation_backward(&g(kk), &z(l - 1), &a(l - 1), &delta(l - 1), m, kk, act));
            }
        }

        // Update: W <- W - lr (dW + lambda W), b <- b - lr db, every parameter in one dispatch.
        let update = k.sgd_update(&self.grads, &self.params, self.layout.weights_len, self.lr, self.loss.weight_decay);

        let concat = |parts: &[&[Launch]]| parts.iter().flat_map(|p| p.iter().cloned()).collect::<Vec<_>>();
        Schedule {
            step: concat(&[&forward, &backward, std::slice::from_ref(&update)]),
            step_with_metrics: concat(&[&forward, &metrics, &backward, std::slice::from_ref(&update)]),
            evaluate: concat(&[&forward, &metrics]),
        }
    }

    fn ensure_schedule(&mut self, m: usize) {
        if !self.schedules.contains_key(&m) {
            let s = self.schedule(m);
            self.schedules.insert(m, s);
        }
    }

    fn check_batch(&self, x: &[f32]) -> Result<usize, String> {
        let n0 = self.spec.input_width();
        if x.is_empty() || x.len() % n0 != 0 {
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
        self.ensure_schedule(m);
        self.schedules[&m].step.iter().map(Launch::dispatch_count).sum()
    }

    /// One SGD step on the minibatch `x` (row-major, `m x n_0`): one upload, one submit, no wait.
    pub fn step(&mut self, x: &[f32]) -> Result<(), String> {
        let m = self.check_batch(x)?;
        self.ensure_schedule(m);
        let gpu = &self.kernels.gpu;
        gpu.queue.write_buffer(&self.a[0].buffer, 0, bytemuck::cast_slice(x));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        record(&mut encoder, &self.schedules[&m].step);
        gpu.queue.submit([encoder.finish()]);
        self.steps_done += 1;
        Ok(())
    }

    /// One SGD step that also returns the minibatch's metrics, measured before the update.
    pub fn step_with_metrics(&mut self, x: &[f32]) -> Result<StepMetrics, String> {
        let m = self.check_batch(x)?;
        self.ensure_schedule(m);
        let gpu = &self.kernels.gpu;
        gpu.queue.write_buffer(&self.a[0].buffer, 0, bytemuck::cast_slice(x));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        record(&mut encoder, &self.schedules[&m].step_with_metrics);
        self.copy_metrics(&mut encoder, &self.metrics_staging, 0);
        gpu.queue.submit([encoder.finish()]);
        self.steps_done += 1;
        let raw = self.read_metrics();
        Ok(self.step_metrics(&raw, m))
    }

    /// Copies the metrics block (`MetricsLayout`) into `dst` at byte offset `at`.
    fn copy_metrics(&self, encoder: &mut wgpu::CommandEncoder, dst: &wgpu::Buffer, at: u64) {
        encoder.copy_buffer_to_buffer(&self.metrics.buffer, 0, dst, at, self.metrics.byte_len());
        let rho_at = at + (self.metrics_layout.rho_hat * 4) as u64;
        encoder.copy_buffer_to_buffer(&self.rho_hat.buffer, 0, dst, rho_at, self.rho_hat.byte_len());
    }

    fn read_metrics(&self) -> Vec<f32> {
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
        if n == 0 || data.len() % n0 != 0 {
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
            self.ensure_schedule(m);
            gpu.queue.write_buffer(&self.a[0].buffer, 0, bytemuck::cast_slice(rows));
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            record(&mut encoder, &self.schedules[&m].evaluate);
            self.copy_metrics(&mut encoder, &results, slot * bi as u64);
            gpu.queue.submit([encoder.finish()]);
        }
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
        self.kernels.gpu.queue.write_buffer(&self.params.buffer, 0, bytemuck::cast_slice(&flat));
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
            self.ensure_schedule(m);
            let gpu = &self.kernels.gpu;
            gpu.queue.write_buffer(&self.a[0].buffer, 0, bytemuck::cast_slice(rows));
            gpu.run(&self.schedules[&m].evaluate);
            out.extend(gpu.download(&Self::rows(&self.a[l], m, nl)));
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
