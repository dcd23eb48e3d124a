//! What a trainer measures: the metrics of a step's minibatch (read back without stalling the
//! queue) and of a whole dataset (forward passes only, summed over minibatches).

use super::Trainer;
use crate::error::{Error, Result};
use crate::kernels::step::Rows;
use crate::model::Sparsity;
use crate::reference::kl_divergence;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Samples since each code unit last fired, this step's rows included.
    pub since_fired: Vec<u32>,
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

/// The FVU denominator of a dataset: the squared error of predicting each feature's mean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    pub squared_deviation: f64,
}

impl Baseline {
    /// Of a row-major `n x width` matrix.
    pub fn of(data: &[f32], width: usize) -> Baseline {
        let n = data.len() / width;
        let mut means = vec![0.0; width];
        for row in data.chunks_exact(width) {
            for (m, v) in means.iter_mut().zip(row) {
                *m += *v as f64;
            }
        }
        means.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let mut var = 0.0;
        for row in data.chunks_exact(width) {
            for (v, mu) in row.iter().zip(&means) {
                var += (*v as f64 - mu) * (*v as f64 - mu);
            }
        }
        Baseline { squared_deviation: var }
    }
}

/// A metrics read-back in flight.
pub(crate) struct Pending {
    step: u64,
    m: usize,
    staging: wgpu::Buffer,
    /// Set by the map callback: `Some(Ok)` once mapped, `Some(Err)` if mapping failed.
    done: Arc<Mutex<Option<Result<(), String>>>>,
    ready: Arc<AtomicBool>,
}

impl Pending {
    pub fn new(step: u64, m: usize, staging: wgpu::Buffer) -> Pending {
        Pending { step, m, staging, done: Arc::new(Mutex::new(None)), ready: Arc::new(AtomicBool::new(false)) }
    }

    /// Asks for the staging buffer to be mapped once the submit that fills it has run.
    pub fn map(&self) {
        let (done, ready) = (self.done.clone(), self.ready.clone());
        self.staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut d) = done.lock() {
                *d = Some(r.map_err(|e| e.to_string()));
            }
            ready.store(true, Ordering::Release);
        });
    }
}

impl Trainer {
    /// A staging buffer for one step's metrics, reused across log points.
    pub(super) fn metrics_buffer(&mut self) -> wgpu::Buffer {
        let bytes = (self.metrics_layout.len * 4) as u64;
        self.metrics_pool.pop().unwrap_or_else(|| self.kernels.gpu.staging("step metrics", bytes))
    }

    /// Hands finished metric read-backs to `on_step`, in step order; with `wait`, all of them.
    pub(super) fn drain(
        &mut self,
        pending: &mut VecDeque<Pending>,
        wait: bool,
        on_step: &mut impl FnMut(u64, &StepMetrics) -> Result<()>,
    ) -> Result<()> {
        while let Some(p) = pending.front() {
            if !p.ready.load(Ordering::Acquire) {
                if !wait {
                    return Ok(());
                }
                self.kernels.gpu.wait()?;
                continue;
            }
            let p = pending.pop_front().expect("non-empty");
            let outcome = p.done.lock().map(|d| d.clone()).unwrap_or(None);
            if let Some(Err(e)) = outcome {
                return Err(Error::runtime(format!("reading step {}'s metrics back failed: {e}", p.step)));
            }
            let raw: Vec<f32> = {
                let range = p
                    .staging
                    .slice(..)
                    .get_mapped_range()
                    .map_err(|e| Error::runtime(format!("reading step {}'s metrics back failed: {e}", p.step)))?;
                bytemuck::cast_slice(&range).to_vec()
            };
            p.staging.unmap();
            self.metrics_pool.push(p.staging);
            self.stats.readbacks += 1;
            let metrics = self.step_metrics(&raw, p.m, p.step);
            on_step(p.step, &metrics)?;
        }
        Ok(())
    }

    /// Copies the metrics block (`MetricsLayout`) into `dst` at byte offset `at`.
    pub(super) fn copy_metrics(&self, encoder: &mut wgpu::CommandEncoder, dst: &wgpu::Buffer, at: u64) {
        let b = &self.buffers;
        encoder.copy_buffer_to_buffer(&b.metrics.buffer, 0, dst, at, b.metrics.byte_len());
        let rho_at = at + (self.metrics_layout.rho_hat * 4) as u64;
        encoder.copy_buffer_to_buffer(&b.rho_hat.buffer, 0, dst, rho_at, b.rho_hat.byte_len());
        let since_at = at + (self.metrics_layout.since_fired * 4) as u64;
        encoder.copy_buffer_to_buffer(&b.since_fired.buffer, 0, dst, since_at, b.since_fired.byte_len());
    }

