//! SAELens's on-disk format (docs/design.md section 6): a directory holding
//! `sae_weights.safetensors` (`W_enc` `[d_in, d_sae]`, `W_dec` `[d_sae, d_in]`, `b_enc`
//! `[d_sae]`, `b_dec` `[d_in]`, f32) and `cfg.json` (architecture, sizes, and how the input is
//! treated), as SAELens v6 reads them with `SAE.load_from_disk`.
//!
//! A one-hidden-layer model D -> N -> D with a ReLU or TopK code and an identity output is
//! such an SAE: `W_enc = W_1^T`, `b_enc = b_1`, `W_dec = W_2^T`, `b_dec = b_2`, and
//! `apply_b_dec_to_input` is the pre-bias. Its forward is
//! `relu(topk((x - b_dec) W_enc + b_enc)) W_dec + b_dec`.

use crate::data::write_atomic;
use crate::error::{Error, Result};
use crate::model::{Activation, CodeSelect, ModelSpec, Params};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

pub const WEIGHTS: &str = "sae_weights.safetensors";
/// A JumpReLU SAE's bandwidth when its cfg.json does not give `jumprelu_bandwidth`.
pub const JUMPRELU_BANDWIDTH: f64 = 0.05;
pub const CONFIG: &str = "cfg.json";

/// Why `spec` is not an SAE SAELens can hold, or None when it is.
pub fn unsupported(spec: &ModelSpec) -> Option<String> {
    let why = if spec.layers() != 2 {
        format!("it has {} layers; SAELens holds one hidden layer (--layers D,N)", spec.layers())
    } else if spec.activation(1) != Activation::Relu {
        format!("its code activation is {}; SAELens's are relu or topk", spec.activation(1))
    } else if spec.activation(2) != Activation::Identity {
        format!("its output activation is {}; SAELens's decoder is linear (identity)", spec.activation(2))
    } else {
        return None;
    };
    Some(why)
}

/// `cfg.json` of `spec` (which [`unsupported`] accepts).
pub fn config(spec: &ModelSpec) -> serde_json::Value {
    // BatchTopK is saved for inference as SAELens saves it: a JumpReLU SAE whose thresholds
    // are all the trained threshold.
    let (architecture, activation) = match spec.select {
        CodeSelect::Dense => ("standard", "relu"),
        CodeSelect::TopK { .. } => ("topk", "topk"),
        CodeSelect::BatchTopK { .. } | CodeSelect::JumpRelu { .. } => ("jumprelu", "relu"),
    };
    let mut cfg = serde_json::json!({
        "architecture": architecture,
        "d_in": spec.sizes[0],
        "d_sae": spec.sizes[1],
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": spec.pre_bias,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "activation_fn": activation,
        "meta": { "model_name": null, "hook_name": null },
    });
    if let CodeSelect::JumpRelu { bandwidth, .. } = spec.select {
        cfg["jumprelu_bandwidth"] = (bandwidth as f64).into();
    }
    if let Some(k) = spec.select.k() {
        cfg["k"] = k.into();
        if let CodeSelect::TopK { .. } = spec.select {
            cfg["activation_fn_kwargs"] = serde_json::json!({ "k": k });
        }
    }
    cfg
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|e| w[(e % rows) * cols + e / rows]).collect()
}

