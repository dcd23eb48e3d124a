//! J and its gradient over a whole dataset, for full-batch optimizers (L-BFGS): docs/design.md
//! section 9. Two passes over the rows in chunks of the trainer's capacity: the evaluation
//! (forward and metrics) gives J and rho_hat over the whole set; then, with that rho_hat
//! written to the device, each chunk's forward and backward gives its gradient, and the host
//! sums them in f64 weighted by chunk size. One read-back per pass (per group of chunks).

use super::{Baseline, EvalMetrics, Trainer};
use crate::error::{Error, Result};
use crate::kernels::step::Rows;
use crate::model::Sparsity;

/// Chunks whose gradients share one read-back: bounds the staging memory at
/// `GROUP x parameters x 4` bytes whatever the dataset's size.
const GROUP: usize = 256;

impl Trainer {
    /// The parameters flat in the device's layout (`layout::ParamLayout`; padding is zero).
    pub fn flat_params(&self) -> Result<Vec<f32>> {
        self.kernels.gpu.download(&self.buffers.params)
    }

    /// Replaces the parameters with `flat`, in the device's layout.
    pub fn set_flat_params(&mut self, flat: &[f32]) -> Result<()> {
        if flat.len() != self.layout.len {
            return Err(Error::input(format!(
                "flat parameters: {} values, the layout holds {}",
                flat.len(),
                self.layout.len
            )));
        }
        let view = self.buffers.params.clone();
        self.upload(&view, bytemuck::cast_slice(flat));
        self.host_params = Some(flat.to_vec());
        Ok(())
    }

    /// A read-back buffer of `bytes` for the objective, made once per size and reused.
    fn objective_staging(&mut self, bytes: u64) -> wgpu::Buffer {
        let gpu = &self.kernels.gpu;
        self.objective_staging.entry(bytes).or_insert_with(|| gpu.staging("objective results", bytes)).clone()
    }

    /// kl-freq's term has no gradient to give: the hard frequency is a step function, and its
    /// straight-through push is not the gradient of J, which a line search would need.
    fn check_differentiable(&self) -> Result<()> {
        match self.loss.sparsity {
            Sparsity::KlFreq { .. } => Err(Error::input(
                "kl-freq's straight-through term is not the gradient of J (the hard frequency is a step function): a full-batch gradient needs another penalty",
            )),
            _ => Ok(()),
        }
    }

    /// J over the resident data (`set_data`) and its gradient, in the parameters' layout, with
    /// rho_hat over the whole set: `dJ/dtheta = sum_c (m_c / n) g_c + lambda W`, where `g_c` is
    /// chunk c's gradient of its mean reconstruction error and of the sparsity term at the
    /// whole set's rho_hat (docs/design.md section 9).
    ///
    /// A set of at most one minibatch takes one pass (`Schedule::evaluate_gradient`: its own
    /// rho_hat is the whole set's), with the same results bit for bit; a larger one two.
    pub fn loss_and_gradient(&mut self, baseline: &Baseline) -> Result<(EvalMetrics, Vec<f64>)> {
        self.check_differentiable()?;
        let n = self.resident_rows();
        if n <= self.batch_capacity {
            return self.loss_and_gradient_one_pass(n, baseline);
        }
        self.loss_and_gradient_in_passes(baseline)
    }

    /// The two-pass evaluation whatever the set's size (what `loss_and_gradient` does for sets
    /// of several minibatches; the benchmark times both).
    pub fn loss_and_gradient_in_passes(&mut self, baseline: &Baseline) -> Result<(EvalMetrics, Vec<f64>)> {
        self.check_differentiable()?;
        let metrics = self.evaluate_resident(baseline)?;
        let n = self.resident_rows();
        self.set_cursor(0);
        let grad = self.gradient_batches(n, &metrics.rho_hat, |_, _| Ok(Rows::Contiguous))?;
        Ok((metrics, grad))
    }

