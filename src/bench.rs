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

use crate::check::{self, random};
use crate::device::{self, AdapterRequest, Gpu};
use crate::kernels::{Kernels, Launch, MatmulVariant, View};
use crate::model::{Activation, LossConfig, ModelSpec, Params, Rng, Sparsity};
use crate::reference;
use crate::trainer::{EpochOptions, StepPath, Trainer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// The loss every benchmark step uses: KL sparsity on a sigmoid code, no weight decay.
pub const SPARSITY: Sparsity = Sparsity::Kl { rho: 0.05, beta: 3.0 };
pub const LR: f64 = 0.1;

/// One model at one batch size.
#[derive(Clone, Debug)]
pub struct Case {
    pub preset: String,
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
        let spec = ModelSpec::mirrored(&encoder, Activation::Relu, Activation::Sigmoid, Activation::Sigmoid)
            .map_err(|e| BadInput(format!("--layers: {e}")))?;
        for batch in batches {
            cases.push(Case {
                preset: name.clone(),
                spec: spec.clone(),
                batch,
                requested_batch: batch,
                notes: Vec::new(),
            });
        }
    }
    Ok(cases)
}

/// How much to repeat: `--quick` or the full run.
#[derive(Clone, Debug)]
struct Settings {
    quick: bool,
    warmups: usize,
    runs: usize,
    /// Seconds one timed pass should last at least.
    pass_target: f64,
    max_reps: usize,
    /// Seconds one run of N steps should last at least.
    step_target: f64,
    max_steps: usize,
    /// Skip the f64 reference when one step is estimated to take longer (seconds).
    reference_limit: f64,
    /// Stop repeating the f64 reference step after this long (seconds).
    reference_budget: f64,
}

impl Settings {
    fn new(quick: bool, timestamps: bool) -> Settings {
        // The wall clock includes a submit and a wake-up per pass: make passes longer.
        let pass_target = if timestamps {
            2e-3
        } else if quick {
            10e-3
        } else {
            20e-3
        };
        if quick {
            Settings {
                quick,
                warmups: 1,
                runs: 3,
                pass_target,
                max_reps: 500,
                step_target: 0.05,
                max_steps: 20,
                reference_limit: 1.5,
                reference_budget: 2.0,
            }
        } else {
            Settings {
                quick,
                warmups: 2,
                runs: 7,
                pass_target,
                max_reps: 2000,
                step_target: 0.5,
                max_steps: 500,
                reference_limit: 5.0,
                reference_budget: 20.0,
            }
        }
    }
}

/// Median, min and max of several runs (seconds per unit), with the repetitions behind them.
#[derive(Clone, Debug)]
pub struct Measured {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Repetitions per run (launches per pass, or steps per run).
    pub reps: usize,
    pub runs: usize,
}

impl Measured {
    fn from_runs(mut per_unit: Vec<f64>, reps: usize) -> Measured {
        per_unit.sort_by(|a, b| a.total_cmp(b));
        let n = per_unit.len();
        let median = if n % 2 == 1 { per_unit[n / 2] } else { 0.5 * (per_unit[n / 2 - 1] + per_unit[n / 2]) };
        Measured { median, min: per_unit[0], max: per_unit[n - 1], reps, runs: n }
    }
}

/// Times `pass(reps)` (which returns the seconds `reps` repetitions took): a first pass of one
/// repetition warms up and picks `reps` so a pass lasts `target`; then warm-ups, then runs.
fn measure(mut pass: impl FnMut(usize) -> f64, s: &Settings, target: f64, max_reps: usize) -> Measured {
    let first = pass(1).max(1e-9);
    let reps = ((target / first).ceil() as usize).clamp(1, max_reps);
    for _ in 1..s.warmups {
        pass(reps);
    }
    let runs = (0..s.runs).map(|_| pass(reps) / reps as f64).collect();
    Measured::from_runs(runs, reps)
}

// ---------------------------------------------------------------------------------------------
// Timing passes on the device
// ---------------------------------------------------------------------------------------------

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

/// Runs compute passes and says how long they took: GPU timestamps or the wall clock.
struct Timer {
    gpu: Gpu,
    timestamps: Option<Timestamps>,
}

