//! The training loop: epochs of shuffled minibatches through a [`Trainer`], step metrics every
//! `log_every` steps, a whole-set evaluation at the end of each epoch, and divergence detection.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::lbfgs::{Lbfgs, LbfgsSettings, LbfgsState, Stop};
use crate::model::Rng;
use crate::trainer::{Baseline, EpochOptions, EvalMetrics, StepMetrics, Trainer};

/// Defaults of `sae train`. A preset (`--preset`) fills every setting that neither a flag nor
/// the config file gives; the constants outside the preset modules are the defaults of settings
/// no preset names. Each preset's figures were measured (docs/design.md section 11 for forum;
/// `tests/sparsity.rs` holds both presets to them).
pub mod defaults {
    use crate::optim::{self, Optimizer};

    /// What `sae train` runs with no arguments.
    pub const PRESET: &str = "forum";

    /// The forum post's own model, 20-80-40-4-40-80-20 with ReLU everywhere (code and output
    /// too), every code unit to fire in a fraction rho of the samples: kl-freq's hard frequency
    /// with its straight-through push and frequency controller, Adam at 0.003 with a cosine
    /// decay over 20 epochs, beta and the controller ramped in over the first 15 % of the steps
    /// and the target annealed from 0.5 to rho over the first half.
    /// Measured on the built-in data (docs/design.md section 11): every unit's frequency in
    /// [0.03, 0.08] at rho 0.05, with no dead unit.
    pub mod forum {
        pub const LAYERS: &str = "20,80,40,4";
        pub const ACTIVATION: &str = "relu";
        pub const SPARSITY: &str = "kl-freq";
        pub const RHO: f64 = 0.05;
        pub const BETA: f64 = 3.0;
        pub const LR: f64 = 0.003;
        pub const LR_SCHEDULE: &str = "cosine";
        pub const EPOCHS: usize = 20;
        pub const BATCH_SIZE: usize = 32;

        /// The beta warm-up: the first 15 % of the run's `total` steps (768 of the default
        /// run's 5120: 3 epochs of the built-in data).
        pub fn beta_warmup_steps(total: u64) -> u64 {
            (total as f64 * 0.15).round() as u64
        }

        /// The target anneal: the first half of the run (2560 steps, 10 epochs, by default), so
        /// a run of any length reaches rho with time to settle there.
        pub fn rho_anneal_steps(total: u64) -> u64 {
            total / 2
        }
    }

    /// The mean-activation model that was the default before: sigmoid code and output, the
    /// classic KL of the mean activation. Measured on lavapipe, seeds 0-3: Adam at lr 0.01,
    /// batch 32, 3 epochs ends at FVU 0.10-0.16 with every rho_hat in [0.042, 0.066] in
    /// 1.4-2.3 s, where SGD at lr 0.5 took 10 epochs (4.3 s) to reach FVU 0.54. Small batches
    /// matter: at batch 256 and lr 0.5 SGD sits on the predict-the-mean plateau for most of a
    /// short run.
    pub mod classic {
        pub const LAYERS: &str = "20,80,40,4";
        pub const HIDDEN_ACTIVATION: &str = "relu";
        pub const CODE_ACTIVATION: &str = "sigmoid";
        pub const OUTPUT_ACTIVATION: &str = "sigmoid";
        pub const SPARSITY: &str = "kl";
        pub const RHO: f64 = 0.05;
        pub const BETA: f64 = 3.0;
        pub const LR: f64 = 0.01;
        pub const EPOCHS: usize = 3;
        pub const BATCH_SIZE: usize = 32;
    }

    /// A dictionary (docs/design.md section 12): one hidden layer of latents over a synthetic
    /// dictionary's samples (D = 32, F = 64 true directions, S = 3 active), a TopK code with
    /// K = S, a pre-bias initialised to the data mean, unit-norm decoder columns, a tied init
    /// and Adam, no penalty term (TopK sets the sparsity).
    pub mod dictionary {
        pub const SYNTHETIC: &str = "dictionary:32,64,3";
        pub const SAMPLES: usize = 20_000;
        pub const LAYERS: &str = "32,64";
        pub const K: usize = 3;
        /// AuxK over the latents dead for `DEAD_AFTER` samples: on seed 0, 7 of 64 latents
        /// died without it (MMCS 0.959, 50 of 64 directions above 0.9, FVU 0.105) and none with
        /// it (MMCS 0.9985, all 64 above 0.9, FVU 0.048).
        pub const AUXK: usize = 16;
        pub const LR: f64 = 0.004;
        pub const EPOCHS: usize = 20;
        pub const BATCH_SIZE: usize = 64;
    }

