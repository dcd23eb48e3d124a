//! `sae train`: settings from flags over a config file over the defaults, resolved and
//! validated before anything is written; then the run, its metrics and checkpoints.

use super::{adapter_request, bad, open_gpu};
use crate::checkpoint;
use crate::checkpoint::TrainState;
use crate::data::{self, write_atomic, Dataset};
use crate::device::AdapterRequest;
use crate::lbfgs::{self, LbfgsSettings, LbfgsState};
use crate::model::{check_lr, parse_widths, Activation, CodeSelect, LossConfig, ModelSpec, Params, Sparsity};
use crate::optim::{self, LrSchedule, Optimizer, ScheduleKind};
use crate::synthetic;
use crate::train::{defaults, fit_epochs, fit_lbfgs, split_validation, Event, TrainOptions};
use crate::trainer::{EvalMetrics, StepMetrics, StepPath, Trainer};
use crate::{Error, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every training setting. The same keys (kebab-case) are accepted in a `--config` TOML or JSON
/// file; flags given on the command line override the file.
#[derive(Args, Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainSettings {
    /// Read settings from a TOML (.toml) or JSON (.json) file; flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// forum (the forum post's all-ReLU 20-80-40-4 model with a firing-frequency target),
    /// classic (sigmoid code and output, mean-activation KL) or dictionary (a TopK dictionary
    /// of 64 latents over a synthetic 32-wide dictionary): the defaults of every setting
    /// neither a flag nor --config gives [default: forum].
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Training data: .npy (f32/f64, 2-D) or .csv (optional header), one sample per row, or a
    /// directory of .npy shards of one width and dtype. A directory, or an .npy above 256 MiB,
    /// is streamed (read in chunks, never whole). Default: the built-in synthetic context
    /// vectors (20 wide).
    #[arg(long, value_name = "FILE|DIR")]
    data: Option<PathBuf>,
    /// Stream --data even when it is small (a .npy file or a directory of them).
    #[arg(long)]
    #[serde(default)]
    stream: bool,
    /// Shuffle through a mixing buffer of ROWS rows (rows enter in file order; each minibatch
    /// row is a seeded random slot, refilled by the next): a streamed run's shuffle, also taken
    /// by resident data when given [default for streamed data: 64 MiB of rows].
    #[arg(long, value_name = "ROWS")]
    shuffle_buffer: Option<usize>,
    /// Streamed data: stop after N training steps in all (schedules still span --epochs).
    #[arg(long, value_name = "N")]
    max_steps: Option<u64>,
    /// Streamed data: measure epoch metrics on the first N rows [default: 1048576].
    #[arg(long, value_name = "N")]
    eval_rows: Option<usize>,
    /// Size of the built-in dataset when no --data is given [default: 8192; dictionary preset 20000].
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// Train on a synthetic dictionary instead of --data: dictionary:D,F,S, samples that are
    /// sums of S of F random unit directions in R^D (magnitudes U(0.5, 1.5), noise 0.01). With
    /// --out the true directions are written to DIR/truth.npy and the run ends with their
    /// recovery (MMCS) [default: dictionary preset dictionary:32,64,3].
    #[arg(long, value_name = "SPEC")]
    synthetic: Option<String>,
    /// Encoder widths, input first, code last [default: 20,80,40,4 (both presets)].
    #[arg(long, value_name = "N,N,..")]
    layers: Option<String>,
    /// Decoder widths after the code, ending at the input width [default: the encoder mirrored].
    #[arg(long, value_name = "N,N,..")]
    decoder_layers: Option<String>,
    /// identity, relu, sigmoid or tanh [default: relu (both presets)].
    #[arg(long, value_name = "ACT")]
    hidden_activation: Option<String>,
    /// Activation of the code layer, or topk (the --k largest pre-activations of each row,
    /// ReLU'd; the rest 0), or batch-topk (in training the --k times batch largest of the
    /// minibatch; at inference those above the threshold training estimates) [default: forum
    /// relu, classic sigmoid, dictionary topk].
    #[arg(long, value_name = "ACT")]
    code_activation: Option<String>,
    /// K of --code-activation topk, in 1..=the code width [default: dictionary preset 3].
    #[arg(long, value_name = "K")]
    k: Option<usize>,
    /// --code-activation jumprelu: the width of the rectangle kernel of its thresholds'
    /// straight-through gradient, > 0 [default: 0.05].
    #[arg(long, value_name = "EPS", allow_negative_numbers = true)]
    jumprelu_bandwidth: Option<f32>,
    /// --code-activation jumprelu: every latent's starting threshold, > 0 [default: 0.1].
    #[arg(long, value_name = "THETA", allow_negative_numbers = true)]
    jumprelu_threshold: Option<f32>,
    /// --sparsity l0's C in (C/m) sum_i #{j : z_ij > theta_j} (JumpReLU's; ramps in with
    /// --beta-warmup-steps) [default: 0.015].
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    l0_coefficient: Option<f64>,
    /// Subtract the output layer's bias (b_dec) from the input before the encoder, initialised
    /// to the data mean [default: dictionary true, else false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pre_bias: Option<bool>,
    /// unit (decoder columns renormalised after each step, the gradient along each column
    /// removed before it) or none [default: dictionary unit, else none].
    #[arg(long, value_name = "KIND")]
    decoder_norm: Option<String>,
    /// AuxK (Gao et al. 2024): the K largest pre-activations among the dead latents (silent for
    /// --dead-after samples) are trained to reconstruct the residual; a TopK dictionary's;
    /// 0: off [default: dictionary 16, else off].
    #[arg(long, value_name = "K")]
    auxk: Option<usize>,
    /// Weight of the AuxK term, >= 0 [default: 1/32].
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    auxk_coefficient: Option<f64>,
    /// Initialise each encoder layer as the transpose of its mirror decoder layer [default:
    /// dictionary true, else false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    tied_init: Option<bool>,
    /// Activation of the output layer [default: forum relu, classic sigmoid].
    #[arg(long, value_name = "ACT")]
    output_activation: Option<String>,
    /// none, kl (mean-activation KL, sigmoid code), kl-freq (KL of the hard firing frequency,
    /// any code), kl-soft-freq (KL of a smooth firing frequency, any code) or l1 (each code
    /// unit's L1 times its decoder column's norm, a ReLU dictionary) [default: forum kl-freq,
    /// classic kl, dictionary none].
    #[arg(long, value_name = "KIND")]
    sparsity: Option<String>,
    /// --sparsity l1's C in (C/m) sum_i sum_j |a_ij| ||w_j||, >= 0 (its warm-up is
    /// --beta-warmup-steps) [default: 0.05].
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    l1_coefficient: Option<f64>,
    /// Target activation / firing frequency per code unit, in (0, 1) [default: 0.05].
    #[arg(long, allow_negative_numbers = true)]
    rho: Option<f64>,
    /// Weight of the sparsity term, >= 0 [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f64>,
    /// Temperature T, > 0: kl-freq's straight-through scale (each row of unit j gets
    /// beta (rho_hat_j - rho) / (T m)) [default: 8]; kl-soft-freq's sigmoid(z / T) [default: 0.5].
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// kl-freq's frequency controller, >= 0 (0: off): after each step the code bias moves by
    /// -RATE (rho_hat_j - rho), outside the optimizer; it brings dead units back [default: 0.01].
    #[arg(long, value_name = "RATE", allow_negative_numbers = true)]
    frequency_control: Option<f64>,
    /// A code unit that has not fired for N training samples counts as dead on metrics lines,
    /// >= 1 [default: 10000].
    #[arg(long, value_name = "N")]
    dead_after: Option<u64>,
    /// lambda of (lambda/2) sum ||W||^2 in J, >= 0 [default: 0]; with --optimizer adamw it is
    /// decoupled (W -= lr*lambda*W each step, biases excluded) and not part of J.
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Learning rate (the peak of a schedule), > 0 [default: forum 0.003, classic 0.01].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// sgd, momentum, adam or adamw, as PyTorch's SGD, SGD(momentum), Adam, AdamW; or lbfgs:
    /// full-batch L-BFGS with a strong Wolfe line search, one iteration per --epochs, lr 1,
    /// --batch-size the rows evaluated per chunk [default: adam].
    #[arg(long, value_name = "NAME")]
    optimizer: Option<String>,
    /// Curvature pairs L-BFGS keeps, >= 1 [default: 100].
    #[arg(long, value_name = "M")]
    lbfgs_history: Option<usize>,
    /// Momentum of --optimizer momentum, >= 0 [default: 0.9].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Adam's beta1,beta2, each in [0, 1) [default: 0.9,0.999].
    #[arg(long, value_name = "B1,B2", allow_negative_numbers = true)]
    adam_betas: Option<String>,
    /// Adam's eps, >= 0 [default: 1e-8].
    #[arg(long, allow_negative_numbers = true)]
    adam_eps: Option<f64>,
    /// constant, linear or cosine: the learning rate after the warm-up, decaying to --lr-min at
    /// the last step [default: forum cosine, classic constant].
    #[arg(long, value_name = "KIND")]
    lr_schedule: Option<String>,
    /// Steps of linear warm-up from lr/N to lr [default: 0].
    #[arg(long, value_name = "N")]
    warmup_steps: Option<u64>,
    /// Where linear and cosine schedules end, in [0, lr] [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    lr_min: Option<f64>,
    /// Steps over which the sparsity weight (and kl-freq's controller) ramps linearly from
    /// beta/N to beta [default: forum the first 15 % of the run (768 steps by default), classic 0].
    #[arg(long, value_name = "N")]
    beta_warmup_steps: Option<u64>,
    /// kl-freq: steps over which the target its push and controller aim at moves geometrically
    /// from 0.5 down to rho, so units find features while dense [default: forum the first half
    /// of the run (2560 steps by default), else 0].
    #[arg(long, value_name = "N")]
    rho_anneal_steps: Option<u64>,
    /// Clip the gradients to this global norm before each update, > 0 (PyTorch's
    /// clip_grad_norm_) [default: no clipping].
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    clip_grad_norm: Option<f64>,
    /// Minibatch size [default: 32].
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Passes over the training set [default: forum 20, classic 3].
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
    /// Write model.safetensors, train_state.safetensors, metrics.jsonl and config.json here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace the run in a non-empty --out directory (its model, train state, metrics, config
    /// and report are deleted first); without it a non-empty --out is refused.
    #[arg(long)]
    #[serde(default, skip_serializing)]
    overwrite: bool,
    /// Write the run's report (pictures and index.html, as `sae report`) into DIR/report at the end; needs --out.
    #[arg(long)]
    #[serde(default)]
    report: bool,
    /// The input is an HxW image (e.g. 8x8): recorded in config.json, and the report draws the
    /// weights as images.
    #[arg(long, value_name = "HxW")]
    image_shape: Option<String>,
    /// Log a `step` metrics line every N steps [default: only per epoch].
    #[arg(long, value_name = "N")]
    log_every: Option<usize>,
    /// Step implementation: auto, fused (4-6 dispatches a step; every width <= 128) or layered [default: auto].
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// Training steps recorded into one queue submission [default: up to 64, ending at log steps].
    #[arg(long, value_name = "N")]
    steps_per_submit: Option<usize>,
    /// Also write model.safetensors (and train_state.safetensors) every N epochs during the run.
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Continue the run whose --out directory is DIR, with its settings, to --epochs in total
    /// (bit for bit as if it had not stopped). Only --epochs, --stop-after-epoch, --backend and
    /// --adapter may be given with it.
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Stop after this epoch (counted from the run's start), leaving a checkpoint that --resume
    /// continues from; schedules still span --epochs.
    #[arg(long, value_name = "K")]
    stop_after_epoch: Option<usize>,
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

/// Every setting of a run, resolved and validated; written to `config.json`.
#[derive(Serialize)]
struct Resolved {
    preset: String,
    data: String,
    samples: usize,
    model: ModelSpec,
    loss: LossConfig,
    /// Unit-norm decoder columns, and the tied init.
    decoder_norm: bool,
    auxk: Option<crate::model::AuxK>,
    tied_init: bool,
    /// The synthetic dictionary trained on (`--synthetic`).
    synthetic: Option<synthetic::DictionarySpec>,
    lr: f64,
    optimizer: Method,
    lr_schedule: LrSchedule,
    beta_warmup_steps: u64,
    rho_anneal_steps: u64,
    dead_after: u64,
    clip_grad_norm: Option<f64>,
    batch_size: usize,
    epochs: usize,
    seed: u64,
    shuffle: bool,
    /// The mixing buffer's rows (`--shuffle-buffer`; streamed data's default when unset).
    shuffle_buffer: Option<usize>,
    max_steps: Option<u64>,
    init: Option<PathBuf>,
    log_every: Option<usize>,
    path: String,
    steps_per_submit: Option<usize>,
    checkpoint_every: Option<usize>,
    validation_split: f64,
    /// The input as an image, `[H, W]` (`--image-shape`).
    image_shape: Option<[usize; 2]>,
    adapter: String,
}

/// How the parameters move: minibatch steps of an update rule on the device, or full-batch
/// L-BFGS iterations (`config.json` tells them apart by `optimizer.kind`).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(untagged)]
enum Method {
    Steps(Optimizer),
    Lbfgs(LbfgsSettings),
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Steps(o) => o.name(),
            Method::Lbfgs(_) => "lbfgs",
        }
    }
}

