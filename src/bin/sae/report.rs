//! `sae report`: pictures and a page of a finished (or checkpointed) run (`sae_wgpu::report`).

use clap::Args;
use sae_wgpu::report;
use sae_wgpu::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The --out directory of a sae train run.
    #[arg(value_name = "RUN_DIR")]
    run: PathBuf,
    /// Where to write the pictures and index.html [default: RUN_DIR/report].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Draw the first and last layers' weights as HxW images (filters.png) [default: the
    /// run's --image-shape, if it had one].
    #[arg(long, value_name = "HxW")]
    image_shape: Option<String>,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let shape = a.image_shape.as_deref().map(report::parse_image_shape).transpose().map_err(Error::Input)?;
    let files = report::write(&a.run, a.out.as_deref(), shape)?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
