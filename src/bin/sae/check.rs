//! `sae check`: every kernel and a few training steps against the f64 reference.

use crate::adapter_request;
use clap::Args;
use sae_wgpu::check;
use sae_wgpu::device::Gpu;
use sae_wgpu::kernels::Kernels;
use sae_wgpu::model::{Activation, LossConfig, ModelSpec, Sparsity};
use sae_wgpu::{Error, Result};

#[derive(Args)]
pub struct CheckArgs {
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

pub fn run(a: CheckArgs) -> Result<()> {
    let req = adapter_request(a.backend, a.adapter)?;
    let gpus = if a.all { Gpu::all(&req)? } else { vec![Gpu::new(&req)?] };
    let mut failures = 0;
    for gpu in &gpus {
        println!("adapter: {}", gpu.describe());
        let mut kernels = Kernels::new(gpu)?;
        kernels.create_all()?;
        println!(
            "{:<34} {:<11} {:>5} {:>4} {:>4} {:>11} {:>13} {:>9}  result",
            "kernel", "variant", "m", "k", "n", "max groups", "max rel err", "tolerance"
        );
        for row in check::run_all(&mut kernels)? {
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
        let forum = ModelSpec::mirrored(&[20, 80, 40, 4], Activation::Relu, Activation::Relu, Activation::Relu)
            .expect("valid model");
        let cases = [
            ("seed, none", &seed, Sparsity::None),
            ("seed, kl", &seed, Sparsity::Kl { rho: 0.05, beta: 3.0 }),
            ("relu code, kl-soft-freq", &relu, Sparsity::KlSoftFreq { rho: 0.05, beta: 3.0, temperature: 0.5 }),
            ("forum, kl-freq", &forum, Sparsity::KlFreq { rho: 0.05, beta: 3.0, temperature: 0.5, control: 0.05 }),
        ];
        println!(
            "{:<40} {:>13} {:>9}  result",
            "training: 5 steps, batch 37, params vs f64", "max rel err", "tolerance"
        );
        for (label, spec, sparsity) in cases {
            let err = check::training_steps(gpu, spec, LossConfig { weight_decay: 1e-3, sparsity }, 37, 0.5, 5, None)?
                .max_rel_err;
            let pass = err < step_tol;
            failures += usize::from(!pass);
            println!("{:<40} {:>13.2e} {:>9.0e}  {}", label, err, step_tol, if pass { "pass" } else { "FAIL" });
        }
        // The dictionary recipes (docs/design.md section 12): TopK with a pre-bias, unit-norm
        // decoder columns and AuxK under Adam; L1 on a dense ReLU code.
        let dense = ModelSpec::mirrored(&[13, 29], Activation::Relu, Activation::Relu, Activation::Identity)
            .expect("valid model");
        let topk = dense.clone().with_code(sae_wgpu::model::CodeSelect::TopK { k: 3 }, true).expect("valid model");
        let adam = sae_wgpu::optim::Optimizer::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
        let auxk = Some(sae_wgpu::model::AuxK { k: 6, coefficient: 0.5, dead_after: 30 });
        let jump = dense
            .clone()
            .with_code(sae_wgpu::model::CodeSelect::JumpRelu { bandwidth: 0.3, threshold_init: 0.1 }, true)
            .expect("valid model");
        let dictionary = [
            ("dictionary, topk + auxk, adam", &topk, Sparsity::None, auxk),
            ("dictionary, l1, adam", &dense, Sparsity::L1 { coefficient: 0.3 }, None),
            ("dictionary, jumprelu + l0, adam", &jump, Sparsity::L0 { coefficient: 0.2 }, None),
        ];
        for (label, spec, sparsity, auxk) in dictionary {
            let setup = check::StepsSetup {
                lr: 0.01,
                optimizer: adam,
                schedule: Default::default(),
                beta_warmup: 0,
                rho_anneal: 0,
                clip_grad_norm: None,
                decoder_norm: true,
                auxk,
            };
            let cfg = LossConfig { weight_decay: 0.0, sparsity };
            let err = check::training_steps_with(gpu, spec, cfg, 37, setup, 5, None)?.max_rel_err;
            let pass = err < step_tol;
            failures += usize::from(!pass);
            println!("{:<40} {:>13.2e} {:>9.0e}  {}", label, err, step_tol, if pass { "pass" } else { "FAIL" });
        }
        // L-BFGS's objective (tests/model.rs argues the bounds: J is one sum, each gradient
        // entry a chain of kernels like a step's).
        println!("{:<40} {:>13} {:>9}  result", "L-BFGS objective: 101 rows, chunks of 32", "max rel err", "tolerance");
        // kl-freq has no gradient of J to check (its straight-through term is not one).
        for (label, spec, sparsity) in cases.into_iter().filter(|c| !matches!(c.2, Sparsity::KlFreq { .. })) {
            let r = check::full_batch_gradient(gpu, spec, LossConfig { weight_decay: 1e-3, sparsity }, 101, 32, None)?;
            for (what, err, tol) in [("J", r.loss_rel_err, 1e-5), ("gradient", r.grad_rel_err, step_tol)] {
                let pass = err < tol;
                failures += usize::from(!pass);
                let label = format!("{label}: {what}");
                println!("{:<40} {:>13.2e} {:>9.0e}  {}", label, err, tol, if pass { "pass" } else { "FAIL" });
            }
        }
        println!();
    }
    if failures > 0 {
        return Err(Error::Runtime(format!(
            "{failures} check(s) failed: this adapter or driver computes wrong results"
        )));
    }
    println!("all checks passed");
    Ok(())
}