/// Rows L-BFGS evaluates per chunk unless --batch-size says: the whole set up to this, which
/// keeps the activations of the widest shipped presets well inside one storage binding.
const LBFGS_CHUNK: usize = 16384;

/// `DIR/.sae-train.lock`, held while a run writes DIR: a second run on the same directory is
/// refused rather than mixing its files with the first's. Removed when dropped; a lock left by a
/// killed process (its pid no longer running, on Linux) is taken over.
struct RunLock(PathBuf);

impl RunLock {
    fn take(dir: &Path) -> Result<RunLock> {
        let path = dir.join(".sae-train.lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(RunLock(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    let alive = !cfg!(target_os = "linux")
                        || pid.trim().parse::<u32>().is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                    if alive {
                        return Err(bad(format!(
                            "--out {}: another sae train (pid {}) is writing there; wait for it, or delete {} if no run is active",
                            dir.display(),
                            pid.trim(),
                            path.display()
                        )));
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(bad(format!("--out {}: cannot create {} ({e})", dir.display(), path.display()))),
            }
        }
        Err(bad(format!("--out {}: cannot take the lock {}", dir.display(), path.display())))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The settings JSON of a run without `stop-after-epoch`: a resumed run stops only if told again.
fn settings_without_stop(settings: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(settings).expect("settings are JSON");
    if let Some(o) = v.as_object_mut() {
        o.remove("stop-after-epoch");
    }
    v.to_string()
}

/// What differs between a checkpoint's model and `other` (named `whose`), not two lists that may
/// look alike.
pub fn spec_difference(ckpt: &ModelSpec, other: &ModelSpec, whose: &str) -> String {
    if ckpt.sizes != other.sizes {
        format!("its widths are {:?}, {whose} {:?}", ckpt.sizes, other.sizes)
    } else if ckpt.activations != other.activations {
        let names = |sp: &ModelSpec| sp.activations.iter().map(|a| a.name()).collect::<Vec<_>>().join(",");
        format!("its activations are {}, {whose} {}", names(ckpt), names(other))
    } else {
        format!("its code layer is {}, {whose} {}", ckpt.code_layer, other.code_layer)
    }
}

/// The model flags of `train` and `encode`: what a checkpoint without a spec (a PyTorch state
/// dict) is read as, and the model `train` builds.
#[derive(Clone, Debug, Default)]
pub struct ModelFlags {
    pub layers: Option<String>,
    pub decoder_layers: Option<String>,
    pub hidden_activation: Option<String>,
    pub code_activation: Option<String>,
    pub output_activation: Option<String>,
    pub k: Option<usize>,
    pub pre_bias: Option<bool>,
    pub jumprelu: (Option<f32>, Option<f32>),
}

impl ModelFlags {
    fn of(s: &TrainSettings) -> ModelFlags {
        ModelFlags {
            layers: s.layers.clone(),
            decoder_layers: s.decoder_layers.clone(),
            hidden_activation: s.hidden_activation.clone(),
            code_activation: s.code_activation.clone(),
            output_activation: s.output_activation.clone(),
            k: s.k,
            pre_bias: s.pre_bias,
            jumprelu: (s.jumprelu_bandwidth, s.jumprelu_threshold),
        }
    }

    /// Whether any model flag is given.
    pub fn given(&self) -> bool {
        self.layers.is_some()
            || self.decoder_layers.is_some()
            || self.hidden_activation.is_some()
            || self.code_activation.is_some()
            || self.output_activation.is_some()
            || self.k.is_some()
            || self.pre_bias.is_some()
    }

    /// The model the flags describe (defaults for those not given), or None when none is given.
    pub fn spec(&self) -> Result<Option<ModelSpec>> {
        if self.given() {
            self.spec_or_default().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The model the flags describe, the default model's (the forum preset's) for those not given.
    pub fn spec_or_default(&self) -> Result<ModelSpec> {
        use defaults::forum as f;
        let encoder = parse_widths("--layers", self.layers.as_deref().unwrap_or(f::LAYERS)).map_err(bad)?;
        if encoder.len() < 2 {
            return Err(bad("--layers: give at least an input and a code width, e.g. 20,4"));
        }
        let decoder = match &self.decoder_layers {
            Some(d) => parse_widths("--decoder-layers", d).map_err(bad)?,
            None => encoder.iter().rev().skip(1).copied().collect(),
        };
        let act = |flag: &str, v: &Option<String>| parse_activation(flag, v.as_deref().unwrap_or(f::ACTIVATION));
        let hidden = act("--hidden-activation", &self.hidden_activation)?;
        let kind = self.code_activation.as_deref();
        // The selections keep ReLU'd pre-activations: their code layer's activation is relu.
        let selection = matches!(kind, Some("topk" | "batch-topk" | "jumprelu"));
        let code = if selection { Activation::Relu } else { act("--code-activation", &self.code_activation)? };
        let output = act("--output-activation", &self.output_activation)?;
        let jump = kind == Some("jumprelu");
        if !jump && (self.jumprelu.0.is_some() || self.jumprelu.1.is_some()) {
            return Err(bad("--jumprelu-bandwidth/--jumprelu-threshold: settings of --code-activation jumprelu; drop them or add that"));
        }
        let select = match (kind, self.k) {
            (Some("jumprelu"), None) => CodeSelect::JumpRelu {
                bandwidth: self.jumprelu.0.unwrap_or(defaults::JUMPRELU_BANDWIDTH),
                threshold_init: self.jumprelu.1.unwrap_or(defaults::JUMPRELU_THRESHOLD),
            },
            (Some("topk"), Some(k)) => CodeSelect::TopK { k },
            (Some("batch-topk"), Some(k)) => CodeSelect::BatchTopK { k, threshold: -1.0 },
            (Some(kind @ ("topk" | "batch-topk")), None) => {
                return Err(bad(format!("--code-activation {kind}: give --k K, the latents kept per row")))
            }
            (_, Some(_)) => {
                return Err(bad("--k: a setting of --code-activation topk or batch-topk; drop it or add that"))
            }
            (_, None) => CodeSelect::Dense,
        };
        let spec = ModelSpec::new(&encoder, &decoder, hidden, code, output)
            .map_err(|e| bad(format!("--layers/--decoder-layers: {e}")))?;
        spec.with_code(select, self.pre_bias.unwrap_or(false)).map_err(|e| {
            let flag = if select.k().is_some() { "--k/--pre-bias" } else { "--pre-bias" };
            bad(format!("{flag}: {e}"))
        })
    }
}

/// An activation name given to `flag`.
fn parse_activation(flag: &str, s: &str) -> Result<Activation> {
    Activation::parse(s).map_err(|e| bad(format!("{flag}: {e}")))
}

fn read_config(path: &Path) -> Result<TrainSettings> {
    let bytes = std::fs::read(path).map_err(|e| bad(format!("--config {}: cannot read it: {e}", path.display())))?;
    parse_config(&bytes, path)
}

impl TrainSettings {
    /// For the fuzz test: at most `samples` built-in samples, and every path the settings name
    /// moved under `root` (so validation reads no real file and the run would write nowhere).
    pub fn capped_for_fuzzing(mut self, samples: usize, root: &Path) -> TrainSettings {
        self.samples = self.samples.map(|n| n.min(samples));
        let under = |p: Option<PathBuf>| p.map(|p| root.join(p.file_name().unwrap_or_default()));
        self.data = under(self.data.take());
        self.init = under(self.init.take());
        self.out = under(self.out.take());
        self
    }
}

/// A config file's bytes as settings (TOML or JSON by `path`'s extension); anything else is bad
/// input naming the file, on one line. The fuzz test and the cargo-fuzz target call this.
pub fn parse_config(bytes: &[u8], path: &Path) -> Result<TrainSettings> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| bad(format!("--config {}: not UTF-8 text: save it as plain UTF-8", path.display())))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let parsed: Result<TrainSettings, String> = match ext.as_str() {
        "toml" => toml::from_str(text).map_err(|e| e.to_string()),
        "json" => serde_json::from_str(text).map_err(|e| e.to_string()),
        _ => return Err(bad(format!("--config {}: use a .toml or .json file", path.display()))),
    };
    parsed.map_err(|e| bad(format!("--config {}: {}", path.display(), one_line(&e))))
}

/// A parser's message on one line, control characters escaped and at most 300 characters.
fn one_line(text: &str) -> String {
    let flat: String = text
        .trim()
        .replace(['\n', '\r'], " ")
        .chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect();
    match flat.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &flat[..at]),
        None => flat,
    }
}

