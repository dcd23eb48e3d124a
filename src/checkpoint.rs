//! Checkpoints: safetensors, f32 little-endian, tensors named as a PyTorch module with
//! attributes `enc1..encK`, `dec1..decK'` would name them (`enc1.weight` `[out, in]`,
//! `enc1.bias` `[out]`), so `load_state_dict` reads them. The model spec rides in the metadata
//! as JSON, so a checkpoint alone is enough to rebuild the model (docs/design.md section 6).

use crate::error::{Error, Result};
use crate::layout::tensor_names;
use crate::lbfgs::LbfgsState;
use crate::model::{ModelSpec, Params};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key holding `serde_json::to_string(&spec)`.
pub const SPEC_KEY: &str = "sae_spec";
const FORMAT: &str = "sae-wgpu";

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

/// The checkpoint file's bytes. Refuses non-finite parameters: `load` would reject the file.
pub fn to_bytes(spec: &ModelSpec, params: &Params) -> std::result::Result<Vec<u8>, String> {
    spec.validate()?;
    params.check_shapes(spec)?;
    if !params.all_finite() {
        return Err("the parameters hold NaN or Inf (training diverged): not saving them; \
                    retrain with a lower learning rate"
            .into());
    }
    let named = tensor_names(spec);
    // Explicit little-endian bytes, whatever the host's byte order.
    let bytes: Vec<Vec<u8>> = (0..spec.layers())
        .flat_map(|i| [&params.weights[i], &params.biases[i]])
        .chain((!params.thresholds.is_empty()).then_some(&params.thresholds))
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = named
        .iter()
        .zip(&bytes)
        .map(|((name, shape), b)| TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (name.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("internal error building tensors: {e}"))?;
    let spec_json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
    let metadata = HashMap::from([
        (SPEC_KEY.to_string(), spec_json),
        ("format".to_string(), FORMAT.to_string()),
        ("sizes".to_string(), join(&spec.sizes)),
        ("activations".to_string(), join(&spec.activations)),
        ("code_layer".to_string(), spec.code_layer.to_string()),
    ]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| format!("cannot serialize the checkpoint: {e}"))?;
    Ok(canonical_header(bytes))
}

/// Rewrites the JSON header with its keys sorted: `safetensors::serialize` takes the metadata
/// as a `HashMap`, whose order differs between processes, and the same run must give the same
/// bytes. Tensor offsets are relative to the data section, so the data is untouched; the header
/// is padded with spaces to a multiple of 8 bytes, as the format recommends.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("serialize wrote valid JSON");
    // serde_json's map is ordered by key (no preserve_order feature).
    let mut json = serde_json::to_vec(&header).expect("JSON value serialises");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Parses checkpoint bytes; `origin` (the file name) starts every error message.
pub fn from_bytes(bytes: &[u8], origin: &str) -> std::result::Result<(ModelSpec, Params), String> {
    from_bytes_as(bytes, origin, None)
}

/// The same, reading a file without the spec in its metadata (a plain PyTorch
/// `save_file(model.state_dict(), ...)`) as the model `given` describes.
pub fn from_bytes_as(
    bytes: &[u8],
    origin: &str,
    given: Option<&ModelSpec>,
) -> std::result::Result<(ModelSpec, Params), String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        format!("{origin}: not a readable safetensors file ({e}): is it truncated or another format? Use a checkpoint written by sae train")
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format!("{origin}: {e}"))?;
    let no_spec = |what: &str| {
        format!(
            "{origin}: {what}, so the model spec is unknown: was this written by sae train? For a PyTorch \
             state dict, give the model flags (--layers, and --decoder-layers or the --*-activation \
             flags where they are not the defaults)"
        )
    };
    let json = header.metadata().as_ref().and_then(|meta| meta.get(SPEC_KEY));
    let spec: ModelSpec = match (json, given) {
        (Some(json), _) => {
            let spec: ModelSpec = serde_json::from_str(json).map_err(|e| {
                format!("{origin}: the model spec in the metadata is not valid ({e}): re-save the checkpoint with sae train")
            })?;
            spec.validate().map_err(|e| format!("{origin}: the model spec in the metadata is invalid: {e}"))?;
            spec
        }
        (None, Some(spec)) => spec.clone(),
        (None, None) if header.metadata().is_none() => return Err(no_spec("the file has no metadata")),
        (None, None) => return Err(no_spec(&format!("the metadata has no '{SPEC_KEY}' entry"))),
    };

    let mut params = Params { weights: Vec::new(), biases: Vec::new(), thresholds: Vec::new() };
    let expected = tensor_names(&spec);
    for (name, shape) in &expected {
        let t = st.tensor(name).map_err(|_| {
            format!("{origin}: tensor '{name}' is missing but the spec's {}-layer model needs it: the file does not match its spec", spec.layers())
        })?;
        if t.dtype() != Dtype::F32 {
            return Err(format!(
                "{origin}: tensor '{name}' is {:?}, expected F32: convert it (e.g. .float() in PyTorch) before saving",
                t.dtype()
            ));
        }
        if t.shape() != &shape[..] {
            return Err(format!(
                "{origin}: tensor '{name}' has shape {:?} but the spec says {shape:?}: the file does not match its spec",
                t.shape()
            ));
        }
        let values: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{origin}: tensor '{name}' holds NaN or Inf at element {k}: the model diverged; retrain (e.g. with a lower learning rate)"
            ));
        }
        if name.ends_with(".weight") {
            params.weights.push(values);
        } else if name.ends_with(".log_threshold") {
            params.thresholds = values;
        } else {
            params.biases.push(values);
        }
    }
    let mut extra: Vec<&str> = st.names().into_iter().filter(|n| !expected.iter().any(|(e, _)| e == n)).collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(format!(
            "{origin}: unexpected tensors {extra:?} that the spec's model does not have: the file does not match its spec"
        ));
    }
    Ok((spec, params))
}