    // Settings no preset gives.
    pub const LAYERS: &str = forum::LAYERS;
    pub const SPARSITY: &str = forum::SPARSITY;
    pub const RHO: f64 = 0.05;
    pub const BETA: f64 = 3.0;
    /// kl-soft-freq's temperature: sigmoid(z / T) is a smooth step about |z| < 2T wide.
    pub const TEMPERATURE: f64 = 0.5;
    /// kl-freq's straight-through scale T: the push on each row is beta (rho_hat - rho) / (T m).
    /// Small T lets the push outweigh the reconstruction and scatter the features; at 8 the
    /// frequency controller does most of the holding (docs/design.md section 11).
    pub const FREQ_TEMPERATURE: f64 = 8.0;
    /// kl-freq's frequency controller: the code bias moves by -0.01 (rho_hat - rho) a step.
    pub const FREQUENCY_CONTROL: f64 = 0.01;
    /// `--sparsity l1`'s coefficient: measured on the dictionary preset's data (docs/design.md
    /// section 12).
    pub const L1_COEFFICIENT: f64 = 0.05;
    /// JumpReLU's kernel width and starting threshold, and `--sparsity l0`'s weight: the
    /// settings that recover the synthetic dictionary in PyTorch (`tools/torch_dictionary.py`;
    /// SAELens's 0.001 / 0.001 leave a dense code there), the L0 weight halved to sae's units
    /// (its reconstruction term is half PyTorch's MSE).
    pub const JUMPRELU_BANDWIDTH: f32 = 0.05;
    pub const JUMPRELU_THRESHOLD: f32 = 0.1;
    pub const L0_COEFFICIENT: f64 = 0.015;
    /// AuxK's weight: Gao et al. (2024) use 1/32.
    pub const AUXK_COEFFICIENT: f64 = 1.0 / 32.0;
    /// Rows of a streamed set its metrics are measured on (the first, in file order).
    pub const EVAL_ROWS: usize = 1 << 20;
    /// Data files above this many bytes are streamed (`--data` directories always are).
    pub const STREAM_ABOVE_BYTES: u64 = 256 << 20;
    /// A unit silent for this many training samples is dead on metrics lines.
    pub const DEAD_AFTER: u64 = 10_000;
    pub const OPTIMIZER: &str = "adam";
    pub const LR: f64 = classic::LR;
    pub const BATCH_SIZE: usize = 32;
    pub const EPOCHS: usize = classic::EPOCHS;

    /// The default optimizer with its default settings.
    pub fn optimizer() -> Optimizer {
        let (beta1, beta2) = optim::defaults::ADAM_BETAS;
        Optimizer::Adam { beta1, beta2, eps: optim::defaults::ADAM_EPS }
    }

    /// The settings of the runs made before Adam was the default (SGD, lr 0.5, 10 epochs): what
    /// the firing-frequency experiments were measured with.
    pub const SGD_LR: f64 = 0.5;
}