/// Every check `sae train` makes of `settings` before it opens an adapter or writes a file (a
/// config's `config` key is not followed). For the fuzz test: the settings a config file can
/// express, validated without side effects other than reading the files they name.
pub fn validate(settings: TrainSettings) -> Result<()> {
    plan(TrainSettings { config: None, ..settings }, false).map(|_| ())
}

/// Flags override the config file, which overrides the defaults.
fn merge(cli: TrainSettings, file: TrainSettings) -> TrainSettings {
    macro_rules! pick {
        ($($f:ident),*) => { TrainSettings { $($f: cli.$f.or(file.$f),)* no_shuffle: cli.no_shuffle || file.no_shuffle, stream: cli.stream || file.stream, report: cli.report || file.report, overwrite: cli.overwrite, config: cli.config, resume: cli.resume } };
    }
    pick!(
        data,
        shuffle_buffer,
        max_steps,
        eval_rows,
        samples,
        synthetic,
        k,
        jumprelu_bandwidth,
        jumprelu_threshold,
        l0_coefficient,
        pre_bias,
        decoder_norm,
        auxk,
        auxk_coefficient,
        tied_init,
        preset,
        layers,
        decoder_layers,
        hidden_activation,
        code_activation,
        output_activation,
        sparsity,
        l1_coefficient,
        rho,
        beta,
        temperature,
        frequency_control,
        dead_after,
        weight_decay,
        lr,
        optimizer,
        lbfgs_history,
        momentum,
        adam_betas,
        adam_eps,
        lr_schedule,
        warmup_steps,
        lr_min,
        beta_warmup_steps,
        rho_anneal_steps,
        clip_grad_norm,
        batch_size,
        epochs,
        seed,
        init,
        out,
        log_every,
        image_shape,
        path,
        steps_per_submit,
        checkpoint_every,
        stop_after_epoch,
        validation_split,
        backend,
        adapter
    )
}

/// `--preset`'s settings: what a run uses where neither a flag nor the config file says.
fn preset(name: &str) -> Result<TrainSettings> {
    let text = |v: &str| Some(v.to_string());
    match name {
        "forum" => {
            use defaults::forum as f;
            Ok(TrainSettings {
                layers: text(f::LAYERS),
                hidden_activation: text(f::ACTIVATION),
                code_activation: text(f::ACTIVATION),
                output_activation: text(f::ACTIVATION),
                sparsity: text(f::SPARSITY),
                rho: Some(f::RHO),
                beta: Some(f::BETA),
                lr: Some(f::LR),
                lr_schedule: text(f::LR_SCHEDULE),
                epochs: Some(f::EPOCHS),
                batch_size: Some(f::BATCH_SIZE),
                ..Default::default()
            })
        }
        "classic" => {
            use defaults::classic as c;
            Ok(TrainSettings {
                layers: text(c::LAYERS),
                hidden_activation: text(c::HIDDEN_ACTIVATION),
                code_activation: text(c::CODE_ACTIVATION),
                output_activation: text(c::OUTPUT_ACTIVATION),
                sparsity: text(c::SPARSITY),
                rho: Some(c::RHO),
                beta: Some(c::BETA),
                lr: Some(c::LR),
                epochs: Some(c::EPOCHS),
                batch_size: Some(c::BATCH_SIZE),
                ..Default::default()
            })
        }
        "dictionary" => {
            use defaults::dictionary as d;
            Ok(TrainSettings {
                synthetic: text(d::SYNTHETIC),
                samples: Some(d::SAMPLES),
                layers: text(d::LAYERS),
                hidden_activation: text("relu"),
                code_activation: text("topk"),
                k: Some(d::K),
                output_activation: text("identity"),
                pre_bias: Some(true),
                decoder_norm: text("unit"),
                auxk: Some(d::AUXK),
                tied_init: Some(true),
                sparsity: text("none"),
                lr: Some(d::LR),
                epochs: Some(d::EPOCHS),
                batch_size: Some(d::BATCH_SIZE),
                ..Default::default()
            })
        }
        other => Err(bad(format!(
            "--preset {other}: use forum (the forum post's all-ReLU model, the default), classic (sigmoid code, mean-activation KL) or dictionary (a TopK dictionary)"
        ))),
    }
}

/// The user's settings (flags over the config file) over their preset's. With
/// `--optimizer lbfgs` the preset's minibatch settings (learning rate, schedules, warm-up,
/// batch size) are left out: a full-batch method refuses them, and has defaults of its own.
fn with_preset(user: TrainSettings) -> Result<TrainSettings> {
    let name = user.preset.clone().unwrap_or_else(|| defaults::PRESET.to_string());
    let mut preset = preset(&name)?;
    // The user's data replaces the preset's synthetic set; a dense code drops the preset's K.
    if user.data.is_some() || user.synthetic.is_some() {
        preset.synthetic = None;
        preset.samples = None;
    }
    if user.code_activation.as_deref().is_some_and(|c| c != "topk" && c != "batch-topk") {
        // (JumpReLU has no K, and AuxK is a TopK dictionary's.)
        preset.k = None;
        preset.auxk = None;
    }
    if user.sparsity.as_deref().is_some_and(|k| k != "none") {
        preset.auxk = None;
    }
    if user.optimizer.as_deref() == Some("lbfgs") {
        preset.auxk = None;
        preset.decoder_norm = None;
        preset.lr = None;
        preset.lr_schedule = None;
        preset.batch_size = None;
        preset.epochs = None;
    }
    let mut merged = merge(user, preset);
    merged.preset = Some(name);
    Ok(merged)
}

struct Plan {
    resolved: Resolved,
    /// The rows (for streamed data: its shape only, no values).
    dataset: Dataset,
    /// Streamed data (`--data` a directory, a large .npy, or `--stream`).
    store: Option<crate::stream::RowStore>,
    limits: crate::train::StreamLimits,
    /// A synthetic dictionary's true directions, `[F, D]`.
    truth: Option<Vec<f32>>,
    /// The --init checkpoint's parameters (a fresh init otherwise, made in `run`).
    init: Option<Params>,
    out: Option<PathBuf>,
    request: AdapterRequest,
    /// The merged settings (flags over the config file), as JSON: what a train state keeps so
    /// that --resume resolves the same run.
    settings: String,
    stop_after_epoch: Option<usize>,
    report: bool,
    overwrite: bool,
}