/// Writes the checkpoint atomically (temporary file + rename, like `data::save`).
/// A failure here (non-finite parameters, a directory that cannot be written) is a runtime one.
pub fn save(path: &Path, spec: &ModelSpec, params: &Params) -> Result<()> {
    let bytes = to_bytes(spec, params).map_err(|e| Error::Runtime(format!("{}: {e}", path.display())))?;
    crate::data::write_atomic(path, &bytes).map_err(|e| {
        Error::Runtime(format!(
            "{}: cannot write the checkpoint ({e}): check the directory exists and is writable",
            path.display()
        ))
    })
}

/// A file that cannot be read or is not a checkpoint of this tool is bad input.
pub fn load(path: &Path) -> Result<(ModelSpec, Params)> {
    load_as(path, None)
}

/// The same, reading a file without a spec (a PyTorch state dict) as the model `given`. A
/// directory holding an SAELens SAE (`cfg.json`, `sae_weights.safetensors`) is read as one.
pub fn load_as(path: &Path, given: Option<&ModelSpec>) -> Result<(ModelSpec, Params)> {
    if crate::saelens::is_saelens_dir(path) {
        return crate::saelens::import(path);
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Input(format!("{}: cannot read the checkpoint ({e}): check the path", path.display())))?;
    from_bytes_as(&bytes, &path.display().to_string(), given).map_err(Error::Input)
}

/// What a run needs besides its parameters to continue exactly where it stopped: the steps and
/// epochs done, the optimizer's state tensors (flat, in the device's parameter layout), and the
/// run's settings as `sae train` resolved them from its flags (JSON). Saved beside
/// `model.safetensors` as `train_state.safetensors` (docs/design.md section 6).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub steps_done: u64,
    pub epochs_done: usize,
    /// Minibatches of the next epoch already taken (a run interrupted inside an epoch).
    pub steps_into_epoch: u64,
    pub moments: Vec<Vec<f32>>,
    pub settings: String,
    /// An L-BFGS run's history and last step (f64 tensors `lbfgs.*`).
    pub lbfgs: Option<LbfgsState>,
    /// Samples since each code unit last fired (u32 tensor `since_fired`; empty when absent).
    pub since_fired: Vec<u32>,
}

/// `f64` values as little-endian bytes.
fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors of an L-BFGS state: name, shape, bytes (empty ones left out).
fn lbfgs_tensors(st: &LbfgsState) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let pairs = |v: &std::collections::VecDeque<Vec<f64>>| {
        let flat: Vec<f64> = v.iter().flatten().copied().collect();
        (vec![v.len(), v.front().map_or(0, Vec::len)], f64_bytes(&flat))
    };
    let (y_shape, y) = pairs(&st.y);
    let (s_shape, s) = pairs(&st.s);
    let ro: Vec<f64> = st.ro.iter().copied().collect();
    [
        ("lbfgs.scalars", vec![3], f64_bytes(&[st.t, st.h_diag, st.prev_loss])),
        ("lbfgs.d", vec![st.d.len()], f64_bytes(&st.d)),
        ("lbfgs.prev_grad", vec![st.prev_grad.len()], f64_bytes(&st.prev_grad)),
        ("lbfgs.y", y_shape, y),
        ("lbfgs.s", s_shape, s),
        ("lbfgs.ro", vec![ro.len()], f64_bytes(&ro)),
    ]
    .into_iter()
    .filter(|(_, _, b)| !b.is_empty())
    .map(|(n, shape, b)| (n.to_string(), shape, b))
    .collect()
}

