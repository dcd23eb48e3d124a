//! `sae bench`: the flags, handed to the library's benchmark.

use clap::Args;
use sae_wgpu::bench;
use sae_wgpu::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// seed, mnist, dictionary or all; comma-separated for several [default: all].
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Encoder widths, input first; the decoder mirrors them (replaces the presets' models).
    #[arg(long, value_name = "N,N,..")]
    layers: Option<String>,
    /// Minibatch size (replaces the presets' batch sizes).
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Fewer repetitions, smaller batches where a step is too slow: under a minute on a software adapter.
    #[arg(long)]
    quick: bool,
    /// Write every figure, with the adapter, to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print the ratio of each figure to a previous `--json` run.
    #[arg(long, value_name = "OLD.json")]
    compare: Option<PathBuf>,
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
    /// Use the adapter whose name contains this [default: $WGPU_ADAPTER_NAME, else the best].
    #[arg(long)]
    adapter: Option<String>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let opts = bench::Options {
        preset: a.preset,
        layers: a.layers,
        batch_size: a.batch_size,
        quick: a.quick,
        json: a.json,
        compare: a.compare,
        backend: a.backend,
        adapter: a.adapter,
    };
    bench::run(&opts)
}