/// The settings --resume DIR continues with: the run's own (from its train state), with
/// --epochs, --stop-after-epoch, --backend and --adapter from the command line, and the
/// checkpoint in DIR as the starting point. Any other flag is refused.
fn resume_settings(cli: TrainSettings, dir: &Path) -> Result<(TrainSettings, TrainState)> {
    let given = serde_json::to_value(&cli).expect("settings serialise");
    let allowed = ["epochs", "stop-after-epoch", "backend", "adapter"];
    let extra: Vec<String> = given
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| !v.is_null() && *v != &serde_json::Value::Bool(false) && !allowed.contains(&k.as_str()))
        .map(|(k, _)| format!("--{k}"))
        .collect();
    if !extra.is_empty() || cli.config.is_some() {
        let mut flags = extra;
        if cli.config.is_some() {
            flags.push("--config".into());
        }
        return Err(bad(format!(
            "--resume {} continues the run with its own settings: drop {} (only --epochs, --stop-after-epoch, --backend and --adapter may change)",
            dir.display(),
            flags.join(", ")
        )));
    }
    let state_path = dir.join("train_state.safetensors");
    if !state_path.exists() {
        return Err(bad(format!(
            "--resume {}: no checkpoint there (train_state.safetensors): give the --out directory of a sae train run",
            dir.display()
        )));
    }
    let state = checkpoint::load_train_state(&state_path)?;
    let mut s: TrainSettings = serde_json::from_str(&state.settings)
        .map_err(|e| bad(format!("{}: its settings do not parse ({e})", state_path.display())))?;
    s.epochs = cli.epochs.or(s.epochs);
    let epochs = s.epochs.unwrap_or(defaults::EPOCHS);
    if epochs <= state.epochs_done {
        return Err(bad(format!(
            "--resume {}: the run has done {} epochs already; give --epochs above {}",
            dir.display(),
            state.epochs_done,
            state.epochs_done
        )));
    }
    s.stop_after_epoch = cli.stop_after_epoch;
    s.backend = cli.backend.or(s.backend);
    s.adapter = cli.adapter.or(s.adapter);
    s.init = Some(dir.join("model.safetensors"));
    s.out = Some(dir.to_path_buf());
    Ok((s, state))
}

