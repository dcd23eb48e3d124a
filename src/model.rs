//! The model: layer sizes, activations, the code layer, the loss settings and the parameters.
//!
//! Layout follows PyTorch's `nn.Linear`: `W_l` is `[n_l, n_{l-1}]` (out x in), row-major.
//! Layers are numbered 1..=L in docs/design.md; in code layer `l` lives at index `l - 1`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element-wise activation of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Identity,
    Relu,
    Sigmoid,
    Tanh,
}

impl Activation {
    pub const ALL: [Activation; 4] = [Activation::Identity, Activation::Relu, Activation::Sigmoid, Activation::Tanh];

    /// The number the WGSL kernels switch on (`activate` in `shaders/common.wgsl`).
    pub fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Sigmoid => 2,
            Activation::Tanh => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "identity" | "linear" | "none" => Ok(Activation::Identity),
            "relu" => Ok(Activation::Relu),
            "sigmoid" => Ok(Activation::Sigmoid),
            "tanh" => Ok(Activation::Tanh),
            _ => Err(format!("unknown activation '{s}': use identity, relu, sigmoid or tanh")),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which code units stay active in a row after the code layer's activation (docs/design.md
/// section 12): all of them, the K largest pre-activations of each row (ties to the lower
/// index), ReLU'd, or BatchTopK: in training the K m largest of the minibatch's, at inference
/// those above `threshold`, the running estimate training keeps (the smallest kept activation;
/// below 0 while unset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CodeSelect {
    #[default]
    Dense,
    TopK {
        k: usize,
    },
    BatchTopK {
        k: usize,
        threshold: f32,
    },
    /// JumpReLU (Rajamanoharan et al. 2024): `a = z [z > theta_j]` with a learned threshold per
    /// unit, trained as `log theta` (`Params::thresholds`) with a straight-through gradient of
    /// rectangle kernel width `bandwidth`, starting at `threshold_init`.
    JumpRelu {
        bandwidth: f32,
        threshold_init: f32,
    },
}

impl CodeSelect {
    /// K of a selection (None for dense codes).
    pub fn k(self) -> Option<usize> {
        match self {
            CodeSelect::Dense | CodeSelect::JumpRelu { .. } => None,
            CodeSelect::TopK { k } | CodeSelect::BatchTopK { k, .. } => Some(k),
        }
    }
}

/// Shape of the autoencoder: `sizes = [n_0, n_1, .., n_L]`, `activations[l-1] = f_l`,
/// and `code_layer = c`, the layer whose output is the code (the last encoder layer).
/// `select` keeps only some code units per row; with `pre_bias` the encoder sees `X - 1 b_L^T`
/// (the output layer's bias, the dictionary's `b_dec`) instead of X.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub sizes: Vec<usize>,
    pub activations: Vec<Activation>,
    pub code_layer: usize,
    #[serde(default)]
    pub select: CodeSelect,
    #[serde(default)]
    pub pre_bias: bool,
}

impl ModelSpec {
    /// An encoder `encoder = [n_0, .., n_c]` and a decoder `decoder = [.., n_L]` (widths after
    /// the code; the last must equal `n_0`). Hidden layers use `hidden`, the code layer `code`,
    /// the last layer `output`.
    pub fn new(
        encoder: &[usize],
        decoder: &[usize],
        hidden: Activation,
        code: Activation,
        output: Activation,
    ) -> Result<Self, String> {
        if encoder.len() < 2 {
            return Err("the encoder needs at least an input width and a code width (e.g. 20,4)".into());
        }
        if decoder.is_empty() {
            return Err("the decoder needs at least one layer (its last width is the input width)".into());
        }
        let sizes: Vec<usize> = encoder.iter().chain(decoder).copied().collect();
        let code_layer = encoder.len() - 1;
        let layers = sizes.len() - 1;
        let activations = (1..=layers)
            .map(|l| {
                if l == layers {
                    output
                } else if l == code_layer {
                    code
                } else {
                    hidden
                }
            })
            .collect();
        let spec = ModelSpec { sizes, activations, code_layer, select: CodeSelect::Dense, pre_bias: false };
        spec.validate()?;
        Ok(spec)
    }

