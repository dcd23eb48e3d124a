//! `sae export`: a trained model in another tool's format (SAELens's directory layout).

use crate::bad;
use clap::Args;
use sae_wgpu::{checkpoint, saelens, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct ExportArgs {
    /// saelens: `sae_weights.safetensors` and `cfg.json`, as SAELens v6's `SAE.load_from_disk`
    /// reads them (one hidden layer, relu or topk code, identity output).
    #[arg(long, value_name = "FORMAT")]
    format: String,
    /// A checkpoint written by `sae train` (model.safetensors).
    #[arg(long, value_name = "FILE.safetensors")]
    model: PathBuf,
    /// The directory to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<()> {
    if a.format != "saelens" {
        return Err(bad(format!("--format {}: use saelens", a.format)));
    }
    if a.out.exists() && !a.out.is_dir() {
        return Err(bad(format!("--out {}: a file of that name exists; give a directory", a.out.display())));
    }
    let (spec, params) = checkpoint::load(&a.model)?;
    if let Some(why) = saelens::unsupported(&spec) {
        return Err(bad(format!("--model {}: not an SAE SAELens can hold: {why}", a.model.display())));
    }
    saelens::export(&a.out, &spec, &params)?;
    println!("wrote {}/{{{}, {}}}", a.out.display(), saelens::WEIGHTS, saelens::CONFIG);
    Ok(())
}