/// Resolves and validates every setting and loads the data and init checkpoint: all bad input
/// is reported here, before anything is written.
fn plan(cli: TrainSettings, resuming: bool) -> Result<Plan> {
    let file = match &cli.config {
        Some(p) => read_config(p)?,
        None => TrainSettings::default(),
    };
    let user = merge(cli, file);
    // Whether the user named the model (else --init's checkpoint defines it).
    let model_given = ModelFlags::of(&user).given();
    let anneal_given = user.rho_anneal_steps.is_some();
    let tied_given = user.tied_init == Some(true);
    let s = with_preset(user)?;
    let settings = serde_json::to_string(&s).expect("settings serialise");
    if s.stop_after_epoch == Some(0) {
        return Err(bad("--stop-after-epoch 0: must be at least 1"));
    }
    if s.stop_after_epoch.is_some() && s.out.is_none() {
        return Err(bad("--stop-after-epoch needs --out DIR: the checkpoint there is what --resume continues from"));
    }

    let seed = s.seed.unwrap_or(0);
    let synthetic = match (&s.synthetic, &s.data) {
        (Some(_), Some(p)) => {
            return Err(bad(format!("--synthetic and --data {}: train on one or the other; drop one", p.display())))
        }
        (Some(text), None) => Some(synthetic::DictionarySpec::parse(text).map_err(bad)?),
        (None, _) => None,
    };
    let mut truth = None;
    let streamed =
        s.data.as_deref().is_some_and(|p| s.stream || crate::stream::streams(p, defaults::STREAM_ABOVE_BYTES));
    if s.stream && s.data.is_none() {
        return Err(bad("--stream: streams a --data .npy file or directory; give --data"));
    }
    let mut store = None;
    let (dataset, data_name) = match (&s.data, synthetic) {
        (Some(p), _) if streamed => {
            let st = crate::stream::RowStore::open(p)?;
            let shape = Dataset { rows: st.rows, cols: st.cols, values: Vec::new() };
            let name = format!("{} (streamed, {} bytes)", p.display(), st.data_bytes());
            store = Some(st);
            (shape, name)
        }
        (Some(p), _) => (data::load(p)?, p.display().to_string()),
        (None, Some(dict)) => {
            let n = s.samples.unwrap_or(synthetic::DEFAULT_SAMPLES);
            let bytes = (n as u64).saturating_mul(2 * 4 * dict.width as u64);
            if n == 0 || n > 1 << 28 || data::available_memory().is_some_and(|free| bytes > free) {
                return Err(bad(format!(
                    "--samples {n}: a synthetic dictionary of {n} rows of {} values does not fit in memory (or is empty); use fewer samples",
                    dict.width
                )));
            }
            let (set, directions) = dict.generate(n, seed);
            truth = Some(directions);
            let (d, f, k) = (dict.width, dict.features, dict.active);
            (set, format!("synthetic dictionary (D={d}, F={f}, S={k}, n={n}, seed={seed})"))
        }
        (None, None) => {
            let n = s.samples.unwrap_or(synthetic::DEFAULT_SAMPLES);
            if n == 0 {
                return Err(bad("--samples 0: the built-in dataset needs at least one sample"));
            }
            // Checked before the host allocates it: 2^28 samples of 20 floats is 20 GiB.
            const MAX_SAMPLES: usize = 1 << 28;
            if n > MAX_SAMPLES {
                return Err(bad(format!(
                    "--samples {n}: the built-in dataset takes {} bytes a sample; at most {MAX_SAMPLES} samples",
                    synthetic::WIDTH * 4
                )));
            }
            // And against the memory there is: the set, and a copy for a validation split.
            let bytes = (n as u64).saturating_mul(2 * 4 * synthetic::WIDTH as u64);
            if let Some(free) = data::available_memory().filter(|&free| bytes > free) {
                return Err(bad(format!(
                    "--samples {n}: the built-in dataset would take {bytes} bytes, more than the {free} bytes of memory available; use fewer samples"
                )));
            }
            (synthetic::context_vectors(n, seed), format!("built-in context vectors (n={n}, seed={seed})"))
        }
    };

    let flags = ModelFlags::of(&s);
    let flag_spec = if model_given { Some(flags.spec_or_default()?) } else { None };
    // A checkpoint without the spec in its metadata (a PyTorch state dict) is read as the
    // model the flags describe.
    let init_ckpt = match &s.init {
        Some(p) => Some(checkpoint::load_as(p, flag_spec.as_ref())?),
        None => None,
    };
    let spec = match (&init_ckpt, flag_spec) {
        (_, Some(spec)) => spec,
        // With --init and no model flags, the checkpoint defines the model.
        (Some((spec, _)), None) => spec.clone(),
        (None, None) => flags.spec_or_default()?,
    };
    if let (Some((ckpt_spec, _)), Some(init_path)) = (&init_ckpt, &s.init) {
        if !ckpt_spec.same_model(&spec) {
            let what = spec_difference(ckpt_spec, &spec, "the run's");
            return Err(bad(format!(
                "--init {}: its model differs from the run's ({what}); drop the model flags to train the checkpoint's model",
                init_path.display()
            )));
        }
    }
    // The checkpoint's own spec: BatchTopK's threshold is the one it trained.
    let spec = match &init_ckpt {
        Some((ckpt_spec, _)) => ckpt_spec.clone(),
        None => spec,
    };
    if dataset.cols != spec.input_width() {
        return Err(bad(format!(
            "{data_name}: {} columns, but the model's input is {} wide; pass --layers starting with {}",
            dataset.cols,
            spec.input_width(),
            dataset.cols
        )));
    }

    // Every loss setting is checked once, by LossConfig::validate (the learning rate by
    // check_lr), with messages that name the flag.
    let rho = s.rho.unwrap_or(defaults::RHO);
    let beta = s.beta.unwrap_or(defaults::BETA);
    let weight_decay = s.weight_decay.unwrap_or(0.0);
    let kind = s.sparsity.as_deref().unwrap_or(defaults::SPARSITY);
    if s.l0_coefficient.is_some() && kind != "l0" {
        return Err(bad(format!("--l0-coefficient: a setting of --sparsity l0 (the run's is {kind}); drop it")));
    }
    if s.l1_coefficient.is_some() && kind != "l1" {
        return Err(bad(format!("--l1-coefficient: a setting of --sparsity l1 (the run's is {kind}); drop it")));
    }
    if s.frequency_control.is_some() && kind != "kl-freq" {
        return Err(bad(format!(
            "--frequency-control: a setting of --sparsity kl-freq (the run's is {kind}); drop it"
        )));
    }
    let sparsity = match kind {
        "none" => Sparsity::None,
        "kl" => Sparsity::Kl { rho, beta },
        "kl-freq" => Sparsity::KlFreq {
            rho,
            beta,
            temperature: s.temperature.unwrap_or(defaults::FREQ_TEMPERATURE),
            control: s.frequency_control.unwrap_or(defaults::FREQUENCY_CONTROL),
        },
        "kl-soft-freq" => {
            Sparsity::KlSoftFreq { rho, beta, temperature: s.temperature.unwrap_or(defaults::TEMPERATURE) }
        }
        "l1" => Sparsity::L1 { coefficient: s.l1_coefficient.unwrap_or(defaults::L1_COEFFICIENT) },
        "l0" => Sparsity::L0 { coefficient: s.l0_coefficient.unwrap_or(defaults::L0_COEFFICIENT) },
        other => return Err(bad(format!("--sparsity {other}: use none, kl, kl-freq, kl-soft-freq, l1 or l0"))),
    };
    // kl-freq's target anneal; one the user gives another penalty is refused.
    if anneal_given && !matches!(sparsity, Sparsity::KlFreq { .. }) {
        return Err(bad(format!("--rho-anneal-steps: a setting of --sparsity kl-freq (the run's is {kind}); drop it")));
    }
    let dead_after = s.dead_after.unwrap_or(defaults::DEAD_AFTER);
    if dead_after == 0 {
        return Err(bad("--dead-after 0: must be at least 1 sample"));
    }
    let loss = LossConfig { weight_decay, sparsity };
    loss.validate(&spec).map_err(bad)?;
    let decoder_norm = match s.decoder_norm.as_deref() {
        None | Some("none") => false,
        Some("unit") => true,
        Some(other) => return Err(bad(format!("--decoder-norm {other}: use unit or none"))),
    };
    let tied_init = s.tied_init.unwrap_or(false);
    if s.auxk_coefficient.is_some() && s.auxk.unwrap_or(0) == 0 {
        return Err(bad("--auxk-coefficient: a setting of --auxk K; drop it or add --auxk"));
    }
    let auxk = match s.auxk.filter(|&k| k > 0) {
        Some(k) => {
            let a = crate::model::AuxK {
                k,
                coefficient: s.auxk_coefficient.unwrap_or(defaults::AUXK_COEFFICIENT),
                dead_after,
            };
            a.validate(&spec).map_err(bad)?;
            if sparsity != Sparsity::None {
                return Err(bad(format!(
                    "--auxk: a TopK dictionary's term, trained without --sparsity {kind}: drop one"
                )));
            }
            Some(a)
        }
        None => None,
    };
    if s.init.is_some() && tied_given && !resuming {
        return Err(bad("--tied-init: the run starts from --init's weights; drop one"));
    }
    let optimizer_name = s.optimizer.as_deref().unwrap_or(defaults::OPTIMIZER);
    let is_lbfgs = optimizer_name == "lbfgs";
    let lr = s.lr.unwrap_or(if is_lbfgs { 1.0 } else { defaults::LR });
    check_lr(lr).map_err(bad)?;
    let betas = match &s.adam_betas {
        None => optim::defaults::ADAM_BETAS,
        Some(text) => match text.split(',').map(|b| b.trim().parse::<f64>()).collect::<Vec<_>>().as_slice() {
            [Ok(b1), Ok(b2)] => (*b1, *b2),
            _ => return Err(bad(format!("--adam-betas {text}: give two numbers, e.g. 0.9,0.999"))),
        },
    };
    let optimizer = if is_lbfgs {
        if let Sparsity::L1 { .. } | Sparsity::L0 { .. } = sparsity {
            return Err(bad(
                "--sparsity l1/l0: --optimizer lbfgs's objective is evaluated on the device, which measures KL terms only (and l0 has no gradient of J); use a minibatch optimizer",
            ));
        }
        if let Sparsity::KlFreq { .. } = sparsity {
            return Err(bad(
                "--sparsity kl-freq: its straight-through term is not the gradient of J (the hard frequency is a step function), so --optimizer lbfgs's line search cannot use it; use a minibatch optimizer, or kl-soft-freq",
            ));
        }
        if s.steps_per_submit.is_some() {
            return Err(bad(
                "--steps-per-submit: meaningless with --optimizer lbfgs, which evaluates the whole set each iteration (one submit a chunk); drop it",
            ));
        }
        // Settings of minibatch steps, which a full-batch line-search method does not take.
        let step_only = [
            ("--lr-schedule", s.lr_schedule.is_some()),
            ("--warmup-steps", s.warmup_steps.is_some()),
            ("--lr-min", s.lr_min.is_some()),
            ("--beta-warmup-steps", s.beta_warmup_steps.is_some()),
            ("--clip-grad-norm", s.clip_grad_norm.is_some()),
            ("--auxk", s.auxk.unwrap_or(0) > 0),
            ("--decoder-norm", decoder_norm),
            ("--momentum", s.momentum.is_some()),
            ("--adam-betas", s.adam_betas.is_some()),
            ("--adam-eps", s.adam_eps.is_some()),
        ];
        if let Some((flag, _)) = step_only.iter().find(|(_, given)| *given) {
            return Err(bad(format!(
                "{flag}: a setting of minibatch optimizers; --optimizer lbfgs takes full-batch steps with a line search (an epoch line per iteration): drop it"
            )));
        }
        let history = s.lbfgs_history.unwrap_or(lbfgs::defaults::HISTORY);
        // The history's pairs live on the host in f64: 2 M P values, checked before the run.
        let bytes = (history as u64).saturating_mul(16).saturating_mul(spec.parameter_count() as u64);
        if let Some(free) = data::available_memory().filter(|&free| bytes > free) {
            return Err(bad(format!(
                "--lbfgs-history {history}: {history} curvature pairs of {} parameters take {bytes} bytes, more than the {free} bytes of memory available; keep fewer pairs",
                spec.parameter_count()
            )));
        }
        Method::Lbfgs(LbfgsSettings::new(history, lr)?)
    } else {
        if s.lbfgs_history.is_some() {
            return Err(bad("--lbfgs-history: a setting of --optimizer lbfgs; drop it or add --optimizer lbfgs"));
        }
        Method::Steps(
            Optimizer::parse(
                optimizer_name,
                s.momentum.unwrap_or(optim::defaults::MOMENTUM),
                betas,
                s.adam_eps.unwrap_or(optim::defaults::ADAM_EPS),
            )
            .map_err(bad)?,
        )
    };
    if store.is_some() {
        let refused =
            [("--validation-split", s.validation_split.is_some_and(|v| v > 0.0)), ("--optimizer lbfgs", is_lbfgs)];
        if let Some((flag, _)) = refused.iter().find(|(_, given)| *given) {
            return Err(bad(format!(
                "{flag}: not with streamed data (hold a shard out and evaluate it with sae encode; L-BFGS needs the whole set each iteration)"
            )));
        }
    } else {
        for (flag, given) in [("--max-steps", s.max_steps.is_some()), ("--eval-rows", s.eval_rows.is_some())] {
            if given {
                return Err(bad(format!(
                    "{flag}: a setting of streamed data (--data DIR, a large .npy, or --stream); drop it"
                )));
            }
        }
    }
    for (flag, v) in [
        ("--shuffle-buffer", s.shuffle_buffer.map(|v| v as u64)),
        ("--max-steps", s.max_steps),
        ("--eval-rows", s.eval_rows.map(|v| v as u64)),
    ] {
        if v == Some(0) {
            return Err(bad(format!("{flag} 0: must be at least 1")));
        }
    }
    let validation_split = s.validation_split.unwrap_or(0.0);
    if !(0.0..1.0).contains(&validation_split) {
        return Err(bad(format!("--validation-split {validation_split}: must be in [0, 1)")));
    }
    let held_out = (dataset.rows as f64 * validation_split).round() as usize;
    let train_rows = dataset.rows - if validation_split > 0.0 { held_out } else { 0 };
    let default_batch = if is_lbfgs { train_rows.clamp(1, LBFGS_CHUNK) } else { defaults::BATCH_SIZE };
    let batch_size = s.batch_size.unwrap_or(default_batch);
    if batch_size == 0 {
        return Err(bad("--batch-size 0: must be at least 1"));
    }
    let epochs = s.epochs.unwrap_or(defaults::EPOCHS);
    if epochs == 0 {
        return Err(bad("--epochs 0: must be at least 1"));
    }
    if s.log_every == Some(0) {
        return Err(bad("--log-every 0: must be at least 1 (omit it to log per epoch)"));
    }
    if let Some(p) = &s.path {
        StepPath::parse(p).map_err(|e| bad(format!("--path: {e}")))?;
    }
    if s.steps_per_submit == Some(0) {
        return Err(bad("--steps-per-submit 0: must be at least 1"));
    }
    if s.checkpoint_every == Some(0) {
        return Err(bad("--checkpoint-every 0: must be at least 1"));
    }
    if s.checkpoint_every.is_some() && s.out.is_none() {
        return Err(bad("--checkpoint-every needs --out DIR: the checkpoints are written there"));
    }
    if s.out.as_ref().is_some_and(|o| o.as_os_str().is_empty()) {
        return Err(bad("--out \"\": give a directory name (an empty one would write into the current directory)"));
    }
    // The schedule spans the run: epochs of the training set after the split.
    let steps_per_epoch = train_rows.div_ceil(batch_size) as u64;
    let lr_schedule = LrSchedule {
        kind: ScheduleKind::parse(s.lr_schedule.as_deref().unwrap_or("constant")).map_err(bad)?,
        warmup_steps: s.warmup_steps.unwrap_or(0),
        total_steps: steps_per_epoch * epochs as u64,
        lr_min: s.lr_min.unwrap_or(0.0),
    };
    lr_schedule.validate(lr).map_err(bad)?;
    // The forum preset's beta warm-up and target anneal (kl-freq only) are shares of the run
    // (defaults::forum); both are minibatch settings, which L-BFGS does not take.
    let forum = s.preset.as_deref() == Some("forum") && !is_lbfgs;
    let share_of_run = |of: fn(u64) -> u64| forum.then(|| of(lr_schedule.total_steps));
    let beta_warmup_steps =
        s.beta_warmup_steps.or_else(|| share_of_run(defaults::forum::beta_warmup_steps)).unwrap_or(0);
    let rho_anneal_steps = match sparsity {
        Sparsity::KlFreq { .. } => {
            s.rho_anneal_steps.or_else(|| share_of_run(defaults::forum::rho_anneal_steps)).unwrap_or(0)
        }
        _ => 0,
    };
    if let Some(c) = s.clip_grad_norm {
        if !(c.is_finite() && c > 0.0) {
            return Err(bad(format!("--clip-grad-norm {c}: must be a finite number > 0")));
        }
    }
    if validation_split > 0.0 && (held_out == 0 || held_out >= dataset.rows) {
        return Err(bad(format!(
            "--validation-split {validation_split}: holds out {held_out} of {} samples, leaving {} set empty; choose a fraction that keeps both non-empty",
            dataset.rows,
            if held_out == 0 { "the validation" } else { "the training" }
        )));
    }
    let image_shape = match &s.image_shape {
        None => None,
        Some(text) => {
            let (h, w) = crate::report::parse_image_shape(text).map_err(bad)?;
            if h * w != spec.input_width() {
                return Err(bad(format!(
                    "--image-shape {text}: {} pixels, but the model's input is {} wide",
                    h * w,
                    spec.input_width()
                )));
            }
            Some([h, w])
        }
    };
    if s.report && s.out.is_none() {
        return Err(bad("--report needs --out DIR: the report is drawn from what the run writes there"));
    }
    let request = adapter_request(s.backend.clone(), s.adapter.clone())?;
    if let Some(out) = s.out.as_ref().filter(|o| o.exists() && !o.is_dir()) {
        return Err(bad(format!("--out {}: a file of that name exists; give a directory", out.display())));
    }
    // A directory that holds anything is another run's (or the user's): mixing two runs' files
    // would pair one's config with the other's model.
    if let (Some(out), false, false) = (&s.out, s.overwrite, resuming) {
        let occupied = std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false);
        if occupied {
            return Err(bad(format!(
                "--out {}: the directory is not empty; give a new one, --overwrite to replace the run there, or --resume {} to continue it",
                out.display(),
                out.display()
            )));
        }
    }
    // A fresh init is made once the adapter's limits are known (`run`): its size comes from
    // the flags, and a host allocation must not come before that check.
    let init = init_ckpt.map(|(_, params)| params);
    Ok(Plan {
        resolved: Resolved {
            preset: s.preset.clone().unwrap_or_default(),
            data: data_name,
            samples: dataset.rows,
            model: spec,
            loss,
            decoder_norm,
            auxk,
            tied_init,
            synthetic,
            lr,
            optimizer,
            lr_schedule,
            beta_warmup_steps,
            rho_anneal_steps,
            dead_after,
            clip_grad_norm: s.clip_grad_norm,
            batch_size,
            epochs,
            seed,
            shuffle: !s.no_shuffle,
            shuffle_buffer: s.shuffle_buffer,
            max_steps: s.max_steps,
            init: s.init.clone(),
            log_every: s.log_every,
            path: s.path.clone().unwrap_or_else(|| "auto".into()),
            steps_per_submit: s.steps_per_submit,
            checkpoint_every: s.checkpoint_every,
            validation_split,
            image_shape,
            adapter: String::new(),
        },
        dataset,
        store,
        limits: crate::train::StreamLimits {
            max_steps: s.max_steps,
            eval_rows: Some(s.eval_rows.unwrap_or(defaults::EVAL_ROWS)),
        },
        truth,
        init,
        out: s.out.clone(),
        request,
        settings,
        stop_after_epoch: s.stop_after_epoch,
        report: s.report,
        overwrite: s.overwrite,
    })
}