/// Writes `dir/sae_weights.safetensors` and `dir/cfg.json` (each atomically) for `spec`,
/// `params`. A model SAELens cannot hold is bad input.
pub fn export(dir: &Path, spec: &ModelSpec, params: &Params) -> Result<()> {
    if let Some(why) = unsupported(spec) {
        return Err(Error::Input(format!("--format saelens: the model cannot be written as an SAELens SAE: {why}")));
    }
    let (d, n) = (spec.sizes[0], spec.sizes[1]);
    // W_1 is [n, d] (out x in): W_enc = W_1^T is [d, n]; W_2 is [d, n]: W_dec = W_2^T is [n, d].
    let w_enc = transpose(&params.weights[0], n, d);
    let w_dec = transpose(&params.weights[1], d, n);
    let thresholds = match spec.select {
        CodeSelect::BatchTopK { threshold, .. } => vec![threshold.max(0.0); n],
        CodeSelect::JumpRelu { .. } => params.thresholds.iter().map(|t| t.exp()).collect(),
        _ => Vec::new(),
    };
    let mut tensors: Vec<(&str, &[f32], Vec<usize>)> = vec![
        ("W_enc", &w_enc, vec![d, n]),
        ("W_dec", &w_dec, vec![n, d]),
        ("b_enc", &params.biases[0], vec![n]),
        ("b_dec", &params.biases[1], vec![d]),
    ];
    if !thresholds.is_empty() {
        tensors.push(("threshold", &thresholds, vec![n]));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, data, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data)).expect("sizes agree");
            (name.to_string(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::Runtime(format!("cannot serialize the SAELens weights: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Input(format!("--out {}: cannot create it ({e}): give a directory you can write", dir.display()))
    })?;
    let cfg = serde_json::to_vec_pretty(&config(spec)).expect("config serialises");
    for (name, contents) in [(WEIGHTS, &bytes), (CONFIG, &cfg)] {
        let path = dir.join(name);
        write_atomic(&path, contents)
            .map_err(|e| Error::Runtime(format!("{}: cannot write it ({e})", path.display())))?;
    }
    Ok(())
}

/// Whether `path` is an SAELens directory (it holds `cfg.json`).
pub fn is_saelens_dir(path: &Path) -> bool {
    path.is_dir() && path.join(CONFIG).is_file()
}

/// Reads an SAELens directory as a model and its parameters. Anything this tool cannot
/// compute exactly (another architecture, input normalisation) or a `cfg.json` that
/// contradicts its tensors is bad input, one line naming the file.
pub fn import(dir: &Path) -> Result<(ModelSpec, Params)> {
    let cfg_path = dir.join(CONFIG);
    let bad = |path: &Path, what: String| Error::Input(format!("{}: {what}", path.display()));
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| bad(&cfg_path, format!("cannot read it ({e})")))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&cfg_path, format!("not JSON ({e})")))?;
    let int = |key: &str| -> Result<usize> {
        cfg[key].as_u64().map(|v| v as usize).ok_or_else(|| bad(&cfg_path, format!("'{key}' must be a whole number")))
    };
    let (d_in, d_sae) = (int("d_in")?, int("d_sae")?);
    let architecture = cfg["architecture"].as_str().unwrap_or("standard");
    let select = match architecture {
        "standard" => CodeSelect::Dense,
        "topk" => {
            let k = cfg["k"].as_u64().or_else(|| cfg["activation_fn_kwargs"]["k"].as_u64());
            CodeSelect::TopK { k: k.ok_or_else(|| bad(&cfg_path, "a topk SAE needs 'k'".into()))? as usize }
        }
        // What `export` writes for BatchTopK: every threshold equal (checked below), and k.
        // A BatchTopK SAE as `export` writes it (with k), or a JumpReLU one (a threshold per
        // latent; the bandwidth only matters to further training).
        "jumprelu" => match cfg["k"].as_u64() {
            Some(k) => CodeSelect::BatchTopK { k: k as usize, threshold: 0.0 },
            None => CodeSelect::JumpRelu {
                bandwidth: cfg["jumprelu_bandwidth"].as_f64().unwrap_or(JUMPRELU_BANDWIDTH) as f32,
                threshold_init: 0.1,
            },
        },
        other => {
            return Err(bad(
                &cfg_path,
                format!("architecture '{other}': sae reads standard, topk and its own jumprelu (BatchTopK) SAEs"),
            ));
        }
    };
    let normalize = cfg["normalize_activations"].as_str().unwrap_or("none");
    if normalize != "none" {
        return Err(bad(
            &cfg_path,
            format!("normalize_activations '{normalize}': sae applies no input normalisation; fold it into the weights first"),
        ));
    }
    let pre_bias = cfg["apply_b_dec_to_input"].as_bool().unwrap_or(true);
    let spec = ModelSpec::mirrored(&[d_in, d_sae], Activation::Relu, Activation::Relu, Activation::Identity)
        .and_then(|s| s.with_code(select, pre_bias))
        .map_err(|e| bad(&cfg_path, e))?;

    let weights_path = dir.join(WEIGHTS);
    let bytes = std::fs::read(&weights_path).map_err(|e| bad(&weights_path, format!("cannot read it ({e})")))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(&weights_path, format!("not safetensors ({e})")))?;
    let mut tensors = BTreeMap::new();
    for (name, shape) in
        [("W_enc", vec![d_in, d_sae]), ("W_dec", vec![d_sae, d_in]), ("b_enc", vec![d_sae]), ("b_dec", vec![d_in])]
    {
        let t = file.tensor(name).map_err(|_| bad(&weights_path, format!("no tensor '{name}'")))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(&weights_path, format!("'{name}' is {:?}; sae reads float32 SAEs", t.dtype())));
        }
        if t.shape() != shape.as_slice() {
            return Err(bad(
                &weights_path,
                format!("'{name}' is {:?} but cfg.json's d_in {d_in} and d_sae {d_sae} make it {shape:?}", t.shape()),
            ));
        }
        let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad(&weights_path, format!("'{name}' holds values that are not finite")));
        }
        tensors.insert(name, values);
    }
    let threshold_values = || -> Result<Vec<f32>> {
        let t = file.tensor("threshold").map_err(|_| bad(&weights_path, "a jumprelu SAE needs 'threshold'".into()))?;
        if t.dtype() != Dtype::F32 || t.shape() != [d_sae] {
            return Err(bad(&weights_path, format!("'threshold' must be float32 [{d_sae}]")));
        }
        let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(bad(&weights_path, "'threshold' holds a value that is not a finite number > 0".into()));
        }
        Ok(values)
    };
    let mut thresholds = Vec::new();
    let spec = match spec.select {
        CodeSelect::BatchTopK { k, .. } => {
            let values = threshold_values()?;
            let threshold = values[0];
            if values.iter().any(|&v| v != threshold) {
                return Err(bad(
                    &weights_path,
                    "'threshold' differs between latents but cfg.json gives k (a BatchTopK SAE has one threshold): drop k to read it as JumpReLU".into(),
                ));
            }
            ModelSpec { select: CodeSelect::BatchTopK { k, threshold }, ..spec }
        }
        CodeSelect::JumpRelu { .. } => {
            // The engine trains log theta.
            thresholds = threshold_values()?.iter().map(|v| v.ln()).collect();
            spec
        }
        _ => spec,
    };
    let params = Params {
        weights: vec![transpose(&tensors["W_enc"], d_in, d_sae), transpose(&tensors["W_dec"], d_sae, d_in)],
        biases: vec![tensors["b_enc"].clone(), tensors["b_dec"].clone()],
        thresholds,
    };
    Ok((spec, params))
}
