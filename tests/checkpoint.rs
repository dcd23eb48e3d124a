//! The checkpoint contract (docs/design.md section 6), checked from outside: a file written by
//! `checkpoint::save` is read back with the `safetensors` crate alone, and a forward pass in
//! PyTorch's `nn.Linear` convention (`y = x W^T + b`) over the raw tensors must match the
//! reference model. This is what a PyTorch `load_state_dict` user relies on.

use sae_wgpu::checkpoint;
use sae_wgpu::model::{LossConfig, ModelSpec, Params, Rng};
use sae_wgpu::reference;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sae-ckpt-it-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The seed model with non-zero biases, so a bias mix-up cannot pass.
fn seed_model() -> (ModelSpec, Params) {
    let spec = ModelSpec::seed();
    let mut params = Params::init(&spec, 42);
    let mut rng = Rng::new(9);
    for b in &mut params.biases {
        b.iter_mut().for_each(|v| *v = (rng.next_f64() - 0.5) as f32);
    }
    (spec, params)
}

/// An activation by the name the metadata gives it, written out here on purpose.
fn activate(name: &str, z: f64) -> f64 {
    match name {
        "identity" => z,
        "relu" => z.max(0.0),
        "sigmoid" => 1.0 / (1.0 + (-z).exp()),
        "tanh" => z.tanh(),
        other => panic!("unknown activation '{other}' in the metadata"),
    }
}

fn f32s(bytes: &[u8]) -> Vec<f64> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
}

#[test]
fn safetensors_file_is_a_pytorch_state_dict() {
    let (spec, params) = seed_model();
    let path = temp_dir("state_dict").join("seed.safetensors");
    checkpoint::save(&path, &spec, &params).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();

    // Names: enc1..enc3 and dec1..dec3, a weight and a bias each.
    let names: BTreeSet<String> = st.names().into_iter().map(String::from).collect();
    let expected: BTreeSet<String> = ["enc1", "enc2", "enc3", "dec1", "dec2", "dec3"]
        .iter()
        .flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")])
        .collect();
    assert_eq!(names, expected);

    // Metadata: the spec as a JSON object.
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().expect("metadata present");
    let json: serde_json::Value = serde_json::from_str(&meta[checkpoint::SPEC_KEY]).unwrap();
    let obj = json.as_object().expect("spec is a JSON object");
    let sizes: Vec<usize> = obj["sizes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let acts: Vec<&str> = obj["activations"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let code = obj["code_layer"].as_u64().unwrap() as usize;
    assert_eq!(sizes, [20, 80, 40, 4, 40, 80, 20]);
    assert_eq!(acts.len(), sizes.len() - 1);
    assert_eq!(code, 3);
    assert_eq!(meta["sizes"], "20,80,40,4,40,80,20");

    // Forward pass by hand from the raw tensors: layer l is enc{l} up to the code, then dec*.
    let m = 5;
    let mut rng = Rng::new(3);
    let x: Vec<f64> = (0..m * sizes[0]).map(|_| rng.next_f64() as f32 as f64).collect();
    let mut a = x.clone();
    for l in 1..sizes.len() {
        let name = if l <= code { format!("enc{l}") } else { format!("dec{}", l - code) };
        let w = st.tensor(&format!("{name}.weight")).unwrap();
        let b = st.tensor(&format!("{name}.bias")).unwrap();
        let (n_out, n_in) = (sizes[l], sizes[l - 1]);
        assert_eq!((w.dtype(), w.shape()), (Dtype::F32, &[n_out, n_in][..]), "{name}.weight");
        assert_eq!((b.dtype(), b.shape()), (Dtype::F32, &[n_out][..]), "{name}.bias");
        let (w, b) = (f32s(w.data()), f32s(b.data()));
        let mut next = vec![0.0; m * n_out];
        for i in 0..m {
            for j in 0..n_out {
                let dot: f64 = (0..n_in).map(|p| a[i * n_in + p] * w[j * n_in + p]).sum();
                next[i * n_out + j] = activate(acts[l - 1], dot + b[j]);
            }
        }
        a = next;
    }

    let model = reference::Model::new(&spec, &params);
    let fwd = reference::forward(&model, &LossConfig::default(), &x, m);
    let want = fwd.xhat();
    assert_eq!(a.len(), want.len());
    for (k, (&got, &want)) in a.iter().zip(want).enumerate() {
        let rel = (got - want).abs() / want.abs().max(1e-300);
        assert!(rel < 1e-12, "element {k}: {got} vs reference {want}");
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn load_rejects_truncated_and_mismatched_files() {
    let (spec, params) = seed_model();
    let dir = temp_dir("rejects");

    let truncated = dir.join("truncated.safetensors");
    let bytes = checkpoint::to_bytes(&spec, &params).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&truncated).unwrap_err().to_string();
    assert!(e.contains("truncated.safetensors"), "{e}");

    // A spec that says the code is 5 wide beside tensors for a 4-wide code.
    let mut other = spec.clone();
    other.sizes[3] = 5;
    let good = dir.join("good.safetensors");
    checkpoint::save(&good, &spec, &params).unwrap();
    let good_bytes = std::fs::read(&good).unwrap();
    let st = SafeTensors::deserialize(&good_bytes).unwrap();
    let mut meta = SafeTensors::read_metadata(&good_bytes).unwrap().1.metadata().clone().unwrap();
    meta.insert(checkpoint::SPEC_KEY.into(), serde_json::to_string(&other).unwrap());
    let mismatched = dir.join("mismatched.safetensors");
    std::fs::write(&mismatched, safetensors::serialize(st.tensors(), Some(meta)).unwrap()).unwrap();
    let e = checkpoint::load(&mismatched).unwrap_err().to_string();
    assert!(e.contains("mismatched.safetensors") && e.contains("enc3.weight"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
