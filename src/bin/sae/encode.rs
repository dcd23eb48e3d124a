//! `sae encode`: codes or reconstructions of a data file with a trained model.

use crate::{adapter_request, bad, open_gpu};
use clap::Args;
use sae_wgpu::checkpoint;
use sae_wgpu::cli::train::{spec_difference, ModelFlags};
use sae_wgpu::data::{self, Dataset};
use sae_wgpu::encoder::Encoder;
use sae_wgpu::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct EncodeArgs {
    /// A checkpoint written by `sae train`, or a PyTorch state dict (safetensors) with the model
    /// flags below describing it.
    #[arg(long, value_name = "FILE.safetensors")]
    model: PathBuf,
    /// For a checkpoint without a model spec: encoder widths, input first, code last.
    #[arg(long, value_name = "N,N,..")]
    layers: Option<String>,
    /// For a checkpoint without a model spec: decoder widths [default: the encoder mirrored].
    #[arg(long, value_name = "N,N,..")]
    decoder_layers: Option<String>,
    /// For a checkpoint without a model spec [default: relu].
    #[arg(long, value_name = "ACT")]
    hidden_activation: Option<String>,
    /// For a checkpoint without a model spec: an activation, or topk with --k [default: relu].
    #[arg(long, value_name = "ACT")]
    code_activation: Option<String>,
    /// For a checkpoint without a model spec: K of a topk code.
    #[arg(long, value_name = "K")]
    k: Option<usize>,
    /// For a checkpoint without a model spec: the encoder sees the input less the output bias.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pre_bias: Option<bool>,
    /// For a checkpoint without a model spec [default: relu].
    #[arg(long, value_name = "ACT")]
    output_activation: Option<String>,
    /// Input data (.npy or .csv), as wide as the model's input.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Output file: .npy or .csv.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Write reconstructions (the output layer) instead of codes.
    #[arg(long)]
    reconstruct: bool,
    /// Rows per forward pass.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    batch_size: usize,
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
    /// Use the adapter whose name contains this [default: $WGPU_ADAPTER_NAME, else the best].
    #[arg(long)]
    adapter: Option<String>,
}

pub fn run(a: EncodeArgs) -> Result<()> {
    let ext = a.out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "npy" && ext != "csv" {
        return Err(bad(format!("--out {}: use a .npy or .csv file name", a.out.display())));
    }
    if a.batch_size == 0 {
        return Err(bad("--batch-size 0: must be at least 1"));
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(bad(format!("--out {}: the directory {} does not exist", a.out.display(), parent.display())));
        }
    }
    let flags = ModelFlags {
        layers: a.layers,
        decoder_layers: a.decoder_layers,
        hidden_activation: a.hidden_activation,
        code_activation: a.code_activation,
        output_activation: a.output_activation,
        k: a.k,
        pre_bias: a.pre_bias,
        jumprelu: (None, None),
    };
    let flag_spec = flags.spec()?;
    let (spec, params) = checkpoint::load_as(&a.model, flag_spec.as_ref())?;
    if let Some(given) = flag_spec.filter(|g| g != &spec) {
        return Err(bad(format!(
            "--model {}: its model differs from the model flags' ({}); drop the model flags",
            a.model.display(),
            spec_difference(&spec, &given, "the flags'")
        )));
    }
    // Writing over the input would destroy it (the output is written after the input is read,
    // but a failed run would then have lost it too).
    let same = |x: &std::path::Path, y: &std::path::Path| match (x.canonicalize(), y.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if same(&a.out, &a.data) {
        return Err(bad(format!("--out {}: that is the --data file; give another name", a.out.display())));
    }
    let input = data::load(&a.data)?;
    input.check_width(spec.input_width(), &a.data)?;
    let gpu = open_gpu(&adapter_request(a.backend, a.adapter)?)?;
    let mut encoder = Encoder::new(&gpu, &spec, &params, a.batch_size.min(input.rows))?;
    let layer = if a.reconstruct { spec.layers() } else { spec.code_layer };
    let values = encoder.activations(&input.values, layer)?;
    let out = Dataset { rows: input.rows, cols: spec.sizes[layer], values };
    data::save(&a.out, &out)?;
    eprintln!(
        "wrote {} ({} x {}: {} of layer {})",
        a.out.display(),
        out.rows,
        out.cols,
        if a.reconstruct { "reconstructions" } else { "codes" },
        spec.layer_name(layer)
    );
    Ok(())
}
