//! The forum's case: the post's own model, 20-80-40-4-40-80-20 with ReLU everywhere (code and
//! output too), on context vectors in [0, 1]^20, trained three times with the forum preset's
//! schedule (what `sae train` runs by default): without a penalty, with the smooth
//! firing-frequency KL (`kl-soft-freq`, what `kl-freq` was before: the KL of mean
//! sigmoid(z / 0.5)), and with `kl-freq` (the hard frequency, straight-through, with its
//! controller). Prints, per code unit, the hard firing frequency (the fraction of samples with
//! z > 0, what the post's author wanted at rho) side by side, then each run's FVU and the units'
//! alignment with the data's four contexts.
//!
//!     cargo run --release --example forum_sparsity [-- RHO SEED]

use sae_wgpu::encoder::Encoder;
use sae_wgpu::model::{Activation, ModelSpec, Params, Sparsity};
use sae_wgpu::train::{defaults, fit, forum_trainer};
use sae_wgpu::{synthetic, AdapterRequest, Gpu};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rho: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(defaults::forum::RHO);
    let seed: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let gpu = Gpu::new(&AdapterRequest::default())?;
    println!("adapter: {}", gpu.describe());
    let (data, strengths) = synthetic::context_vectors_with_strengths(synthetic::DEFAULT_SAMPLES, seed);
    let spec = ModelSpec::mirrored(&[20, 80, 40, 4], Activation::Relu, Activation::Relu, Activation::Relu)?;
    let beta = defaults::forum::BETA;
    let runs = [
        ("no penalty", Sparsity::None),
        ("kl-soft-freq (T 0.5)", Sparsity::KlSoftFreq { rho, beta, temperature: defaults::TEMPERATURE }),
        (
            "kl-freq",
            Sparsity::KlFreq {
                rho,
                beta,
                temperature: defaults::FREQ_TEMPERATURE,
                control: defaults::FREQUENCY_CONTROL,
            },
        ),
    ];
    let mut results = Vec::new();
    for (label, sparsity) in runs {
        let (mut trainer, opts) = forum_trainer(&gpu, &spec, sparsity, &Params::init(&spec, seed), data.rows, seed)?;
        let t0 = std::time::Instant::now();
        let m = fit(&mut trainer, &data, None, &opts, |_| Ok(()))?;
        let codes = Encoder::new(&gpu, &spec, &trainer.params()?, 1024)?.activations(&data.values, spec.code_layer)?;
        let fires: Vec<Vec<bool>> = codes.chunks(4).map(|row| row.iter().map(|&a| a > 0.0).collect()).collect();
        let aligned = synthetic::context_alignment(&fires, &strengths);
        let dead = trainer.since_fired()?.iter().filter(|&&s| s as u64 >= defaults::DEAD_AFTER).count();
        println!("{label}: {} epochs in {:.1} s", opts.epochs, t0.elapsed().as_secs_f64());
        results.push((label, m, aligned, dead));
    }
    println!("\nhard firing frequency per code unit (target rho = {rho}), seed {seed}:");
    print!("{:<6}", "unit");
    for (label, ..) in &results {
        print!(" {label:>22}");
    }
    println!();
    for j in 0..spec.code_width() {
        print!("{j:<6}");
        for (_, m, ..) in &results {
            print!(" {:>22.4}", m.freq[j]);
        }
        println!();
    }
    for (label, m, aligned, dead) in &results {
        let contexts: Vec<String> = aligned
            .iter()
            .map(|a| format!("{} ({:.0}%/{:.0}%)", a.context, 100.0 * a.precision, 100.0 * a.recall))
            .collect();
        println!(
            "{label:<22} fvu {:.3}  dead units {dead}  context per unit (precision/recall): {}",
            m.fvu,
            contexts.join(", ")
        );
    }
    Ok(())
}