impl Timer {
    fn new(gpu: &Gpu) -> Timer {
        let timestamps = gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
            let device = &gpu.device;
            let buffer = |label, usage| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            Timestamps {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolve: buffer("timestamp resolve", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
                readback: buffer("timestamp readback", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
                period_ns: gpu.queue.get_timestamp_period() as f64,
            }
        });
        Timer { gpu: gpu.clone(), timestamps }
    }

    fn method(&self) -> String {
        match &self.timestamps {
            Some(t) => format!("GPU timestamp queries around each pass ({} ns per tick)", t.period_ns),
            None => "wall clock around submit + wait (this adapter has no timestamp queries)".into(),
        }
    }

    /// Records `reps` repetitions of `launches` into one compute pass, submits it, waits, and
    /// returns the seconds the pass took.
    fn pass(&self, launches: &[Launch], reps: usize) -> f64 {
        let gpu = &self.gpu;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let timestamp_writes = self.timestamps.as_ref().map(|t| wgpu::ComputePassTimestampWrites {
                query_set: &t.set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes });
            for _ in 0..reps {
                for launch in launches {
                    launch.record(&mut pass);
                }
            }
        }
        if let Some(t) = &self.timestamps {
            encoder.resolve_query_set(&t.set, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
        }
        let start = Instant::now();
        gpu.queue.submit([encoder.finish()]);
        let ticks = match &self.timestamps {
            // A lost device shows up at the trainer's next read-back; here it only costs the
            // timestamps (the wall clock is used instead).
            Some(t) => gpu.map_read(&t.readback).ok().map(|bytes| {
                let at = |i: usize| u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap_or_default());
                (at(0), at(1), t.period_ns)
            }),
            None => {
                let _ = gpu.wait();
                None
            }
        };
        let wall = start.elapsed().as_secs_f64();
        match ticks {
            // A timestamp pair that goes backwards or reads zero is not trusted.
            Some((begin, end, period)) if end > begin && period > 0.0 => (end - begin) as f64 * period * 1e-9,
            _ => wall,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// One launch of the trainer's step, timed alone; its label, shape, FLOPs and bytes come from
/// the launch itself (`kernels::Cost`).
struct RowResult {
    launch: Launch,
    time: Measured,
}

impl RowResult {
    fn gflops(&self) -> f64 {
        self.launch.cost.flops / self.time.median * 1e-9
    }
    fn gbps(&self) -> f64 {
        self.launch.cost.bytes / self.time.median * 1e-9
    }
}

struct StepResult {
    /// The step implementation timed.
    path: StepPath,
    time: Measured,
    samples_per_s: f64,
    dispatches: f64,
    /// `None` when the trainer's counters did not move (not counting).
    submits: Option<f64>,
    round_trips: Option<f64>,
    bytes_uploaded: Option<f64>,
}

enum ReferenceResult {
    Timed(Measured),
    Skipped(String),
}

struct VariantRow {
    id: String,
    time: Measured,
    flops: f64,
}

impl VariantRow {
    fn gflops(&self) -> f64 {
        self.flops / self.time.median * 1e-9
    }
}

struct VariantComparison {
    mkn: (usize, usize, usize),
    tiled: VariantRow,
    default: VariantRow,
    default_name: &'static str,
    cpu: VariantRow,
}

struct CaseResult {
    case: Case,
    rows: Vec<RowResult>,
    step: StepResult,
    /// The other step path, where the model fits the fused one (the trainer picks one per adapter).
    other_path: Option<StepResult>,
    reference: ReferenceResult,
    variants: Option<VariantComparison>,
}

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

/// Minibatches of training data kept on the device while timing.
const RESIDENT_BATCHES: usize = 8;

/// A trainer for `case` on `path` (or the adapter's default) with random resident data.
fn case_trainer(gpu: &Gpu, case: &Case, rng: &mut Rng, path: Option<StepPath>) -> Result<Trainer> {
    let spec = &case.spec;
    let m = case.batch;
    let loss = LossConfig { weight_decay: 0.0, sparsity: SPARSITY };
    let mut trainer = Trainer::new(gpu, spec, loss, LR, m, &Params::init(spec, 1))?;
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
fn bench_rows(gpu: &Gpu, timer: &Timer, case: &Case, s: &Settings, rng: &mut Rng) -> Result<Vec<RowResult>> {
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

fn bench_step(gpu: &Gpu, case: &Case, s: &Settings, rng: &mut Rng, path: Option<StepPath>) -> Result<StepResult> {
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

fn bench_reference(case: &Case, s: &Settings, rng: &mut Rng) -> ReferenceResult {
    let spec = &case.spec;
    let cfg = LossConfig { weight_decay: 0.0, sparsity: SPARSITY };
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

fn bench_variants(
    kernels: &mut Kernels,
    timer: &Timer,
    (m, k, n): (usize, usize, usize),
    s: &Settings,
) -> VariantComparison {
    let gpu = kernels.gpu.clone();
    let mut rng = Rng::new(3);
    let a = random(&mut rng, m * k, 0.0, 1.0);
    let w = random(&mut rng, n * k, -0.05, 0.05);
    let (a_view, w_view, z_view) = (gpu.upload("a", &a), gpu.upload("w", &w), View::whole(&gpu.storage("z", m * n)));
    let flops = 2.0 * (m * k * n) as f64;
    let default = kernels.matmul_variant;
    let mut time_variant = |variant: MatmulVariant, id: String| {
        kernels.matmul_variant = variant;
        let launches = [kernels.matmul_forward(&a_view, &w_view, &z_view, m, k, n)];
        let time = measure(|reps| timer.pass(&launches, reps), s, s.pass_target, s.max_reps);
        VariantRow { id, time, flops }
    };
    let tiled = time_variant(MatmulVariant::Tiled, format!("GPU {} (baseline)", MatmulVariant::Tiled.name()));
    let default_row = time_variant(default, format!("GPU {} (default for this adapter)", default.name()));
    kernels.matmul_variant = default;

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
    VariantComparison { mkn: (m, k, n), tiled, default: default_row, default_name: default.name(), cpu }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Every kernel once at a small size against the f64 reference (every matmul variant), and two
/// training steps; returns a one-line summary, or a runtime error naming what failed.
fn validate(gpu: &Gpu, kernels: &mut Kernels) -> Result<(String, Value)> {
    let (m, k, n) = (37, 53, 29);
    let default = kernels.matmul_variant;
    let mut worst: f64 = 0.0;
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, run) in check::CHECKS {
        let variants = if check::is_matmul(name) { kernels.matmul_variants() } else { vec![default] };
        for variant in variants {
            kernels.matmul_variant = variant;
            let err = run(kernels, &mut Rng::new(1000), m, k, n);
            count += 1;
            worst = worst.max(err);
            if err.is_nan() || err > check::TOL {
                let v = if check::is_matmul(name) { format!(" ({})", variant.name()) } else { String::new() };
                failures.push(format!("{name}{v}: max rel err {err:.2e} > {:.0e}", check::TOL));
            }
        }
    }
    kernels.matmul_variant = default;
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

fn load_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("--compare {}: cannot read it: {e}", path.display())))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| BadInput(format!("--compare {}: not JSON: {e}", path.display())))?;
    if !doc.get("cases").is_some_and(Value::is_array) {
        return Err(BadInput(format!("--compare {}: not a `sae bench --json` file (no \"cases\")", path.display())));
    }
    Ok(doc)
}

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

    let doc = to_json(&gpu, &timer, &s, validation_json, &results, elapsed);
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

fn bench_case(gpu: &Gpu, kernels: &mut Kernels, timer: &Timer, case: Case, s: &Settings) -> Result<CaseResult> {
    let mut rng = Rng::new(42);
    let rows = bench_rows(gpu, timer, &case, s, &mut rng)?;
    // At the batch asked for, even where --quick shrank the step's.
    let (n, k) = case.spec.shape(1);
    let mkn = (case.requested_batch, k, n);
    let variants = (case.preset == "mnist").then(|| bench_variants(kernels, timer, mkn, s));
    let step = bench_step(gpu, &case, s, &mut rng, None)?;
    let other = if step.path == StepPath::Fused { StepPath::Layered } else { StepPath::Fused };
    let other_path =
        if StepPath::fused_fits(&case.spec) { Some(bench_step(gpu, &case, s, &mut rng, Some(other))?) } else { None };
    let reference = bench_reference(&case, s, &mut rng);
    Ok(CaseResult { case, rows, step, other_path, reference, variants })
}

fn sizes(spec: &ModelSpec) -> String {
    spec.sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("-")
}

/// Microseconds with precision that suits their size.
fn us(seconds: f64) -> String {
    let v = seconds * 1e6;
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn print_case(r: &CaseResult) {
    let c = &r.case;
    println!();
    println!("== {}: {}, batch {} ==", c.name(), sizes(&c.spec), c.batch);
    println!("   relu hidden, sigmoid code with KL sparsity (rho 0.05, beta 3), sigmoid output, SGD lr {LR}");
    for note in &c.notes {
        println!("   note: {note}");
    }
    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8} {:>6}",
        "kernel", "shape (m·k→n)", "×step", "µs/step", "min µs", "max µs", "GFLOP/s", "GB/s", "share"
    );
    let step = r.step.time.median;
    let mut sum = 0.0;
    for row in &r.rows {
        sum += row.time.median;
        println!(
            "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8} {:>5.1}%",
            row.launch.cost.label,
            row.launch.cost.shape,
            1,
            us(row.time.median),
            us(row.time.min),
            us(row.time.max),
            rate(row.gflops()),
            rate(row.gbps()),
            100.0 * row.time.median / step
        );
    }
    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8} {:>5.1}%",
        "sum of kernel rows",
        "",
        r.rows.len(),
        us(sum),
        "",
        "",
        "",
        "",
        100.0 * sum / step
    );
    println!(
        "   (the launches of one step of the {} path, each timed alone; share: of the whole step below)",
        r.step.path.name()
    );