/// A trainer for `spec` with the penalty `sparsity`, set up as `sae train --preset forum` sets one
/// up for `rows` training rows: Adam at the preset's rate with a cosine decay over its epochs, the
/// beta warm-up and (for kl-freq) the target anneal; with the options `fit` takes for it.
pub fn forum_trainer(
    gpu: &crate::Gpu,
    spec: &crate::ModelSpec,
    sparsity: crate::model::Sparsity,
    init: &crate::Params,
    rows: usize,
    seed: u64,
) -> Result<(Trainer, TrainOptions)> {
    use crate::optim::{LrSchedule, ScheduleKind};
    use defaults::forum as f;
    let loss = crate::LossConfig { weight_decay: 0.0, sparsity };
    let mut trainer = Trainer::new(gpu, spec, loss, f::LR, f::BATCH_SIZE, init)?;
    trainer.set_optimizer(defaults::optimizer())?;
    let total_steps = (rows.div_ceil(f::BATCH_SIZE) * f::EPOCHS) as u64;
    let kind = ScheduleKind::parse(f::LR_SCHEDULE).map_err(Error::Input)?;
    trainer.set_lr_schedule(LrSchedule { kind, warmup_steps: 0, total_steps, lr_min: 0.0 })?;
    trainer.set_beta_warmup(f::beta_warmup_steps(total_steps))?;
    if let crate::model::Sparsity::KlFreq { .. } = sparsity {
        trainer.set_rho_anneal(f::rho_anneal_steps(total_steps))?;
    }
    let opts = TrainOptions {
        epochs: f::EPOCHS,
        batch_size: f::BATCH_SIZE,
        seed,
        shuffle: true,
        log_every: None,
        steps_per_submit: None,
        shuffle_buffer: None,
    };
    Ok((trainer, opts))
}

/// A trainer for a dictionary recipe, set up as `sae train --preset dictionary` sets one up for
/// `data` (its mean is the pre-bias's start): `spec` with the tied, unit-norm init, decoder
/// normalisation, AuxK, Adam at the preset's rate, constant; with the options `fit` takes for it.
pub fn dictionary_trainer(
    gpu: &crate::Gpu,
    spec: &crate::ModelSpec,
    loss: crate::LossConfig,
    data: &Dataset,
    seed: u64,
) -> Result<(Trainer, TrainOptions)> {
    use defaults::dictionary as d;
    let mean = column_means(data);
    let init = crate::Params::dictionary_init(spec, seed, true, true, spec.pre_bias.then_some(&mean[..]));
    let mut trainer = Trainer::new(gpu, spec, loss, d::LR, d::BATCH_SIZE, &init)?;
    trainer.set_optimizer(defaults::optimizer())?;
    trainer.set_decoder_norm(true)?;
    if spec.select.k().is_some() && loss.sparsity == crate::model::Sparsity::None {
        let auxk = crate::model::AuxK {
            k: d::AUXK,
            coefficient: defaults::AUXK_COEFFICIENT,
            dead_after: defaults::DEAD_AFTER,
        };
        trainer.set_auxk(Some(auxk))?;
    }
    let opts = TrainOptions {
        epochs: d::EPOCHS,
        batch_size: d::BATCH_SIZE,
        seed,
        shuffle: true,
        log_every: None,
        steps_per_submit: None,
        shuffle_buffer: None,
    };
    Ok((trainer, opts))
}

/// Each column's mean over the rows, in f64 then rounded: the pre-bias's init.
pub fn column_means(data: &Dataset) -> Vec<f32> {
    let mut sum = vec![0.0f64; data.cols];
    for row in data.values.chunks_exact(data.cols.max(1)) {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += *v as f64;
        }
    }
    sum.iter().map(|s| (s / data.rows.max(1) as f64) as f32).collect()
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Seeds the per-epoch shuffle.
    pub seed: u64,
    pub shuffle: bool,
    /// Step metrics every N steps (measured on that step's minibatch before its update).
    pub log_every: Option<usize>,
    /// Steps per queue submission; `None` lets the trainer choose.
    pub steps_per_submit: Option<usize>,
    /// Shuffle through a mixing buffer of this many rows (`stream::MixingOrder`) instead of a
    /// whole permutation: the order a streamed run takes, for resident data too.
    pub shuffle_buffer: Option<usize>,
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    Step {
        epoch: usize,
        step: u64,
        metrics: &'a StepMetrics,
    },
    Epoch {
        epoch: usize,
        step: u64,
        train: &'a EvalMetrics,
        validation: Option<&'a EvalMetrics>,
        /// For checkpoints: `trainer.params()`.
        trainer: &'a Trainer,
    },
    /// The run was interrupted (`INTERRUPT` set): every submitted step has run, and the run can
    /// continue from here. `epochs_done` whole epochs (or L-BFGS iterations) and
    /// `steps_into_epoch` minibatches of the next; for L-BFGS its state.
    Interrupted {
        epochs_done: usize,
        steps_into_epoch: usize,
        trainer: &'a Trainer,
        lbfgs: Option<&'a LbfgsState>,
    },
    /// Rows a streamed run has read so far (`fit_stream`), every few steps: progress only.
    Rows {
        read: u64,
    },
    /// An L-BFGS iteration (`fit_lbfgs`), measured at the point it accepted.
    Iteration {
        iteration: usize,
        /// The accepted step length along the search direction.
        step_length: f64,
        /// Objective evaluations over the run so far, this one's line search included.
        evaluations: u64,
        train: &'a EvalMetrics,
        validation: Option<&'a EvalMetrics>,
        trainer: &'a Trainer,
        /// What `fit_lbfgs` needs to continue from here (with the parameters).
        state: &'a LbfgsState,
    },
}