    /// The decoder mirrors the encoder: `20,80,40,4` becomes `20,80,40,4,40,80,20`.
    pub fn mirrored(
        encoder: &[usize],
        hidden: Activation,
        code: Activation,
        output: Activation,
    ) -> Result<Self, String> {
        let decoder: Vec<usize> = encoder.iter().rev().skip(1).copied().collect();
        Self::new(encoder, &decoder, hidden, code, output)
    }

    /// The default ("seed") model of docs/design.md section 2: 20-80-40-4 mirrored, relu hidden, sigmoid code and output.
    pub fn seed() -> Self {
        Self::mirrored(&[20, 80, 40, 4], Activation::Relu, Activation::Sigmoid, Activation::Sigmoid)
            .expect("the seed model is valid")
    }

    /// The same model with the code selection `select` and pre-bias `pre_bias`.
    pub fn with_code(mut self, select: CodeSelect, pre_bias: bool) -> Result<Self, String> {
        self.select = select;
        self.pre_bias = pre_bias;
        self.validate()?;
        Ok(self)
    }

    /// The same model as `other` but for BatchTopK's threshold, which training moves.
    pub fn same_model(&self, other: &ModelSpec) -> bool {
        let unset = |s: &ModelSpec| match s.select {
            CodeSelect::BatchTopK { k, .. } => {
                ModelSpec { select: CodeSelect::BatchTopK { k, threshold: 0.0 }, ..s.clone() }
            }
            _ => s.clone(),
        };
        unset(self) == unset(other)
    }

    pub fn validate(&self) -> Result<(), String> {
        let layers = self.sizes.len().saturating_sub(1);
        if layers == 0 {
            return Err("a model needs at least one layer".into());
        }
        if let Some(i) = self.sizes.iter().position(|&n| n == 0) {
            return Err(format!("layer width {i} is 0: every width must be at least 1"));
        }
        if self.activations.len() != layers {
            return Err(format!("{} activations given for {layers} layers", self.activations.len()));
        }
        if self.code_layer == 0 || self.code_layer > layers {
            return Err(format!("code layer {} is not in 1..={layers}", self.code_layer));
        }
        if self.sizes[0] != self.sizes[layers] {
            return Err(format!(
                "the decoder ends at width {} but the input is {} wide: an autoencoder reconstructs its input",
                self.sizes[layers], self.sizes[0]
            ));
        }
        if self.pre_bias && layers < 2 {
            return Err(
                "a pre-bias subtracts the output layer's bias before the first: it needs at least two layers".into()
            );
        }
        if let CodeSelect::JumpRelu { bandwidth, threshold_init } = self.select {
            if !(bandwidth.is_finite() && bandwidth > 0.0) {
                return Err(format!("--jumprelu-bandwidth {bandwidth}: must be a finite number > 0"));
            }
            if !(threshold_init.is_finite() && threshold_init > 0.0) {
                return Err(format!("--jumprelu-threshold {threshold_init}: must be a finite number > 0"));
            }
            if self.activations[self.code_layer - 1] != Activation::Relu {
                return Err(
                    "a JumpReLU code keeps pre-activations above a positive threshold: its code activation is relu"
                        .into(),
                );
            }
        }
        if let Some(k) = self.select.k() {
            let n = self.sizes[self.code_layer];
            if k == 0 || k > n {
                return Err(format!("--k {k}: TopK keeps between 1 and the code width ({n}) units per row"));
            }
            if self.activations[self.code_layer - 1] != Activation::Relu {
                return Err("a TopK code keeps ReLU'd pre-activations: its code activation is relu".into());
            }
        }
        // Checked, before anything is allocated: widths come from flags and files.
        let count = (1..=layers).try_fold(0usize, |acc, l| {
            self.sizes[l].checked_mul(self.sizes[l - 1])?.checked_add(self.sizes[l])?.checked_add(acc)
        });
        if count.is_none_or(|c| c > MAX_PARAMETERS) {
            return Err(format!(
                "widths {:?} make more than {MAX_PARAMETERS} parameters, more than any adapter binds at once: use smaller widths",
                self.sizes
            ));
        }
        Ok(())
    }

