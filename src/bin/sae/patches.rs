//! `sae patches`: a training set of natural-image patches from PNG photographs, sampled and
//! normalised as UFLDL's sparse autoencoder exercise does (`sae_wgpu::patches`).

use crate::bad;
use clap::Args;
use sae_wgpu::data;
use sae_wgpu::patches;
use sae_wgpu::Result;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PatchArgs {
    /// Grey-scale or colour PNG photographs (colour is turned grey).
    #[arg(required = true, value_name = "IMAGE.png")]
    images: Vec<PathBuf>,
    /// Patches to sample.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Side of a square patch in pixels (rows are size^2 wide).
    #[arg(long, default_value_t = 8)]
    size: usize,
    /// Seeds the choice of image and position.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep raw grey levels in [0, 1] instead of UFLDL's normalisation (each patch's mean
    /// removed, clipped to ±3 sd, rescaled to [0.1, 0.9]).
    #[arg(long)]
    raw: bool,
    /// Where to write the patches (.npy or .csv).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: PatchArgs) -> Result<()> {
    if args.count == 0 {
        return Err(bad("--count 0: sample at least one patch"));
    }
    if args.size == 0 || args.size > 64 {
        return Err(bad(format!("--size {}: give a patch side from 1 to 64 pixels", args.size)));
    }
    // Checked before allocating: count x size^2 floats.
    const MAX_VALUES: usize = 1 << 30;
    if args.count.saturating_mul(args.size * args.size) > MAX_VALUES {
        return Err(bad(format!("--count {}: at most {} values in all ({MAX_VALUES})", args.count, MAX_VALUES)));
    }
    let images = args.images.iter().map(|p| patches::read_png(p)).collect::<Result<Vec<_>>>()?;
    let mut set = patches::sample(&images, args.count, args.size, args.seed)?;
    if !args.raw {
        patches::normalize(&mut set);
    }
    data::save(&args.out, &set)?;
    println!(
        "wrote {} patches of {}x{} pixels from {} images to {}",
        set.rows,
        args.size,
        args.size,
        images.len(),
        args.out.display()
    );
    Ok(())
}
