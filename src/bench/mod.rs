//! `sae bench`: how fast each kernel and a whole training step run on an adapter, per preset
//! model, against napkin-math FLOP and byte counts.
//!
//! Method.
//! * Validate first: every kernel (every matmul variant the adapter runs) is checked once against its f64 twin at
//!   a small size (`check::*`), and two whole training steps against the f64 reference; any
//!   failure stops the benchmark before anything is timed.
//! * The kernel rows are the launches of one step as the trainer's schedule builds them
//!   (`Trainer::step_launches`), each labelled, shaped and costed by its launcher.
//! * A kernel row is timed as one compute pass holding R repetitions of its launch, R chosen
//!   from a first (warm-up) pass so that a pass takes at least ~2 ms, and divided by R. The pass
//!   is timed with GPU timestamp queries (written at the beginning and end of the pass) where the
//!   adapter offers `TIMESTAMP_QUERY`; otherwise by the wall clock around submit and a final wait
//!   (which then includes the submit and wake-up cost, so passes are made longer).
//! * Every figure is the median of several runs after warm-up, with min and max beside it.
//! * The whole step is a `Trainer` stepping N times, then one `gpu.wait()`, by the wall clock:
//!   see [`time_steps`]. Dispatches, host round trips and bytes uploaded per step come from the
//!   trainer's `stats` counters (dispatches from `dispatches_per_step` if they are not counting).
//! * Napkin math, from the shapes: a matmul is `2 m k n` FLOPs and moves `4 (inputs + output)`
//!   bytes, each read or written once; an element-wise kernel moves the bytes of every tensor it
//!   binds (in-place tensors twice) and counts a nominal few FLOPs per element (see
//!   `kernels::elementwise`), so its GFLOP/s is indicative and its GB/s is what bounds it.
//!   Comparing GFLOP/s and GB/s with the adapter's peaks shows the gap to the roofline.
//! * The same step on the f64 CPU reference is printed for scale (skipped when one step would
//!   take more than a few seconds), and for the `mnist` preset the first forward matmul is also
//!   timed with the plain 16x16 tile kernel and with `matrixmultiply::sgemm` on one CPU thread.

mod report;
mod timing;

use crate::check::{self, random};
use crate::device::{self, AdapterRequest, Gpu};
use crate::kernels::elementwise::StepViews;
use crate::kernels::matmul::wide_fits;
use crate::kernels::{Kernels, Launch, MatmulOp, MatmulVariant, View};
use crate::model::{Activation, LossConfig, ModelSpec, Params, Rng, Sparsity};
use crate::optim::{Optimizer, UpdateRule};
use crate::reference;
use crate::trainer::{EpochOptions, StepPath, Trainer};
use report::{load_json, print_case, print_comparison, sizes, to_json};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use timing::{measure, Measured, Settings, Timer};

/// What `sae bench` was asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Comma-separated preset names, or `all` (the default unless `layers` is given).
    pub preset: Option<String>,
    /// Encoder widths, input first (the decoder mirrors them); replaces the presets' models.
    pub layers: Option<String>,
    /// Replaces the presets' batch sizes.
    pub batch_size: Option<usize>,
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub compare: Option<PathBuf>,
    pub backend: Option<String>,
    pub adapter: Option<String>,
}

use crate::error::Error::{Input as BadInput, Runtime};
use crate::error::Result;

/// Preset names, in the order `all` runs them.
pub const PRESETS: [&str; 3] = ["seed", "mnist", "dictionary"];

/// A preset's encoder widths (the decoder mirrors them) and batch sizes.
pub fn preset(name: &str) -> Option<(Vec<usize>, Vec<usize>)> {
    match name {
        "seed" => Some((vec![20, 80, 40, 4], vec![256, 4096])),
        "mnist" => Some((vec![784, 1024, 256, 64], vec![256])),
        "dictionary" => Some((vec![768, 8192], vec![1024])),
        _ => None,
    }
}

/// The loss of the classic benchmark step: KL sparsity on a sigmoid code, no weight decay.
pub const SPARSITY: Sparsity = Sparsity::Kl { rho: 0.05, beta: 3.0 };

/// What a case's step trains: the classic KL step (sigmoid code and output, SGD), or the
/// dictionary recipe of `sae train --preset dictionary` (TopK code of `k`, pre-bias, identity
/// output, unit-norm decoder columns, AuxK of `auxk`, Adam, no penalty term).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    Kl,
    TopK { k: usize, auxk: usize },
}