    let st = &r.step;
    let opt = |v: Option<f64>, digits: usize| v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>12} {:>11} {:>12} {:>14}",
        "whole step", "ms/step", "min ms", "max ms", "samples/s", "dispatches", "round trips", "bytes up/step"
    );
    for (st, chosen) in std::iter::once((st, true)).chain(r.other_path.iter().map(|o| (o, false))) {
        println!(
            "{:<34} {:>10.3} {:>10.3} {:>10.3} {:>12.0} {:>11.1} {:>12} {:>14}",
            format!(
                "GPU {} path{} ({}x{})",
                st.path.name(),
                if chosen { " (default)" } else { "" },
                st.time.runs,
                st.time.reps
            ),
            st.time.median * 1e3,
            st.time.min * 1e3,
            st.time.max * 1e3,
            st.samples_per_s,
            st.dispatches,
            opt(st.round_trips, 2),
            opt(st.bytes_uploaded, 0)
        );
    }
    println!("   (train_epoch: data resident on the device, up to 64 steps per submit, no read-back)");
    let launches = r.rows.len();
    if (st.dispatches - launches as f64).abs() > 0.5 {
        println!(
            "   note: the training step ran {:.0} dispatches per step for its {launches} launches (split grids count once per part)",
            st.dispatches
        );
    }
    if st.submits.is_none() {
        println!("   (Trainer::stats did not count: dispatches from dispatches_per_step; round trips and bytes n/a)");
    }
    match &r.reference {
        ReferenceResult::Timed(t) => println!(
            "{:<34} {:>10.3} {:>10.3} {:>10.3} {:>12.0}   <- CPU f64 reference, for scale ({} runs)",
            "f64 CPU reference::step",
            t.median * 1e3,
            t.min * 1e3,
            t.max * 1e3,
            c.batch as f64 / t.median,
            t.runs
        ),
        ReferenceResult::Skipped(why) => println!("{:<34} {why}", "f64 CPU reference::step"),
    }

    if let Some(v) = &r.variants {
        let (m, k, n) = v.mkn;
        println!();
        println!(
            "{:<44} {:>11} {:>11} {:>11} {:>9}",
            format!("forward matmul {m}·{k}→{n}"),
            "µs",
            "min µs",
            "max µs",
            "GFLOP/s"
        );
        for row in [&v.tiled, &v.default, &v.cpu] {
            println!(
                "{:<44} {:>11} {:>11} {:>11} {:>9}",
                row.id,
                us(row.time.median),
                us(row.time.min),
                us(row.time.max),
                rate(row.gflops())
            );
        }
        println!(
            "   GFLOP/s ratios: default ({}) / tiled = {:.2}x   default / cpu sgemm (1 thread, the CPU's own figure) = {:.2}x",
            v.default_name,
            v.default.gflops() / v.tiled.gflops(),
            v.default.gflops() / v.cpu.gflops()
        );
    }
}

