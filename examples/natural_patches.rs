//! UFLDL's sparse autoencoder exercise (docs/design.md sections 9 and 10): 10,000 random 8x8
//! patches from the photographs in examples/images (normalised as UFLDL does: each patch's mean
//! removed, clipped to ±3 standard deviations, rescaled to [0.1, 0.9]), a 64-25-64 sigmoid
//! autoencoder with rho 0.01, beta 3, lambda 1e-4 from UFLDL's initial weights, trained with
//! full-batch L-BFGS for 400 iterations, then the report with filters.png: the first layer's
//! rows as 8x8 images, which come out as localised, oriented edges.
//!
//!     cargo run --release --example natural_patches [-- --iterations N --out DIR]
//!
//! The same as `sae patches examples/images/*.png --out patches.npy` followed by
//! `sae train --data patches.npy --layers 64,25 --rho 0.01 --weight-decay 1e-4 --optimizer lbfgs
//! --epochs 400 --image-shape 8x8 --report --out DIR`.

use clap::Parser;
use sae_wgpu::cli::train::{run, TrainSettings};
use sae_wgpu::report::measure::median_shape;
use sae_wgpu::{checkpoint, data, patches, Params};
use std::path::PathBuf;

#[derive(Parser)]
struct Train {
    #[command(flatten)]
    settings: TrainSettings,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let mut iterations = 400;
    let mut out = PathBuf::from("target/natural_patches");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--iterations" => iterations = value.parse()?,
            "--out" => out = value.into(),
            other => return Err(format!("unknown flag {other}: use --iterations N or --out DIR").into()),
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(root.join("examples/images"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "png"));
    // Sorted, as a shell's glob gives them to `sae patches`: the same patches for the same seed.
    files.sort();
    let images = files.iter().map(|p| patches::read_png(p)).collect::<Result<Vec<_>, _>>()?;
    let mut set = patches::sample(&images, 10_000, 8, 0)?;
    patches::normalize(&mut set);
    std::fs::create_dir_all(&out)?;
    let data_path = out.join("patches.npy");
    data::save(&data_path, &set)?;
    println!("{} patches of 8x8 pixels from {} photographs -> {}", set.rows, images.len(), data_path.display());

    let run_dir = out.join("run");
    let flags = [
        "train",
        "--data",
        data_path.to_str().ok_or("a non-UTF-8 path")?,
        "--layers",
        "64,25",
        "--code-activation",
        "sigmoid",
        "--output-activation",
        "sigmoid",
        "--sparsity",
        "kl",
        "--rho",
        "0.01",
        "--beta",
        "3",
        "--weight-decay",
        "1e-4",
        "--optimizer",
        "lbfgs",
        "--epochs",
        &iterations.to_string(),
        "--image-shape",
        "8x8",
        "--report",
        "--overwrite",
        "--out",
        run_dir.to_str().ok_or("a non-UTF-8 path")?,
    ];
    run(Train::try_parse_from(flags)?.settings)?;
    println!("filters: {}", run_dir.join("report/filters.png").display());

    // How localised and oriented the first layer's filters are, against the initial weights
    // (seed 0, the run's), medians over the 25 (sae_wgpu::report::measure).
    let (spec, learned) = checkpoint::load(&run_dir.join("model.safetensors"))?;
    let rows = |p: &Params| p.weights[0].chunks(64).map(<[f32]>::to_vec).collect::<Vec<_>>();
    let (after, before) = (median_shape(&rows(&learned), (8, 8)), median_shape(&rows(&Params::init(&spec, 0)), (8, 8)));
    println!("filter shape (median of 25)   localisation   orientation");
    println!("initial random weights        {:>12.3}   {:>11.3}", before.localisation, before.orientation);
    println!("after {iterations} iterations {:>17.3}   {:>11.3}", after.localisation, after.orientation);
    println!("(localisation: the energy share of the strongest 4x4 window, 0.25 if spread evenly;");
    println!(" orientation: the gradient structure tensor's coherence, 1 for a straight edge)");
    Ok(())
}