    /// J and its gradient over `n` resident rows, one minibatch: one submit, one read-back.
    fn loss_and_gradient_one_pass(&mut self, n: usize, baseline: &Baseline) -> Result<(EvalMetrics, Vec<f64>)> {
        self.set_cursor(0);
        let slot = (self.metrics_layout.len * 4) as u64;
        let len = self.layout.len;
        let gpu = self.kernels.gpu.clone();
        let results = self.objective_staging(slot + (len * 4) as u64);
        let mut encoder = self.encoder();
        self.record(&mut encoder, n, Rows::Contiguous, |s| &s.evaluate_gradient);
        self.copy_metrics(&mut encoder, &results, 0);
        let grads = &self.buffers.grads;
        encoder.copy_buffer_to_buffer(&grads.buffer, grads.byte_offset(), &results, slot, (len * 4) as u64);
        self.submit(encoder);
        self.stats.readbacks += 1;
        let bytes = gpu.map_read(&results)?;
        let raw: &[f32] = bytemuck::cast_slice(&bytes);
        let per = self.metrics_layout.len;
        let metrics = self.combine(&raw[..per], n, baseline);
        let mut grad: Vec<f64> = raw[per..per + len].iter().map(|&g| g as f64).collect();
        self.add_weight_decay(&mut grad)?;
        Ok((metrics, grad))
    }

    /// `lambda W` (biases excluded) added to a gradient of the device's, which holds only
    /// `delta^T A` (docs/design.md section 3).
    fn add_weight_decay(&self, grad: &mut [f64]) -> Result<()> {
        let lambda = if self.optimizer.decoupled_weight_decay() { 0.0 } else { self.loss.weight_decay };
        if lambda != 0.0 {
            // The parameters the host just wrote (L-BFGS's trial points), else a read-back.
            let params = match &self.host_params {
                Some(p) => p.clone(),
                None => self.flat_params()?,
            };
            for &(at, wlen) in &self.layout.weights {
                for i in at..at + wlen {
                    grad[i] += lambda * params[i] as f64;
                }
            }
        }
        Ok(())
    }

    /// The same over host data (`n x n_0`, row-major), uploaded a chunk at a time: for a set
    /// larger than one storage binding.
    pub fn loss_and_gradient_of(&mut self, data: &[f32], baseline: &Baseline) -> Result<(EvalMetrics, Vec<f64>)> {
        self.check_differentiable()?;
        let metrics = self.evaluate(data, baseline)?;
        let n0 = self.spec.input_width();
        let grad = self.gradient_batches(data.len() / n0, &metrics.rho_hat, |t, rows| {
            t.stage(&data[rows.start * n0..rows.end * n0]).map(|_| Rows::Host)
        })?;
        Ok((metrics, grad))
    }

    /// The gradient of J over `n` rows in chunks of the capacity, given the whole set's rho_hat.
    fn gradient_batches(
        &mut self,
        n: usize,
        rho_hat: &[f64],
        mut rows_of: impl FnMut(&mut Trainer, std::ops::Range<usize>) -> Result<Rows>,
    ) -> Result<Vec<f64>> {
        if self.loss.sparsity != Sparsity::None {
            let rho: Vec<f32> = rho_hat.iter().map(|&v| v as f32).collect();
            let view = self.buffers.rho_hat.clone();
            self.upload(&view, bytemuck::cast_slice(&rho));
        }
        let cap = self.batch_capacity;
        let chunks = n.div_ceil(cap);
        let len = self.layout.len;
        let slot = (len * 4) as u64;
        let gpu = self.kernels.gpu.clone();
        let results = self.objective_staging(slot * GROUP.min(chunks) as u64);
        let mut grad = vec![0.0f64; len];
        for group in (0..chunks).step_by(GROUP) {
            let in_group = GROUP.min(chunks - group);
            for (i, ci) in (group..group + in_group).enumerate() {
                let rows = ci * cap..((ci + 1) * cap).min(n);
                let m = rows.len();
                let from = rows_of(self, rows)?;
                let mut encoder = self.encoder();
                self.record(&mut encoder, m, from, |s| &s.gradient);
                let grads = &self.buffers.grads;
                encoder.copy_buffer_to_buffer(&grads.buffer, grads.byte_offset(), &results, slot * i as u64, slot);
                self.submit(encoder);
            }
            self.stats.readbacks += 1;
            let bytes = gpu.map_read(&results)?;
            let raw: &[f32] = bytemuck::cast_slice(&bytes);
            for i in 0..in_group {
                let ci = group + i;
                let share = (((ci + 1) * cap).min(n) - ci * cap) as f64 / n as f64;
                for (acc, &g) in grad.iter_mut().zip(&raw[i * len..(i + 1) * len]) {
                    *acc += share * g as f64;
                }
            }
        }
        // The weight-decay term's gradient, added once for the whole set.
        self.add_weight_decay(&mut grad)?;
        Ok(grad)
    }
}
