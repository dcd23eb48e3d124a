//! Deterministic fuzzing of every loader a user's file reaches: `.npy`, `.csv` and safetensors
//! checkpoints. Seeded mutations of valid files (bytes flipped, inserted, deleted, duplicated,
//! truncated; text characters swapped for digits, signs, separators and line ends; npy header
//! fields rewritten), plus random bytes. Each parser must return, never panic: an error is one
//! line naming the file; a success is a consistent matrix of finite values (or, for a checkpoint,
//! parameters of the spec's shapes). No adapter is needed.

use sae_wgpu::checkpoint;
use sae_wgpu::data::{self, Dataset};
use sae_wgpu::model::{Activation, ModelSpec, Params, Rng};
use std::path::Path;

const CASES: usize = 50_000;

/// One mutation of `base`, chosen and placed by `rng`.
fn mutate(rng: &mut Rng, base: &[u8], text: bool) -> Vec<u8> {
    let mut b = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let at = if b.is_empty() { 0 } else { rng.below(b.len()) };
        match rng.below(8) {
            0 if !b.is_empty() => b[at] = rng.next_u64() as u8,
            1 => b.truncate(at),
            2 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            3 if !b.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let copy = b[at..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, copy);
            }
            4 if !b.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at..end);
            }
            5 | 6 if text && !b.is_empty() => {
                let alphabet = b"0123456789.,-+eE\n\r naNIfx\"'";
                b[at] = alphabet[rng.below(alphabet.len())];
            }
            _ if !b.is_empty() => {
                // Digits that make huge numbers: shapes, lengths, exponents.
                let digits: Vec<u8> = (0..1 + rng.below(24)).map(|_| b'0' + rng.below(10) as u8).collect();
                let end = (at + 1 + rng.below(4)).min(b.len());
                b.splice(at..end, digits);
            }
            _ => b.extend((0..rng.below(32)).map(|_| rng.next_u64() as u8)),
        }
    }
    b
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    (0..rng.below(512)).map(|_| rng.next_u64() as u8).collect()
}

/// A loader's answer is sane: an error is one line naming the file; data is consistent.
fn check_data(result: sae_wgpu::Result<Dataset>, name: &str, case: usize) {
    match result {
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains('\n') && e.contains(name), "case {case}: error not one line naming {name}: {e}");
        }
        Ok(d) => {
            assert!(d.rows > 0 && d.cols > 0, "case {case}: empty data accepted");
            assert_eq!(d.values.len(), d.rows * d.cols, "case {case}: inconsistent shape");
            assert!(d.values.iter().all(|v| v.is_finite()), "case {case}: non-finite value accepted");
        }
    }
}

fn sample() -> Dataset {
    let mut rng = Rng::new(1);
    Dataset { rows: 7, cols: 5, values: (0..35).map(|_| rng.next_f64() as f32 * 4.0 - 2.0).collect() }
}