    /// Number of layers L.
    pub fn layers(&self) -> usize {
        self.sizes.len() - 1
    }
    pub fn input_width(&self) -> usize {
        self.sizes[0]
    }
    pub fn code_width(&self) -> usize {
        self.sizes[self.code_layer]
    }
    /// `(n_out, n_in)` of layer `l` (1-based).
    pub fn shape(&self, l: usize) -> (usize, usize) {
        (self.sizes[l], self.sizes[l - 1])
    }
    pub fn activation(&self, l: usize) -> Activation {
        self.activations[l - 1]
    }
    pub fn parameter_count(&self) -> usize {
        (1..=self.layers()).map(|l| self.sizes[l] * self.sizes[l - 1] + self.sizes[l]).sum::<usize>()
            + self.threshold_count()
    }

    /// Learned thresholds: one a code unit for a JumpReLU code.
    pub fn threshold_count(&self) -> usize {
        if let CodeSelect::JumpRelu { .. } = self.select {
            self.code_width()
        } else {
            0
        }
    }
    /// Name of layer `l` as a PyTorch module attribute: `enc1..encK`, `dec1..decK'`.
    pub fn layer_name(&self, l: usize) -> String {
        if l <= self.code_layer {
            format!("enc{l}")
        } else {
            format!("dec{}", l - self.code_layer)
        }
    }
}

/// Most parameters a model may have: 2^30 f32 (4 GiB) is beyond the largest storage binding of
/// any adapter wgpu reports today, so a larger model is refused before anything is allocated.
pub const MAX_PARAMETERS: usize = 1 << 30;

/// The sparsity penalty on the code layer (docs/design.md sections 1 and 3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Sparsity {
    None,
    /// `rho_hat_j = mean_i a_ij` (sigmoid code layer only).
    Kl {
        rho: f64,
        beta: f64,
    },
    /// `rho_hat_j = mean_i [z_ij > 0]`: the hard firing frequency, any code activation. Its
    /// gradient is straight-through (docs/design.md section 11): every row of unit j gets
    /// `(beta / (T m)) (rho_hat_j - rho)`, and after each step the code bias moves by
    /// `-control (rho_hat_j - rho)`.
    KlFreq {
        rho: f64,
        beta: f64,
        temperature: f64,
        control: f64,
    },
    /// `rho_hat_j = mean_i sigmoid(z_ij / T)`: a smooth firing frequency, any code activation.
    KlSoftFreq {
        rho: f64,
        beta: f64,
        temperature: f64,
    },
    /// `(C/m) sum_i sum_j |a_ij| ||w_j||`: the L1 of each code unit weighted by its decoder
    /// column's norm (SAELens v6; docs/design.md section 12). A ReLU code and a one-layer decoder.
    L1 {
        coefficient: f64,
    },
    /// `(C/m) sum_i #{j : z_ij > theta_j}`: JumpReLU's L0, whose straight-through gradient
    /// reaches the thresholds only (docs/design.md section 12).
    L0 {
        coefficient: f64,
    },
}

