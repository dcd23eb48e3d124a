//! `sae`: train, encode, check, bench and list adapters, headless. One file per command; the
//! library validates what it is given, and its errors carry their kind.
//!
//! Exit codes: 0 success, 1 runtime failure (no adapter, divergence, I/O), 2 bad input (flags,
//! config, data, checkpoint). Bad input is caught before any output file is written.

mod adapters;
mod bench;
mod check;
mod encode;
mod eval;
mod export;
mod patches;
mod report;

use clap::{Parser, Subcommand};
use sae_wgpu::cli::train;
pub use sae_wgpu::cli::{adapter_request, bad, open_gpu};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sae",
    version,
    about = "Sparse autoencoders trained in WebGPU compute shaders, with a KL sparsity penalty that has a gradient"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a sparse autoencoder (with no flags: the 20-80-40-4 seed model on the built-in dataset).
    Train(Box<train::TrainSettings>),
    /// Write code-layer activations (or reconstructions) of a data file with a trained model.
    Encode(encode::EncodeArgs),
    /// Measure how well a model's decoder recovers known directions (MMCS against a truth file).
    Eval(eval::EvalArgs),
    /// Write a trained model in another tool's format (SAELens).
    Export(export::ExportArgs),
    /// Run every kernel and a few training steps against the f64 CPU reference on an adapter.
    Check(check::CheckArgs),
    /// List every adapter wgpu sees, with the limits that matter here.
    Adapters(adapters::AdapterArgs),
    /// Sample natural-image patches from PNG photographs into a training set (UFLDL's recipe).
    Patches(patches::PatchArgs),
    /// Pictures of a run (loss, sparsity, densities, filters) and an index.html, from its --out.
    Report(report::ReportArgs),
    /// Time every kernel and a whole training step on preset models (validates first).
    Bench(bench::BenchArgs),
}

/// Mesa prints "error: XDG_RUNTIME_DIR is invalid or not set" when the variable is unset or not
/// a private directory, which reads as a failure on a fresh machine: point it at a private
/// 0700 directory of our own before any instance is created.
fn private_runtime_dir() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let valid = std::env::var_os("XDG_RUNTIME_DIR")
            .map(std::path::PathBuf::from)
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_dir() && m.mode() & 0o777 == 0o700);
        if valid {
            return;
        }
        // One per user (on Linux /proc/self is owned by the process's user), else per process.
        let who = std::fs::metadata("/proc/self").map(|m| format!("uid{}", m.uid()));
        let who = who.unwrap_or_else(|_| format!("pid{}", std::process::id()));
        let dir = std::env::temp_dir().join(format!("sae-runtime-{who}"));
        let made = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)));
        if made.is_ok() {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}

fn main() -> ExitCode {
    private_runtime_dir();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(s) => train::run(*s),
        Command::Encode(a) => encode::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Export(a) => export::run(a),
        Command::Check(a) => check::run(a),
        Command::Adapters(a) => adapters::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Patches(a) => patches::run(a),
        Command::Report(a) => report::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