fn saved(name: &str, data: &Dataset) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("sae-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    data::save(&path, data).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

#[test]
fn npy_loader_survives_mutations() {
    let base = saved("x.npy", &sample());
    let path = Path::new("fuzz.npy");
    check_data(data::parse_npy(&base, path), "fuzz.npy", 0);
    let mut rng = Rng::new(11);
    for case in 1..=CASES {
        let bytes = if case % 10 == 0 { random_bytes(&mut rng) } else { mutate(&mut rng, &base, case % 3 == 0) };
        check_data(data::parse_npy(&bytes, path), "fuzz.npy", case);
    }
}

#[test]
fn csv_loader_survives_mutations() {
    let base = saved("x.csv", &sample());
    let path = Path::new("fuzz.csv");
    check_data(data::parse_csv(base.clone(), path), "fuzz.csv", 0);
    let mut rng = Rng::new(12);
    for case in 1..=CASES {
        let bytes = if case % 10 == 0 { random_bytes(&mut rng) } else { mutate(&mut rng, &base, true) };
        check_data(data::parse_csv(bytes, path), "fuzz.csv", case);
    }
}

#[test]
fn checkpoint_loader_survives_mutations() {
    let spec = ModelSpec::mirrored(&[6, 4, 3], Activation::Relu, Activation::Sigmoid, Activation::Sigmoid).unwrap();
    let base = checkpoint::to_bytes(&spec, &Params::init(&spec, 3)).unwrap();
    let mut rng = Rng::new(13);
    let mut loaded = 0;
    for case in 0..=CASES {
        let bytes = match case {
            0 => base.clone(),
            c if c % 10 == 0 => random_bytes(&mut rng),
            _ => mutate(&mut rng, &base, case % 2 == 0),
        };
        match checkpoint::from_bytes(&bytes, "fuzz.safetensors") {
            Err(e) => assert!(
                !e.contains('\n') && e.starts_with("fuzz.safetensors"),
                "case {case}: error not one line naming the file: {e}"
            ),
            Ok((spec, params)) => {
                loaded += 1;
                params.check_shapes(&spec).unwrap_or_else(|e| panic!("case {case}: shapes: {e}"));
                assert!(params.all_finite(), "case {case}: non-finite parameters accepted");
            }
        }
    }
    assert!(loaded >= 1, "the valid checkpoint must load");
}

/// Config files (`--config`, TOML and JSON): every mutation parses or fails with one line naming
/// the file; whatever parses is validated as `sae train` would (`cli::train::validate`), which
/// must answer without a panic, any error on one line. The built-in dataset's size is capped
/// here (a config may ask for 2^28 samples, which `sae train` checks against the memory there is;
/// generating them for every case would take minutes), and files a mutated config names are
/// looked for in a directory that does not exist.
#[test]
fn config_loader_survives_mutations() {
    use sae_wgpu::cli::train::{parse_config, validate};
    let toml = "layers = \"20,8,4\"\nsparsity = \"kl-freq\"\nrho = 0.05\nbeta = 3.0\ntemperature = 0.5\nlr = 0.01\n\
                frequency-control = 0.02\ndead-after = 500\n\
                optimizer = \"adamw\"\nadam-betas = \"0.9,0.99\"\nlr-schedule = \"cosine\"\nwarmup-steps = 10\n\
                batch-size = 16\nepochs = 2\nsamples = 64\nvalidation-split = 0.25\nweight-decay = 1e-4\n\
                image-shape = \"4x5\"\nout = \"/nonexistent-sae-fuzz/out\"\n";
    let json = r#"{"preset": "classic", "layers": "20,8,4", "optimizer": "lbfgs", "lbfgs-history": 5, "epochs": 3, "samples": 64,
                  "rho": 0.1, "beta": 1, "no-shuffle": true, "seed": 7, "checkpoint-every": 1,
                  "out": "/nonexistent-sae-fuzz/out", "path": "layered", "report": true}"#;
    let mut validated = 0;
    for (name, base, seed) in [("fuzz.toml", toml, 14), ("fuzz.json", json, 15)] {
        let path = Path::new(name);
        let mut rng = Rng::new(seed);
        for case in 0..=CASES / 5 {
            let bytes = match case {
                0 => base.as_bytes().to_vec(),
                c if c % 10 == 0 => random_bytes(&mut rng),
                _ => mutate(&mut rng, base.as_bytes(), true),
            };
            match parse_config(&bytes, path) {
                Err(e) if case > 0 => {
                    let e = e.to_string();
                    assert!(!e.contains('\n') && e.contains(name), "{name} case {case}: not one line naming it: {e}");
                }
                Ok(s) => {
                    // Cap what a config may legitimately ask for (see above); keep the rest.
                    let result = validate(s.capped_for_fuzzing(64, Path::new("/nonexistent-sae-fuzz")));
                    if let Err(e) = result {
                        assert!(case != 0, "the valid {name} must pass validation: {e}");
                        let e = e.to_string();
                        assert!(!e.contains('\n'), "{name} case {case}: validation error on two lines: {e}");
                    }
                    validated += 1;
                }
                Err(e) => panic!("the valid {name} must parse: {e}"),
            }
        }
    }
    assert!(validated > 100, "only {validated} mutated configs parsed: the mutations are too destructive");
}
