//! Optimizers and learning-rate schedules: the settings, their checks, and the step-values table
//! the update kernels read (each step's learning rate and Adam's bias corrections, computed here
//! in f64 with `reference::scheduled_lr` and rounded to f32). The update rules are PyTorch's
//! `SGD` (with and without momentum), `Adam` and `AdamW`; docs/design.md section 4 writes them
//! out.

use serde::{Deserialize, Serialize};

/// The update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Optimizer {
    /// `p <- p - lr (g + lambda p)`.
    #[default]
    Sgd,
    /// PyTorch's `SGD(momentum=mu)` (no dampening, not Nesterov): `v <- mu v + (g + lambda p)`,
    /// `p <- p - lr v`.
    Momentum { momentum: f64 },
    /// PyTorch's `Adam`, weight decay as an L2 term added to the gradient.
    Adam { beta1: f64, beta2: f64, eps: f64 },
    /// PyTorch's `AdamW`: weight decay decoupled (`W <- W (1 - lr lambda)`, biases excluded),
    /// not part of the loss J.
    #[serde(rename = "adamw")]
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

/// Defaults of the optimizer flags, as PyTorch's.
pub mod defaults {
    pub const MOMENTUM: f64 = 0.9;
    pub const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
    pub const ADAM_EPS: f64 = 1e-8;
}

impl Optimizer {
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Momentum { .. } => "momentum",
            Optimizer::Adam { .. } => "adam",
            Optimizer::AdamW { .. } => "adamw",
        }
    }

    /// The optimizer named `name` (`--optimizer`) with the given settings.
    pub fn parse(name: &str, momentum: f64, betas: (f64, f64), eps: f64) -> Result<Optimizer, String> {
        let (beta1, beta2) = betas;
        let opt = match name {
            "sgd" => Optimizer::Sgd,
            "momentum" => Optimizer::Momentum { momentum },
            "adam" => Optimizer::Adam { beta1, beta2, eps },
            "adamw" => Optimizer::AdamW { beta1, beta2, eps },
            other => return Err(format!("--optimizer {other}: use sgd, momentum, adam, adamw or lbfgs")),
        };
        opt.validate()?;
        Ok(opt)
    }

    /// Checks the settings; the message names the flag to change.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Optimizer::Sgd => Ok(()),
            Optimizer::Momentum { momentum } => {
                if momentum.is_finite() && momentum >= 0.0 {
                    Ok(())
                } else {
                    Err(format!("--momentum {momentum}: must be a finite number >= 0"))
                }
            }
            Optimizer::Adam { beta1, beta2, eps } | Optimizer::AdamW { beta1, beta2, eps } => {
                for (b, _) in [(beta1, 1), (beta2, 2)] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(format!("--adam-betas {beta1},{beta2}: each beta must lie in [0, 1)"));
                    }
                }
                // eps > 0: the update also runs over the zero padding between tensors, where
                // m = v = 0 and eps 0 would give 0/0.
                if eps.is_finite() && eps > 0.0 {
                    Ok(())
                } else {
                    Err(format!("--adam-eps {eps}: must be a finite number > 0"))
                }
            }
        }
    }

    /// Per-parameter state tensors (velocity; first and second moments), each laid out as the
    /// parameters.
    pub fn state_tensors(&self) -> usize {
        match self {
            Optimizer::Sgd => 0,
            Optimizer::Momentum { .. } => 1,
            Optimizer::Adam { .. } | Optimizer::AdamW { .. } => 2,
        }
    }

    /// Whether weight decay is decoupled from the gradient (AdamW), and so not part of J.
    pub fn decoupled_weight_decay(&self) -> bool {
        matches!(self, Optimizer::AdamW { .. })
    }
}

/// The shape of the learning rate over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Linear,
    Cosine,
}

impl ScheduleKind {
    pub fn parse(s: &str) -> Result<ScheduleKind, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(format!("--lr-schedule {other}: use constant, linear or cosine")),
        }
    }

    pub fn code(self) -> u32 {
        match self {
            ScheduleKind::Constant => 0,
            ScheduleKind::Linear => 1,
            ScheduleKind::Cosine => 2,
        }
    }
}

