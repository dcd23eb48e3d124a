//! `sae`: train, encode, check and list adapters, headless.
//!
//! Exit codes: 0 success, 1 runtime failure (no adapter, divergence, I/O), 2 bad input (flags,
//! config, data, checkpoint). Bad input is caught before any output file is written.

use clap::{Args, Parser, Subcommand};
use sae_wgpu::check;
use sae_wgpu::checkpoint;
use sae_wgpu::data::{self, Dataset};
use sae_wgpu::device::{self, AdapterRequest, Gpu};
use sae_wgpu::model::{Activation, LossConfig, ModelSpec, Params, Sparsity};
use sae_wgpu::synthetic;
use sae_wgpu::train::{defaults, fit, split_validation, Event, TrainError, TrainOptions};
use sae_wgpu::trainer::{EvalMetrics, StepMetrics, Trainer};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sae",
    version,
    about = "Sparse autoencoders trained in WebGPU compute shaders, with a KL sparsity penalty that has a gradient"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a sparse autoencoder (with no flags: the 20-80-40-4 seed model on the built-in dataset).
    Train(Box<TrainSettings>),
    /// Write code-layer activations (or reconstructions) of a data file with a trained model.
    Encode(EncodeArgs),
    /// Run every kernel and a few training steps against the f64 CPU reference on an adapter.
    Check(CheckArgs),
    /// List every adapter wgpu sees, with the limits that matter here.
    Adapters(AdapterArgs),
    /// Time every kernel and a whole training step on preset models (validates first).
    Bench(BenchArgs),
}

