//! `sae eval`: how well a trained model's decoder recovers known directions (a synthetic
//! dictionary's `truth.npy`): MMCS, the mean over true directions of the best |cosine| with a
//! decoder column, and the share above 0.9.

use crate::bad;
use clap::Args;
use sae_wgpu::{checkpoint, data, synthetic, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint written by `sae train`, or an SAELens directory.
    #[arg(long, value_name = "FILE.safetensors|DIR")]
    model: PathBuf,
    /// The true directions, one per row (`[F, D]`, .npy or .csv; `sae train --synthetic`
    /// writes DIR/truth.npy).
    #[arg(long, value_name = "FILE")]
    truth: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let (spec, params) = checkpoint::load(&a.model)?;
    let truth = data::load(&a.truth)?;
    let width = spec.input_width();
    if truth.cols != width {
        return Err(bad(format!(
            "--truth {}: {} values a direction, but the model's input is {width} wide",
            a.truth.display(),
            truth.cols
        )));
    }
    // The decoder: the last layer, W_L [n_0, n_{L-1}], whose columns are the latents' directions.
    let r = synthetic::recovery(&truth.values, &params.weights[spec.layers() - 1], width);
    if a.json {
        let v = serde_json::json!({
            "mmcs": r.mmcs, "above_0_9": r.above_0_9, "features": truth.rows,
            "latents": spec.sizes[spec.layers() - 1], "best": r.best,
        });
        println!("{v}");
    } else {
        println!(
            "MMCS {:.4} over {} true directions; {} ({:.1} %) have a decoder column with |cos| > 0.9",
            r.mmcs,
            truth.rows,
            (r.above_0_9 * truth.rows as f64).round(),
            100.0 * r.above_0_9
        );
    }
    Ok(())
}