/// The learning rate at step `t` (1-based) of a run of `total_steps`: a linear warm-up from
/// `lr / warmup_steps` to `lr` over the first `warmup_steps` steps, then `lr` (constant), or a
/// linear or cosine decay from `lr` to `lr_min` at the last step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub lr_min: f64,
}

impl LrSchedule {
    /// Whether the learning rate never changes.
    pub fn is_constant(&self) -> bool {
        self.kind == ScheduleKind::Constant && self.warmup_steps == 0
    }

    pub fn validate(&self, lr: f64) -> Result<(), String> {
        if !(self.lr_min.is_finite() && self.lr_min >= 0.0 && self.lr_min <= lr) {
            return Err(format!("--lr-min {}: must be a finite number in [0, --lr {lr}]", self.lr_min));
        }
        if self.warmup_steps > u32::MAX as u64 || self.total_steps > u32::MAX as u64 {
            return Err("--warmup-steps and the run's steps must stay below 2^32".into());
        }
        Ok(())
    }

    /// The learning rate of step `t` (1-based), from the base (peak) rate `lr`.
    pub fn lr_at(&self, lr: f64, t: u64) -> f64 {
        crate::reference::scheduled_lr(self, lr, t)
    }
}

/// Everything an update kernel needs besides its tensors and the step state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateRule {
    pub optimizer: Optimizer,
    /// lambda, applied to the weights only: an L2 term, or decoupled for AdamW.
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    /// Clip the gradients to this global norm first (PyTorch's `clip_grad_norm_`).
    pub clip_grad_norm: Option<f64>,
}

/// The share of the sparsity weight beta that step `t` (1-based) applies during a linear warm-up
/// of `warmup` steps: `t / warmup` up to 1 (always 1 without a warm-up).
pub fn beta_scale(warmup: u64, t: u64) -> f64 {
    if t >= warmup {
        1.0
    } else {
        t as f64 / warmup as f64
    }
}

/// The step-values table of a run (`layout::StepValues`): one entry per step from 1 to the
/// last step that differs from the one after it. A constant rate for SGD or momentum needs one
/// entry; a schedule needs its `total_steps`; a beta warm-up its length; Adam enough steps for
/// its bias corrections
/// to reach 1 in f32 (`beta^t < 2^-25`: about 17,000 steps for beta2 = 0.999).
pub fn step_values(
    optimizer: Optimizer,
    schedule: &LrSchedule,
    lr: f64,
    beta_warmup_steps: u64,
) -> Vec<crate::layout::StepValues> {
    let mut len = if schedule.is_constant() { 1 } else { schedule.total_steps.max(schedule.warmup_steps).max(1) };
    len = len.max(beta_warmup_steps);
    let betas = match optimizer {
        Optimizer::Adam { beta1, beta2, .. } | Optimizer::AdamW { beta1, beta2, .. } => Some((beta1, beta2)),
        _ => None,
    };
    if let Some((beta1, beta2)) = betas {
        let slowest = beta1.max(beta2);
        if slowest > 0.0 {
            len = len.max(((-25.0 * std::f64::consts::LN_2) / slowest.ln()).ceil() as u64 + 1);
        }
    }
    (1..=len)
        .map(|t| {
            let lr_t = schedule.lr_at(lr, t);
            let (step_size, bc2_sqrt) = match betas {
                Some((beta1, beta2)) => (lr_t / (1.0 - beta1.powf(t as f64)), (1.0 - beta2.powf(t as f64)).sqrt()),
                None => (lr_t, 1.0),
            };
            crate::layout::StepValues {
                lr: lr_t as f32,
                step_size: step_size as f32,
                bc2_sqrt: bc2_sqrt as f32,
                beta_scale: beta_scale(beta_warmup_steps, t) as f32,
            }
        })
        .collect()
}