/// Every training setting. The same keys (kebab-case) are accepted in a `--config` TOML or JSON
/// file; flags given on the command line override the file.
#[derive(Args, Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TrainSettings {
    /// Read settings from a TOML (.toml) or JSON (.json) file; flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Training data: .npy (f32/f64, 2-D) or .csv (optional header), one sample per row.
    /// Default: the built-in synthetic context vectors (20 wide).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Size of the built-in dataset when no --data is given [default: 8192].
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// Encoder widths, input first, code last [default: 20,80,40,4].
    #[arg(long, value_name = "N,N,..")]
    layers: Option<String>,
    /// Decoder widths after the code, ending at the input width [default: the encoder mirrored].
    #[arg(long, value_name = "N,N,..")]
    decoder_layers: Option<String>,
    /// identity, relu, sigmoid or tanh [default: relu].
    #[arg(long, value_name = "ACT")]
    hidden_activation: Option<String>,
    /// Activation of the code layer [default: sigmoid].
    #[arg(long, value_name = "ACT")]
    code_activation: Option<String>,
    /// Activation of the output layer [default: sigmoid, for data in [0, 1]].
    #[arg(long, value_name = "ACT")]
    output_activation: Option<String>,
    /// none, kl (mean-activation KL, sigmoid code) or kl-freq (firing-frequency KL, any code) [default: kl].
    #[arg(long, value_name = "KIND")]
    sparsity: Option<String>,
    /// Target activation / firing frequency per code unit, in (0, 1) [default: 0.05].
    #[arg(long, allow_negative_numbers = true)]
    rho: Option<f64>,
    /// Weight of the sparsity term, >= 0 [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f64>,
    /// Temperature T of kl-freq's sigmoid(z / T), > 0 [default: 0.5].
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// lambda of (lambda/2) sum ||W||^2, >= 0 [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// SGD learning rate, > 0 [default: 0.5].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Minibatch size [default: 32].
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Passes over the training set [default: 10].
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Seeds the init, the shuffle, the validation split and the built-in dataset [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Visit the training set in file order instead of a seeded shuffle each epoch.
    #[arg(long)]
    #[serde(default)]
    no_shuffle: bool,
    /// Start from the weights of a checkpoint (its model must match the run's).
    #[arg(long, value_name = "FILE.safetensors")]
    init: Option<PathBuf>,
    /// Write model.safetensors, metrics.jsonl and config.json here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Log a `step` metrics line every N steps [default: only per epoch].
    #[arg(long, value_name = "N")]
    log_every: Option<usize>,
    /// Step implementation: auto, fused (3-4 dispatches a step; every width <= 128) or layered [default: auto].
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// Training steps recorded into one queue submission [default: up to 64, ending at log steps].
    #[arg(long, value_name = "N")]
    steps_per_submit: Option<usize>,
    /// Also write model.safetensors every N epochs during the run.
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Fraction of the data held out for validation, in [0, 1) [default: 0].
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    validation_split: Option<f64>,
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
    /// Use the adapter whose name contains this [default: $WGPU_ADAPTER_NAME, else the best].
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Args)]
struct EncodeArgs {
    /// A checkpoint written by `sae train`.
    #[arg(long, value_name = "FILE.safetensors")]
    model: PathBuf,
    /// Input data (.npy or .csv), as wide as the model's input.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Output file: .npy or .csv.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Write reconstructions (the output layer) instead of codes.
    #[arg(long)]
    reconstruct: bool,
    /// Rows per forward pass.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    batch_size: usize,
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
    /// Use the adapter whose name contains this [default: $WGPU_ADAPTER_NAME, else the best].
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// Check every adapter present instead of the selected one.
    #[arg(long)]
    all: bool,
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
    /// Use the adapter whose name contains this [default: $WGPU_ADAPTER_NAME, else the best].
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Args)]
struct AdapterArgs {
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// seed, mnist, dictionary or all; comma-separated for several [default: all].
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Encoder widths, input first; the decoder mirrors them (replaces the presets' models).
    #[arg(long, value_name = "N,N,..")]
    layers: Option<String>,
    /// Minibatch size (replaces the presets' batch sizes).
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Fewer repetitions, smaller batches where a step is too slow: under a minute on a software adapter.
    #[arg(long)]
    quick: bool,
    /// Write every figure, with the adapter, to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print the ratio of each figure to a previous `--json` run.
    #[arg(long, value_name = "OLD.json")]
    compare: Option<PathBuf>,
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
    /// Use the adapter whose name contains this [default: $WGPU_ADAPTER_NAME, else the best].
    #[arg(long)]
    adapter: Option<String>,
}

/// What went wrong: bad input (exit 2) or a failure at run time (exit 1).
enum Failure {
    BadInput(String),
    Runtime(String),
}

use Failure::{BadInput, Runtime};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(s) => train(*s),
        Command::Encode(a) => encode(a),
        Command::Check(a) => check_cmd(a),
        Command::Adapters(a) => adapters(a),
        Command::Bench(a) => bench(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(BadInput(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// train
// ---------------------------------------------------------------------------------------------

/// Every setting of a run, resolved and validated; written to `config.json`.
#[derive(Serialize)]
struct Resolved {
    data: String,
    samples: usize,
    model: ModelSpec,
    loss: LossConfig,
    lr: f64,
    batch_size: usize,
    epochs: usize,
    seed: u64,
    shuffle: bool,
    init: Option<PathBuf>,
    log_every: Option<usize>,
    path: String,
    steps_per_submit: Option<usize>,
    checkpoint_every: Option<usize>,
    validation_split: f64,
    adapter: String,
}

fn parse_widths(flag: &str, s: &str) -> Result<Vec<usize>, Failure> {
    let widths = s
        .split(',')
        .map(|t| {
            t.trim().parse::<usize>().map_err(|_| {
                BadInput(format!("{flag} {s}: '{}' is not a whole number; give widths like 20,80,40,4", t.trim()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = widths.iter().position(|&w| w == 0) {
        return Err(BadInput(format!("{flag} {s}: width {} is 0; every layer needs at least one unit", i + 1)));
    }
    Ok(widths)
}

fn parse_activation(flag: &str, s: &str) -> Result<Activation, Failure> {
    Activation::parse(s).map_err(|e| BadInput(format!("{flag}: {e}")))
}

fn positive(flag: &str, v: f64) -> Result<f64, Failure> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(BadInput(format!("{flag} {v}: must be a finite number > 0")))
    }
}

fn read_config(path: &Path) -> Result<TrainSettings, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("--config {}: cannot read it: {e}", path.display())))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let parsed: Result<TrainSettings, String> = match ext.as_str() {
        "toml" => toml::from_str(&text).map_err(|e| e.to_string()),
        "json" => serde_json::from_str(&text).map_err(|e| e.to_string()),
        _ => return Err(BadInput(format!("--config {}: use a .toml or .json file", path.display()))),
    };
    parsed.map_err(|e| BadInput(format!("--config {}: {}", path.display(), e.trim().replace('\n', " "))))
}

/// Flags override the config file, which overrides the defaults.
fn merge(cli: TrainSettings, file: TrainSettings) -> TrainSettings {
    macro_rules! pick {
        ($($f:ident),*) => { TrainSettings { $($f: cli.$f.or(file.$f),)* no_shuffle: cli.no_shuffle || file.no_shuffle, config: cli.config } };
    }
    pick!(
        data,
        samples,
        layers,
        decoder_layers,
        hidden_activation,
        code_activation,
        output_activation,
        sparsity,
        rho,
        beta,
        temperature,
        weight_decay,
        lr,
        batch_size,
        epochs,
        seed,
        init,
        out,
        log_every,
        path,
        steps_per_submit,
        checkpoint_every,
        validation_split,
        backend,
        adapter
    )
}

struct Plan {
    resolved: Resolved,
    dataset: Dataset,
    init: Params,
    out: Option<PathBuf>,
    request: AdapterRequest,
}

/// Resolves and validates every setting and loads the data and init checkpoint: all bad input
/// is reported here, before anything is written.
fn plan(cli: TrainSettings) -> Result<Plan, Failure> {
    let file = match &cli.config {
        Some(p) => read_config(p)?,
        None => TrainSettings::default(),
    };
    let s = merge(cli, file);

    let seed = s.seed.unwrap_or(0);
    let (dataset, data_name) = match &s.data {
        Some(p) => (data::load(p).map_err(|e| BadInput(e.to_string()))?, p.display().to_string()),
        None => {
            let n = s.samples.unwrap_or(synthetic::DEFAULT_SAMPLES);
            if n == 0 {
                return Err(BadInput("--samples 0: the built-in dataset needs at least one sample".into()));
            }
            (synthetic::context_vectors(n, seed), format!("built-in context vectors (n={n}, seed={seed})"))
        }
    };

    let init_ckpt = match &s.init {
        Some(p) => Some(checkpoint::load(p).map_err(BadInput)?),
        None => None,
    };
    let model_flags = s.layers.is_some()
        || s.decoder_layers.is_some()
        || s.hidden_activation.is_some()
        || s.code_activation.is_some()
        || s.output_activation.is_some();
    let spec = match (&init_ckpt, model_flags) {
        // With --init and no model flags, the checkpoint defines the model.
        (Some((spec, _)), false) => spec.clone(),
        _ => {
            let encoder = parse_widths("--layers", s.layers.as_deref().unwrap_or(defaults::LAYERS))?;
            if encoder.len() < 2 {
                return Err(BadInput("--layers: give at least an input and a code width, e.g. 20,4".into()));
            }
            let decoder = match &s.decoder_layers {
                Some(d) => parse_widths("--decoder-layers", d)?,
                None => encoder.iter().rev().skip(1).copied().collect(),
            };
            let hidden = parse_activation("--hidden-activation", s.hidden_activation.as_deref().unwrap_or("relu"))?;
            let code = parse_activation("--code-activation", s.code_activation.as_deref().unwrap_or("sigmoid"))?;
            let output = parse_activation("--output-activation", s.output_activation.as_deref().unwrap_or("sigmoid"))?;
            ModelSpec::new(&encoder, &decoder, hidden, code, output)
                .map_err(|e| BadInput(format!("--layers/--decoder-layers: {e}")))?
        }
    };
    if let Some((ckpt_spec, _)) = &init_ckpt {
        if ckpt_spec != &spec {
            return Err(BadInput(format!(
                "--init {}: its model ({:?}) differs from the run's ({:?}); drop the model flags to train the checkpoint's model",
                s.init.as_ref().unwrap().display(),
                ckpt_spec.sizes,
                spec.sizes
            )));
        }
    }
    if dataset.cols != spec.input_width() {
        return Err(BadInput(format!(
            "{data_name}: {} columns, but the model's input is {} wide; pass --layers starting with {}",
            dataset.cols,
            spec.input_width(),
            dataset.cols
        )));
    }

    let rho = s.rho.unwrap_or(defaults::RHO);
    if !(rho > 0.0 && rho < 1.0) {
        return Err(BadInput(format!("--rho {rho}: must lie strictly between 0 and 1")));
    }
    let beta = s.beta.unwrap_or(defaults::BETA);
    if !(beta.is_finite() && beta >= 0.0) {
        return Err(BadInput(format!("--beta {beta}: must be a finite number >= 0")));
    }
    let temperature = positive("--temperature", s.temperature.unwrap_or(defaults::TEMPERATURE))?;
    let weight_decay = s.weight_decay.unwrap_or(0.0);
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return Err(BadInput(format!("--weight-decay {weight_decay}: must be a finite number >= 0")));
    }
    let sparsity = match s.sparsity.as_deref().unwrap_or("kl") {
        "none" => Sparsity::None,
        "kl" => Sparsity::Kl { rho, beta },
        "kl-freq" => Sparsity::KlFreq { rho, beta, temperature },
        other => return Err(BadInput(format!("--sparsity {other}: use none, kl or kl-freq"))),
    };
    let loss = LossConfig { weight_decay, sparsity };
    loss.validate(&spec).map_err(|e| BadInput(format!("--sparsity: {e}")))?;
    let lr = positive("--lr", s.lr.unwrap_or(defaults::LR))?;
    let batch_size = s.batch_size.unwrap_or(defaults::BATCH_SIZE);
    if batch_size == 0 {
        return Err(BadInput("--batch-size 0: must be at least 1".into()));
    }
    let epochs = s.epochs.unwrap_or(defaults::EPOCHS);
    if epochs == 0 {
        return Err(BadInput("--epochs 0: must be at least 1".into()));
    }
    if s.log_every == Some(0) {
        return Err(BadInput("--log-every 0: must be at least 1 (omit it to log per epoch)".into()));
    }
    if let Some(p) = &s.path {
        sae_wgpu::trainer::Path::parse(p).map_err(|e| BadInput(format!("--path: {e}")))?;
    }
    if s.steps_per_submit == Some(0) {
        return Err(BadInput("--steps-per-submit 0: must be at least 1".into()));
    }
    if s.checkpoint_every == Some(0) {
        return Err(BadInput("--checkpoint-every 0: must be at least 1".into()));
    }
    let validation_split = s.validation_split.unwrap_or(0.0);
    if !(0.0..1.0).contains(&validation_split) {
        return Err(BadInput(format!("--validation-split {validation_split}: must be in [0, 1)")));
    }
    let held_out = (dataset.rows as f64 * validation_split).round() as usize;
    if validation_split > 0.0 && (held_out == 0 || held_out >= dataset.rows) {
        return Err(BadInput(format!(
            "--validation-split {validation_split}: holds out {held_out} of {} samples, leaving {} set empty; choose a fraction that keeps both non-empty",
            dataset.rows,
            if held_out == 0 { "the validation" } else { "the training" }
        )));
    }
    if let Some(b) = &s.backend {
        device::parse_backends(b).map_err(|e| BadInput(format!("--backend: {e}")))?;
    }
    let init = match init_ckpt {
        Some((_, params)) => params,
        None => Params::init(&spec, seed),
    };
    Ok(Plan {
        resolved: Resolved {
            data: data_name,
            samples: dataset.rows,
            model: spec,
            loss,
            lr,
            batch_size,
            epochs,
            seed,
            shuffle: !s.no_shuffle,
            init: s.init.clone(),
            log_every: s.log_every,
            path: s.path.clone().unwrap_or_else(|| "auto".into()),
            steps_per_submit: s.steps_per_submit,
            checkpoint_every: s.checkpoint_every,
            validation_split,
            adapter: String::new(),
        },
        dataset,
        init,
        out: s.out.clone(),
        request: AdapterRequest { backend: s.backend.clone(), adapter_name: s.adapter.clone() },
    })
}

fn open_gpu(req: &AdapterRequest) -> Result<Gpu, Failure> {
    if let Some(b) = &req.backend {
        device::parse_backends(b).map_err(|e| BadInput(format!("--backend: {e}")))?;
    }
    Gpu::new(req).map_err(|e| Runtime(e.to_string()))
}

/// A metrics JSON line (SPEC.md section 6).
fn step_json(epoch: usize, step: u64, m: &StepMetrics) -> serde_json::Value {
    serde_json::json!({
        "kind": "step", "epoch": epoch, "step": step,
        "loss": m.loss, "reconstruction": m.reconstruction, "mse": m.mse,
        "sparsity": m.sparsity, "weight_decay": m.weight_decay,
        "rho_hat": m.rho_hat, "freq": m.freq,
    })
}

fn eval_json(m: &EvalMetrics) -> serde_json::Value {
    serde_json::json!({
        "samples": m.samples, "loss": m.loss, "reconstruction": m.reconstruction, "mse": m.mse,
        "sparsity": m.sparsity, "weight_decay": m.weight_decay, "fvu": m.fvu,
        "rho_hat": m.rho_hat, "freq": m.freq,
    })
}

fn epoch_json(epoch: usize, step: u64, train: &EvalMetrics, val: Option<&EvalMetrics>) -> serde_json::Value {
    let mut v = eval_json(train);
    let obj = v.as_object_mut().unwrap();
    obj.insert("kind".into(), "epoch".into());
    obj.insert("epoch".into(), epoch.into());
    obj.insert("step".into(), step.into());
    if let Some(val) = val {
        obj.insert("validation".into(), eval_json(val));
    }
    v
}

/// Writes `name` in `dir` atomically: a temporary file in the same directory, then a rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Failure> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let target = dir.join(name);
    let result = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &target));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Runtime(format!("{}: cannot write it: {e}", target.display())));
    }
    Ok(())
}