/// Set (by the `sae` command's Ctrl-C handler) to stop training at the next submit boundary:
/// the loops then report `Event::Interrupted` and return `Error::Interrupted`.
pub static INTERRUPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPT.load(std::sync::atomic::Ordering::Relaxed)
}

fn interrupted_error(epochs_done: usize, steps: usize) -> Error {
    Error::Interrupted(format!("interrupted after {epochs_done} whole epochs (iterations) and {steps} more steps"))
}

/// The message of a run whose loss stopped being finite at `at_step` (`after_step` is the
/// last step known to be finite).
fn diverged(at_step: u64, after_step: u64) -> Error {
    Error::runtime(format!(
        "training diverged: the loss is not finite at step {at_step} (last finite check: step {after_step}); \
         lower --lr or --beta, or check the data's scale"
    ))
}

/// Splits off the last `fraction` of the rows (after a seeded shuffle) as a validation set.
pub fn split_validation(data: &Dataset, fraction: f64, seed: u64) -> (Dataset, Option<Dataset>) {
    let n_val = ((data.rows as f64) * fraction).round() as usize;
    if n_val == 0 || n_val >= data.rows {
        return (Dataset { rows: data.rows, cols: data.cols, values: data.values.clone() }, None);
    }
    let mut order: Vec<usize> = (0..data.rows).collect();
    Rng::new(seed ^ 0x0A11_DA7E).shuffle(&mut order);
    let take = |idx: &[usize]| Dataset {
        rows: idx.len(),
        cols: data.cols,
        values: idx.iter().flat_map(|&i| data.values[i * data.cols..(i + 1) * data.cols].iter().copied()).collect(),
    };
    let (train, val) = order.split_at(data.rows - n_val);
    (take(train), Some(take(val)))
}

/// One epoch with host-uploaded minibatches (data too large to keep on the device).
fn stream_epoch(
    trainer: &mut Trainer,
    train: &Dataset,
    order: &[u32],
    batch_size: usize,
    log_every: Option<usize>,
    batch: &mut Vec<f32>,
    on_step: &mut impl FnMut(u64, &StepMetrics) -> Result<()>,
) -> Result<usize> {
    let mut taken = 0;
    for rows in order.chunks(batch_size) {
        if interrupted() {
            break;
        }
        taken += 1;
        batch.clear();
        for &i in rows {
            batch.extend_from_slice(train.row(i as usize));
        }
        let step = trainer.steps_done() + 1;
        if log_every.is_some_and(|n| n > 0 && step.is_multiple_of(n as u64)) {
            let metrics = trainer.step_with_metrics(batch)?;
            on_step(step, &metrics)?;
        } else {
            trainer.step(batch)?;
        }
    }
    Ok(taken)
}

/// Limits of a streamed run (`fit_stream`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamLimits {
    /// Stop after this many training steps in all (counted over the trainer's life).
    pub max_steps: Option<u64>,
    /// Evaluate on the first rows only (whole-set metrics over billions of rows would take as
    /// long as an epoch): the default of `sae train` is [`defaults::EVAL_ROWS`].
    pub eval_rows: Option<usize>,
}