/// The learning rate of step `step` and the sparsity weight of step `beta_step` (on step lines
/// the same step; on epoch lines the last step taken, and the next one, whose beta the
/// evaluation's J uses).
fn rates(r: &Resolved, step: u64, beta_step: u64) -> (f64, f64, f64) {
    let share = optim::beta_scale(r.beta_warmup_steps, beta_step.max(1));
    let target = optim::beta_scale(r.rho_anneal_steps, beta_step.max(1));
    let (rho, beta) = r.loss.sparsity.scaled(share).annealed(target).rho_beta();
    (r.lr_schedule.lr_at(r.lr, step.max(1)), beta, rho)
}

/// Code units silent for at least `--dead-after` training samples.
fn dead(r: &Resolved, since_fired: &[u32]) -> usize {
    since_fired.iter().filter(|&&s| s as u64 >= r.dead_after).count()
}

/// Mean active code units per row: the sum of the units' firing frequencies.
fn l0(freq: &[f64]) -> f64 {
    freq.iter().sum()
}

/// Edges of the latent-density histogram: log10 of a unit's firing frequency, in buckets
/// `[-inf, -6)`, `[-6, -5)`, .., `[-1, 0]` (as SAELens plots it), plus the units that never
/// fired (frequency 0) apart.
pub const DENSITY_BUCKETS: [&str; 8] =
    ["never", "<1e-6", "1e-6..1e-5", "1e-5..1e-4", "1e-4..1e-3", "1e-3..1e-2", "1e-2..1e-1", "1e-1..1"];

/// Counts of code units per density bucket ([`DENSITY_BUCKETS`]).
pub fn density_histogram(freq: &[f64]) -> Vec<usize> {
    let mut counts = vec![0; DENSITY_BUCKETS.len()];
    for &f in freq {
        let bucket = if f <= 0.0 { 0 } else { (f.log10().floor() as i64 + 8).clamp(1, 7) as usize };
        counts[bucket] += 1;
    }
    counts
}

/// A metrics JSON line (docs/design.md section 6). Its FVU is the minibatch's squared error
/// per row over the training set's squared deviation from its mean per row (`variance`).
fn step_json(r: &Resolved, epoch: usize, step: u64, m: &StepMetrics, variance: f64) -> serde_json::Value {
    let (lr, beta, target) = rates(r, step, step);
    let width = r.model.input_width() as f64;
    let fvu = if variance > 0.0 { Some(m.mse * width / variance) } else { None };
    serde_json::json!({
        "kind": "step", "epoch": epoch, "step": step, "lr": lr, "beta": beta, "target": target,
        "loss": m.loss, "reconstruction": m.reconstruction, "mse": m.mse, "fvu": fvu,
        "sparsity": m.sparsity, "weight_decay": m.weight_decay,
        "rho_hat": m.rho_hat, "freq": m.freq, "since_fired": m.since_fired, "dead": dead(r, &m.since_fired),
        "dead_fraction": dead(r, &m.since_fired) as f64 / m.since_fired.len().max(1) as f64, "l0": l0(&m.freq),
    })
}

/// The line of an L-BFGS iteration: an epoch line whose `lr` is the step length the line search
/// accepted, with the evaluations of J so far (docs/design.md section 6).
fn iteration_json(
    r: &Resolved,
    iteration: usize,
    step_length: f64,
    evaluations: u64,
    train: &EvalMetrics,
    val: Option<&EvalMetrics>,
) -> serde_json::Value {
    let mut v = epoch_json(r, iteration, iteration as u64, train, val, None);
    let obj = v.as_object_mut().unwrap();
    obj.insert("lr".into(), step_length.into());
    obj.insert("evaluations".into(), evaluations.into());
    v
}

fn eval_json(m: &EvalMetrics) -> serde_json::Value {
    serde_json::json!({
        "samples": m.samples, "loss": m.loss, "reconstruction": m.reconstruction, "mse": m.mse,
        "sparsity": m.sparsity, "weight_decay": m.weight_decay, "fvu": m.fvu,
        "rho_hat": m.rho_hat, "freq": m.freq, "l0": l0(&m.freq),
    })
}

fn epoch_json(
    r: &Resolved,
    epoch: usize,
    step: u64,
    train: &EvalMetrics,
    val: Option<&EvalMetrics>,
    since_fired: Option<&[u32]>,
) -> serde_json::Value {
    let mut v = eval_json(train);
    let (lr, beta, target) = rates(r, step, step + 1);
    let obj = v.as_object_mut().unwrap();
    obj.insert("target".into(), target.into());
    if let Some(since) = since_fired {
        obj.insert("since_fired".into(), since.into());
        obj.insert("dead".into(), dead(r, since).into());
        obj.insert("dead_fraction".into(), (dead(r, since) as f64 / since.len().max(1) as f64).into());
    }
    obj.insert("density".into(), density_histogram(&train.freq).into());
    obj.insert("kind".into(), "epoch".into());
    obj.insert("epoch".into(), epoch.into());
    obj.insert("step".into(), step.into());
    obj.insert("lr".into(), lr.into());
    obj.insert("beta".into(), beta.into());
    if let Some(val) = val {
        obj.insert("validation".into(), eval_json(val));
    }
    v
}