    pub(super) fn read_metrics(&mut self) -> Result<Vec<f32>> {
        self.stats.readbacks += 1;
        let bytes = self.kernels.gpu.map_read(&self.metrics_staging)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// The metrics of step `step` (1-based) of `m` rows from its block `raw`.
    pub(super) fn step_metrics(&self, raw: &[f32], m: usize, step: u64) -> StepMetrics {
        let ml = &self.metrics_layout;
        let nc = self.spec.code_width();
        let vec_at = |at: usize| raw[at..at + nc].iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let dense = matches!(self.loss.sparsity, Sparsity::None | Sparsity::L1 { .. } | Sparsity::L0 { .. });
        let rho_hat = if dense { vec_at(ml.mean) } else { vec_at(ml.rho_hat) };
        // L1 is measured here: C (this step's share) sum_j mean_j ||w_j||, the norms in rho_hat.
        let l1 = match self.loss.sparsity {
            Sparsity::L1 { coefficient } => {
                let c = coefficient * self.beta_scale_at(step);
                c * vec_at(ml.mean).iter().zip(vec_at(ml.rho_hat)).map(|(a, n)| a * n).sum::<f64>()
            }
            // L0: C (this step's share) times the firing frequencies' sum.
            Sparsity::L0 { coefficient } => {
                coefficient * self.beta_scale_at(step) * vec_at(ml.freq).iter().sum::<f64>()
            }
            _ => 0.0,
        };
        StepMetrics {
            loss: raw[0] as f64 + l1,
            reconstruction: raw[1] as f64,
            weight_decay: raw[2] as f64,
            sparsity: raw[3] as f64 + l1,
            mse: raw[4] as f64 / (m * self.spec.input_width()) as f64,
            rho_hat,
            freq: vec_at(ml.freq),
            since_fired: raw[ml.since_fired..ml.since_fired + nc].iter().map(|v| v.to_bits()).collect(),
        }
    }

    /// Forward pass over `data` (`n x n_0`, row-major, uploaded a minibatch at a time) in
    /// minibatches of the trainer's capacity, without updating.
    pub fn evaluate(&mut self, data: &[f32], baseline: &Baseline) -> Result<EvalMetrics> {
        let n0 = self.spec.input_width();
        let n = data.len() / n0;
        if n == 0 || !data.len().is_multiple_of(n0) {
            return Err(Error::input(format!("evaluation data must be a non-empty multiple of the input width {n0}")));
        }
        self.evaluate_batches(n, baseline, |t, rows| t.stage(&data[rows.start * n0..rows.end * n0]).map(|_| Rows::Host))
    }

    /// The same over `n` rows `read` writes a minibatch at a time (streamed data): `read(rows,
    /// out)` appends rows `rows` to `out`.
    pub fn evaluate_stream(
        &mut self,
        n: usize,
        baseline: &Baseline,
        mut read: impl FnMut(std::ops::Range<usize>, &mut Vec<f32>) -> Result<()>,
    ) -> Result<EvalMetrics> {
        if n == 0 {
            return Err(Error::input("no rows to evaluate"));
        }
        let mut chunk = Vec::new();
        self.evaluate_batches(n, baseline, |t, rows| {
            chunk.clear();
            read(rows, &mut chunk)?;
            t.stage(&chunk).map(|_| Rows::Host)
        })
    }

    /// The same over the resident data (`set_data`), in file order: nothing is uploaded but
    /// the cursor.
    pub fn evaluate_resident(&mut self, baseline: &Baseline) -> Result<EvalMetrics> {
        let n = self.resident_rows();
        if n == 0 {
            return Err(Error::input("no resident data to evaluate: set_data first"));
        }
        self.set_cursor(0);
        self.evaluate_batches(n, baseline, |_, _| Ok(Rows::Contiguous))
    }

    /// Evaluates `n` rows in minibatches of the capacity; `rows_of` readies each minibatch and
    /// says where its rows come from. One submit a minibatch, one read-back in all.
    fn evaluate_batches(
        &mut self,
        n: usize,
        baseline: &Baseline,
        mut rows_of: impl FnMut(&mut Trainer, std::ops::Range<usize>) -> Result<Rows>,
    ) -> Result<EvalMetrics> {
        let cap = self.batch_capacity;
        let batches = n.div_ceil(cap);
        let slot = (self.metrics_layout.len * 4) as u64;
        let gpu = self.kernels.gpu.clone();
        let results = gpu.staging("evaluation results", slot * batches as u64);
        for bi in 0..batches {
            let rows = bi * cap..((bi + 1) * cap).min(n);
            let m = rows.len();
            let from = rows_of(self, rows)?;
            let mut encoder = self.encoder();
            self.record(&mut encoder, m, from, |s| &s.evaluate);
            self.copy_metrics(&mut encoder, &results, slot * bi as u64);
            self.submit(encoder);
        }
        self.stats.readbacks += 1;
        let bytes = gpu.map_read(&results)?;
        Ok(self.combine(bytemuck::cast_slice(&bytes), n, baseline))
    }

    /// The whole set's metrics from the metrics blocks of its minibatches of the capacity (one
    /// `MetricsLayout` block after another in `raw`), summed in f64 weighted by size.
    pub(super) fn combine(&self, raw: &[f32], n: usize, baseline: &Baseline) -> EvalMetrics {
        let nc = self.spec.code_width();
        let cap = self.batch_capacity;
        let batches = n.div_ceil(cap);
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
        // beta as loss_value applied it: the share of the step after the last one taken.
        let (target, beta) = self.loss.sparsity.scaled(self.beta_scale_at(self.steps_done + 1)).rho_beta();
        let sparsity = match self.loss.sparsity {
            Sparsity::None => 0.0,
            // C sum_j mean_j ||w_j||: the norms are in rho_hat, the same in every minibatch.
            Sparsity::L1 { .. } => beta * mean.iter().zip(&rho).map(|(a, n)| a * n).sum::<f64>(),
            Sparsity::L0 { .. } => beta * freq.iter().sum::<f64>(),
            _ => beta * rho.iter().map(|&q| kl_divergence(target, q)).sum::<f64>(),
        };
        let rho_hat = if matches!(self.loss.sparsity, Sparsity::None | Sparsity::L1 { .. } | Sparsity::L0 { .. }) {
            mean
        } else {
            rho
        };
        let reconstruction = 0.5 * sum_sq / nf;
        let var = baseline.squared_deviation;
        EvalMetrics {
            samples: n,
            loss: reconstruction + weight_decay + sparsity,
            reconstruction,
            weight_decay,
            sparsity,
            mse: sum_sq / (nf * self.spec.input_width() as f64),
            fvu: if var > 0.0 { sum_sq / var } else { f64::NAN },
            rho_hat,
            freq,
        }
    }
}