const TRAIN_STATE_FORMAT: &str = "sae-wgpu-train-state";

/// Writes the train state atomically.
pub fn save_train_state(path: &Path, state: &TrainState) -> Result<()> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = state
        .moments
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (format!("moment{}", i + 1), Dtype::F32, vec![m.len()], m.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    if !state.since_fired.is_empty() {
        let bytes = state.since_fired.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push(("since_fired".into(), Dtype::U32, vec![state.since_fired.len()], bytes));
    }
    let mut metadata = HashMap::from([
        ("format".to_string(), TRAIN_STATE_FORMAT.to_string()),
        ("steps_done".to_string(), state.steps_done.to_string()),
        ("epochs_done".to_string(), state.epochs_done.to_string()),
        ("steps_into_epoch".to_string(), state.steps_into_epoch.to_string()),
        ("settings".to_string(), state.settings.clone()),
    ]);
    if let Some(st) = &state.lbfgs {
        tensors.extend(lbfgs_tensors(st).into_iter().map(|(n, shape, b)| (n, Dtype::F64, shape, b)));
        metadata.insert("lbfgs_iterations".into(), st.iterations.to_string());
        metadata.insert("lbfgs_evaluations".into(), st.evaluations.to_string());
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, b)| TensorView::new(*dtype, shape.clone(), b).map(|v| (name.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Runtime(format!("internal error building the train state: {e}")))?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Runtime(format!("{}: cannot serialize the train state: {e}", path.display())))?;
    crate::data::write_atomic(path, &canonical_header(bytes))
        .map_err(|e| Error::Runtime(format!("{}: cannot write the train state ({e})", path.display())))
}