pub fn run(cli: TrainSettings) -> Result<()> {
    let (cli, resumed) = match cli.resume.clone() {
        Some(dir) => {
            let (settings, state) = resume_settings(cli, &dir)?;
            (settings, Some(state))
        }
        None => (cli, None),
    };
    let resuming = resumed.is_some();
    let Plan {
        mut resolved,
        dataset,
        store,
        limits,
        truth,
        init,
        out,
        request,
        settings,
        stop_after_epoch,
        report,
        overwrite,
    } = plan(cli, resuming)?;
    let gpu = open_gpu(&request)?;
    resolved.adapter = gpu.describe();
    eprintln!("adapter: {}", resolved.adapter);
    eprintln!("data: {} ({} x {})", resolved.data, dataset.rows, dataset.cols);

    let (train_set, val_set) = split_validation(&dataset, resolved.validation_split, resolved.seed);
    let spec = resolved.model.clone();
    crate::layout::check_binding(
        &gpu.limits,
        "the model's parameters",
        spec.parameter_count().saturating_mul(4),
        "use smaller --layers",
    )?;
    // A fresh init; the dictionary recipe's (docs/design.md section 12) where it is asked for:
    // unit decoder columns, tied encoder, the pre-bias at the training rows' mean.
    let init = match init {
        Some(init) => init,
        None => {
            let mean = match (&store, spec.pre_bias) {
                (_, false) => None,
                (Some(st), true) => Some(st.column_means()?),
                (None, true) => Some(crate::train::column_means(&train_set)),
            };
            Params::dictionary_init(&spec, resolved.seed, resolved.decoder_norm, resolved.tied_init, mean.as_deref())
        }
    };
    let mut trainer = Trainer::new(&gpu, &spec, resolved.loss, resolved.lr, resolved.batch_size, &init)?;
    trainer.set_decoder_norm(resolved.decoder_norm)?;
    if resolved.auxk.is_some() {
        trainer.set_auxk(resolved.auxk)?;
    }
    if let Method::Steps(optimizer) = resolved.optimizer {
        trainer.set_optimizer(optimizer)?;
    }
    trainer.set_lr_schedule(resolved.lr_schedule)?;
    trainer.set_beta_warmup(resolved.beta_warmup_steps)?;
    trainer.set_rho_anneal(resolved.rho_anneal_steps)?;
    trainer.set_clip_grad_norm(resolved.clip_grad_norm)?;
    let sched = &resolved.lr_schedule;
    if sched.warmup_steps > sched.total_steps {
        eprintln!(
            "note: --warmup-steps {} is longer than the run ({} steps): the learning rate never reaches --lr {}",
            sched.warmup_steps, sched.total_steps, resolved.lr
        );
    }
    if let Some(path) = StepPath::parse(&resolved.path).map_err(bad)? {
        trainer.set_path(path).map_err(|e| e.context("--path"))?;
    }
    resolved.path = trainer.path().name().to_string();
    // A resumed run: the optimizer's state and step count from its train state.
    let first_epoch = match &resumed {
        Some(state) => {
            if matches!(resolved.optimizer, Method::Lbfgs(_)) != state.lbfgs.is_some() {
                return Err(bad(
                    "--resume: the train state does not match the run's optimizer; was it written by another version?",
                ));
            }
            if state.lbfgs.is_none() {
                trainer.restore(state.steps_done, &state.moments)?;
                if !state.since_fired.is_empty() {
                    trainer.set_since_fired(&state.since_fired)?;
                }
            }
            state.epochs_done + 1
        }
        None => 1,
    };
    let last_epoch = stop_after_epoch.unwrap_or(resolved.epochs).min(resolved.epochs);
    // What a checkpoint writes beside the model, for --resume.
    let save_state = |dir: &Path,
                      trainer: &Trainer,
                      (epochs_done, steps_into_epoch): (usize, usize),
                      lbfgs: Option<&LbfgsState>|
     -> Result<()> {
        let state = TrainState {
            steps_done: lbfgs.map_or(trainer.steps_done(), |l| l.iterations),
            epochs_done,
            steps_into_epoch: steps_into_epoch as u64,
            moments: if lbfgs.is_some() { vec![] } else { trainer.optimizer_state()? },
            settings: settings_without_stop(&settings),
            lbfgs: lbfgs.cloned(),
            since_fired: if lbfgs.is_some() { vec![] } else { trainer.since_fired()? },
        };
        checkpoint::save_train_state(&dir.join("train_state.safetensors"), &state)
    };

    // Outputs: config.json now; metrics.jsonl a log, each line appended and flushed as it is
    // measured (a killed run keeps what it measured); model.safetensors and
    // train_state.safetensors written atomically (every --checkpoint-every epochs and at the end).
    let mut metrics_log = None;
    let mut _lock = None;
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).map_err(|e| {
            bad(format!("--out {}: cannot create it ({e}): give a directory you can write", dir.display()))
        })?;
        _lock = Some(RunLock::take(dir)?);
        if overwrite && !resuming {
            for name in ["model.safetensors", "train_state.safetensors", "metrics.jsonl", "config.json"] {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir_all(dir.join("report"));
        }
        let json = serde_json::to_vec_pretty(&resolved).expect("config serialises");
        let target = dir.join("config.json");
        write_atomic(&target, &json).map_err(|e| {
            bad(format!(
                "--out {}: cannot write {} ({e}): give a directory you can write",
                dir.display(),
                target.display()
            ))
        })?;
        let path = dir.join("metrics.jsonl");
        // A resumed run keeps the lines of the epochs its checkpoint covers (rewritten
        // atomically); a new run starts an empty log.
        // (and, for a run interrupted inside an epoch, that epoch's step lines up to its last step).
        let mut kept = String::new();
        if let Some(state) = &resumed {
            for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let (epoch, step) = (v["epoch"].as_u64().unwrap_or(u64::MAX), v["step"].as_u64().unwrap_or(u64::MAX));
                let in_partial = epoch == first_epoch as u64 && v["kind"] == "step" && step <= state.steps_done;
                if epoch < first_epoch as u64 || in_partial {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        let cannot = |e: std::io::Error| Error::Runtime(format!("{}: cannot write it: {e}", path.display()));
        write_atomic(&path, kept.as_bytes()).map_err(cannot)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(cannot)?;
        metrics_log = Some((path.clone(), file));
    }

    let steps_per_epoch = match resolved.optimizer {
        Method::Lbfgs(_) => 1,
        Method::Steps(_) => train_set.rows.div_ceil(resolved.batch_size) as u64,
    };
    // A streamed run's bar counts rows read, their rate and the time left; another's, steps.
    let streaming = store.is_some();
    let run_steps = limits.max_steps.unwrap_or(u64::MAX).min(steps_per_epoch * resolved.epochs as u64);
    let per_step = if streaming { resolved.batch_size as u64 } else { 1 };
    let at = |step: u64| (step * per_step).min(run_steps * per_step);
    let bar = indicatif::ProgressBar::new(run_steps * per_step);
    bar.set_prefix("1");
    let template = if streaming {
        "{bar:30} epoch {prefix} rows {human_pos}/{human_len} ({per_sec}, {eta} left) {msg}"
    } else {
        "{bar:30} epoch {prefix} step {pos}/{len} {msg} [{elapsed_precise}]"
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("template"));
    let opts = TrainOptions {
        epochs: resolved.epochs,
        batch_size: resolved.batch_size,
        seed: resolved.seed,
        shuffle: resolved.shuffle,
        log_every: resolved.log_every,
        steps_per_submit: resolved.steps_per_submit,
        shuffle_buffer: resolved.shuffle_buffer,
    };
    // The first Ctrl-C stops the run at its next submit boundary, where it writes a checkpoint
    // (`Event::Interrupted`) and exits 130; a second exits at once.
    let _ = ctrlc::set_handler(|| {
        if crate::train::INTERRUPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping at the next submit boundary to write a checkpoint (Ctrl-C again to quit at once)");
    });
    let (baseline, baseline_rows) = match &store {
        Some(st) => {
            let rows = limits.eval_rows.unwrap_or(st.rows).min(st.rows);
            (st.baseline(rows)?, rows)
        }
        None => (crate::trainer::Baseline::of(&train_set.values, train_set.cols), train_set.rows),
    };
    let variance_per_row = baseline.squared_deviation / baseline_rows.max(1) as f64;
    let started = std::time::Instant::now();
    let mut last_val = None;
    let mut last_since: Option<Vec<u32>> = None;
    let on_event = |event: Event<'_>| {
        let line = match &event {
            Event::Rows { read } => {
                bar.set_position(*read);
                return Ok(());
            }
            Event::Step { epoch, step, metrics } => {
                bar.set_position(at(*step));
                bar.set_prefix(epoch.to_string());
                bar.set_message(format!("loss {:.5}", metrics.loss));
                step_json(&resolved, *epoch, *step, metrics, variance_per_row)
            }
            Event::Epoch { epoch, step, train, validation, trainer } => {
                bar.set_position(at(*step));
                // The epoch now running; the message is the one just finished.
                bar.set_prefix((epoch + 1).min(resolved.epochs).to_string());
                let since = trainer.since_fired()?;
                let dead_units = dead(&resolved, &since);
                bar.set_message(format!(
                    "loss {:.5} fvu {:.3} dead {dead_units} (epoch {epoch})",
                    train.loss, train.fvu
                ));
                last_val = validation.map(|v| (*v).clone());
                last_since = Some(since.clone());
                epoch_json(&resolved, *epoch, *step, train, *validation, Some(&since))
            }
            Event::Iteration { iteration, step_length, evaluations, train, validation, .. } => {
                bar.set_position(*iteration as u64);
                bar.set_prefix(iteration.to_string());
                bar.set_message(format!("loss {:.6} fvu {:.3} step {step_length:.3e}", train.loss, train.fvu));
                last_val = validation.map(|v| (*v).clone());
                iteration_json(&resolved, *iteration, *step_length, *evaluations, train, *validation)
            }
            Event::Interrupted { .. } => serde_json::Value::Null,
        };
        // L-BFGS with --log-every K: a line every K iterations and at the run's last.
        let logged = match (&event, resolved.log_every) {
            (Event::Iteration { iteration, .. }, Some(k)) => iteration % k == 0 || *iteration == resolved.epochs,
            (Event::Interrupted { .. }, _) => false,
            _ => true,
        };
        if let Some((path, w)) = metrics_log.as_mut().filter(|_| logged) {
            // One write a line, so a killed run leaves whole lines.
            w.write_all(format!("{line}\n").as_bytes())
                .and_then(|_| w.flush())
                .map_err(|e| Error::Runtime(format!("{}: cannot write it: {e}", path.display())))?;
        }
        let (epoch, trainer, lbfgs) = match &event {
            Event::Epoch { epoch, trainer, .. } => (*epoch, *trainer, None),
            Event::Iteration { iteration, trainer, state, .. } => (*iteration, *trainer, Some(*state)),
            Event::Step { .. } | Event::Rows { .. } => return Ok(()),
            Event::Interrupted { epochs_done, steps_into_epoch, trainer, lbfgs } => {
                // Ctrl-C: everything submitted has run; a checkpoint --resume continues from.
                return match &out {
                    Some(dir) => {
                        checkpoint::save(
                            &dir.join("model.safetensors"),
                            &trainer.checkpoint_spec()?,
                            &trainer.params()?,
                        )?;
                        save_state(dir, trainer, (*epochs_done, *steps_into_epoch), *lbfgs)?;
                        eprintln!(
                            "interrupted: checkpoint written to {} ({epochs_done} epochs and {steps_into_epoch} steps done); `sae train --resume {}` continues the run",
                            dir.display(),
                            dir.display()
                        );
                        Ok(())
                    }
                    None => {
                        eprintln!("interrupted: nothing saved (the run had no --out)");
                        Ok(())
                    }
                };
            }
        };
        if let (Some(dir), Some(n)) = (&out, resolved.checkpoint_every) {
            if epoch % n == 0 {
                // Atomic (temporary file, then rename): a crash or a later divergence leaves
                // the previous checkpoint intact.
                checkpoint::save(&dir.join("model.safetensors"), &trainer.checkpoint_spec()?, &trainer.params()?)?;
                save_state(dir, trainer, (epoch, 0), lbfgs)?;
            }
        }
        Ok(())
    };
    let epochs = first_epoch..=last_epoch;
    let result = match (resolved.optimizer, &store) {
        (Method::Steps(_), Some(store)) => {
            let skip = resumed.as_ref().map_or(0, |s| s.steps_into_epoch as usize);
            crate::train::fit_stream(&mut trainer, store, &opts, limits, epochs, skip, on_event)
                .map(|m| (m, None, None))
        }
        (Method::Steps(_), None) => {
            let skip = resumed.as_ref().map_or(0, |s| s.steps_into_epoch as usize);
            fit_epochs(&mut trainer, &train_set, val_set.as_ref(), &opts, epochs, skip, on_event)
                .map(|m| (m, None, None))
        }
        (Method::Lbfgs(settings), _) => {
            let resume = resumed.as_ref().and_then(|s| s.lbfgs.clone());
            fit_lbfgs(&mut trainer, &train_set, val_set.as_ref(), settings, resume, epochs, on_event)
                .map(|run| (run.metrics, Some(run.state), run.stop))
        }
    };
    bar.finish_and_clear();
    drop(metrics_log);
    let (last, lbfgs_state, stopped) = result?;
    let epochs_done = stopped.map_or(last_epoch, |(at, _)| at);
    let params = trainer.params()?;
    if let Some(dir) = &out {
        checkpoint::save(&dir.join("model.safetensors"), &trainer.checkpoint_spec()?, &params)?;
        save_state(dir, &trainer, (epochs_done, 0), lbfgs_state.as_ref())?;
    }
    let steps = lbfgs_state.as_ref().map_or(trainer.steps_done(), |s| s.iterations);
    let evaluations = lbfgs_state.as_ref().map(|s| s.evaluations);
    let timing = (started.elapsed().as_secs_f64(), steps, evaluations);
    print_summary(&resolved, &last, last_val.as_ref(), last_since.as_deref(), timing);
    if let Some(first) = trainer.first_step() {
        println!("{}", startup_line(gpu.setup_seconds, first));
    }
    if let Some(peak) = crate::stream::peak_rss() {
        println!("peak memory: {:.1} MiB resident", peak as f64 / (1u64 << 20) as f64);
    }
    // A synthetic dictionary: how well the decoder's columns recover its true directions.
    if let (Some(truth), Some(dict)) = (&truth, resolved.synthetic) {
        let r = synthetic::recovery(truth, &params.weights[spec.layers() - 1], dict.width);
        println!(
            "recovery of the {} true directions: MMCS {:.4}, {} above 0.9 ({:.1} %)",
            dict.features,
            r.mmcs,
            (r.above_0_9 * dict.features as f64).round(),
            100.0 * r.above_0_9
        );
        if let Some(dir) = &out {
            let set = Dataset { rows: dict.features, cols: dict.width, values: truth.clone() };
            data::save(&dir.join("truth.npy"), &set)?;
            println!("wrote {}/truth.npy (`sae eval --truth` measures a model against it)", dir.display());
        }
    }
    if let Some((at, why)) = stopped {
        println!("L-BFGS stopped after iteration {at} of {}: {}", resolved.epochs, why.describe());
    } else if last_epoch < resolved.epochs {
        println!("stopped after epoch {last_epoch} of {}: `sae train --resume DIR` continues the run", resolved.epochs);
    }
    if let Some(dir) = &out {
        println!("wrote {}/{{model.safetensors, train_state.safetensors, metrics.jsonl, config.json}}", dir.display());
        if report {
            crate::report::write(dir, None, None)?;
            println!("wrote {}/report/index.html", dir.display());
        }
    }
    Ok(())
}