impl Sparsity {
    pub fn name(&self) -> &'static str {
        match self {
            Sparsity::None => "none",
            Sparsity::Kl { .. } => "kl",
            Sparsity::KlFreq { .. } => "kl-freq",
            Sparsity::KlSoftFreq { .. } => "kl-soft-freq",
            Sparsity::L1 { .. } => "l1",
            Sparsity::L0 { .. } => "l0",
        }
    }
    /// The same penalty with beta times `scale` (a warm-up's share).
    pub fn scaled(&self, scale: f64) -> Sparsity {
        match *self {
            Sparsity::None => Sparsity::None,
            Sparsity::Kl { rho, beta } => Sparsity::Kl { rho, beta: beta * scale },
            Sparsity::KlFreq { rho, beta, temperature, control } => {
                Sparsity::KlFreq { rho, beta: beta * scale, temperature, control }
            }
            Sparsity::KlSoftFreq { rho, beta, temperature } => {
                Sparsity::KlSoftFreq { rho, beta: beta * scale, temperature }
            }
            Sparsity::L1 { coefficient } => Sparsity::L1 { coefficient: coefficient * scale },
            Sparsity::L0 { coefficient } => Sparsity::L0 { coefficient: coefficient * scale },
        }
    }

    /// kl-freq with its target `share` of the way through an anneal (`annealed_rho`): what its
    /// push and controller aim at that step. Other penalties are unchanged.
    pub fn annealed(&self, share: f64) -> Sparsity {
        match *self {
            Sparsity::KlFreq { rho, beta, temperature, control } => {
                Sparsity::KlFreq { rho: annealed_rho(rho, share), beta, temperature, control }
            }
            other => other,
        }
    }

    /// `(rho, beta)`, with beta = 0 when there is no penalty.
    pub fn rho_beta(&self) -> (f64, f64) {
        match *self {
            Sparsity::None => (0.05, 0.0),
            Sparsity::Kl { rho, beta }
            | Sparsity::KlFreq { rho, beta, .. }
            | Sparsity::KlSoftFreq { rho, beta, .. } => (rho, beta),
            Sparsity::L1 { coefficient } | Sparsity::L0 { coefficient } => (0.05, coefficient),
        }
    }
    pub fn temperature(&self) -> f64 {
        match *self {
            Sparsity::KlFreq { temperature, .. } | Sparsity::KlSoftFreq { temperature, .. } => temperature,
            _ => 1.0,
        }
    }
    /// The frequency controller's rate (kl-freq's `--frequency-control`; 0 for every other penalty).
    pub fn control(&self) -> f64 {
        match *self {
            Sparsity::KlFreq { control, .. } => control,
            _ => 0.0,
        }
    }
}

/// The auxiliary loss of a TopK dictionary (Gao et al. 2024; docs/design.md section 12): the
/// `k` largest pre-activations among the dead latents (silent for `dead_after` samples or
/// more), ReLU'd and decoded, `recons = A_aux W_L^T + b_L`, are trained to reconstruct the
/// main reconstruction's residual: `J_aux = (coefficient / 2m) sum_i ||recons_i - (x_i -
/// xhat_i)||^2`, the residual held constant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuxK {
    pub k: usize,
    pub coefficient: f64,
    pub dead_after: u64,
}

impl AuxK {
    /// Checks the settings against the model; the message names the flag.
    pub fn validate(&self, spec: &ModelSpec) -> Result<(), String> {
        if spec.layers() != 2 || spec.select.k().is_none() || spec.activation(2) != Activation::Identity {
            return Err(
                "--auxk: the auxiliary loss is a TopK dictionary's (one hidden layer, --code-activation topk, identity output)"
                    .into(),
            );
        }
        let n = spec.code_width();
        if self.k == 0 || self.k > n {
            return Err(format!("--auxk {}: between 1 and the code width ({n}) latents", self.k));
        }
        if !((self.coefficient as f32).is_finite() && self.coefficient >= 0.0) {
            return Err(format!("--auxk-coefficient {}: must be a finite number >= 0", self.coefficient));
        }
        if self.dead_after == 0 || self.dead_after > u32::MAX as u64 {
            return Err(format!("--dead-after {}: between 1 and {} samples with --auxk", self.dead_after, u32::MAX));
        }
        Ok(())
    }
}

/// Everything the loss J of docs/design.md section 3 depends on besides the data and parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// lambda: `(lambda/2) * sum_l ||W_l||^2`.
    pub weight_decay: f64,
    pub sparsity: Sparsity,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { weight_decay: 0.0, sparsity: Sparsity::None }
    }
}

/// Checks a learning rate (`--lr`): finite and > 0.
pub fn check_lr(lr: f64) -> Result<(), String> {
    // In the precision the kernels use: 1e-50 is positive in f64 but 0 in f32.
    if (lr as f32).is_finite() && lr as f32 > 0.0 {
        Ok(())
    } else {
        Err(format!("--lr {lr}: must be a finite number > 0 in f32 (about 1.2e-38 to 3.4e38)"))
    }
}