/// Reads a train state; anything else is bad input naming the file.
pub fn load_train_state(path: &Path) -> Result<TrainState> {
    let bad = |what: String| Error::Input(format!("{}: {what}", path.display()));
    let bytes = std::fs::read(path)
        .map_err(|e| bad(format!("cannot read it ({e}): is this the --out directory of a sae train run?")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a train state ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a train state ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(TRAIN_STATE_FORMAT) {
        return Err(bad("not a train state of sae train".into()));
    }
    let number = |key: &str| {
        meta.get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad(format!("the metadata has no valid '{key}'")))
    };
    let mut moments = Vec::new();
    for i in 1.. {
        let Ok(t) = st.tensor(&format!("moment{i}")) else { break };
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("moment{i} is not f32")));
        }
        moments.push(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    }
    let since_fired = match st.tensor("since_fired") {
        Err(_) => Vec::new(),
        Ok(t) if t.dtype() == Dtype::U32 && t.shape().len() == 1 => {
            t.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Ok(_) => return Err(bad("since_fired is not a 1-D u32 tensor".into())),
    };
    let lbfgs = match meta.get("lbfgs_iterations") {
        None => None,
        Some(_) => {
            let tensor = |name: &str, rank: usize| -> Result<(Vec<usize>, Vec<f64>)> {
                let Ok(t) = st.tensor(name) else { return Ok((vec![0; rank], vec![])) };
                if t.dtype() != Dtype::F64 || t.shape().len() != rank {
                    return Err(bad(format!("{name} is not a {rank}-D f64 tensor")));
                }
                let values =
                    t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
                Ok((t.shape().to_vec(), values))
            };
            let (_, scalars) = tensor("lbfgs.scalars", 1)?;
            let (_, d) = tensor("lbfgs.d", 1)?;
            let (_, prev_grad) = tensor("lbfgs.prev_grad", 1)?;
            let (y_shape, y) = tensor("lbfgs.y", 2)?;
            let (s_shape, s) = tensor("lbfgs.s", 2)?;
            let (_, ro) = tensor("lbfgs.ro", 1)?;
            let p = d.len();
            if scalars.len() != 3
                || prev_grad.len() != p
                || y_shape != s_shape
                || y_shape[0] != ro.len()
                || (y_shape[0] > 0 && y_shape[1] != p)
            {
                return Err(bad("its L-BFGS tensors disagree in shape".into()));
            }
            let rows = |v: Vec<f64>| v.chunks(p.max(1)).map(<[f64]>::to_vec).collect();
            Some(LbfgsState {
                iterations: number("lbfgs_iterations")?,
                evaluations: number("lbfgs_evaluations")?,
                d,
                t: scalars[0],
                y: rows(y),
                s: rows(s),
                ro: ro.into(),
                h_diag: scalars[1],
                prev_grad,
                prev_loss: scalars[2],
            })
        }
    };
    Ok(TrainState {
        steps_done: number("steps_done")?,
        epochs_done: number("epochs_done")? as usize,
        // Absent in train states written before runs could stop inside an epoch.
        steps_into_epoch: if meta.contains_key("steps_into_epoch") { number("steps_into_epoch")? } else { 0 },
        moments,
        settings: meta.get("settings").cloned().ok_or_else(|| bad("the metadata has no 'settings'".into()))?,
        lbfgs,
        since_fired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;

    fn model() -> (ModelSpec, Params) {
        let spec = ModelSpec::mirrored(&[3, 2], Activation::Relu, Activation::Sigmoid, Activation::Identity).unwrap();
        let mut params = Params::init(&spec, 7);
        for (l, b) in params.biases.iter_mut().enumerate() {
            b.iter_mut().enumerate().for_each(|(j, v)| *v = 0.1 * (l + j) as f32 - 0.05);
        }
        (spec, params)
    }

    /// A safetensors file with a hand-picked tensor set and metadata.
    fn custom(tensors: &[(&str, Dtype, Vec<usize>)], meta: Option<HashMap<String, String>>) -> Vec<u8> {
        let data: Vec<Vec<u8>> =
            tensors.iter().map(|(_, d, s)| vec![0u8; s.iter().product::<usize>() * d.bitsize() / 8]).collect();
        let views =
            tensors.iter().zip(&data).map(|((n, d, s), b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()));
        safetensors::serialize(views, meta).unwrap()
    }

    fn spec_meta(spec: &ModelSpec) -> Option<HashMap<String, String>> {
        Some(HashMap::from([(SPEC_KEY.to_string(), serde_json::to_string(spec).unwrap())]))
    }

    /// The tensor set `model()` needs, with one entry replaced or removed.
    fn tensors_with(change: &str, to: Option<(Dtype, Vec<usize>)>) -> Vec<(&'static str, Dtype, Vec<usize>)> {
        let all =
            [("enc1.weight", vec![2, 3]), ("enc1.bias", vec![2]), ("dec1.weight", vec![3, 2]), ("dec1.bias", vec![3])];
        all.into_iter()
            .filter_map(|(n, s)| match (n == change, &to) {
                (false, _) => Some((n, Dtype::F32, s)),
                (true, Some((d, s))) => Some((n, *d, s.clone())),
                (true, None) => None,
            })
            .collect()
    }

    fn err(bytes: &[u8]) -> String {
        let e = from_bytes(bytes, "m.safetensors").expect_err("expected an error");
        assert!(e.starts_with("m.safetensors: ") && !e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let (spec, params) = model();
        let (spec2, params2) = from_bytes(&to_bytes(&spec, &params).unwrap(), "m").unwrap();
        assert_eq!(spec2, spec);
        let bits = |p: &Params| p.weights.iter().chain(&p.biases).flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&params2), bits(&params));
        assert_eq!(params2, params);
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!("sae-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let spec = ModelSpec::seed();
        let params = Params::init(&spec, 1);
        save(&path, &spec, &params).unwrap();
        assert_eq!(load(&path).unwrap(), (spec, params));
        let e = load(&dir.join("nope.safetensors")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("nope.safetensors") && e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metadata_is_human_readable() {
        let (spec, params) = model();
        let bytes = to_bytes(&spec, &params).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().as_ref().unwrap();
        assert_eq!(meta["format"], "sae-wgpu");
        assert_eq!(meta["sizes"], "3,2,3");
        assert_eq!(meta["activations"], "sigmoid,identity");
        assert_eq!(meta["code_layer"], "1");
    }

    #[test]
    fn truncated() {
        let (spec, params) = model();
        let bytes = to_bytes(&spec, &params).unwrap();
        for cut in [0, 5, 40, bytes.len() - 1] {
            let e = err(&bytes[..cut]);
            assert!(e.contains("not a readable safetensors file"), "{cut}: {e}");
        }
    }

    #[test]
    fn missing_metadata_or_spec() {
        let ok = tensors_with("", None);
        let e = err(&custom(&ok, None));
        assert!(e.contains("no metadata") && e.contains("sae train"), "{e}");
        let other = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        let e = err(&custom(&ok, other));
        assert!(e.contains(SPEC_KEY) && e.contains("sae train"), "{e}");
    }

    #[test]
    fn bad_spec_json() {
        let ok = tensors_with("", None);
        let meta = Some(HashMap::from([(SPEC_KEY.to_string(), "{\"sizes\": [3".to_string())]));
        assert!(err(&custom(&ok, meta)).contains("model spec in the metadata is not valid"));
        let (mut spec, _) = model();
        spec.sizes[2] = 4; // decoder no longer ends at the input width
        let e = err(&custom(&ok, spec_meta(&spec)));
        assert!(e.contains("model spec in the metadata is invalid"), "{e}");
    }

    #[test]
    fn missing_tensor() {
        let (spec, _) = model();
        let e = err(&custom(&tensors_with("dec1.bias", None), spec_meta(&spec)));
        assert!(e.contains("'dec1.bias' is missing"), "{e}");
    }

    #[test]
    fn wrong_shape() {
        let (spec, _) = model();
        let e = err(&custom(&tensors_with("enc1.weight", Some((Dtype::F32, vec![3, 2]))), spec_meta(&spec)));
        assert!(e.contains("'enc1.weight' has shape [3, 2] but the spec says [2, 3]"), "{e}");
    }

    #[test]
    fn wrong_dtype() {
        let (spec, _) = model();
        let e = err(&custom(&tensors_with("dec1.weight", Some((Dtype::F64, vec![3, 2]))), spec_meta(&spec)));
        assert!(e.contains("'dec1.weight' is F64, expected F32"), "{e}");
    }

    #[test]
    fn extra_tensor() {
        let (spec, _) = model();
        let mut t = tensors_with("", None);
        t.push(("enc2.weight", Dtype::F32, vec![1]));
        let e = err(&custom(&t, spec_meta(&spec)));
        assert!(e.contains("unexpected tensors [\"enc2.weight\"]"), "{e}");
    }

    #[test]
    fn non_finite_values() {
        let (spec, mut params) = model();
        assert!(to_bytes(&spec, &{
            let mut p = params.clone();
            p.weights[0][1] = f32::NAN;
            p
        })
        .unwrap_err()
        .contains("NaN or Inf"));
        // Patch an Inf over a marker value (found by its bytes: the data order is the crate's).
        params.biases[1][2] = 123.25;
        let mut bytes = to_bytes(&spec, &params).unwrap();
        let pat = 123.25f32.to_le_bytes();
        let at = bytes.windows(4).position(|w| w == pat).unwrap();
        bytes[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let e = err(&bytes);
        assert!(e.contains("'dec1.bias' holds NaN or Inf at element 2"), "{e}");
    }

    #[test]
    fn train_state_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("sae-train-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("train_state.safetensors");
        let state = TrainState {
            steps_done: 1234,
            epochs_done: 3,
            steps_into_epoch: 5,
            moments: vec![vec![0.5, -1.25, 3e-8], vec![1e-12, 0.0, 7.0]],
            settings: "{\"lr\":0.01}".into(),
            lbfgs: None,
            since_fired: vec![0, 32, u32::MAX],
        };
        save_train_state(&path, &state).unwrap();
        assert_eq!(load_train_state(&path).unwrap(), state);
        // An L-BFGS state: f64 values bit for bit, the pairs in order, empty history too.
        let lbfgs = LbfgsState {
            iterations: 7,
            evaluations: 11,
            d: vec![0.1, -2.5e-300, 3.0],
            t: 0.6180339887498949,
            y: vec![vec![1.0, 2.0, 3.0], vec![-1.0, 1e-17, 0.0]].into(),
            s: vec![vec![0.5, 0.25, 0.125], vec![9.0, 8.0, 7.0]].into(),
            ro: vec![1.0 / 3.0, 2.0f64.sqrt()].into(),
            h_diag: 0.123456789,
            prev_grad: vec![4.0, 5.0, 6.0],
            prev_loss: 0.3000000000000001,
        };
        for lbfgs in [
            lbfgs.clone(),
            LbfgsState { y: Default::default(), s: Default::default(), ro: Default::default(), ..lbfgs },
        ] {
            let state = TrainState { moments: vec![], lbfgs: Some(lbfgs), ..state.clone() };
            save_train_state(&path, &state).unwrap();
            assert_eq!(load_train_state(&path).unwrap(), state);
        }
        // A model checkpoint is not a train state.
        let (spec, params) = model();
        save(&dir.join("model.safetensors"), &spec, &params).unwrap();
        let e = load_train_state(&dir.join("model.safetensors")).unwrap_err().to_string();
        assert!(e.contains("not a train state"), "{e}");
        let e = load_train_state(&dir.join("absent.safetensors")).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