fn train(cli: TrainSettings) -> Result<(), Failure> {
    let Plan { mut resolved, dataset, init, out, request } = plan(cli)?;
    let gpu = open_gpu(&request)?;
    resolved.adapter = gpu.describe();
    eprintln!("adapter: {}", resolved.adapter);
    eprintln!("data: {} ({} x {})", resolved.data, dataset.rows, dataset.cols);

    let (train_set, val_set) = split_validation(&dataset, resolved.validation_split, resolved.seed);
    let spec = resolved.model.clone();
    let mut trainer =
        Trainer::new(&gpu, &spec, resolved.loss, resolved.lr, resolved.batch_size, &init).map_err(BadInput)?;
    if let Some(path) = sae_wgpu::trainer::Path::parse(&resolved.path).map_err(BadInput)? {
        trainer.set_path(path).map_err(|e| BadInput(format!("--path: {e}")))?;
    }
    resolved.path = format!("{:?}", trainer.path()).to_lowercase();

    // Outputs: config.json now, metrics.jsonl built in a temporary file and renamed when the
    // run ends, model.safetensors written atomically (every --checkpoint-every epochs and at the end).
    let mut metrics_tmp = None;
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).map_err(|e| Runtime(format!("--out {}: cannot create it: {e}", dir.display())))?;
        let json = serde_json::to_vec_pretty(&resolved).expect("config serialises");
        write_atomic(dir, "config.json", &json)?;
        let tmp = dir.join(format!(".metrics.jsonl.tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| Runtime(format!("{}: {e}", tmp.display())))?;
        metrics_tmp = Some((tmp, std::io::BufWriter::new(file)));
    }

    let steps_per_epoch = train_set.rows.div_ceil(resolved.batch_size) as u64;
    let bar = indicatif::ProgressBar::new(steps_per_epoch * resolved.epochs as u64);
    bar.set_prefix("1");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} epoch {prefix} step {pos}/{len} {msg} [{elapsed_precise}]")
            .expect("template"),
    );
    let opts = TrainOptions {
        epochs: resolved.epochs,
        batch_size: resolved.batch_size,
        seed: resolved.seed,
        shuffle: resolved.shuffle,
        log_every: resolved.log_every,
        steps_per_submit: resolved.steps_per_submit,
    };
    let started = std::time::Instant::now();
    let mut last_val = None;
    let result = fit(&mut trainer, &train_set, val_set.as_ref(), &opts, |event| {
        let line = match &event {
            Event::Step { epoch, step, metrics } => {
                bar.set_position(*step);
                bar.set_prefix(epoch.to_string());
                bar.set_message(format!("loss {:.5}", metrics.loss));
                step_json(*epoch, *step, metrics)
            }
            Event::Epoch { epoch, step, train, validation, .. } => {
                bar.set_position(*step);
                // The epoch now running; the message is the one just finished.
                bar.set_prefix((epoch + 1).min(resolved.epochs).to_string());
                bar.set_message(format!("loss {:.5} fvu {:.3} (epoch {epoch})", train.loss, train.fvu));
                last_val = validation.map(|v| (*v).clone());
                epoch_json(*epoch, *step, train, *validation)
            }
        };
        if let Some((_, w)) = metrics_tmp.as_mut() {
            writeln!(w, "{line}").map_err(|e| format!("writing metrics: {e}"))?;
        }
        if let (Event::Epoch { epoch, trainer, .. }, Some(dir), Some(n)) = (&event, &out, resolved.checkpoint_every) {
            if epoch % n == 0 {
                // Atomic (temporary file, then rename): a crash or a later divergence leaves
                // the previous checkpoint intact.
                checkpoint::save(&dir.join("model.safetensors"), &spec, &trainer.params())?;
            }
        }
        Ok(())
    });
    bar.finish_and_clear();
    // Close the metrics file whatever happened: the lines in it are complete.
    if let (Some((tmp, mut w)), Some(dir)) = (metrics_tmp, &out) {
        w.flush().map_err(|e| Runtime(format!("writing metrics: {e}")))?;
        drop(w);
        std::fs::rename(&tmp, dir.join("metrics.jsonl")).map_err(|e| Runtime(format!("metrics.jsonl: {e}")))?;
    }
    let last = match result {
        Ok(m) => m,
        Err(e @ TrainError::Diverged { .. }) => return Err(Runtime(e.to_string())),
        Err(e) => return Err(Runtime(e.to_string())),
    };
    let params = trainer.params();
    if let Some(dir) = &out {
        checkpoint::save(&dir.join("model.safetensors"), &spec, &params).map_err(Runtime)?;
    }
    print_summary(&resolved, &last, last_val.as_ref(), started.elapsed().as_secs_f64(), trainer.steps_done);
    if let Some(dir) = &out {
        println!("wrote {}/{{model.safetensors, metrics.jsonl, config.json}}", dir.display());
    }
    Ok(())
}