/// Parses comma-separated layer widths given to `flag` (e.g. `--layers 20,80,40,4`); each must
/// be a whole number of at least 1.
pub fn parse_widths(flag: &str, s: &str) -> Result<Vec<usize>, String> {
    let widths = s
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{flag} {s}: '{}' is not a whole number; give widths like 20,80,40,4", t.trim()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = widths.iter().position(|&w| w == 0) {
        return Err(format!("{flag} {s}: width {} is 0; every layer needs at least one unit", i + 1));
    }
    Ok(widths)
}

/// Where kl-freq's target starts during an anneal (`--rho-anneal-steps`), if above rho.
pub const ANNEAL_START: f64 = 0.5;

/// kl-freq's target at `share` of the way through an anneal: geometric from
/// `max(ANNEAL_START, rho)` to rho (docs/design.md section 11). Dense units find the features
/// first; the targets then tighten each unit's threshold on its own feature.
pub fn annealed_rho(rho: f64, share: f64) -> f64 {
    rho * (ANNEAL_START.max(rho) / rho).powf(1.0 - share.min(1.0))
}

/// Clamp of rho_hat before KL and its derivative (docs/design.md section 3).
pub const RHO_HAT_EPS: f64 = 1e-6;

impl LossConfig {
    /// Checks the loss settings against the model; the message names the setting to change.
    pub fn validate(&self, spec: &ModelSpec) -> Result<(), String> {
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!("--weight-decay {}: must be a finite number >= 0", self.weight_decay));
        }
        match self.sparsity {
            Sparsity::None => Ok(()),
            Sparsity::L0 { coefficient } => {
                if !((coefficient as f32).is_finite() && coefficient >= 0.0) {
                    return Err(format!("--l0-coefficient {coefficient}: must be a finite number >= 0"));
                }
                if !matches!(spec.select, CodeSelect::JumpRelu { .. }) {
                    return Err("--sparsity l0: JumpReLU's penalty; it needs --code-activation jumprelu".into());
                }
                Ok(())
            }
            Sparsity::L1 { coefficient } => {
                if !((coefficient as f32).is_finite() && coefficient >= 0.0) {
                    return Err(format!("--l1-coefficient {coefficient}: must be a finite number >= 0"));
                }
                let c = spec.code_layer;
                if spec.activation(c) != Activation::Relu || spec.layers() != c + 1 {
                    return Err(
                        "--sparsity l1: weights each code unit's L1 by its decoder column's norm, so it needs a ReLU (or topk) code and a one-layer decoder (--layers D,N)"
                            .into(),
                    );
                }
                Ok(())
            }
            Sparsity::Kl { rho, beta }
            | Sparsity::KlFreq { rho, beta, .. }
            | Sparsity::KlSoftFreq { rho, beta, .. } => {
                if !(rho > 0.0 && rho < 1.0) {
                    return Err(format!("--rho {rho}: must lie strictly between 0 and 1"));
                }
                if !(beta.is_finite() && beta >= 0.0) {
                    return Err(format!("--beta {beta}: must be a finite number >= 0"));
                }
                if let Sparsity::KlFreq { temperature, .. } | Sparsity::KlSoftFreq { temperature, .. } = self.sparsity {
                    // In f32, as the kernels divide by it: 1e-50 is 0 there.
                    if !((temperature as f32).is_finite() && temperature as f32 > 0.0) {
                        return Err(format!(
                            "--temperature {temperature}: must be a finite number > 0 in f32 (about 1.2e-38 to 3.4e38)"
                        ));
                    }
                }
                let control = self.sparsity.control();
                if !((control as f32).is_finite() && control >= 0.0) {
                    return Err(format!("--frequency-control {control}: must be a finite number >= 0"));
                }
                let code = spec.activation(spec.code_layer);
                if matches!(self.sparsity, Sparsity::Kl { .. }) && code != Activation::Sigmoid {
                    return Err(format!(
                        "--sparsity kl: mean-activation KL needs a sigmoid code layer, whose activations lie in (0, 1), \
                         but the code layer is {code}: use a sigmoid code layer, or firing-frequency KL \
                         ('kl-freq'), which works with any code activation (--preset classic gives the sigmoid model)"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Weights and biases, f32, PyTorch layout: `weights[l-1]` is `W_l` as `[n_l, n_{l-1}]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<Vec<f32>>,
    /// A JumpReLU code's `log theta_j`, one a code unit (empty for other codes).
    pub thresholds: Vec<f32>,
}

impl Params {
    /// The init of docs/design.md section 2: `W ~ U(-r, r)`, `r = sqrt(6 / (n_in + n_out + 1))`, `b = 0`.
    pub fn init(spec: &ModelSpec, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for l in 1..=spec.layers() {
            let (n_out, n_in) = spec.shape(l);
            let r = (6.0 / (n_in + n_out + 1) as f64).sqrt();
            weights.push((0..n_out * n_in).map(|_| ((2.0 * rng.next_f64() - 1.0) * r) as f32).collect());
            biases.push(vec![0.0; n_out]);
        }
        let thresholds = match spec.select {
            CodeSelect::JumpRelu { threshold_init, .. } => vec![threshold_init.ln(); spec.code_width()],
            _ => Vec::new(),
        };
        Params { weights, biases, thresholds }
    }

    /// The dictionary recipe's init (docs/design.md section 12): `init`'s weights, then with
    /// `unit_decoder` each column of W_L scaled to unit norm, with `tied` each encoder layer
    /// set to the transpose of its mirror image in the decoder (`W_l = W_{L+1-l}^T` where the
    /// shapes allow), and with `output_bias` b_L set to it (the data mean, for a pre-bias).
    pub fn dictionary_init(
        spec: &ModelSpec,
        seed: u64,
        unit_decoder: bool,
        tied: bool,
        output_bias: Option<&[f32]>,
    ) -> Self {
        let mut p = Params::init(spec, seed);
        let layers = spec.layers();
        if unit_decoder {
            let (rows, cols) = spec.shape(layers);
            let w = &mut p.weights[layers - 1];
            for j in 0..cols {
                let norm = (0..rows).map(|i| (w[i * cols + j] as f64).powi(2)).sum::<f64>().sqrt();
                if norm > 0.0 {
                    for i in 0..rows {
                        w[i * cols + j] = (w[i * cols + j] as f64 / norm) as f32;
                    }
                }
            }
        }
        if tied {
            for l in 1..=spec.code_layer {
                let mirror = layers + 1 - l;
                let (n, k) = spec.shape(l);
                if mirror > spec.code_layer && spec.shape(mirror) == (k, n) {
                    let w = &p.weights[mirror - 1];
                    p.weights[l - 1] = (0..n * k).map(|e| w[(e % k) * n + e / k]).collect();
                }
            }
        }
        if let Some(b) = output_bias {
            if b.len() == spec.sizes[layers] {
                p.biases[layers - 1] = b.to_vec();
            }
        }
        p
    }

    /// Checks that every tensor has the size `spec` gives it.
    pub fn check_shapes(&self, spec: &ModelSpec) -> Result<(), String> {
        if self.weights.len() != spec.layers() || self.biases.len() != spec.layers() {
            return Err(format!(
                "{} weight and {} bias tensors for a {}-layer model",
                self.weights.len(),
                self.biases.len(),
                spec.layers()
            ));
        }
        for l in 1..=spec.layers() {
            let (n_out, n_in) = spec.shape(l);
            if self.weights[l - 1].len() != n_out * n_in || self.biases[l - 1].len() != n_out {
                return Err(format!("{}: expected weight [{n_out}, {n_in}] and bias [{n_out}]", spec.layer_name(l)));
            }
        }
        let want = spec.threshold_count();
        if self.thresholds.len() != want {
            return Err(format!("{} thresholds for a model with {want}", self.thresholds.len()));
        }
        Ok(())
    }

    pub fn all_finite(&self) -> bool {
        self.weights.iter().chain(&self.biases).chain([&self.thresholds]).all(|t| t.iter().all(|v| v.is_finite()))
    }
}

/// SplitMix64: tiny, seedable and identical on every platform, so `--seed` reproduces a run
/// (initialisation, shuffling, the built-in dataset) bit for bit.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