/// "start-up: device 0.045 s, pipelines 0.210 s (14 created), first step 0.150 s": time to the
/// first completed step, split (docs/design.md section 13). The first step's figure is the rest
/// of its time: building its launches and the driver's compilation at first dispatch.
pub fn startup_line(device_seconds: f64, first: crate::trainer::FirstStep) -> String {
    let p = first.pipelines;
    format!(
        "start-up: device {device_seconds:.3} s, pipelines {:.3} s ({} created), first step {:.3} s; to the first step {:.3} s",
        p.seconds,
        p.created,
        (first.seconds - p.seconds).max(0.0),
        device_seconds + first.seconds.max(p.seconds)
    )
}

/// FVU is undefined for data without variance (constant features, a single sample): the
/// metrics say null, the summary says why.
fn fvu_text(fvu: f64) -> String {
    if fvu.is_finite() {
        format!("{fvu:.4}")
    } else {
        "n/a (the data has no variance to explain)".into()
    }
}

fn print_summary(
    r: &Resolved,
    m: &EvalMetrics,
    val: Option<&EvalMetrics>,
    since_fired: Option<&[u32]>,
    (secs, steps, evaluations): (f64, u64, Option<u64>),
) {
    let (rho, beta) = r.loss.sparsity.rho_beta();
    let run = match evaluations {
        Some(e) => format!("{steps} iterations ({e} evaluations of J over the whole set, chunks of {}", r.batch_size),
        None => format!("{} epochs ({steps} steps, batch {}", r.epochs, r.batch_size),
    };
    println!(
        "trained {:?} for {run}, {} lr {}{}) in {secs:.1} s; sparsity {} beta {beta}",
        r.model.sizes,
        r.optimizer.name(),
        r.lr,
        match r.lr_schedule.kind {
            ScheduleKind::Constant if r.lr_schedule.warmup_steps == 0 => String::new(),
            kind => {
                let warmup = r.lr_schedule.warmup_steps;
                let warmup = if warmup > 0 { format!(", warm-up {warmup}") } else { String::new() };
                format!(" {}{warmup}", format!("{kind:?}").to_lowercase())
            }
        },
        r.loss.sparsity.name()
    );
    let rho_col = match r.loss.sparsity {
        Sparsity::KlFreq { .. } => "rho_hat (hard freq)",
        Sparsity::KlSoftFreq { .. } => "rho_hat (soft freq)",
        Sparsity::Kl { .. } => "rho_hat (mean act.)",
        Sparsity::None | Sparsity::L1 { .. } | Sparsity::L0 { .. } => "mean activation",
    };
    println!("{:<6} {:>10} {:>20} {:>12} {:>12}", "unit", "target rho", rho_col, "hard freq", "since fired");
    for j in 0..m.rho_hat.len() {
        let no_target = matches!(r.loss.sparsity, Sparsity::None | Sparsity::L1 { .. } | Sparsity::L0 { .. });
        let target = if no_target { "-".to_string() } else { format!("{rho:.4}") };
        let since = since_fired.map_or("-".to_string(), |s| s[j].to_string());
        println!("{:<6} {:>10} {:>20.4} {:>12.4} {:>12}", j, target, m.rho_hat[j], m.freq[j], since);
    }
    println!("train: mse {:.6}  fvu {}  loss {:.6}", m.mse, fvu_text(m.fvu), m.loss);
    if let Some(since) = since_fired {
        println!("dead code units (silent for --dead-after {} samples or more): {}", r.dead_after, dead(r, since));
    }
    let silent = m.freq.iter().filter(|&&f| f == 0.0).count();
    if matches!(r.loss.sparsity, Sparsity::KlSoftFreq { .. }) && silent > 0 {
        println!(
            "note: {silent} code unit(s) never fire (hard frequency 0): the soft frequency can meet rho with every z just \
             below 0, and a ReLU unit that is off gets no reconstruction gradient; use kl-freq, the hard frequency, \
             which brings silent units back"
        );
    }
    if let Some(v) = val {
        println!("validation: mse {:.6}  fvu {}  loss {:.6}", v.mse, fvu_text(v.fvu), v.loss);
    }
}