/// The dictionary preset's K and AuxK K (a typical TopK dictionary's: Gao et al. use K 32 and
/// AuxK 512 on GPT-2's 768-wide residual stream).
pub const DICTIONARY_K: usize = 32;
pub const DICTIONARY_AUXK: usize = 256;
pub const LR: f64 = 0.1;

/// One model at one batch size.
#[derive(Clone, Debug)]
pub struct Case {
    pub preset: String,
    pub recipe: Recipe,
    pub spec: ModelSpec,
    pub batch: usize,
    /// The batch asked for (larger than `batch` when `--quick` shrank it).
    pub requested_batch: usize,
    pub notes: Vec<String>,
}

impl Case {
    pub fn name(&self) -> String {
        format!("{} b{}", self.preset, self.batch)
    }

    /// The loss its step trains.
    pub fn loss(&self) -> LossConfig {
        let sparsity = if self.recipe == Recipe::Kl { SPARSITY } else { Sparsity::None };
        LossConfig { weight_decay: 0.0, sparsity }
    }
}

/// FLOPs of one training step (matmuls only): forward, weight gradient, and input gradient
/// for every layer but the first.
pub fn step_flops(spec: &ModelSpec, m: usize) -> f64 {
    (1..=spec.layers())
        .map(|l| {
            let (n, k) = spec.shape(l);
            2.0 * (m * k * n) as f64 * if l == 1 { 2.0 } else { 3.0 }
        })
        .sum()
}

/// Step FLOPs above which `--quick` shrinks the batch on a software (CPU) adapter, where a
/// matmul reaches a few GFLOP/s; on hardware the limit is far above every preset.
fn quick_step_flops(info: &wgpu::AdapterInfo) -> f64 {
    if info.device_type == wgpu::DeviceType::Cpu {
        3.5e9
    } else {
        5e11
    }
}

fn parse_widths(s: &str) -> Result<Vec<usize>> {
    let widths = crate::model::parse_widths("--layers", s).map_err(BadInput)?;
    if widths.len() < 2 {
        return Err(BadInput(format!("--layers {s}: give at least an input width and a code width (e.g. 768,8192)")));
    }
    Ok(widths)
}