/// Trains on rows streamed from `store` (docs/design.md section 12): each epoch reads the rows
/// a chunk at a time, through a mixing buffer of `opts.shuffle_buffer` rows (or the default,
/// `stream::default_buffer`) with `opts.shuffle`, in file order without; one upload and one
/// submit a minibatch, the host reading the next while the device runs this one (at most
/// [`STREAM_IN_FLIGHT`] steps ahead). Epoch metrics are over the first `limits.eval_rows`
/// rows. Interrupts, divergence and events as [`fit_epochs`].
pub fn fit_stream(
    trainer: &mut Trainer,
    store: &crate::stream::RowStore,
    opts: &TrainOptions,
    limits: StreamLimits,
    epochs: std::ops::RangeInclusive<usize>,
    skip: usize,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<EvalMetrics> {
    use crate::stream::{MixingOrder, Stream};
    let eval_rows = limits.eval_rows.unwrap_or(store.rows).min(store.rows);
    let baseline = store.baseline(eval_rows)?;
    let buffer = opts.shuffle_buffer.unwrap_or_else(|| crate::stream::default_buffer(store.cols));
    let mut rng = Rng::new(opts.seed);
    if opts.shuffle {
        for _ in 1..*epochs.start() {
            MixingOrder::new(store.rows, buffer, &mut rng).for_each(drop);
        }
    }
    let evaluate = |trainer: &mut Trainer| {
        trainer.evaluate_stream(eval_rows, &baseline, |rows, out| store.read(rows.start, rows.len(), out))
    };
    let first = *epochs.start();
    let mut last_finite = trainer.steps_done();
    let mut batch = Vec::with_capacity(opts.batch_size * store.cols);
    let mut read = 0u64;
    for epoch in epochs {
        let mut stream = Stream::new(store, opts.shuffle.then_some((buffer, &mut rng)))?;
        let mut taken = 0;
        if epoch == first && skip > 0 {
            stream.skip(skip * opts.batch_size)?;
            taken = skip;
        }
        loop {
            if limits.max_steps.is_some_and(|max| trainer.steps_done() >= max) {
                return evaluate(trainer);
            }
            if interrupted() {
                on_event(Event::Interrupted { epochs_done: epoch - 1, steps_into_epoch: taken, trainer, lbfgs: None })?;
                return Err(interrupted_error(epoch - 1, taken));
            }
            batch.clear();
            let rows = stream.next_rows(opts.batch_size, &mut batch)?;
            if rows == 0 {
                break;
            }
            read += rows as u64;
            taken += 1;
            let step = trainer.steps_done() + 1;
            if opts.log_every.is_some_and(|n| n > 0 && step.is_multiple_of(n as u64)) {
                let metrics = trainer.step_with_metrics(&batch)?;
                if !metrics.loss.is_finite() {
                    return Err(diverged(step, last_finite));
                }
                last_finite = step - 1;
                on_event(Event::Step { epoch, step, metrics: &metrics })?;
            } else {
                trainer.step(&batch)?;
            }
            if step.is_multiple_of(STREAM_IN_FLIGHT) {
                trainer.wait_idle()?;
                on_event(Event::Rows { read })?;
            }
        }
        let step = trainer.steps_done();
        let metrics = evaluate(trainer)?;
        if !metrics.loss.is_finite() {
            return Err(diverged(step, last_finite));
        }
        last_finite = step;
        on_event(Event::Epoch { epoch, step, train: &metrics, validation: None, trainer: &*trainer })?;
        if epoch == opts.epochs {
            return Ok(metrics);
        }
    }
    evaluate(trainer)
}

/// Steps a streamed run records before it waits for the device: bounds the host's lead (and
/// the upload staging it holds) while leaving the device the next steps to run.
pub const STREAM_IN_FLIGHT: u64 = 8;

/// Trains for `opts.epochs` epochs; returns the last epoch's metrics on the training set.
/// Divergence, and an error from `on_event`, end the run with that error.
pub fn fit(
    trainer: &mut Trainer,
    train: &Dataset,
    validation: Option<&Dataset>,
    opts: &TrainOptions,
    on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<EvalMetrics> {
    fit_epochs(trainer, train, validation, opts, 1..=opts.epochs, 0, on_event)
}

/// Trains the epochs `epochs` of a run of `opts.epochs` (a run resumed after epoch
/// `epochs.start() - 1`, or stopped before its end): the shuffles of the epochs before are
/// replayed, so each epoch visits the rows in the order an uninterrupted run would. `skip`
/// minibatches of the first epoch were taken already (a run interrupted inside it).
pub fn fit_epochs(
    trainer: &mut Trainer,
    train: &Dataset,
    validation: Option<&Dataset>,
    opts: &TrainOptions,
    epochs: std::ops::RangeInclusive<usize>,
    skip: usize,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<EvalMetrics> {
    let width = train.cols;
    let baseline = Baseline::of(&train.values, width);
    let val_baseline = validation.map(|v| Baseline::of(&v.values, width));
    let mut rng = Rng::new(opts.seed);
    let mut order: Vec<u32> = (0..train.rows as u32).collect();
    // The data goes to the device once and each epoch uploads only its order of rows (and
    // evaluation nothing); data larger than one storage binding is streamed instead, a
    // minibatch upload per step.
    let resident = trainer.fits_resident(train.values.len());
    if resident {
        trainer.set_data(&train.values)?;
    } else {
        log::warn!("the training data exceeds one storage binding: uploading each minibatch instead");
    }
    let evaluate_train = |trainer: &mut Trainer| {
        if resident {
            trainer.evaluate_resident(&baseline)
        } else {
            trainer.evaluate(&train.values, &baseline)
        }
    };
    let mut batch = Vec::new();
    let epoch_opts =
        EpochOptions { log_every: opts.log_every, steps_per_submit: opts.steps_per_submit, stop: Some(&INTERRUPT) };
    let first = *epochs.start();
    let mut last_finite = trainer.steps_done();
    let mut last = None;
    // The epoch's order: a seeded permutation, or a mixing buffer's order (`stream`).
    let reorder = |order: &mut Vec<u32>, rng: &mut Rng| match opts.shuffle_buffer {
        Some(buffer) => *order = crate::stream::MixingOrder::new(order.len(), buffer, rng).map(|r| r as u32).collect(),
        None => rng.shuffle(order),
    };
    if opts.shuffle {
        for _ in 1..*epochs.start() {
            reorder(&mut order, &mut rng);
        }
    }
    for epoch in epochs {
        if opts.shuffle {
            reorder(&mut order, &mut rng);
        }
        let mut on_step = |step: u64, metrics: &StepMetrics| {
            if !metrics.loss.is_finite() {
                return Err(diverged(step, last_finite));
            }
            last_finite = step - 1;
            on_event(Event::Step { epoch, step, metrics })
        };
        // The minibatches an interrupted run took already, in the epoch it stopped in.
        let done = if epoch == first { (skip * opts.batch_size).min(order.len()) } else { 0 };
        let rest = &order[done..];
        let taken = if resident {
            trainer.train_epoch(rest, epoch_opts, on_step)?
        } else {
            stream_epoch(trainer, train, rest, opts.batch_size, opts.log_every, &mut batch, &mut on_step)?
        };
        if taken < rest.len().div_ceil(opts.batch_size) {
            let steps = done / opts.batch_size + taken;
            on_event(Event::Interrupted { epochs_done: epoch - 1, steps_into_epoch: steps, trainer, lbfgs: None })?;
            return Err(interrupted_error(epoch - 1, steps));
        }
        let step = trainer.steps_done();
        let metrics = evaluate_train(trainer)?;
        if !metrics.loss.is_finite() {
            return Err(diverged(step, last_finite));
        }
        last_finite = step;
        let val = match (validation, &val_baseline) {
            (Some(v), Some(b)) => Some(trainer.evaluate(&v.values, b)?),
            _ => None,
        };
        on_event(Event::Epoch { epoch, step, train: &metrics, validation: val.as_ref(), trainer: &*trainer })?;
        last = Some(metrics);
    }
    match last {
        Some(m) => Ok(m),
        None => evaluate_train(trainer),
    }
}

/// Full-batch L-BFGS (docs/design.md section 9) for the iterations `iterations`: each evaluates
/// J and its gradient over the whole training set on the device (a line search may evaluate
/// several times), and reports an `Event::Iteration`. `resume` continues a run from the state
/// its last checkpoint saved (the trainer holding that checkpoint's parameters). Returns the
/// last iterate's metrics and state, and why the iterations stopped early if they did.
pub fn fit_lbfgs(
    trainer: &mut Trainer,
    train: &Dataset,
    validation: Option<&Dataset>,
    settings: LbfgsSettings,
    resume: Option<LbfgsState>,
    iterations: std::ops::RangeInclusive<usize>,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<LbfgsRun> {
    let width = train.cols;
    let baseline = Baseline::of(&train.values, width);
    let val_baseline = validation.map(|v| Baseline::of(&v.values, width));
    let resident = trainer.fits_resident(train.values.len());
    if resident {
        trainer.set_data(&train.values)?;
    } else {
        log::warn!("the training data exceeds one storage binding: uploading each chunk of every evaluation");
    }
    let mut opt = Lbfgs::new(settings);
    let fresh = resume.is_none();
    if let Some(state) = resume {
        opt.state = state;
    }
    // The objective: every point evaluated in the current iteration, with its metrics, so the
    // accepted one's can be reported without another pass.
    let mut seen: Vec<(Vec<f32>, EvalMetrics)> = Vec::new();
    let evaluate = |trainer: &mut Trainer, x: &[f32], seen: &mut Vec<(Vec<f32>, EvalMetrics)>| {
        trainer.set_flat_params(x)?;
        let (metrics, grad) = if resident {
            trainer.loss_and_gradient(&baseline)?
        } else {
            trainer.loss_and_gradient_of(&train.values, &baseline)?
        };
        if !metrics.loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
            return Err(Error::runtime(
                "L-BFGS: J or its gradient is not finite at a trial point; check the data's scale, or lower --lr",
            ));
        }
        let loss = metrics.loss;
        seen.push((x.to_vec(), metrics));
        Ok((loss, grad))
    };
    let mut x = trainer.flat_params()?;
    let (mut f, mut g) = evaluate(trainer, &x, &mut seen)?;
    if fresh {
        opt.state.evaluations += 1;
    }
    let mut last = seen.pop().expect("just evaluated").1;
    for iteration in iterations {
        if interrupted() {
            trainer.set_flat_params(&x)?;
            let done = iteration - 1;
            on_event(Event::Interrupted { epochs_done: done, steps_into_epoch: 0, trainer, lbfgs: Some(&opt.state) })?;
            return Err(interrupted_error(done, 0));
        }
        seen.clear();
        let it = {
            let mut obj = |p: &[f32]| evaluate(trainer, p, &mut seen);
            opt.iterate(&mut x, &mut f, &mut g, &mut obj)?
        };
        if it.evaluations == 0 {
            // Stopped before moving: the iterate is the last one reported.
            return Ok(LbfgsRun { metrics: last, state: opt.state, stop: it.stop.map(|s| (iteration - 1, s)) });
        }
        trainer.set_flat_params(&x)?;
        last =
            seen.iter().rev().find(|(p, _)| *p == x).map(|(_, m)| m.clone()).expect("the accepted point was evaluated");
        let val = match (validation, &val_baseline) {
            (Some(v), Some(b)) => Some(trainer.evaluate(&v.values, b)?),
            _ => None,
        };
        on_event(Event::Iteration {
            iteration,
            step_length: it.t,
            evaluations: opt.state.evaluations,
            train: &last,
            validation: val.as_ref(),
            trainer: &*trainer,
            state: &opt.state,
        })?;
        if let Some(stop) = it.stop {
            return Ok(LbfgsRun { metrics: last, state: opt.state, stop: Some((iteration, stop)) });
        }
    }
    Ok(LbfgsRun { metrics: last, state: opt.state, stop: None })
}

/// How `fit_lbfgs` ended.
pub struct LbfgsRun {
    /// The last iterate's metrics on the training set.
    pub metrics: EvalMetrics,
    pub state: LbfgsState,
    /// The last iteration done and why the run stopped there, when it stopped early.
    pub stop: Option<(usize, Stop)>,
}