fn measured_json(t: &Measured, scale: f64, unit: &str) -> Value {
    json!({
        format!("median_{unit}"): t.median * scale,
        format!("min_{unit}"): t.min * scale,
        format!("max_{unit}"): t.max * scale,
        "reps": t.reps,
        "runs": t.runs,
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn to_json(gpu: &Gpu, timer: &Timer, s: &Settings, validation: Value, results: &[CaseResult], elapsed: f64) -> Value {
    let info = &gpu.info;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let cases: Vec<Value> = results
        .iter()
        .map(|r| {
            let step_s = r.step.time.median;
            let kernels: Vec<Value> = r
                .rows
                .iter()
                .map(|row| {
                    let c = &row.launch.cost;
                    merge(
                        json!({
                            "id": c.label, "kernel": row.launch.name, "shape": c.shape,
                            "per_step": 1, "flops": c.flops, "bytes": c.bytes,
                            "gflops": row.gflops(), "gbps": row.gbps(), "share": row.time.median / step_s,
                        }),
                        measured_json(&row.time, 1e6, "us"),
                    )
                })
                .collect();
            let st = &r.step;
            let step_json = |st: &StepResult| {
                merge(
                    json!({
                        "path": st.path.name(),
                        "samples_per_s": st.samples_per_s, "dispatches_per_step": st.dispatches,
                        "submits_per_step": st.submits, "round_trips_per_step": st.round_trips,
                        "bytes_uploaded_per_step": st.bytes_uploaded, "counters": st.submits.is_some(),
                    }),
                    measured_json(&st.time, 1e3, "ms"),
                )
            };
            let step = step_json(st);
            let other_path = r.other_path.as_ref().map(step_json);
            let reference = match &r.reference {
                ReferenceResult::Timed(t) => {
                    merge(json!({"samples_per_s": r.case.batch as f64 / t.median}), measured_json(t, 1e3, "ms"))
                }
                ReferenceResult::Skipped(why) => json!({"skipped": why}),
            };
            let mut case = json!({
                "name": r.case.name(), "preset": r.case.preset, "sizes": r.case.spec.sizes,
                "code_layer": r.case.spec.code_layer, "batch": r.case.batch,
                "requested_batch": r.case.requested_batch, "notes": r.case.notes,
                "kernels": kernels,
                "kernels_sum_us": r.rows.iter().map(|x| x.time.median).sum::<f64>() * 1e6,
                "step": step, "step_other_path": other_path, "reference": reference,
            });
            if let Some(v) = &r.variants {
                let row = |x: &VariantRow| {
                    merge(
                        json!({"id": x.id, "gflops": x.gflops(), "flops": x.flops}),
                        measured_json(&x.time, 1e6, "us"),
                    )
                };
                let (m, k, n) = v.mkn;
                case["matmul_variants"] = json!({
                    "m": m, "k": k, "n": n, "default": v.default_name,
                    "tiled": row(&v.tiled), "default_variant": row(&v.default), "cpu_sgemm": row(&v.cpu),
                    "default_over_tiled": v.default.gflops() / v.tiled.gflops(),
                    "default_over_cpu_sgemm": v.default.gflops() / v.cpu.gflops(),
                });
            }
            case
        })
        .collect();
    json!({
        "sae_bench": 1,
        "created_unix": created,
        "adapter": {
            "name": info.name, "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type), "driver": info.driver,
            "driver_info": info.driver_info, "vendor": info.vendor, "device": info.device,
            "description": device::describe(info),
            "timestamp_queries": timer.timestamps.is_some(),
        },
        "host": {
            "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
            "logical_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "quick": s.quick,
        "timing": {
            "kernels": if timer.timestamps.is_some() { "gpu-timestamps" } else { "wall-clock" },
            "step": "wall-clock", "warmups": s.warmups, "runs": s.runs, "pass_target_ms": s.pass_target * 1e3,
        },
        "validation": validation,
        "cases": cases,
        "total_seconds": elapsed,
    })
}

/// The figures a comparison shows: (case, figure, value, smaller is better).
fn figures(doc: &Value) -> Vec<(String, String, f64, bool)> {
    let mut out = Vec::new();
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
    for case in doc["cases"].as_array().into_iter().flatten() {
        let name = case["name"].as_str().unwrap_or("?").to_string();
        let mut push = |fig: String, v: Option<f64>, lower: bool| {
            if let Some(v) = v {
                out.push((name.clone(), fig, v, lower));
            }
        };
        for k in case["kernels"].as_array().into_iter().flatten() {
            let id = k["id"].as_str().unwrap_or("?");
            push(format!("{id} µs/step"), num(k, "median_us"), true);
        }
        push("kernel rows sum µs".into(), num(case, "kernels_sum_us"), true);
        let st = &case["step"];
        push("step ms".into(), num(st, "median_ms"), true);
        push("step samples/s".into(), num(st, "samples_per_s"), false);
        push("step dispatches".into(), num(st, "dispatches_per_step"), true);
        push("step round trips".into(), num(st, "round_trips_per_step"), true);
        push("step bytes uploaded".into(), num(st, "bytes_uploaded_per_step"), true);
        push("f64 reference step ms".into(), num(&case["reference"], "median_ms"), true);
        let v = &case["matmul_variants"];
        for (key, label) in [("tiled", "tiled16"), ("default_variant", "default variant"), ("cpu_sgemm", "cpu sgemm")] {
            push(format!("fwd matmul {label} GFLOP/s"), num(&v[key], "gflops"), false);
        }
        push("fwd matmul default/tiled".into(), num(v, "default_over_tiled"), false);
        push("fwd matmul default/cpu sgemm".into(), num(v, "default_over_cpu_sgemm"), false);
    }
    out
}

fn print_comparison(old: &Value, new: &Value, path: &Path) {
    println!();
    println!(
        "compare with {} ({}, {})",
        path.display(),
        old["adapter"]["description"].as_str().unwrap_or("unknown adapter"),
        if old["quick"].as_bool() == Some(true) { "--quick" } else { "full run" }
    );
    println!("ratio = NEW / OLD; for times below 1 is faster, for rates (samples/s, GFLOP/s) above 1 is faster");
    let old_figs = figures(old);
    let new_figs = figures(new);
    let mut matched = 0;
    let mut current = String::new();
    for (case, fig, v, lower) in &new_figs {
        let Some((_, _, o, _)) = old_figs.iter().find(|(c, f, _, _)| c == case && f == fig) else { continue };
        if *case != current {
            println!("{case}");
            println!("  {:<40} {:>14} {:>14} {:>9}", "figure", "OLD", "NEW", "NEW/OLD");
            current = case.clone();
        }
        matched += 1;
        let (ratio, mark) = if *o != 0.0 {
            let r = v / o;
            let better = if *lower { r < 0.95 } else { r > 1.05 };
            let worse = if *lower { r > 1.05 } else { r < 0.95 };
            (
                format!("{r:.3}"),
                if better {
                    "better"
                } else if worse {
                    "worse"
                } else {
                    ""
                },
            )
        } else if *v == 0.0 {
            ("=".to_string(), "")
        } else {
            ("n/a".to_string(), "")
        };
        let line = format!("  {:<40} {:>14.4} {:>14.4} {:>9} {}", fig, o, v, ratio, mark);
        println!("{}", line.trim_end());
    }
    let unmatched = new_figs.len() - matched;
    println!(
        "{matched} figures compared (better / worse: by more than 5%){}",
        if unmatched > 0 { format!("; {unmatched} not in OLD (other presets or batch sizes)") } else { String::new() }
    );
}