/// Resolves the presets and flags into cases (no device needed): all bad input is found here.
pub fn plan(opts: &Options) -> Result<Vec<Case>> {
    let layers = opts.layers.as_deref().map(parse_widths).transpose()?;
    if opts.batch_size == Some(0) {
        return Err(BadInput("--batch-size 0: must be at least 1".into()));
    }
    let names: Vec<String> = match (&opts.preset, &layers) {
        (Some(p), _) => {
            let mut names = Vec::new();
            for part in p.split(',').map(|s| s.trim().to_ascii_lowercase()) {
                if part == "all" {
                    names.extend(PRESETS.iter().map(|s| s.to_string()));
                } else if preset(&part).is_some() {
                    names.push(part);
                } else {
                    return Err(BadInput(format!(
                        "--preset {part}: unknown preset; use {}, or all",
                        PRESETS.join(", ")
                    )));
                }
            }
            names
        }
        (None, Some(_)) => vec!["custom".to_string()],
        (None, None) => PRESETS.iter().map(|s| s.to_string()).collect(),
    };
    let mut cases = Vec::new();
    for name in names {
        let (encoder, batches) = preset(&name).unwrap_or_else(|| (Vec::new(), vec![256]));
        let encoder = layers.clone().unwrap_or(encoder);
        let batches = opts.batch_size.map(|b| vec![b]).unwrap_or(batches);
        let code = encoder.last().copied().unwrap_or(1);
        let (recipe, spec) = if name == "dictionary" {
            let recipe = Recipe::TopK { k: DICTIONARY_K.min(code), auxk: DICTIONARY_AUXK.min(code) };
            let spec = ModelSpec::mirrored(&encoder, Activation::Relu, Activation::Relu, Activation::Identity)
                .and_then(|s| s.with_code(crate::model::CodeSelect::TopK { k: DICTIONARY_K.min(code) }, true));
            (recipe, spec)
        } else {
            (Recipe::Kl, ModelSpec::mirrored(&encoder, Activation::Relu, Activation::Sigmoid, Activation::Sigmoid))
        };
        let spec = spec.map_err(|e| BadInput(format!("--layers: {e}")))?;
        for batch in batches {
            cases.push(Case {
                preset: name.clone(),
                recipe,
                spec: spec.clone(),
                batch,
                requested_batch: batch,
                notes: Vec::new(),
            });
        }
    }
    Ok(cases)
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// One launch of the trainer's step, timed alone; its label, shape, FLOPs and bytes come from
/// the launch itself (`kernels::Cost`).
pub(crate) struct RowResult {
    pub(crate) launch: Launch,
    pub(crate) time: Measured,
}

impl RowResult {
    pub(crate) fn gflops(&self) -> f64 {
        self.launch.cost.flops / self.time.median * 1e-9
    }
    pub(crate) fn gbps(&self) -> f64 {
        self.launch.cost.bytes / self.time.median * 1e-9
    }
}

pub(crate) struct StepResult {
    /// The step implementation timed.
    pub(crate) path: StepPath,
    pub(crate) time: Measured,
    pub(crate) samples_per_s: f64,
    pub(crate) dispatches: f64,
    /// `None` when the trainer's counters did not move (not counting).
    pub(crate) submits: Option<f64>,
    pub(crate) round_trips: Option<f64>,
    pub(crate) bytes_uploaded: Option<f64>,
}

pub(crate) enum ReferenceResult {
    Timed(Measured),
    Skipped(String),
}

pub(crate) struct VariantRow {
    pub(crate) id: String,
    pub(crate) time: Measured,
    pub(crate) flops: f64,
}

impl VariantRow {
    pub(crate) fn gflops(&self) -> f64 {
        self.flops / self.time.median * 1e-9
    }
}

pub(crate) struct VariantComparison {
    pub(crate) mkn: (usize, usize, usize),
    pub(crate) tiled: VariantRow,
    pub(crate) default: VariantRow,
    pub(crate) default_name: &'static str,
    /// Every other variant the adapter runs (e.g. `tiled64`, the GPU default, on a CPU adapter).
    pub(crate) others: Vec<VariantRow>,
    pub(crate) cpu: VariantRow,
}

pub(crate) struct CaseResult {
    pub(crate) case: Case,
    pub(crate) rows: Vec<RowResult>,
    pub(crate) step: StepResult,
    /// The other step path, where the model fits the fused one (the trainer picks one per adapter).
    pub(crate) other_path: Option<StepResult>,
    pub(crate) reference: ReferenceResult,
    pub(crate) variants: Option<VariantComparison>,
    /// The update of every parameter by each optimizer, at the preset's parameter count.
    pub(crate) updates: Vec<RowResult>,
    pub(crate) lbfgs: LbfgsResult,
}

/// L-BFGS's two costs at a preset's size: the device's objective (J and gradient over a set of
/// `rows`, in chunks of the case's batch) and the host's two-loop recursion over `pairs` pairs.
pub(crate) struct LbfgsResult {
    pub(crate) rows: usize,
    pub(crate) evaluation: Measured,
    pub(crate) evaluation_flops: f64,
    pub(crate) evaluation_dispatches: u64,
    pub(crate) evaluation_bytes_read_back: f64,
    pub(crate) pairs: usize,
    pub(crate) params: usize,
    pub(crate) two_loop: Measured,
    /// The same rows as one chunk, where its activations fit a binding: two passes
    /// (`loss_and_gradient_in_passes`) and one (`loss_and_gradient`), side by side.
    pub(crate) one_chunk: Option<(Measured, Measured)>,
}

impl LbfgsResult {
    /// `4 M P` multiply-adds (two FLOPs each) and the pairs read twice, f64.
    pub(crate) fn two_loop_flops(&self) -> f64 {
        8.0 * (self.pairs * self.params) as f64
    }

    pub(crate) fn two_loop_bytes(&self) -> f64 {
        32.0 * (self.pairs * self.params) as f64
    }
}

/// Host memory the benchmark's L-BFGS history may take: 2 M P f64 values.
const LBFGS_HISTORY_BYTES: usize = 512 << 20;

// ---------------------------------------------------------------------------------------------
// The whole step
// ---------------------------------------------------------------------------------------------

/// Runs `steps` training steps on the minibatches in `data` (cycling through them), then waits
/// for the device; returns the seconds taken. The whole-step loop lives only here.
pub fn time_steps(trainer: &mut Trainer, batches_resident: usize, steps: usize) -> Result<f64> {
    // The training loop's fast path: data resident on the device, minibatches gathered there,
    // up to 64 steps per submit, no read-back (the default between log points).
    let m = trainer.batch_capacity();
    let start = Instant::now();
    let mut left = steps;
    while left > 0 {
        let k = left.min(batches_resident);
        let order: Vec<u32> = (0..(k * m) as u32).collect();
        trainer.train_epoch(&order, EpochOptions::default(), |_, _| Ok(()))?;
        left -= k;
    }
    trainer.gpu().wait()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The update step of each optimizer over the preset's parameters (in the parameter layout), at
/// step 10 of a run, each launch timed alone.
fn bench_updates(kernels: &Kernels, timer: &Timer, case: &Case, s: &Settings, rng: &mut Rng) -> Vec<RowResult> {
    let gpu = &kernels.gpu;
    let layout = crate::layout::ParamLayout::new(&case.spec);
    let len = layout.len;
    let params = gpu.upload("params", &random(rng, len, -0.05, 0.05));
    let grads = gpu.upload("grads", &random(rng, len, -1e-3, 1e-3));
    let m1 = gpu.upload("moment 1", &random(rng, len, -1e-3, 1e-3));
    let m2 = gpu.upload("moment 2", &random(rng, len, 0.0, 1e-6));
    let clip = gpu.upload("clip", &[1.0]);
    let state = crate::layout::StepState { step: 9, done: 9, ..Default::default() };
    let state = gpu.upload_bytes("step state", bytemuck::bytes_of(&state));
    let (beta1, beta2) = crate::optim::defaults::ADAM_BETAS;
    let eps = crate::optim::defaults::ADAM_EPS;
    let optimizers = [
        Optimizer::Sgd,
        Optimizer::Momentum { momentum: crate::optim::defaults::MOMENTUM },
        Optimizer::Adam { beta1, beta2, eps },
        Optimizer::AdamW { beta1, beta2, eps },
    ];
    optimizers
        .into_iter()
        .map(|optimizer| {
            let rule = UpdateRule { optimizer, weight_decay: 1e-4, ..Default::default() };
            let values = crate::optim::step_values(optimizer, &rule.schedule, LR, 0);
            let values = gpu.upload_bytes("step values", bytemuck::cast_slice(&values));
            let steps = StepViews { state: &state, values: &values, clip: &clip, advance_rows: 0 };
            let wl = layout.weights_len;
            let launch = match optimizer {
                Optimizer::Sgd => kernels.sgd_update(&grads, &params, steps, wl, &rule),
                Optimizer::Momentum { .. } => kernels.momentum_update(&grads, &params, steps, &m1, wl, &rule),
                Optimizer::Adam { .. } | Optimizer::AdamW { .. } => {
                    kernels.adam_update(&grads, &params, steps, &m1, &m2, wl, &rule)
                }
            };
            let mut launch = launch;
            launch.cost.label = format!("{} ({})", launch.cost.label, optimizer.name());
            let time = measure(|reps| timer.pass(std::slice::from_ref(&launch), reps), s, s.pass_target, s.max_reps);
            RowResult { launch, time }
        })
        .collect()
}

/// L-BFGS at the case's size: one objective evaluation over the resident batches (forward and
/// metrics, then forward and backward, chunk by chunk, with the read-backs), by the wall clock;
/// and the host's two-loop recursion over the default 100 pairs, or as many as fit
/// `LBFGS_HISTORY_BYTES` (a run needs that memory too: the README says so).
fn bench_lbfgs(gpu: &Gpu, case: &Case, s: &Settings, rng: &mut Rng) -> Result<LbfgsResult> {
    let mut trainer = case_trainer(gpu, case, rng, None)?;
    let rows = trainer.resident_rows();
    let baseline = crate::trainer::Baseline { squared_deviation: 1.0 };
    let before = trainer.stats();
    trainer.loss_and_gradient(&baseline)?;
    let after = trainer.stats();
    let time = |t: &mut Trainer, one_pass: bool| {
        measure(
            |reps| {
                let start = Instant::now();
                for _ in 0..reps {
                    if one_pass {
                        t.loss_and_gradient(&baseline).expect("evaluated once already");
                    } else {
                        t.loss_and_gradient_in_passes(&baseline).expect("evaluated once already");
                    }
                }
                start.elapsed().as_secs_f64()
            },
            s,
            s.pass_target,
            4,
        )
    };
    let evaluation = time(&mut trainer, true);
    let one_chunk = if crate::layout::ActivationLayout::new(&case.spec, rows).fits_one_binding(&gpu.limits) {
        let mut whole = Trainer::new(gpu, &case.spec, case.loss(), LR, rows, &Params::init(&case.spec, 1))?;
        whole.set_data(&random(rng, rows * case.spec.input_width(), 0.0, 1.0))?;
        whole.loss_and_gradient(&baseline)?;
        Some((time(&mut whole, false), time(&mut whole, true)))
    } else {
        None
    };
    // Forward twice (metrics pass, gradient pass) and backward once: 3 x 2 m sum(k n).
    let spec = &case.spec;
    let macs: usize = (1..=spec.layers()).map(|l| spec.shape(l).0 * spec.shape(l).1).sum();
    let params = trainer.layout().len;
    let pairs = crate::lbfgs::defaults::HISTORY.min(LBFGS_HISTORY_BYTES / (16 * params)).max(1);
    let mut opt = crate::lbfgs::Lbfgs::new(crate::lbfgs::LbfgsSettings::new(pairs, 1.0)?);
    let vector = |rng: &mut Rng| (0..params).map(|_| rng.next_f64() - 0.5).collect::<Vec<f64>>();
    for _ in 0..pairs {
        opt.state.y.push_back(vector(rng));
        opt.state.s.push_back(vector(rng));
        opt.state.ro.push_back(1.0);
    }
    opt.state.h_diag = 1.0;
    let g = vector(rng);
    let two_loop = measure(
        |reps| {
            let start = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(opt.two_loop(std::hint::black_box(&g)));
            }
            start.elapsed().as_secs_f64()
        },
        s,
        s.pass_target,
        16,
    );
    Ok(LbfgsResult {
        rows,
        evaluation,
        evaluation_flops: 6.0 * (rows * macs) as f64,
        evaluation_dispatches: after.dispatches - before.dispatches,
        evaluation_bytes_read_back: (4 * (params * rows.div_ceil(case.batch))) as f64,
        pairs,
        params,
        two_loop,
        one_chunk,
    })
}

/// Minibatches of training data kept on the device while timing.
const RESIDENT_BATCHES: usize = 8;

/// A trainer for `case` on `path` (or the adapter's default) with random resident data.
pub(crate) fn case_trainer(gpu: &Gpu, case: &Case, rng: &mut Rng, path: Option<StepPath>) -> Result<Trainer> {
    let spec = &case.spec;
    let m = case.batch;
    let mut trainer = Trainer::new(gpu, spec, case.loss(), LR, m, &Params::init(spec, 1))?;
    if let Recipe::TopK { auxk, .. } = case.recipe {
        use crate::train::defaults;
        trainer.set_optimizer(defaults::optimizer())?;
        trainer.set_decoder_norm(true)?;
        let auxk =
            crate::model::AuxK { k: auxk, coefficient: defaults::AUXK_COEFFICIENT, dead_after: defaults::DEAD_AFTER };
        trainer.set_auxk(Some(auxk))?;
    }
    if let Some(p) = path {
        trainer.set_path(p).map_err(|e| Runtime(e.to_string()))?;
    }
    let data = random(rng, RESIDENT_BATCHES * m * spec.input_width(), 0.0, 1.0);
    trainer.set_data(&data)?;
    Ok(trainer)
}

/// The launches of one step of the trainer's default path, each timed alone after a few steps
/// have given its buffers realistic values (a trainer of its own: timing a launch thousands of
/// times moves the parameters).
pub(crate) fn bench_rows(gpu: &Gpu, timer: &Timer, case: &Case, s: &Settings, rng: &mut Rng) -> Result<Vec<RowResult>> {
    let mut trainer = case_trainer(gpu, case, rng, None)?;
    time_steps(&mut trainer, RESIDENT_BATCHES, RESIDENT_BATCHES)?;
    let rows = trainer
        .step_launches(case.batch)
        .into_iter()
        .map(|launch| {
            let time = measure(|reps| timer.pass(std::slice::from_ref(&launch), reps), s, s.pass_target, s.max_reps);
            RowResult { launch, time }
        })
        .collect();
    Ok(rows)
}

pub(crate) fn bench_step(
    gpu: &Gpu,
    case: &Case,
    s: &Settings,
    rng: &mut Rng,
    path: Option<StepPath>,
) -> Result<StepResult> {
    let m = case.batch;
    let mut trainer = case_trainer(gpu, case, rng, path)?;
    let mut time = |steps: usize| time_steps(&mut trainer, RESIDENT_BATCHES, steps);
    let first = time(1)?.max(1e-9);
    let steps = ((s.step_target / first).ceil() as usize).clamp(1, s.max_steps);
    for _ in 1..s.warmups {
        time(steps)?;
    }
    let before = trainer.stats();
    let mut runs = Vec::new();
    for _ in 0..s.runs {
        runs.push(time_steps(&mut trainer, RESIDENT_BATCHES, steps)? / steps as f64);
    }
    let after = trainer.stats();
    let total = (steps * s.runs) as f64;
    let counting = after.submits > before.submits;
    let per_step = |d: u64| counting.then_some(d as f64 / total);
    let dispatches = if after.dispatches > before.dispatches {
        (after.dispatches - before.dispatches) as f64 / total
    } else {
        trainer.dispatches_per_step(m) as f64
    };
    if !trainer.params()?.all_finite() {
        return Err(Runtime(format!("{}: the parameters went non-finite while timing steps", case.name())));
    }
    let time = Measured::from_runs(runs, steps);
    Ok(StepResult {
        path: trainer.path(),
        samples_per_s: m as f64 / time.median,
        time,
        dispatches,
        submits: per_step(after.submits - before.submits),
        round_trips: per_step(after.readbacks - before.readbacks),
        bytes_uploaded: per_step(after.bytes_uploaded - before.bytes_uploaded),
    })
}

pub(crate) fn bench_reference(case: &Case, s: &Settings, rng: &mut Rng) -> ReferenceResult {
    let spec = &case.spec;
    let cfg = case.loss();
    let mut model = reference::Model::new(spec, &Params::init(spec, 1));
    let n0 = spec.input_width();
    let x: Vec<f64> = random(rng, case.batch * n0, 0.0, 1.0).iter().map(|&v| v as f64).collect();
    // Estimate from a few rows first: the reference is linear in the batch.
    let small = case.batch.min(4);
    let start = Instant::now();
    reference::step(&mut model, &cfg, &x[..small * n0], small, LR);
    let estimate = start.elapsed().as_secs_f64() * case.batch as f64 / small as f64;
    if estimate > s.reference_limit {
        return ReferenceResult::Skipped(format!(
            "skipped: one f64 step would take ~{estimate:.1} s (estimated from {small} rows; limit {} s{})",
            s.reference_limit,
            if s.quick { " in --quick" } else { "" }
        ));
    }
    let began = Instant::now();
    let mut runs = Vec::new();
    while runs.len() < s.runs && (runs.is_empty() || began.elapsed().as_secs_f64() < s.reference_budget) {
        let start = Instant::now();
        reference::step(&mut model, &cfg, &x, case.batch, LR);
        runs.push(start.elapsed().as_secs_f64());
    }
    ReferenceResult::Timed(Measured::from_runs(runs, 1))
}

// ---------------------------------------------------------------------------------------------
// The forward matmul three ways (mnist)
// ---------------------------------------------------------------------------------------------

pub(crate) fn bench_variants(
    kernels: &mut Kernels,
    timer: &Timer,
    (m, k, n): (usize, usize, usize),
    s: &Settings,
) -> Result<VariantComparison> {
    let gpu = kernels.gpu.clone();
    let mut rng = Rng::new(3);
    let a = random(&mut rng, m * k, 0.0, 1.0);
    let w = random(&mut rng, n * k, -0.05, 0.05);
    let (a_view, w_view, z_view) = (gpu.upload("a", &a), gpu.upload("w", &w), View::whole(&gpu.storage("z", m * n)));
    let flops = 2.0 * (m * k * n) as f64;
    let default = kernels.matmul_variant();
    let available = kernels.matmul_variants();
    let time_variant = |kernels: &mut Kernels, variant: MatmulVariant, id: String| -> Result<VariantRow> {
        kernels.set_matmul_variant(variant)?;
        let launches = [kernels.matmul_forward(&a_view, &w_view, &z_view, m, k, n)];
        let time = measure(|reps| timer.pass(&launches, reps), s, s.pass_target, s.max_reps);
        Ok(VariantRow { id, time, flops })
    };
    let tiled = time_variant(kernels, MatmulVariant::Tiled, format!("GPU {} (baseline)", MatmulVariant::Tiled.name()))?;
    let default_row = time_variant(kernels, default, format!("GPU {} (default for this adapter)", default.name()))?;
    let mut others = Vec::new();
    if default == MatmulVariant::Subgroup && wide_fits(MatmulOp::Forward, (m, n, k)) {
        // The same kernel without its wide tile, beside it in the same run.
        kernels.set_matmul_wide(false);
        let narrow = time_variant(kernels, default, format!("GPU {}, 32x32 tiles only", default.name()));
        kernels.set_matmul_wide(true);
        others.push(narrow?);
    }
    for variant in available {
        if variant != MatmulVariant::Tiled && variant != default {
            others.push(time_variant(kernels, variant, format!("GPU {}", variant.name()))?);
        }
    }
    kernels.set_matmul_variant(default)?;

    // The CPU's own figure: the same product, Z = A W^T, with matrixmultiply on one thread.
    let mut z = vec![0.0f32; m * n];
    let mut sgemm = |reps: usize| {
        let start = Instant::now();
        for _ in 0..reps {
            // SAFETY: A is m x k row-major (strides k, 1); B = W^T is k x n read from W
            // (n x k row-major: strides 1, k); C is m x n row-major; all three are allocated
            // with exactly those sizes and C aliases nothing.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    w.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    z.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        }
        std::hint::black_box(&z);
        start.elapsed().as_secs_f64()
    };
    let cpu_time = measure(&mut sgemm, s, 20e-3, 1000);
    let cpu = VariantRow { id: "CPU matrixmultiply::sgemm, 1 thread".into(), time: cpu_time, flops };
    Ok(VariantComparison { mkn: (m, k, n), tiled, default: default_row, default_name: default.name(), others, cpu })
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Every kernel once at a small size against the f64 reference (every matmul variant), and two
/// training steps; returns a one-line summary, or a runtime error naming what failed.
pub(crate) fn validate(gpu: &Gpu, kernels: &mut Kernels) -> Result<(String, Value)> {
    let (m, k, n) = (37, 53, 29);
    let default = kernels.matmul_variant();
    let mut worst: f64 = 0.0;
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, run) in check::CHECKS {
        let variants = if check::is_matmul(name) { kernels.matmul_variants() } else { vec![default] };
        for variant in variants {
            kernels.set_matmul_variant(variant)?;
            let err = run(kernels, &mut Rng::new(1000), m, k, n);
            count += 1;
            worst = worst.max(err);
            if err.is_nan() || err > check::TOL {
                let v = if check::is_matmul(name) { format!(" ({})", variant.name()) } else { String::new() };
                failures.push(format!("{name}{v}: max rel err {err:.2e} > {:.0e}", check::TOL));
            }
        }
    }
    kernels.set_matmul_variant(default)?;
    let step_tol = 1e-4;
    let cfg = LossConfig { weight_decay: 1e-3, sparsity: SPARSITY };
    let step_err = check::training_steps(gpu, &ModelSpec::seed(), cfg, m, 0.5, 2, None)?.max_rel_err;
    if step_err.is_nan() || step_err >= step_tol {
        failures.push(format!("2 training steps of the seed model: max rel err {step_err:.2e} > {step_tol:.0e}"));
    }
    if !failures.is_empty() {
        return Err(Runtime(format!(
            "validation failed, nothing timed: {}. Run `sae check` for the full report",
            failures.join("; ")
        )));
    }
    let line = format!(
        "validation: {count} kernel checks at m={m} k={k} n={n} (every matmul variant), worst rel err {worst:.1e} \
         (tolerance {:.0e}); 2 training steps vs f64: {step_err:.1e} (tolerance {step_tol:.0e}): pass",
        check::TOL
    );
    let json = json!({"kernel_checks": count, "worst_rel_err": worst, "tolerance": check::TOL,
        "step_rel_err": step_err, "step_tolerance": step_tol, "pass": true});
    Ok((line, json))
}

// ---------------------------------------------------------------------------------------------
// Running, printing, JSON
// ---------------------------------------------------------------------------------------------

/// Runs the benchmark as `opts` asks, printing tables to stdout.
pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut cases = plan(opts)?;
    let old = opts.compare.as_deref().map(load_json).transpose()?;
    if let Some(path) = &opts.json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(BadInput(format!(
                    "--json {}: the directory {} does not exist",
                    path.display(),
                    parent.display()
                )));
            }
        }
    }
    if let Some(b) = &opts.backend {
        device::parse_backends(b).map_err(|e| BadInput(format!("--backend: {e}")))?;
    }
    let gpu = Gpu::new(&AdapterRequest { backend: opts.backend.clone(), adapter_name: opts.adapter.clone() })?;
    let info = &gpu.info;
    let timer = Timer::new(&gpu);
    let s = Settings::new(opts.quick, timer.timestamps.is_some());
    let driver = [info.driver.as_str(), info.driver_info.as_str()].join(" ").trim().to_string();
    println!("adapter: {}", info.name);
    println!("  backend {:?}, device type {:?}, driver {}", info.backend, info.device_type, driver);
    println!("  timing: {}", timer.method());
    println!(
        "  each figure: median of {} runs after {} warm-up(s), min and max beside it; a kernel pass lasts >= {} ms",
        s.runs,
        s.warmups,
        s.pass_target * 1e3
    );

    // --quick on a software adapter: shrink batches whose step is too slow, and say so.
    if opts.quick {
        let limit = quick_step_flops(info);
        for case in &mut cases {
            let full = step_flops(&case.spec, case.batch);
            while case.batch > 1 && step_flops(&case.spec, case.batch) > limit {
                case.batch /= 2;
            }
            if case.batch != case.requested_batch {
                case.notes.push(format!(
                    "--quick: batch {} shrunk to {} (a step is {:.1} GFLOP of matmuls, too slow for a {:?} adapter in a quick run; \
                     run without --quick for the full size)",
                    case.requested_batch,
                    case.batch,
                    full * 1e-9,
                    info.device_type
                ));
            }
        }
    }

    // Before anything else compiles: the first case's time to its first step, as `sae train`
    // reports it.
    let startup = match cases.first() {
        Some(case) => Some(bench_startup(&gpu, case)?),
        None => None,
    };
    if let Some((name, first)) = &startup {
        println!("{} ({name}, in this process)", crate::cli::train::startup_line(gpu.setup_seconds, *first));
    }
    let mut kernels = Kernels::new(&gpu)?;
    let (validation_line, validation_json) = validate(&gpu, &mut kernels)?;
    println!("{validation_line}");

    let mut results = Vec::new();
    for case in cases {
        crate::layout::ActivationLayout::check_layers(&case.spec, case.batch, &gpu.limits)
            .map_err(|e| e.context(case.name()))?;
        eprintln!("timing {} ...", case.name());
        let result = bench_case(&gpu, &mut kernels, &timer, case, &s)?;
        print_case(&result);
        results.push(result);
    }

    println!();
    for r in &results {
        println!(
            "summary {:<16} {:>10.3} ms/step {:>12.0} samples/s  ({}, {} dispatches/step)",
            r.case.name(),
            r.step.time.median * 1e3,
            r.step.samples_per_s,
            sizes(&r.case.spec),
            r.step.dispatches
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("bench took {elapsed:.1} s");

    let mut doc = to_json(&gpu, &timer, &s, validation_json, &results, elapsed);
    if let Some((name, first)) = &startup {
        doc["startup"] = serde_json::json!({
            "case": name, "device_seconds": gpu.setup_seconds,
            "pipelines_seconds": first.pipelines.seconds, "pipelines_created": first.pipelines.created,
            "first_step_seconds": first.seconds,
        });
    }
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&doc).expect("serialises");
        std::fs::write(path, text + "\n").map_err(|e| Runtime(format!("--json {}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    if let (Some(old), Some(path)) = (&old, &opts.compare) {
        print_comparison(old, &doc, path);
    }
    Ok(())
}

/// Time to the first completed step of `case` on a fresh trainer (its own kernels: every
/// pipeline it needs is created here).
fn bench_startup(gpu: &Gpu, case: &Case) -> Result<(String, crate::trainer::FirstStep)> {
    let mut trainer = case_trainer(gpu, case, &mut Rng::new(42), None)?;
    time_steps(&mut trainer, RESIDENT_BATCHES, 1)?;
    let first = trainer.first_step().ok_or_else(|| Runtime("the first step was not timed".into()))?;
    Ok((case.name(), first))
}

fn bench_case(gpu: &Gpu, kernels: &mut Kernels, timer: &Timer, case: Case, s: &Settings) -> Result<CaseResult> {
    let mut rng = Rng::new(42);
    let rows = bench_rows(gpu, timer, &case, s, &mut rng)?;
    // At the batch asked for, even where --quick shrank the step's.
    let (n, k) = case.spec.shape(1);
    let mkn = (case.requested_batch, k, n);
    let variants = if case.preset == "mnist" { Some(bench_variants(kernels, timer, mkn, s)?) } else { None };
    let step = bench_step(gpu, &case, s, &mut rng, None)?;
    let other = if step.path == StepPath::Fused { StepPath::Layered } else { StepPath::Fused };
    let other_path =
        if StepPath::fused_fits(&case.spec) { Some(bench_step(gpu, &case, s, &mut rng, Some(other))?) } else { None };
    let reference = bench_reference(&case, s, &mut rng);
    let updates = bench_updates(kernels, timer, &case, s, &mut rng);
    let lbfgs = bench_lbfgs(gpu, &case, s, &mut rng)?;
    Ok(CaseResult { case, rows, step, other_path, reference, variants, updates, lbfgs })
}