fn print_summary(r: &Resolved, m: &EvalMetrics, val: Option<&EvalMetrics>, secs: f64, steps: u64) {
    let (rho, beta) = r.loss.sparsity.rho_beta();
    println!(
        "trained {:?} for {} epochs ({steps} steps, batch {}, lr {}) in {secs:.1} s; sparsity {} beta {beta}",
        r.model.sizes,
        r.epochs,
        r.batch_size,
        r.lr,
        r.loss.sparsity.name()
    );
    let rho_col = match r.loss.sparsity {
        Sparsity::KlFreq { .. } => "rho_hat (soft freq)",
        Sparsity::Kl { .. } => "rho_hat (mean act.)",
        Sparsity::None => "mean activation",
    };
    println!("{:<6} {:>10} {:>20} {:>12}", "unit", "target rho", rho_col, "hard freq");
    for j in 0..m.rho_hat.len() {
        let target = if r.loss.sparsity == Sparsity::None { "-".to_string() } else { format!("{rho:.4}") };
        println!("{:<6} {:>10} {:>20.4} {:>12.4}", j, target, m.rho_hat[j], m.freq[j]);
    }
    println!("train: mse {:.6}  fvu {:.4}  loss {:.6}", m.mse, m.fvu, m.loss);
    let silent = m.freq.iter().filter(|&&f| f == 0.0).count();
    if matches!(r.loss.sparsity, Sparsity::KlFreq { .. }) && silent > 0 {
        println!(
            "note: {silent} code unit(s) never fire (hard frequency 0): the soft frequency can meet rho with every z just \
             below 0, and a ReLU unit that is off gets no reconstruction gradient; try a smaller --beta (0.1 keeps some units firing on the built-in data)"
        );
    }
    if let Some(v) = val {
        println!("validation: mse {:.6}  fvu {:.4}  loss {:.6}", v.mse, v.fvu, v.loss);
    }
}

