//! The forum's case: a 20-80-40-4 sparse autoencoder on context vectors in [0, 1]^20, trained
//! once without the sparsity penalty (beta = 0) and once with mean-activation KL
//! (rho = 0.05, beta = 3). Prints, per code unit, the target rho, the achieved rho_hat (batch
//! mean of the code activation over the training set) and the hard firing frequency
//! (fraction of samples with z > 0), so the penalty's effect is plain.
//!
//!     cargo run --release --example forum_sparsity [-- EPOCHS BATCH LR]

use sae_wgpu::model::{LossConfig, ModelSpec, Params, Sparsity};
use sae_wgpu::train::{defaults, fit, TrainOptions};
use sae_wgpu::trainer::EvalMetrics;
use sae_wgpu::{synthetic, AdapterRequest, Gpu, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: f64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (epochs, batch, lr) =
        (arg(0, defaults::EPOCHS as f64) as usize, arg(1, defaults::BATCH_SIZE as f64) as usize, arg(2, defaults::LR));
    let gpu = Gpu::new(&AdapterRequest::default())?;
    println!("adapter: {}", gpu.describe());
    let data = synthetic::context_vectors(synthetic::DEFAULT_SAMPLES, 0);
    let spec = ModelSpec::seed();
    let rho = defaults::RHO;
    let runs = [("beta = 0 (no penalty)", 0.0), ("beta = 3 (mean-activation KL)", defaults::BETA)];
    let mut results: Vec<(&str, EvalMetrics)> = Vec::new();
    for (label, beta) in runs {
        let loss = LossConfig { weight_decay: 0.0, sparsity: Sparsity::Kl { rho, beta } };
        let mut trainer = Trainer::new(&gpu, &spec, loss, lr, batch, &Params::init(&spec, 0))?;
        trainer.set_optimizer(defaults::optimizer())?;
        let opts =
            TrainOptions { epochs, batch_size: batch, seed: 0, shuffle: true, log_every: None, steps_per_submit: None };
        let t0 = std::time::Instant::now();
        let m = fit(&mut trainer, &data, None, &opts, |_| Ok(()))?;
        println!("{label}: {epochs} epochs, batch {batch}, adam lr {lr} in {:.1} s", t0.elapsed().as_secs_f64());
        results.push((label, m));
    }
    println!();
    println!(
        "{:<6} {:>10} | {:>10} {:>10} | {:>10} {:>10}",
        "unit", "target rho", "rho_hat", "freq", "rho_hat", "freq"
    );
    println!("{:<6} {:>10} | {:^21} | {:^21}", "", "", "beta = 0", "beta = 3");
    for j in 0..spec.code_width() {
        println!(
            "{:<6} {:>10.3} | {:>10.4} {:>10.4} | {:>10.4} {:>10.4}",
            j, rho, results[0].1.rho_hat[j], results[0].1.freq[j], results[1].1.rho_hat[j], results[1].1.freq[j]
        );
    }
    for (label, m) in &results {
        println!("{label:<32} mse {:.5}  fvu {:.3}  loss {:.4}", m.mse, m.fvu, m.loss);
    }
    Ok(())
}