// ---------------------------------------------------------------------------------------------
// encode
// ---------------------------------------------------------------------------------------------

fn encode(a: EncodeArgs) -> Result<(), Failure> {
    let ext = a.out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "npy" && ext != "csv" {
        return Err(BadInput(format!("--out {}: use a .npy or .csv file name", a.out.display())));
    }
    if a.batch_size == 0 {
        return Err(BadInput("--batch-size 0: must be at least 1".into()));
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(BadInput(format!(
                "--out {}: the directory {} does not exist",
                a.out.display(),
                parent.display()
            )));
        }
    }
    let (spec, params) = checkpoint::load(&a.model).map_err(BadInput)?;
    let input = data::load(&a.data).map_err(|e| BadInput(e.to_string()))?;
    input.check_width(spec.input_width(), &a.data).map_err(|e| BadInput(e.to_string()))?;
    let gpu = open_gpu(&AdapterRequest { backend: a.backend, adapter_name: a.adapter })?;
    let batch = a.batch_size.min(input.rows);
    let mut trainer = Trainer::new(&gpu, &spec, LossConfig::default(), 1.0, batch, &params).map_err(BadInput)?;
    let layer = if a.reconstruct { spec.layers() } else { spec.code_layer };
    let values = trainer.activations(&input.values, layer).map_err(Runtime)?;
    let out = Dataset { rows: input.rows, cols: spec.sizes[layer], values };
    data::save(&a.out, &out).map_err(|e| Runtime(e.to_string()))?;
    eprintln!(
        "wrote {} ({} x {}: {} of layer {})",
        a.out.display(),
        out.rows,
        out.cols,
        if a.reconstruct { "reconstructions" } else { "codes" },
        spec.layer_name(layer)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------------

fn check_cmd(a: CheckArgs) -> Result<(), Failure> {
    let req = AdapterRequest { backend: a.backend, adapter_name: a.adapter };
    if let Some(b) = &req.backend {
        device::parse_backends(b).map_err(|e| BadInput(format!("--backend: {e}")))?;
    }
    let gpus =
        if a.all { Gpu::all(&req) } else { Gpu::new(&req).map(|g| vec![g]) }.map_err(|e| Runtime(e.to_string()))?;
    let mut failures = 0;
    for gpu in &gpus {
        println!("adapter: {}", gpu.describe());
        let mut kernels = sae_wgpu::kernels::Kernels::new(gpu).map_err(Runtime)?;
        println!(
            "{:<34} {:<11} {:>5} {:>4} {:>4} {:>11} {:>13} {:>9}  result",
            "kernel", "variant", "m", "k", "n", "max groups", "max rel err", "tolerance"
        );
        for row in check::run_all(&mut kernels) {
            let groups = if row.max_groups == gpu.limits.max_compute_workgroups_per_dimension {
                "adapter".to_string()
            } else {
                row.max_groups.to_string()
            };
            println!(
                "{:<34} {:<11} {:>5} {:>4} {:>4} {:>11} {:>13.2e} {:>9.0e}  {}",
                row.kernel,
                row.variant,
                row.m,
                row.k,
                row.n,
                groups,
                row.max_rel_err,
                check::TOL,
                if row.pass() { "pass" } else { "FAIL" }
            );
            failures += usize::from(!row.pass());
        }
        let step_tol = 1e-4;
        let seed = ModelSpec::seed();
        let relu = ModelSpec::mirrored(&[20, 80, 40, 4], Activation::Relu, Activation::Relu, Activation::Sigmoid)
            .expect("valid model");
        let cases = [
            ("seed, none", &seed, Sparsity::None),
            ("seed, kl", &seed, Sparsity::Kl { rho: 0.05, beta: 3.0 }),
            ("relu code, kl-freq", &relu, Sparsity::KlFreq { rho: 0.05, beta: 3.0, temperature: 0.5 }),
        ];
        println!(
            "{:<40} {:>13} {:>9}  result",
            "training: 5 steps, batch 37, params vs f64", "max rel err", "tolerance"
        );
        for (label, spec, sparsity) in cases {
            let err = check::training_steps(gpu, spec, LossConfig { weight_decay: 1e-3, sparsity }, 37, 0.5, 5, None)
                .map_err(Runtime)?
                .max_rel_err;
            let pass = err < step_tol;
            failures += usize::from(!pass);
            println!("{:<40} {:>13.2e} {:>9.0e}  {}", label, err, step_tol, if pass { "pass" } else { "FAIL" });
        }
        println!();
    }
    if failures > 0 {
        return Err(Runtime(format!("{failures} check(s) failed: this adapter or driver computes wrong results")));
    }
    println!("all checks passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bench
// ---------------------------------------------------------------------------------------------

fn bench(a: BenchArgs) -> Result<(), Failure> {
    use sae_wgpu::bench::{self, Error};
    let opts = bench::Options {
        preset: a.preset,
        layers: a.layers,
        batch_size: a.batch_size,
        quick: a.quick,
        json: a.json,
        compare: a.compare,
        backend: a.backend,
        adapter: a.adapter,
    };
    bench::run(&opts).map_err(|e| match e {
        Error::BadInput(msg) => BadInput(msg),
        Error::Runtime(msg) => Runtime(msg),
    })
}

// ---------------------------------------------------------------------------------------------
// adapters
// ---------------------------------------------------------------------------------------------

fn adapters(a: AdapterArgs) -> Result<(), Failure> {
    let req = AdapterRequest { backend: a.backend, adapter_name: None };
    if let Some(b) = &req.backend {
        device::parse_backends(b).map_err(|e| BadInput(format!("--backend: {e}")))?;
    }
    let found = device::adapters(&req).map_err(|e| Runtime(e.to_string()))?;
    if found.is_empty() {
        return Err(Runtime(Gpu::new(&req).err().map(|e| e.to_string()).unwrap_or_default()));
    }
    for (i, adapter) in found.iter().enumerate() {
        let info = adapter.get_info();
        let l = adapter.limits();
        let f = adapter.features();
        println!("{}{}", device::describe(&info), if i == 0 { "   <- selected by default" } else { "" });
        println!("    max workgroups per dimension   {}", l.max_compute_workgroups_per_dimension);
        println!("    max invocations per workgroup  {}", l.max_compute_invocations_per_workgroup);
        println!("    max workgroup storage          {} bytes", l.max_compute_workgroup_storage_size);
        println!("    max storage binding            {} bytes", l.max_storage_buffer_binding_size);
        println!("    max buffer size                {} bytes", l.max_buffer_size);
        println!(
            "    subgroups {}  timestamp queries {}",
            if f.contains(wgpu::Features::SUBGROUP) { "yes" } else { "no" },
            if f.contains(wgpu::Features::TIMESTAMP_QUERY) { "yes" } else { "no" }
        );
    }
    Ok(())
}
