//! End-to-end tests of the `sae` binary (docs/design.md section 6): every bad input the CLI promises
//! to reject exits 2 with one clear `error: ...` line naming the file/row/column or flag and
//! leaves nothing in `--out`; runtime failures (divergence) exit 1; and the happy paths write
//! the files they promise.
//!
//! GPU work runs on whatever adapter wgpu picks (lavapipe in CI), so every run is tiny.

use sae_wgpu::checkpoint;
use sae_wgpu::data;
use sae_wgpu::model::{Activation, ModelSpec};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh directory per test (pid + test name), removed when the test ends.
struct Tmp {
    dir: PathBuf,
}

impl Tmp {
    fn new(test: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("sae-cli-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Mesa warns when XDG_RUNTIME_DIR is unset or not private; give the child its own.
        let xdg = dir.join("xdg");
        fs::create_dir_all(&xdg).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700)).unwrap();
        }
        Tmp { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to `name` in the temp dir.
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs `sae` with `args`.
    fn sae<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_sae"))
            .args(args)
            .env("XDG_RUNTIME_DIR", self.path("xdg"))
            .output()
            .expect("runs the sae binary");
        if std::env::var_os("SAE_CLI_VERBOSE").is_some() {
            eprintln!("--- sae {:?}\n{}", args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(), stderr(&out));
        }
        out
    }

    /// A checkpoint written by a tiny `sae train` of the classic preset: the 20-80-40-4 seed
    /// model, whose sigmoid code lies in (0, 1).
    fn trained_model(&self) -> PathBuf {
        self.trained("classic")
    }

    /// The same with the default (forum) preset: the post's all-ReLU model.
    fn trained_forum_model(&self) -> PathBuf {
        self.trained("forum")
    }

    fn trained(&self, preset: &str) -> PathBuf {
        let dir = self.path(&format!("trained_{preset}"));
        let args = ["--preset", preset, "--samples", "128", "--epochs", "1", "--batch-size", "64", "--out", s(&dir)];
        let out = self.sae(&[&["train"], &args[..]].concat());
        assert_eq!(out.status.code(), Some(0), "tiny train failed: {}", stderr(&out));
        dir.join("model.safetensors")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_under(&p));
        } else {
            found.push(p);
        }
    }
    found
}

/// No temporary file (`.name.tmp-PID`) anywhere under `dir`.
fn assert_no_tmp_files(dir: &Path) {
    let tmp: Vec<_> = files_under(dir).into_iter().filter(|p| p.to_string_lossy().contains(".tmp")).collect();
    assert!(tmp.is_empty(), "temporary files left behind: {tmp:?}");
}

/// `out` either does not exist or holds no files.
fn assert_no_output(out: &Path) {
    let files = files_under(out);
    assert!(files.is_empty(), "bad input must be caught before anything is written, but found {files:?}");
}

/// Exit code `code`, exactly one `error: ` line on stderr, and that line contains every
/// string in `needles`. Returns the line.
fn assert_error(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr:\n{err}\nstdout:\n{}", stdout(out));
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "exactly one `error: ` line expected on stderr:\n{err}");
    let line = lines[0];
    for n in needles {
        assert!(line.contains(n), "the error should mention {n:?}: {line}");
    }
    line.to_string()
}

/// Exit 2, one clear error line naming `needles`, and no files (and no temporaries) in `out`.
fn assert_bad_input(t: &Tmp, out: &Output, out_dir: &Path, needles: &[&str]) -> String {
    let line = assert_error(out, 2, needles);
    assert_no_output(out_dir);
    assert_no_tmp_files(&t.dir);
    line
}

/// `rows` x `cols` numbers in (0, 1), as CSV text without a header.
fn csv_text(rows: usize, cols: usize) -> String {
    let mut text = String::new();
    for i in 0..rows {
        let cells: Vec<String> =
            (0..cols).map(|j| format!("{:.4}", 0.05 + 0.9 * ((i * 7 + j * 3) % 11) as f64 / 10.0)).collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    text
}

/// An npy v1.0 file: magic, version, u16 header length, the dict padded with spaces so the
/// data starts at a multiple of 64, a newline, then `data`.
fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    sae_wgpu::data::npy_file(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"), data)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs `sae train` on `data` with tiny settings and `--out`; returns (output, out dir).
fn train_on(t: &Tmp, data: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let out_dir = t.path("out");
    let mut args = vec!["train", "--data", s(data), "--epochs", "1", "--batch-size", "64", "--out", s(&out_dir)];
    args.extend_from_slice(extra);
    (t.sae(&args), out_dir)
}

/// Runs `sae train` on the built-in data (64 samples) with `flags`; asserts bad input naming
/// `needles`, with nothing written to `--out`.
/// `sae train` on a data file `name` holding `bytes` exits 2 with one line holding every needle,
/// and writes nothing.
fn data_rejected(test: &str, name: &str, bytes: impl AsRef<[u8]>, needles: &[&str]) {
    let t = Tmp::new(test);
    let p = t.write(name, bytes);
    let (out, dir) = train_on(&t, &p, &[]);
    assert_bad_input(&t, &out, &dir, needles);
}

/// `csv_text(4, 20)` with the cell at row 3, column 2 (1-based) replaced by `cell`.
fn csv_with_cell(cell: &str) -> String {
    let mut lines: Vec<String> = csv_text(4, 20).lines().map(String::from).collect();
    let mut cells: Vec<&str> = lines[2].split(',').collect();
    cells[1] = cell;
    lines[2] = cells.join(",");
    lines.join("\n")
}

/// `sae train --config` of a file `name` holding `text` exits 2 with one line holding every
/// needle, and writes nothing.
fn config_rejected(test: &str, name: &str, text: &str, needles: &[&str]) {
    let t = Tmp::new(test);
    let cfg = t.write(name, text);
    let out_dir = t.path("out");
    let out = t.sae(&["train", "--samples", "64", "--epochs", "1", "--config", s(&cfg), "--out", s(&out_dir)]);
    assert_bad_input(&t, &out, &out_dir, needles);
}

fn train_flags_rejected(test: &str, flags: &[&str], needles: &[&str]) {
    let t = Tmp::new(test);
    let out_dir = t.path("out");
    let mut args = vec!["train", "--samples", "64", "--epochs", "1", "--batch-size", "64", "--out", s(&out_dir)];
    args.extend_from_slice(flags);
    let out = t.sae(&args);
    assert_bad_input(&t, &out, &out_dir, needles);
}

/// Parses `metrics.jsonl`.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn config_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("config.json")).expect("config.json")).expect("valid JSON")
}

// ---------------------------------------------------------------------------------------------
// Bad data files: exit 2, file/row/column named, nothing written
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_data_file() {
    let t = Tmp::new("missing_data_file");
    let (out, dir) = train_on(&t, &t.path("nope.csv"), &[]);
    assert_bad_input(&t, &out, &dir, &["nope.csv", "cannot read"]);
}

#[test]
fn empty_data_files() {
    let t = Tmp::new("empty_data_files");
    for name in ["empty.csv", "empty.npy"] {
        let p = t.write(name, b"");
        let (out, dir) = train_on(&t, &p, &[]);
        assert_bad_input(&t, &out, &dir, &[name, "no samples"]);
    }
    let p = t.write("header_only.csv", "a,b,c\n");
    let (out, dir) = train_on(&t, &p, &[]);
    assert_bad_input(&t, &out, &dir, &["header_only.csv", "no samples"]);
}

#[test]
fn ragged_csv_row() {
    let t = Tmp::new("ragged_csv_row");
    let mut text = csv_text(4, 20);
    // Row 3 (a line number in the file) loses its last cell.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let cut = lines[2].rfind(',').unwrap();
    lines[2].truncate(cut);
    text = lines.join("\n") + "\n";
    let p = t.write("ragged.csv", text);
    let (out, dir) = train_on(&t, &p, &[]);
    assert_bad_input(&t, &out, &dir, &["ragged.csv", "row 3", "19 columns", "expected 20"]);
}

#[test]
fn non_numeric_csv_cell() {
    let needles = ["text.csv", "row 3, column 2", "\"abc\"", "not a number"];
    data_rejected("non_numeric_csv_cell", "text.csv", csv_with_cell("abc"), &needles);
}

#[test]
fn nan_in_csv() {
    data_rejected("nan_in_csv", "nan.csv", csv_with_cell("NaN"), &["nan.csv", "row 3, column 2", "not a finite"]);
}

#[test]
fn inf_in_npy() {
    let mut values = vec![0.5f32; 4 * 20];
    values[2 * 20 + 1] = f32::INFINITY; // row 3, column 2 (1-based)
    let npy = npy_bytes("<f4", "(4, 20)", &f32_bytes(&values));
    data_rejected("inf_in_npy", "inf.npy", npy, &["inf.npy", "row 3, column 2", "not a finite"]);
}

#[test]
fn width_mismatch() {
    data_rejected("width_mismatch", "five.csv", csv_text(8, 5), &["five.csv", "5 columns", "20", "--layers"]);
}

#[test]
fn npy_wrong_rank() {
    let t = Tmp::new("npy_wrong_rank");
    let p = t.write("one_d.npy", npy_bytes("<f4", "(6,)", &f32_bytes(&[0.5; 6])));
    let (out, dir) = train_on(&t, &p, &[]);
    assert_bad_input(&t, &out, &dir, &["one_d.npy", "1-D", "2-D"]);
    let p = t.write("three_d.npy", npy_bytes("<f4", "(2, 2, 5)", &f32_bytes(&[0.5; 20])));
    let (out, dir) = train_on(&t, &p, &[]);
    assert_bad_input(&t, &out, &dir, &["three_d.npy", "3-D", "2-D"]);
}

#[test]
fn npy_unsupported_dtype() {
    let data: Vec<u8> = (0..4 * 20).flat_map(|i: i32| i.to_le_bytes()).collect();
    let npy = npy_bytes("<i4", "(4, 20)", &data);
    data_rejected("npy_unsupported_dtype", "ints.npy", npy, &["ints.npy", "'<i4'", "f32 or f64"]);
}

#[test]
fn unsupported_data_extension() {
    data_rejected("unsupported_data_extension", "data.txt", csv_text(4, 20), &["data.txt", ".npy", ".csv"]);
}

// ---------------------------------------------------------------------------------------------
// Bad flags and config files
// ---------------------------------------------------------------------------------------------

/// One test per bad flag: `sae train` with the flags exits 2 with one line holding every needle.
macro_rules! rejected {
    ($($name:ident: $flags:expr => $needles:expr;)*) => {
        $(
            #[test]
            fn $name() {
                train_flags_rejected(stringify!($name), $flags, $needles);
            }
        )*
    };
}

rejected! {
    rho_zero: &["--rho", "0"] => &["--rho"];
    rho_above_one: &["--rho", "1.5"] => &["--rho", "1.5"];
    beta_negative: &["--beta=-1"] => &["--beta", "-1"];
    lr_zero: &["--lr", "0"] => &["--lr"];
    lr_nan: &["--lr", "nan"] => &["--lr", "NaN"];
    lr_negative: &["--lr=-0.1"] => &["--lr", "-0.1"];
    batch_size_zero: &["--batch-size", "0"] => &["--batch-size"];
    temperature_zero: &["--sparsity", "kl-freq", "--temperature", "0"] => &["--temperature"];
    temperature_inf: &["--sparsity", "kl-freq", "--temperature", "inf"] => &["--temperature"];
    layers_zero_width: &["--layers", "20,0,4"] => &["--layers", "20,0,4", "0"];
    layers_not_a_number: &["--layers", "20,x,4"] => &["--layers", "20,x,4", "'x'"];
    sparsity_unknown: &["--sparsity", "bogus"] => &["--sparsity", "bogus", "kl-freq"];
    validation_split_too_large: &["--validation-split", "1.5"] => &["--validation-split", "1.5"];
    optimizer_unknown: &["--optimizer", "rmsprop"] => &["--optimizer", "rmsprop", "adamw"];
    momentum_negative: &["--optimizer", "momentum", "--momentum=-0.1"] => &["--momentum", "-0.1"];
    adam_beta_one: &["--optimizer", "adam", "--adam-betas", "0.9,1.0"] => &["--adam-betas", "[0, 1)"];
    adam_beta_negative: &["--optimizer", "adamw", "--adam-betas=-0.1,0.999"] => &["--adam-betas"];
    adam_betas_not_two: &["--adam-betas", "0.9"] => &["--adam-betas", "two numbers"];
    adam_eps_negative: &["--optimizer", "adam", "--adam-eps=-1e-8"] => &["--adam-eps"];
    lr_schedule_unknown: &["--lr-schedule", "step"] => &["--lr-schedule", "cosine"];
    lr_min_above_lr: &["--lr-schedule", "linear", "--lr", "0.01", "--lr-min", "0.1"] => &["--lr-min", "0.1"];
    clip_grad_norm_zero: &["--clip-grad-norm", "0"] => &["--clip-grad-norm"];
    stop_after_epoch_zero: &["--stop-after-epoch", "0"] => &["--stop-after-epoch"];
    lr_zero_in_f32: &["--lr", "1e-50"] => &["--lr", "f32"];
    layer_width_huge: &["--layers", "20,100000000000000,4"] => &["--layers", "smaller widths"];
    temperature_zero_in_f32: &["--sparsity", "kl-freq", "--temperature", "1e-50"] => &["--temperature", "f32"];
}

/// Every metrics line carries the learning rate and the sparsity weight of its step: a linear
/// warm-up over 4 steps, then a linear decay to --lr-min at the last step; beta ramping up over 8
/// steps. A warm-up longer than the run is allowed, with a note.
#[test]
fn lr_schedule_reaches_metrics() {
    let t = Tmp::new("lr_schedule_metrics");
    let out_dir = t.path("out");
    let flags = ["--samples", "64", "--batch-size", "8", "--epochs", "2", "--log-every", "1", "--lr", "0.02"];
    let mut args = vec!["train", "--out", s(&out_dir), "--lr-schedule", "linear", "--warmup-steps", "4"];
    args.extend_from_slice(&flags);
    args.extend_from_slice(&["--lr-min", "0.004", "--optimizer", "momentum", "--beta-warmup-steps", "8"]);
    let out = t.sae(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let steps: Vec<(u64, f64, f64)> = metrics(&out_dir)
        .iter()
        .filter(|l| l["kind"] == "step")
        .map(|l| (l["step"].as_u64().unwrap(), l["lr"].as_f64().unwrap(), l["beta"].as_f64().unwrap()))
        .collect();
    assert_eq!(steps.len(), 16, "a step line per step");
    for (step, lr, beta) in steps {
        let want_beta = 3.0 * (step as f64 / 8.0).min(1.0);
        assert!((beta - want_beta).abs() < 1e-12, "step {step}: beta {beta}, want {want_beta}");
        // 16 steps: warm-up 1..=4, then p = (t - 4) / 12 of the way from 0.02 to 0.004.
        let want = if step <= 4 { 0.02 * step as f64 / 4.0 } else { 0.004 + 0.016 * (1.0 - (step - 4) as f64 / 12.0) };
        assert!((lr - want).abs() < 1e-12, "step {step}: lr {lr}, want {want}");
    }
    let epoch = metrics(&out_dir).into_iter().find(|l| l["kind"] == "epoch").expect("an epoch line");
    assert_eq!(epoch["step"].as_u64(), Some(8));
    assert_eq!(epoch["beta"].as_f64(), Some(3.0), "the epoch line's J uses the next step's beta");

    let t = Tmp::new("lr_warmup_longer_than_run");
    let out = t.sae(&["train", "--samples", "64", "--batch-size", "32", "--epochs", "1", "--warmup-steps", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("--warmup-steps 10") && stderr(&out).contains("2 steps"), "{}", stderr(&out));
}

#[test]
fn kl_needs_sigmoid_code() {
    let line = {
        let t = Tmp::new("kl_needs_sigmoid_code");
        let out_dir = t.path("out");
        let out = t.sae(&[
            "train",
            "--samples",
            "64",
            "--epochs",
            "1",
            "--out",
            s(&out_dir),
            "--sparsity",
            "kl",
            "--code-activation",
            "relu",
        ]);
        assert_bad_input(&t, &out, &out_dir, &["--sparsity", "kl-freq", "sigmoid"])
    };
    assert!(line.contains("relu"), "names the code activation it found: {line}");
}

#[test]
fn epochs_and_intervals_zero() {
    train_flags_rejected("epochs_zero", &["--epochs", "0"], &["--epochs"]);
    train_flags_rejected("log_every_zero", &["--log-every", "0"], &["--log-every"]);
    train_flags_rejected("checkpoint_every_zero", &["--checkpoint-every", "0"], &["--checkpoint-every"]);
    train_flags_rejected("steps_per_submit_zero", &["--steps-per-submit", "0"], &["--steps-per-submit"]);
}

#[test]
fn unknown_or_impossible_path() {
    train_flags_rejected("unknown_path", &["--path", "diagonal"], &["--path", "diagonal"]);
    // The fused path takes layers up to 128 wide.
    train_flags_rejected("fused_too_wide", &["--path", "fused", "--layers", "20,200,4"], &["--path", "128"]);
}

#[test]
fn unknown_activation_and_backend() {
    train_flags_rejected("unknown_activation", &["--hidden-activation", "gelu"], &["--hidden-activation", "gelu"]);
    train_flags_rejected("unknown_backend", &["--backend", "glide"], &["--backend"]);
}

#[test]
fn config_toml_unknown_key() {
    config_rejected(
        "config_toml_unknown_key",
        "settings.toml",
        "lr = 0.1\nlearning-rate = 0.2\n",
        &["--config", "settings.toml", "learning-rate"],
    );
}

#[test]
fn config_json_malformed() {
    config_rejected(
        "config_json_malformed",
        "settings.json",
        "{\"lr\": 0.1,, \"epochs\": 1",
        &["--config", "settings.json"],
    );
}

#[test]
fn config_values_are_validated_like_flags() {
    config_rejected("config_values_are_validated", "settings.toml", "rho = 2.0\n", &["rho", "2"]);
}

#[test]
fn config_missing_file() {
    let t = Tmp::new("config_missing_file");
    let out_dir = t.path("out");
    let cfg = t.path("absent.toml");
    let out = t.sae(&["train", "--samples", "64", "--config", s(&cfg), "--out", s(&out_dir)]);
    assert_bad_input(&t, &out, &out_dir, &["--config", "absent.toml"]);
}

// ---------------------------------------------------------------------------------------------
// Bad checkpoints
// ---------------------------------------------------------------------------------------------

/// A safetensors file whose metadata says the seed model (20-80-40-4-40-80-20) but whose
/// `enc1.weight` is [80, 19].
fn mismatched_checkpoint(t: &Tmp) -> PathBuf {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    use std::collections::HashMap;
    let spec = ModelSpec::seed();
    let mut shapes = Vec::new();
    for l in 1..=spec.layers() {
        let (n_out, n_in) = spec.shape(l);
        let name = spec.layer_name(l);
        let w_shape = if name == "enc1" { vec![n_out, n_in - 1] } else { vec![n_out, n_in] };
        shapes.push((format!("{name}.weight"), w_shape));
        shapes.push((format!("{name}.bias"), vec![n_out]));
    }
    assert!(shapes.iter().any(|(n, s)| n == "enc1.weight" && s == &vec![80, 19]));
    let bytes: Vec<Vec<u8>> = shapes.iter().map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4]).collect();
    let views =
        shapes.iter().zip(&bytes).map(|((n, s), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()));
    let meta = HashMap::from([
        (checkpoint::SPEC_KEY.to_string(), serde_json::to_string(&spec).unwrap()),
        ("format".to_string(), "sae-wgpu".to_string()),
    ]);
    let file = safetensors::serialize(views, Some(meta)).unwrap();
    t.write("mismatched.safetensors", file)
}

#[test]
fn encode_truncated_checkpoint() {
    let t = Tmp::new("encode_truncated_checkpoint");
    let model = t.trained_model();
    let bytes = fs::read(&model).unwrap();
    let cut = t.write("truncated.safetensors", &bytes[..bytes.len() / 2]);
    let data = t.write("x.csv", csv_text(6, 20));
    let out_dir = t.path("out");
    fs::create_dir_all(&out_dir).unwrap();
    let out = t.sae(&["encode", "--model", s(&cut), "--data", s(&data), "--out", s(&out_dir.join("codes.npy"))]);
    assert_bad_input(&t, &out, &out_dir, &["truncated.safetensors", "not a readable safetensors"]);
}

#[test]
fn encode_checkpoint_not_matching_its_spec() {
    let t = Tmp::new("encode_checkpoint_mismatch");
    let model = mismatched_checkpoint(&t);
    let data = t.write("x.csv", csv_text(6, 20));
    let out_dir = t.path("out");
    fs::create_dir_all(&out_dir).unwrap();
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&data), "--out", s(&out_dir.join("codes.csv"))]);
    assert_bad_input(&t, &out, &out_dir, &["mismatched.safetensors", "enc1.weight", "[80, 19]", "[80, 20]"]);
}

#[test]
fn train_init_checkpoint_not_matching_its_spec() {
    let t = Tmp::new("train_init_mismatch");
    let model = mismatched_checkpoint(&t);
    let out_dir = t.path("out");
    let out = t.sae(&[
        "train",
        "--samples",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--init",
        s(&model),
        "--out",
        s(&out_dir),
    ]);
    assert_bad_input(&t, &out, &out_dir, &["mismatched.safetensors", "enc1.weight", "[80, 19]"]);
}

#[test]
fn train_init_with_different_model_flags() {
    let t = Tmp::new("train_init_different_model");
    let model = t.trained_model();
    let out_dir = t.path("out");
    let out = t.sae(&[
        "train",
        "--samples",
        "64",
        "--epochs",
        "1",
        "--init",
        s(&model),
        "--layers",
        "20,8,2",
        "--out",
        s(&out_dir),
    ]);
    assert_bad_input(&t, &out, &out_dir, &["--init", "model.safetensors", "differs", "widths"]);
    // Same widths, another code activation: the message names the activations.
    let out = t.sae(&["train", "--samples", "64", "--epochs", "1", "--init", s(&model), "--code-activation", "relu"]);
    assert_bad_input(&t, &out, &out_dir, &["--init", "activations", "relu,relu,relu"]);
}

#[test]
fn encode_missing_model_and_bad_inputs() {
    let t = Tmp::new("encode_bad_inputs");
    let data = t.write("x.csv", csv_text(6, 20));
    let out_dir = t.path("out");
    fs::create_dir_all(&out_dir).unwrap();
    let codes = out_dir.join("codes.npy");

    let absent = t.path("absent.safetensors");
    let out = t.sae(&["encode", "--model", s(&absent), "--data", s(&data), "--out", s(&codes)]);
    assert_bad_input(&t, &out, &out_dir, &["absent.safetensors", "cannot read"]);

    let model = t.trained_model();
    let narrow = t.write("narrow.csv", csv_text(6, 5));
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&narrow), "--out", s(&codes)]);
    assert_bad_input(&t, &out, &out_dir, &["narrow.csv", "5 columns", "20 wide"]);

    let nan = t.write("nan.csv", "1,2\nNaN,3\n");
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&nan), "--out", s(&codes)]);
    assert_bad_input(&t, &out, &out_dir, &["nan.csv", "row 2, column 1"]);

    let txt = out_dir.join("codes.txt");
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&data), "--out", s(&txt)]);
    assert_bad_input(&t, &out, &out_dir, &["--out", "codes.txt", ".npy"]);

    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&data), "--out", s(&codes), "--batch-size", "0"]);
    assert_bad_input(&t, &out, &out_dir, &["--batch-size"]);
}

// ---------------------------------------------------------------------------------------------
// Divergence: exit 1, the step named, checkpoints complete
// ---------------------------------------------------------------------------------------------

#[test]
fn divergence_exits_1_and_names_the_step() {
    let t = Tmp::new("divergence");
    let out_dir = t.path("out");
    let out = t.sae(&[
        "train",
        "--samples",
        "256",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--lr",
        "1e30",
        "--out",
        s(&out_dir),
        "--checkpoint-every",
        "1",
    ]);
    let line = assert_error(&out, 1, &["diverged", "step"]);
    assert!(line.chars().any(|c| c.is_ascii_digit()), "names the step number: {line}");
    assert!(line.contains("--lr"), "says what to change: {line}");
    // Whatever checkpoint exists is complete and loadable (no NaN checkpoint is written).
    let model = out_dir.join("model.safetensors");
    if model.exists() {
        checkpoint::load(&model).unwrap_or_else(|e| panic!("the checkpoint left behind is not loadable: {e}"));
    }
    assert_no_tmp_files(&t.dir);
}

#[test]
fn divergence_after_a_checkpoint_keeps_it_loadable() {
    // Identity hidden/output layers with SGD at lr 0.5 stay finite through epoch 1 and overflow
    // in epoch 2 on the built-in data (seed 0).
    let t = Tmp::new("divergence_after_checkpoint");
    let out_dir = t.path("out");
    let out = t.sae(&[
        "train",
        "--samples",
        "256",
        "--epochs",
        "6",
        "--batch-size",
        "64",
        "--optimizer",
        "sgd",
        "--lr",
        "0.5",
        "--hidden-activation",
        "identity",
        "--output-activation",
        "identity",
        "--checkpoint-every",
        "1",
        "--out",
        s(&out_dir),
    ]);
    let line = assert_error(&out, 1, &["diverged", "step"]);
    assert!(line.chars().any(|c| c.is_ascii_digit()), "names the step number: {line}");
    assert_no_tmp_files(&t.dir);
    let lines = metrics(&out_dir);
    let epochs: Vec<_> = lines.iter().filter(|l| l["kind"] == "epoch").collect();
    let model = out_dir.join("model.safetensors");
    if epochs.is_empty() {
        // Diverged within epoch 1 on this adapter: no checkpoint may exist.
        assert!(!model.exists(), "a checkpoint without a finite epoch behind it");
        eprintln!("note: diverged before epoch 1 ended on this adapter; only checked no checkpoint exists");
        return;
    }
    let (spec, params) = checkpoint::load(&model).unwrap_or_else(|e| panic!("the epoch checkpoint must load: {e}"));
    assert_eq!(spec.sizes, vec![20, 80, 40, 4, 40, 80, 20]);
    assert_eq!(spec.activation(1), Activation::Identity);
    assert_eq!(spec.activation(spec.layers()), Activation::Identity);
    assert!(params.all_finite());
    assert!(out_dir.join("config.json").exists());
}

// ---------------------------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------------------------

#[test]
fn train_writes_model_config_and_metrics() {
    let t = Tmp::new("train_writes_outputs");
    let out_dir = t.path("out");
    let out = t.sae(&[
        "train",
        "--out",
        s(&out_dir),
        "--log-every",
        "2",
        "--validation-split",
        "0.25",
        "--samples",
        "256",
        "--epochs",
        "2",
        "--batch-size",
        "32",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
    assert!(stdout(&out).contains("wrote"), "{}", stdout(&out));
    assert_no_tmp_files(&t.dir);

    let mut names: Vec<String> =
        files_under(&out_dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "metrics.jsonl", "model.safetensors", "train_state.safetensors"]);

    // The default is the forum preset: the post's model, ReLU everywhere, kl-freq.
    let (spec, params) = checkpoint::load(&out_dir.join("model.safetensors")).expect("loadable checkpoint");
    let forum = ModelSpec::mirrored(&[20, 80, 40, 4], Activation::Relu, Activation::Relu, Activation::Relu).unwrap();
    assert_eq!(spec, forum);
    assert!(params.all_finite());

    use sae_wgpu::train::defaults::{self, forum as f};
    let cfg = config_json(&out_dir);
    assert_eq!(cfg["preset"], "forum");
    assert_eq!(cfg["batch_size"], 32);
    assert_eq!(cfg["epochs"], 2);
    assert_eq!(cfg["log_every"], 2);
    assert_eq!(cfg["validation_split"], 0.25);
    assert_eq!(cfg["seed"], 0);
    assert_eq!(cfg["lr"], f::LR);
    assert_eq!(cfg["optimizer"]["kind"], defaults::OPTIMIZER);
    assert_eq!(cfg["lr_schedule"]["kind"], f::LR_SCHEDULE);
    // The forum preset's warm-up and anneal are shares of the run: 12 steps here.
    assert_eq!(cfg["beta_warmup_steps"], f::beta_warmup_steps(12));
    assert_eq!(cfg["rho_anneal_steps"], 6);
    assert_eq!(cfg["dead_after"], defaults::DEAD_AFTER);
    assert_eq!(cfg["shuffle"], true);
    assert_eq!(cfg["samples"], 256);
    assert_eq!(cfg["model"]["sizes"], serde_json::json!([20, 80, 40, 4, 40, 80, 20]));
    assert_eq!(cfg["loss"]["sparsity"]["kind"], "kl-freq");
    assert_eq!(cfg["loss"]["sparsity"]["rho"], 0.05);
    assert_eq!(cfg["loss"]["sparsity"]["beta"], 3.0);
    assert_eq!(cfg["loss"]["sparsity"]["temperature"], defaults::FREQ_TEMPERATURE);
    assert_eq!(cfg["loss"]["sparsity"]["control"], defaults::FREQUENCY_CONTROL);
    assert!(cfg["adapter"].as_str().is_some_and(|a| !a.is_empty()), "adapter recorded: {cfg}");

    // 256 samples, 64 held out: 192 / 32 = 6 steps per epoch, 12 in all.
    let lines = metrics(&out_dir);
    let common =
        ["kind", "epoch", "step", "loss", "mse", "sparsity", "weight_decay", "rho_hat", "freq", "since_fired", "dead"];
    for l in &lines {
        for k in common {
            assert!(l.get(k).is_some(), "metrics line lacks {k}: {l}");
        }
        assert_eq!(l["rho_hat"].as_array().map(Vec::len), Some(4), "{l}");
        assert_eq!(l["freq"].as_array().map(Vec::len), Some(4), "{l}");
        // Samples since each unit fired: counts of whole minibatches, at most the steps so far.
        let since = l["since_fired"].as_array().unwrap();
        assert_eq!(since.len(), 4, "{l}");
        let seen = 32 * l["step"].as_u64().unwrap();
        assert!(since.iter().all(|v| v.as_u64().is_some_and(|v| v <= seen)), "{l}");
        // 192 samples are too few for --dead-after's 10,000: no unit can be dead yet.
        assert_eq!(l["dead"], 0, "{l}");
        assert!(l["loss"].as_f64().is_some_and(f64::is_finite), "{l}");
    }
    let steps: Vec<u64> = lines.iter().filter(|l| l["kind"] == "step").map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 4, 6, 8, 10, 12], "a step line every 2 steps");
    let epochs: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    assert_eq!(lines.len(), 8, "only step and epoch lines");
    for (i, e) in epochs.iter().enumerate() {
        assert_eq!(e["epoch"], i as u64 + 1);
        assert_eq!(e["step"], 6 * (i as u64 + 1));
        assert!(e["fvu"].as_f64().is_some_and(f64::is_finite), "{e}");
        let v = &e["validation"];
        assert!(v.is_object(), "epoch lines carry validation metrics: {e}");
        assert_eq!(v["samples"], 64, "{e}");
        for k in ["loss", "mse", "fvu", "rho_hat", "freq"] {
            assert!(v.get(k).is_some(), "validation lacks {k}: {e}");
        }
    }
}

#[test]
fn config_file_sets_values_and_flags_override() {
    let t = Tmp::new("config_file_and_flags");
    let cfg = t.write(
        "settings.toml",
        "samples = 128\nepochs = 1\nbatch-size = 64\nlr = 0.25\nsparsity = \"kl-freq\"\nrho = 0.1\nseed = 3\n",
    );
    let out_dir = t.path("out");
    let out = t.sae(&["train", "--config", s(&cfg), "--rho", "0.2", "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = config_json(&out_dir);
    assert_eq!(c["lr"], 0.25, "from the file: {c}");
    assert_eq!(c["batch_size"], 64, "from the file: {c}");
    assert_eq!(c["epochs"], 1, "from the file: {c}");
    assert_eq!(c["seed"], 3, "from the file: {c}");
    assert_eq!(c["samples"], 128, "from the file: {c}");
    assert_eq!(c["loss"]["sparsity"]["kind"], "kl-freq", "from the file: {c}");
    assert_eq!(c["loss"]["sparsity"]["rho"], 0.2, "the flag overrides the file: {c}");
    assert_eq!(c["loss"]["sparsity"]["temperature"], sae_wgpu::train::defaults::FREQ_TEMPERATURE, "default: {c}");
    assert_eq!(c["loss"]["sparsity"]["control"], sae_wgpu::train::defaults::FREQUENCY_CONTROL, "default: {c}");
    assert_eq!(c["preset"], "forum", "default: {c}");

    // The same keys in JSON.
    let cfg = t.write("settings.json", r#"{"samples": 128, "epochs": 1, "batch-size": 64, "weight-decay": 0.001}"#);
    let out_dir = t.path("out_json");
    let out = t.sae(&["train", "--config", s(&cfg), "--batch-size", "32", "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = config_json(&out_dir);
    assert_eq!(c["loss"]["weight_decay"], 0.001, "from the file: {c}");
    assert_eq!(c["batch_size"], 32, "the flag overrides the file: {c}");
}

fn assert_in_unit_interval(d: &data::Dataset, what: &str) {
    for (k, v) in d.values.iter().enumerate() {
        assert!(*v > 0.0 && *v < 1.0, "{what}: value {k} is {v}, outside (0, 1)");
    }
}

#[test]
fn encode_writes_codes_and_reconstructions() {
    let t = Tmp::new("encode_writes");
    let model = t.trained_model();
    let input = t.write("x.csv", csv_text(10, 20));
    let out_dir = t.path("enc");
    fs::create_dir_all(&out_dir).unwrap();
    let mut loaded = Vec::new();
    for (name, reconstruct, cols) in
        [("codes.npy", false, 4), ("codes.csv", false, 4), ("recon.npy", true, 20), ("recon.csv", true, 20)]
    {
        let target = out_dir.join(name);
        let mut args =
            vec!["encode", "--model", s(&model), "--data", s(&input), "--out", s(&target), "--batch-size", "4"];
        if reconstruct {
            args.push("--reconstruct");
        }
        let out = t.sae(&args);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let d = data::load(&target).unwrap_or_else(|e| panic!("{name} reads back: {e}"));
        assert_eq!((d.rows, d.cols), (10, cols), "{name}");
        assert_in_unit_interval(&d, name);
        loaded.push(d);
    }
    // .npy and .csv carry the same numbers (the CSV prints round-trip text).
    assert_eq!(loaded[0], loaded[1], "codes: npy vs csv");
    assert_eq!(loaded[2], loaded[3], "reconstructions: npy vs csv");
    assert_no_tmp_files(&t.dir);
}

#[test]
fn adapters_lists_at_least_one() {
    let t = Tmp::new("adapters");
    let out = t.sae(&["adapters"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let adapters = text.lines().filter(|l| !l.is_empty() && !l.starts_with(' ')).count();
    assert!(adapters >= 1, "at least one adapter listed:\n{text}");
    assert!(text.contains("max workgroups per dimension"), "{text}");
}

#[test]
fn check_passes_and_prints_a_row_per_kernel() {
    let t = Tmp::new("check");
    let out = t.sae(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for (kernel, _) in sae_wgpu::check::CHECKS {
        assert!(text.lines().any(|l| l.starts_with(kernel) && l.ends_with("pass")), "no passing {kernel} row:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("training: 5 steps") && text.trim_end().ends_with("all checks passed"), "{text}");
}

#[test]
fn help_mentions_every_command_and_flag() {
    let t = Tmp::new("help");
    let out = t.sae(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let top = stdout(&out);
    for cmd in ["train", "encode", "check", "adapters"] {
        assert!(top.contains(cmd), "`sae --help` lists {cmd}:\n{top}");
    }
    let out = t.sae(&["train", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for flag in [
        "--data",
        "--layers",
        "--decoder-layers",
        "--hidden-activation",
        "--code-activation",
        "--output-activation",
        "--sparsity",
        "--rho",
        "--beta",
        "--temperature",
        "--weight-decay",
        "--lr",
        "--batch-size",
        "--epochs",
        "--seed",
        "--no-shuffle",
        "--init",
        "--out",
        "--log-every",
        "--backend",
        "--adapter",
        "--validation-split",
        "--config",
        "--checkpoint-every",
        "--samples",
        "--path",
        "--steps-per-submit",
    ] {
        assert!(help.contains(flag), "`sae train --help` mentions {flag}");
    }
    let out = t.sae(&["encode", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for flag in ["--model", "--data", "--out", "--reconstruct", "--batch-size", "--backend", "--adapter"] {
        assert!(help.contains(flag), "`sae encode --help` mentions {flag}");
    }
}

#[test]
fn unknown_subcommand_and_flag_exit_2() {
    let t = Tmp::new("unknown_flag");
    let out = t.sae(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out_dir = t.path("out");
    let out = t.sae(&["train", "--samples", "64", "--out", s(&out_dir), "--learning-rate", "0.1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--learning-rate"), "{}", stderr(&out));
    assert_no_output(&out_dir);
    let out = t.sae(&["train", "--samples", "64", "--out", s(&out_dir), "--lr", "fast"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--lr"), "{}", stderr(&out));
    assert_no_output(&out_dir);
}

#[test]
fn same_seed_gives_identical_checkpoints() {
    let t = Tmp::new("same_seed");
    let run = |name: &str| {
        let dir = t.path(name);
        let out = t.sae(&[
            "train",
            "--samples",
            "128",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--seed",
            "7",
            "--out",
            s(&dir),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        dir.join("model.safetensors")
    };
    let (a, b) = (run("a"), run("b"));
    // The parameters agree bit for bit...
    let (spec_a, params_a) = checkpoint::load(&a).unwrap();
    let (spec_b, params_b) = checkpoint::load(&b).unwrap();
    assert_eq!(spec_a, spec_b);
    let bits = |p: &sae_wgpu::model::Params| {
        p.weights.iter().chain(&p.biases).flatten().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    assert_eq!(bits(&params_a), bits(&params_b), "same seed, same parameters");
    // ...and so must the files, byte for byte (metadata included).
    let (bytes_a, bytes_b) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert!(
        bytes_a == bytes_b,
        "same --seed must give byte-identical model.safetensors; headers differ:\n{}\n{}",
        String::from_utf8_lossy(&bytes_a[8..bytes_a.len().min(300)]),
        String::from_utf8_lossy(&bytes_b[8..bytes_b.len().min(300)])
    );
}

/// `--stop-after-epoch 2` then `--resume DIR` gives the same model file, byte for byte, and the
/// same metrics lines as the uninterrupted run, for Adam on a cosine schedule with warm-up and
/// for momentum with a beta warm-up, clipping and a validation split, both under the forum
/// preset's kl-freq (its controller, target anneal and samples-since-fired counters, which the
/// step lines carry, continue exactly); --resume refuses other
/// flags, a directory without a checkpoint, and a run already done.
#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let runs: [&[&str]; 2] = [
        &["--optimizer", "adam", "--lr-schedule", "cosine", "--warmup-steps", "20"],
        &[
            "--optimizer",
            "momentum",
            "--lr",
            "0.05",
            "--lr-schedule",
            "linear",
            "--beta-warmup-steps",
            "30",
            "--clip-grad-norm",
            "1",
            "--validation-split",
            "0.25",
        ],
    ];
    for (i, flags) in runs.iter().enumerate() {
        let t = Tmp::new(&format!("resume_{i}"));
        let (whole, parts) = (t.path("whole"), t.path("parts"));
        let common = ["train", "--samples", "384", "--batch-size", "32", "--epochs", "4", "--log-every", "5"];
        let run = |out: &Path, extra: &[&str]| {
            let mut args: Vec<&str> = common.to_vec();
            args.extend_from_slice(flags);
            args.extend_from_slice(&["--out", s(out)]);
            args.extend_from_slice(extra);
            let out = t.sae(&args);
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            out
        };
        run(&whole, &[]);
        let stopped = run(&parts, &["--stop-after-epoch", "2"]);
        assert!(stdout(&stopped).contains("stopped after epoch 2 of 4"), "{}", stdout(&stopped));
        let out = t.sae(&["train", "--resume", s(&parts), "--epochs", "4"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let bytes = |d: &Path| fs::read(d.join("model.safetensors")).unwrap();
        assert!(bytes(&whole) == bytes(&parts), "run {i}: the resumed model differs from the uninterrupted one");
        let text = |d: &Path| fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        assert_eq!(text(&whole), text(&parts), "run {i}: metrics differ");
        assert_no_tmp_files(&t.dir);

        let out = t.sae(&["train", "--resume", s(&parts), "--epochs", "4"]);
        assert_error(&out, 2, &["--resume", "4 epochs already"]);
        let out = t.sae(&["train", "--resume", s(&parts), "--epochs", "6", "--lr", "0.1"]);
        assert_error(&out, 2, &["--resume", "--lr"]);
    }
    let t = Tmp::new("resume_nothing");
    let out = t.sae(&["train", "--resume", s(&t.path("absent")), "--epochs", "2"]);
    assert_error(&out, 2, &["--resume", "train_state.safetensors"]);
    let out = t.sae(&["train", "--samples", "64", "--stop-after-epoch", "1"]);
    assert_error(&out, 2, &["--stop-after-epoch", "--out"]);
}

/// `--out` naming an existing file is bad input (exit 2), and the file is left alone.
#[test]
fn out_naming_a_file_is_bad_input() {
    let t = Tmp::new("out_is_a_file");
    let file = t.write("taken", "keep me");
    let out = t.sae(&["train", "--samples", "64", "--epochs", "1", "--out", s(&file)]);
    assert_error(&out, 2, &["--out", "taken", "a file of that name exists"]);
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
}

/// Sizes from flags are checked before anything is allocated: a huge built-in dataset or batch
/// is bad input (exit 2), not an aborted allocation.
#[test]
fn huge_sizes_are_refused_before_allocating() {
    let t = Tmp::new("huge_sizes");
    let out_dir = t.path("out");
    let out = t.sae(&["train", "--samples", "100000000000000", "--out", s(&out_dir)]);
    assert_bad_input(&t, &out, &out_dir, &["--samples", "100000000000000"]);
    let out = t.sae(&["train", "--samples", "64", "--batch-size", "100000000000000000", "--out", s(&out_dir)]);
    assert_bad_input(&t, &out, &out_dir, &["--batch-size", "storage binding"]);
}

/// A PyTorch state dict saved with `safetensors.torch.save_file(model.state_dict(), ...)` has no
/// metadata: with the model flags, `encode` reads it (codes equal to the original checkpoint's)
/// and `train --init` starts from it; without them the error says which flags to add.
#[test]
fn pytorch_state_dict_without_metadata() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let t = Tmp::new("state_dict_in");
    // The default model: the flags' defaults for what --layers leaves out are its activations.
    let model = t.trained_forum_model();
    let (spec, params) = checkpoint::load(&model).unwrap();
    let bytes: Vec<Vec<u8>> = params
        .weights
        .iter()
        .zip(&params.biases)
        .flat_map(|(w, b)| [w, b])
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let names: Vec<(String, Vec<usize>)> = (1..=spec.layers())
        .flat_map(|l| {
            let (n, k) = spec.shape(l);
            [(format!("{}.weight", spec.layer_name(l)), vec![n, k]), (format!("{}.bias", spec.layer_name(l)), vec![n])]
        })
        .collect();
    let views: Vec<(String, TensorView)> = names
        .iter()
        .zip(&bytes)
        .map(|((n, s), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    let plain = t.write("plain.safetensors", safetensors::serialize(views, None).unwrap());
    let data = t.write("x.csv", csv_text(6, 20));
    let (from_ckpt, from_plain) = (t.path("a.npy"), t.path("b.npy"));

    let out = t.sae(&["encode", "--model", s(&plain), "--data", s(&data), "--out", s(&from_plain)]);
    assert_error(&out, 2, &["plain.safetensors", "no metadata", "--layers"]);
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&data), "--out", s(&from_ckpt)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let flags = ["--layers", "20,80,40,4"];
    let mut args = vec!["encode", "--model", s(&plain), "--data", s(&data), "--out", s(&from_plain)];
    args.extend_from_slice(&flags);
    let out = t.sae(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        fs::read(&from_ckpt).unwrap(),
        fs::read(&from_plain).unwrap(),
        "the state dict encodes like the checkpoint"
    );
    let out =
        t.sae(&["encode", "--model", s(&plain), "--data", s(&data), "--out", s(&from_plain), "--layers", "20,8,4"]);
    assert_error(&out, 2, &["plain.safetensors", "enc1.weight"]);

    let out_dir = t.path("run");
    let out = t.sae(&["train", "--init", s(&plain), "--samples", "64", "--epochs", "1", "--out", s(&out_dir)]);
    assert_bad_input(&t, &out, &out_dir, &["plain.safetensors", "--layers"]);
    let out = t.sae(&["train", "--init", s(&plain), "--layers", "20,80,40,4", "--samples", "64", "--epochs", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// L-BFGS and natural-image patches
// ---------------------------------------------------------------------------------------------

/// `--optimizer lbfgs` from the command line: an epoch line per iteration whose J never rises
/// (every accepted step satisfies the sufficient-decrease condition), with the step length as
/// `lr` and the evaluations so far; a validation split is allowed; and stopping after
/// iteration 3 then `--resume` gives the same model, train state and metrics lines, byte for
/// byte, as the uninterrupted run. The history of 4 pairs fills before the stop and is evicted
/// after it; 240 training rows in chunks of 100 make three chunks, the last one short.
#[test]
fn lbfgs_descends_and_resumes_bit_identically() {
    let t = Tmp::new("lbfgs_resume");
    let (whole, parts) = (t.path("whole"), t.path("parts"));
    let common = [
        "train",
        "--preset",
        "classic",
        "--samples",
        "300",
        "--optimizer",
        "lbfgs",
        "--epochs",
        "9",
        "--batch-size",
        "100",
        "--validation-split",
        "0.2",
        "--lbfgs-history",
        "4",
        "--checkpoint-every",
        "2",
    ];
    let run = |out: &Path, extra: &[&str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(&["--out", s(out)]);
        args.extend_from_slice(extra);
        let out = t.sae(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        out
    };
    let done = run(&whole, &[]);
    assert!(stdout(&done).contains("9 iterations"), "{}", stdout(&done));
    let lines = metrics(&whole);
    assert_eq!(lines.len(), 9, "one line per iteration");
    let mut last_loss = f64::INFINITY;
    let mut last_evals = 1;
    for (i, l) in lines.iter().enumerate() {
        assert_eq!((l["kind"].as_str(), l["epoch"].as_u64()), (Some("epoch"), Some(i as u64 + 1)));
        let (loss, evals, step) =
            (l["loss"].as_f64().unwrap(), l["evaluations"].as_u64().unwrap(), l["lr"].as_f64().unwrap());
        assert!(loss <= last_loss, "iteration {}: J rose from {last_loss} to {loss}", i + 1);
        assert!(evals > last_evals, "iteration {}: a line search evaluates at least once", i + 1);
        assert!(step > 0.0 && step.is_finite(), "step length {step}");
        assert!(l["validation"]["loss"].as_f64().is_some(), "validation metrics on every line");
        (last_loss, last_evals) = (loss, evals);
    }
    assert!(last_loss < lines[0]["loss"].as_f64().unwrap() * 0.9, "9 iterations lower J by more than 10%");
    assert_eq!(config_json(&whole)["optimizer"]["kind"], "lbfgs");
    // --log-every K thins the lines to every K-th iteration and the last.
    let thin = t.path("thin");
    run(&thin, &["--log-every", "4"]);
    let epochs: Vec<u64> = metrics(&thin).iter().map(|l| l["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [4, 8, 9]);
    assert!(fs::read(thin.join("model.safetensors")).unwrap() == fs::read(whole.join("model.safetensors")).unwrap());
    assert_eq!(config_json(&whole)["optimizer"]["history"], 4);

    let stopped = run(&parts, &["--stop-after-epoch", "3"]);
    assert!(stdout(&stopped).contains("stopped after epoch 3 of 9"), "{}", stdout(&stopped));
    let out = t.sae(&["train", "--resume", s(&parts), "--epochs", "9"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for file in ["model.safetensors", "metrics.jsonl"] {
        let (a, b) = (fs::read(whole.join(file)).unwrap(), fs::read(parts.join(file)).unwrap());
        assert!(a == b, "{file}: the resumed run differs from the uninterrupted one");
    }
    // The L-BFGS state too (the settings differ: the resumed run names its --init).
    let state = |d: &Path| sae_wgpu::checkpoint::load_train_state(&d.join("train_state.safetensors")).unwrap();
    let (a, b) = (state(&whole), state(&parts));
    assert_eq!((a.steps_done, a.epochs_done, &a.lbfgs), (b.steps_done, b.epochs_done, &b.lbfgs));
    assert_eq!(a.lbfgs.as_ref().map(|l| (l.iterations, l.y.len())), Some((9, 4)));
    assert_no_tmp_files(&t.dir);
}

/// Settings that mean nothing to a full-batch line-search method are refused with the flag
/// named; so are an empty history and a history without L-BFGS.
#[test]
fn lbfgs_refuses_step_settings() {
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["--preset", "classic", "--optimizer", "lbfgs", "--steps-per-submit", "4"],
            &["--steps-per-submit", "meaningless", "lbfgs"],
        ),
        (&["--preset", "classic", "--optimizer", "lbfgs", "--clip-grad-norm", "1"], &["--clip-grad-norm", "lbfgs"]),
        (&["--preset", "classic", "--optimizer", "lbfgs", "--lr-schedule", "cosine"], &["--lr-schedule", "lbfgs"]),
        (&["--preset", "classic", "--optimizer", "lbfgs", "--momentum", "0.5"], &["--momentum", "lbfgs"]),
        (&["--preset", "classic", "--optimizer", "lbfgs", "--lbfgs-history", "0"], &["--lbfgs-history 0"]),
        (&["--lbfgs-history", "5"], &["--lbfgs-history", "--optimizer lbfgs"]),
        // 10^9 pairs of the seed model's 10k parameters: far more memory than any machine has.
        (
            &["--preset", "classic", "--optimizer", "lbfgs", "--lbfgs-history", "1000000000"],
            &["--lbfgs-history 1000000000", "memory"],
        ),
        // The forum preset's kl-freq has no gradient of J for the line search.
        (&["--optimizer", "lbfgs"], &["--sparsity kl-freq", "straight-through", "lbfgs", "kl-soft-freq"]),
    ];
    for (i, (flags, needles)) in cases.iter().enumerate() {
        // The memory check needs to know the memory there is (/proc/meminfo, on Linux).
        if needles.contains(&"memory") && sae_wgpu::data::available_memory().is_none() {
            assert!(std::env::consts::OS != "linux", "Linux tells the memory available");
            continue;
        }
        train_flags_rejected(&format!("lbfgs_refuses_{i}"), flags, needles);
    }
}

/// `sae patches` samples the shipped photographs into UFLDL's training set: the shape asked
/// for, values in [0.1, 0.9], the same file for the same seed; a file that is not a PNG, or a
/// patch larger than an image, is bad input naming it.
#[test]
fn patches_from_the_shipped_photographs() {
    let t = Tmp::new("patches");
    let images: Vec<String> = fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(images.len() >= 4, "the example's photographs are in the repository");
    let write = |name: &str, seed: &str| {
        let out = t.path(name);
        let mut args: Vec<&str> = vec!["patches", "--count", "500", "--size", "6", "--seed", seed, "--out", s(&out)];
        args.extend(images.iter().map(String::as_str));
        let o = t.sae(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        fs::read(out).unwrap()
    };
    let (a, b, c) = (write("a.npy", "1"), write("b.npy", "1"), write("c.npy", "2"));
    assert!(a == b && a != c, "seeded");
    let set = sae_wgpu::data::load(&t.path("a.npy")).unwrap();
    assert_eq!((set.rows, set.cols), (500, 36));
    assert!(set.values.iter().all(|v| (0.1..=0.9).contains(v)));
    let spread = set.values.iter().map(|&v| (v as f64 - 0.5).powi(2)).sum::<f64>() / set.values.len() as f64;
    assert!(spread.sqrt() > 0.05, "photographs give patches with contrast: sd {}", spread.sqrt());

    let not_png = t.write("fake.png", "hello");
    let out = t.sae(&["patches", s(&not_png), "--out", s(&t.path("x.npy"))]);
    assert_error(&out, 2, &["fake.png", "not a PNG"]);
    let out = t.sae(&["patches", &images[0], "--size", "64", "--count", "2", "--out", s(&t.path("y.npy"))]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = t.sae(&["patches", &images[0], "--count", "0", "--out", s(&t.path("z.npy"))]);
    assert_error(&out, 2, &["--count 0"]);
    assert!(!t.path("x.npy").exists() && !t.path("z.npy").exists());
}

// ---------------------------------------------------------------------------------------------
// Found by a hostile user (issue: portable and hard to break)
// ---------------------------------------------------------------------------------------------

/// `out = ""` in a config, `--checkpoint-every` without `--out`, and `encode --out` naming its
/// own `--data` are refused; constant data trains with FVU reported as undefined (null), not NaN.
#[test]
fn hostile_settings_are_refused_and_fvu_is_defined() {
    let t = Tmp::new("out_empty");
    let cfg = t.write("run.toml", "out = \"\"\n");
    let out = t.sae(&["train", "--samples", "64", "--epochs", "1", "--config", s(&cfg)]);
    assert_error(&out, 2, &["--out", "directory name"]);
    assert!(!t.dir.join("config.json").exists() && !t.dir.join("model.safetensors").exists());
    let t = Tmp::new("ckpt_no_out");
    let out = t.sae(&["train", "--samples", "64", "--epochs", "1", "--checkpoint-every", "1"]);
    assert_error(&out, 2, &["--checkpoint-every needs --out"]);

    let t = Tmp::new("encode_onto_data");
    let model = t.trained_model();
    let data = t.write("x.csv", csv_text(4, 20));
    let before = fs::read(&data).unwrap();
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&data), "--out", s(&data)]);
    assert_error(&out, 2, &["--out", "--data file"]);
    assert_eq!(fs::read(&data).unwrap(), before, "the input is untouched");

    let t = Tmp::new("constant_data");
    let data = t.write("c.csv", "0.5,".repeat(19) + "0.5\n" + &("0.5,".repeat(19) + "0.5\n").repeat(9));
    let out_dir = t.path("out");
    let out = t.sae(&["train", "--data", s(&data), "--epochs", "1", "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("fvu n/a (the data has no variance"), "{}", stdout(&out));
    let last = metrics(&out_dir).pop().unwrap();
    assert!(last["fvu"].is_null() && last["loss"].as_f64().is_some(), "{last}");
}

/// With XDG_RUNTIME_DIR unset, Mesa's "XDG_RUNTIME_DIR is invalid or not set" does not appear:
/// sae points it at a private directory first.
#[test]
fn no_runtime_dir_warning_on_a_fresh_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(["train", "--samples", "64", "--epochs", "1"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("XDG_RUNTIME_DIR"), "{}", stderr(&out));
}

/// An adapter filter that matches nothing lists what was found and names the filter (exit 2);
/// an unknown WGPU_BACKEND names the variable (exit 2).
#[test]
fn adapter_filters_name_what_they_filtered() {
    let t = Tmp::new("adapter_filters");
    let run = |var: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_sae"))
            .args(["train", "--samples", "64", "--epochs", "1"])
            .env(var, value)
            .env("XDG_RUNTIME_DIR", t.path("xdg"))
            .output()
            .unwrap()
    };
    let out = run("WGPU_ADAPTER_NAME", "no-such-adapter");
    assert_error(&out, 2, &["no adapter matches WGPU_ADAPTER_NAME 'no-such-adapter'", "found:"]);
    let out = run("WGPU_BACKEND", "nonsense");
    assert_error(&out, 2, &["WGPU_BACKEND=nonsense", "unknown backend"]);
    let out = t.sae(&["train", "--samples", "64", "--epochs", "1", "--adapter", "no-such-adapter"]);
    assert_error(&out, 2, &["--adapter 'no-such-adapter'", "found:"]);
}

/// A non-empty `--out` is refused unless `--overwrite` (which deletes the old run's files
/// first, and nothing else) or `--resume`; a lock held by a live run is refused, a stale one
/// (its process gone) taken over, and the lock is gone after the run.
#[test]
fn out_directory_is_not_shared() {
    let t = Tmp::new("out_shared");
    let dir = t.path("run");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--samples", "64", "--epochs", "1", "--out", s(&dir)];
        args.extend_from_slice(extra);
        t.sae(&args)
    };
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("notes.txt"), "mine").unwrap();
    fs::write(dir.join("metrics.jsonl"), "{\"old\": true}\n").unwrap();
    let out = train(&[]);
    assert_error(&out, 2, &["--out", "not empty", "--overwrite", "--resume"]);
    assert_eq!(fs::read_to_string(dir.join("metrics.jsonl")).unwrap(), "{\"old\": true}\n", "untouched");

    let out = train(&["--overwrite"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!fs::read_to_string(dir.join("metrics.jsonl")).unwrap().contains("old"));
    assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine", "other files are kept");
    assert!(!dir.join(".sae-train.lock").exists(), "the lock is released");

    // A live process's lock (this test's own pid) is respected ...
    fs::write(dir.join(".sae-train.lock"), std::process::id().to_string()).unwrap();
    let out = train(&["--overwrite"]);
    assert_error(&out, 2, &["another sae train", ".sae-train.lock"]);
    // ... a dead one's is taken over (Linux, where /proc tells).
    if cfg!(target_os = "linux") {
        fs::write(dir.join(".sae-train.lock"), "4194999").unwrap();
        let out = train(&["--overwrite"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(!dir.join(".sae-train.lock").exists());
    }
}

/// Ctrl-C (SIGINT) during training: the run stops at its next submit boundary, writes a
/// checkpoint that loads, exits 130, and `--resume` then ends exactly where an uninterrupted
/// run ends (model and metrics, byte for byte), although it stopped inside an epoch.
#[cfg(unix)]
#[test]
fn sigint_checkpoints_and_resumes_exactly() {
    let t = Tmp::new("sigint");
    let (whole, cut) = (t.path("whole"), t.path("cut"));
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--samples",
            "4096",
            "--epochs",
            "8",
            "--batch-size",
            "16",
            "--log-every",
            "7",
            "--steps-per-submit",
            "8",
            "--out",
            s(out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let out = t.sae(&args(&whole));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args(&cut))
        .env("XDG_RUNTIME_DIR", t.path("xdg"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is training (a few metrics lines), then interrupt it.
    let started = std::time::Instant::now();
    while fs::read_to_string(cut.join("metrics.jsonl")).map_or(0, |m| m.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 60, "the run never logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // (Exit 0 would mean the 2,048-step run ended before the signal: lengthen it.)
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("checkpoint written to") && err.contains("--resume"), "{err}");
    sae_wgpu::checkpoint::load(&cut.join("model.safetensors")).expect("the checkpoint loads");
    let state = sae_wgpu::checkpoint::load_train_state(&cut.join("train_state.safetensors")).unwrap();
    assert!(state.epochs_done < 8);
    assert!(!cut.join(".sae-train.lock").exists(), "the lock is released");
    let out = t.sae(&["train", "--resume", s(&cut), "--epochs", "8"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for file in ["model.safetensors", "metrics.jsonl"] {
        assert!(
            fs::read(whole.join(file)).unwrap() == fs::read(cut.join(file)).unwrap(),
            "{file} differs after resume"
        );
    }
}

/// The forum preset's checkpoint is the post's PyTorch class as it stands: six `nn.Linear`
/// layers `enc1..enc3`, `dec1..dec3` and nothing else (kl-freq adds no tensor), ReLU after every
/// one. That class's forward, computed here from the checkpoint's tensors alone as
/// `load_state_dict` would hand them to it, equals `sae encode`'s codes and reconstructions to
/// f32 rounding (a 20-to-80 dot product in f32: about 1e-6 of its terms' size; bound 1e-5).
#[test]
fn forum_checkpoint_runs_as_the_posts_pytorch_class() {
    let t = Tmp::new("forum_pytorch_class");
    let model = t.trained_forum_model();
    let bytes = fs::read(&model).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let layers = ["enc1", "enc2", "enc3", "dec1", "dec2", "dec3"];
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut want: Vec<String> = layers.iter().flat_map(|l| [format!("{l}.bias"), format!("{l}.weight")]).collect();
    want.sort();
    assert_eq!(names, want, "the post's class has exactly these parameters");
    let tensor = |name: String| -> (Vec<usize>, Vec<f64>) {
        let v = st.tensor(&name).unwrap();
        let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect();
        (v.shape().to_vec(), data)
    };
    let rows = 9;
    let input = t.write("x.csv", csv_text(rows, 20));
    let x = data::load(&input).unwrap();
    // forward: h <- relu(h W^T + b) for each Linear; the code is after enc3.
    let mut codes = Vec::new();
    let mut recon = Vec::new();
    for r in 0..rows {
        let mut h: Vec<f64> = x.values[r * 20..(r + 1) * 20].iter().map(|&v| v as f64).collect();
        for (i, layer) in layers.iter().enumerate() {
            let (shape, w) = tensor(format!("{layer}.weight"));
            let (_, b) = tensor(format!("{layer}.bias"));
            let (n, k) = (shape[0], shape[1]);
            assert_eq!(k, h.len(), "{layer} takes the previous layer's output");
            h = (0..n).map(|j| (b[j] + (0..k).map(|p| w[j * k + p] * h[p]).sum::<f64>()).max(0.0)).collect();
            if i == 2 {
                codes.extend(h.clone());
            }
        }
        recon.extend(h);
    }
    for (file, reconstruct, python) in [("codes.npy", false, &codes), ("recon.npy", true, &recon)] {
        let out_file = t.path(file);
        let mut args = vec!["encode", "--model", s(&model), "--data", s(&input), "--out", s(&out_file)];
        if reconstruct {
            args.push("--reconstruct");
        }
        let out = t.sae(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let got = data::load(&out_file).unwrap();
        assert_eq!(got.values.len(), python.len(), "{file}");
        let scale = python.iter().fold(1e-3f64, |a, v| a.max(v.abs()));
        for (g, w) in got.values.iter().zip(python.iter()) {
            assert!((*g as f64 - w).abs() <= 1e-5 * scale, "{file}: sae {g} vs the class's forward {w}");
        }
    }
}

/// The settings of kl-freq and the presets: bad values and misplaced flags are exit 2, one
/// line naming the flag, nothing written.
#[test]
fn kl_freq_and_preset_settings_rejected() {
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--preset", "foo"], &["--preset foo", "forum", "classic"]),
        (&["--dead-after", "0"], &["--dead-after 0"]),
        (&["--frequency-control", "-1"], &["--frequency-control -1", ">= 0"]),
        (&["--frequency-control", "0.1", "--sparsity", "none"], &["--frequency-control", "kl-freq"]),
        (&["--rho-anneal-steps", "5", "--sparsity", "none"], &["--rho-anneal-steps", "kl-freq"]),
        // The forum preset's ReLU code cannot take the mean-activation KL: the message says how.
        (&["--sparsity", "kl"], &["--sparsity kl", "sigmoid", "--preset classic"]),
        (&["--sparsity", "kl-frequency"], &["--sparsity kl-frequency", "kl-soft-freq"]),
    ];
    for (i, (flags, needles)) in cases.iter().enumerate() {
        train_flags_rejected(&format!("kl_freq_rejects_{i}"), flags, needles);
    }
}

// ---------------------------------------------------------------------------------------------
// Dictionary learning: --preset dictionary, sae eval, sae export --format saelens
// ---------------------------------------------------------------------------------------------

/// A tiny `--preset dictionary` run (2,000 rows of the synthetic dictionary, one epoch): its
/// --out holds the model and the true directions.
fn trained_dictionary(t: &Tmp, extra: &[&str]) -> PathBuf {
    let dir = t.path("dictionary");
    let mut args = vec!["train", "--preset", "dictionary", "--samples", "2000", "--epochs", "1", "--out", s(&dir)];
    args.extend_from_slice(extra);
    let out = t.sae(&args);
    assert_eq!(out.status.code(), Some(0), "dictionary train failed: {}", stderr(&out));
    assert!(stdout(&out).contains("MMCS"), "the run reports the recovery: {}", stdout(&out));
    dir
}

/// The preset writes truth.npy, metrics lines carry l0, fvu and the dead fraction, epoch lines a
/// density histogram, and `sae eval` reports the MMCS the run printed.
#[test]
fn dictionary_preset_eval_and_metrics() {
    let t = Tmp::new("dictionary_preset");
    let dir = trained_dictionary(&t, &["--log-every", "10"]);
    let lines = metrics(&dir);
    let step = lines.iter().find(|l| l["kind"] == "step").expect("a step line");
    let epoch = lines.iter().find(|l| l["kind"] == "epoch").expect("an epoch line");
    // TopK with K = 3: exactly 3 active latents a row (the synthetic rows fire at least 3).
    for line in [step, epoch] {
        let l0 = line["l0"].as_f64().unwrap();
        assert!((l0 - 3.0).abs() < 1e-6, "l0 {l0} != K");
        assert!(line["fvu"].as_f64().unwrap() < 1.0, "fvu {}", line["fvu"]);
        assert!((0.0..=1.0).contains(&line["dead_fraction"].as_f64().unwrap()));
    }
    let density: Vec<u64> = epoch["density"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(density.iter().sum::<u64>(), 64, "every latent in one density bucket: {density:?}");
    let cfg = config_json(&dir);
    assert_eq!(cfg["model"]["select"]["k"], 3);
    assert_eq!(cfg["model"]["pre_bias"], true);
    assert_eq!(cfg["decoder_norm"], true);
    let model = dir.join("model.safetensors");
    let truth = dir.join("truth.npy");
    let out = t.sae(&["eval", "--model", s(&model), "--truth", s(&truth), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let mmcs = v["mmcs"].as_f64().unwrap();
    assert!(mmcs > 0.5 && mmcs <= 1.0, "mmcs {mmcs}");
    assert_eq!(v["best"].as_array().unwrap().len(), 64);
    // A truth file of another width is refused.
    let narrow = t.write("narrow.csv", csv_text(3, 20));
    let out = t.sae(&["eval", "--model", s(&model), "--truth", s(&narrow)]);
    assert_error(&out, 2, &["--truth", "32 wide"]);
}

/// A tiny dictionary run exported with `sae export --format saelens`: (its model, the SAELens
/// directory).
fn exported_dictionary(t: &Tmp) -> (PathBuf, PathBuf) {
    let model = trained_dictionary(t, &[]).join("model.safetensors");
    let sl = t.path("saelens");
    let out = t.sae(&["export", "--format", "saelens", "--model", s(&model), "--out", s(&sl)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (model, sl)
}

/// SAELens's forward written from an exported directory's files alone, in f64, against
/// reconstructions `got` of the rows `x`: `relu(topk((x - b_dec) W_enc + b_enc)) W_dec + b_dec`
/// for a topk SAE, the JumpReLU `z [z > threshold]` for a jumprelu one, ReLU for a standard
/// one. Returns the largest error relative to 1 + the row's largest |x|.
fn saelens_forward_error(sl: &Path, x: &data::Dataset, got: &[f32]) -> f64 {
    let cfg: serde_json::Value = serde_json::from_str(&fs::read_to_string(sl.join("cfg.json")).unwrap()).unwrap();
    let (d, n) = (cfg["d_in"].as_u64().unwrap() as usize, cfg["d_sae"].as_u64().unwrap() as usize);
    let bytes = fs::read(sl.join("sae_weights.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (s_enc, w_enc) = read_f32_tensor(&file, "W_enc");
    let (s_dec, w_dec) = read_f32_tensor(&file, "W_dec");
    let (_, b_enc) = read_f32_tensor(&file, "b_enc");
    let (_, b_dec) = read_f32_tensor(&file, "b_dec");
    assert_eq!((s_enc, s_dec), (vec![d, n], vec![n, d]));
    let apply_b_dec = cfg["apply_b_dec_to_input"].as_bool().unwrap();
    let architecture = cfg["architecture"].as_str().unwrap();
    let threshold = (architecture == "jumprelu").then(|| read_f32_tensor(&file, "threshold").1);
    let mut worst: f64 = 0.0;
    for (i, row) in x.values.chunks(d).enumerate() {
        let input: Vec<f64> = (0..d).map(|f| row[f] as f64 - if apply_b_dec { b_dec[f] } else { 0.0 }).collect();
        let pre: Vec<f64> =
            (0..n).map(|j| b_enc[j] + (0..d).map(|f| input[f] * w_enc[f * n + j]).sum::<f64>()).collect();
        let acts: Vec<f64> = match (architecture, &threshold) {
            ("topk", _) => {
                let k = cfg["k"].as_u64().unwrap() as usize;
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&p, &q| pre[q].total_cmp(&pre[p]).then(p.cmp(&q)));
                let mut acts = vec![0.0; n];
                for &j in &order[..k] {
                    acts[j] = pre[j].max(0.0);
                }
                acts
            }
            ("jumprelu", Some(t)) => (0..n).map(|j| if pre[j] > t[j] { pre[j] } else { 0.0 }).collect(),
            _ => pre.iter().map(|v| v.max(0.0)).collect(),
        };
        let scale = 1.0 + row.iter().map(|v| (*v as f64).abs()).fold(0.0, f64::max);
        for f in 0..d {
            let want = b_dec[f] + (0..n).map(|j| acts[j] * w_dec[j * d + f]).sum::<f64>();
            worst = worst.max((got[i * d + f] as f64 - want).abs() / scale);
        }
    }
    worst
}

fn read_f32_tensor(file: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f64>) {
    let t = file.tensor(name).unwrap_or_else(|_| panic!("tensor {name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect();
    (t.shape().to_vec(), v)
}

/// `sae export --format saelens`, then SAELens's forward written from those files alone,
/// `relu(topk((x - b_dec) W_enc + b_enc)) W_dec + b_dec` in f64 from cfg.json and
/// sae_weights.safetensors, equals `sae encode --reconstruct` (f32 on the device: within 1e-5
/// of the output's scale); the directory also reads back as --init and --model.
#[test]
fn saelens_export_forward_matches_encode() {
    let t = Tmp::new("saelens_export");
    let (model, sl) = exported_dictionary(&t);
    let cfg: serde_json::Value = serde_json::from_str(&fs::read_to_string(sl.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["apply_b_dec_to_input"], true);
    let d = cfg["d_in"].as_u64().unwrap() as usize;

    // 37 rows of the training data's kind.
    let (x, _) = sae_wgpu::synthetic::DictionarySpec { width: d, features: 64, active: 3 }.generate(37, 9);
    let x_path = t.path("x.npy");
    data::save(&x_path, &x).unwrap();
    let recon = t.path("recon.npy");
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&x_path), "--out", s(&recon), "--reconstruct"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = data::load(&recon).unwrap();
    let worst = saelens_forward_error(&sl, &x, &got.values);
    println!("SAELens forward from the exported files vs sae encode --reconstruct: max error {worst:.2e}");
    assert!(worst < 1e-5, "max error {worst:e}");

    // The directory is a model for encode and an init for train.
    let recon2 = t.path("recon2.npy");
    let out = t.sae(&["encode", "--model", s(&sl), "--data", s(&x_path), "--out", s(&recon2), "--reconstruct"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(data::load(&recon2).unwrap().values, got.values, "the SAELens directory encodes the same");
    let out = t.sae(&["train", "--preset", "dictionary", "--samples", "256", "--epochs", "1", "--init", s(&sl)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Bad dictionary input: K of 0 or above the width, a cfg.json that contradicts its tensors, an
/// SAELens architecture or normalisation sae cannot compute, a model SAELens cannot hold:
/// exit 2, one line, nothing written.
#[test]
fn dictionary_bad_input() {
    train_flags_rejected("topk_k0", &["--preset", "dictionary", "--k", "0"], &["--k 0", "between 1"]);
    train_flags_rejected("topk_k_wide", &["--preset", "dictionary", "--k", "65"], &["--k 65", "(64)"]);
    train_flags_rejected(
        "topk_no_k",
        &["--layers", "20,8", "--code-activation", "topk"],
        &["--code-activation topk", "--k"],
    );
    train_flags_rejected("k_no_topk", &["--k", "3"], &["--k", "topk"]);
    train_flags_rejected("decoder_norm_kind", &["--decoder-norm", "l2"], &["--decoder-norm l2", "unit or none"]);
    train_flags_rejected("synthetic_bad", &["--synthetic", "dictionary:32,64"], &["--synthetic", "dictionary:D,F,S"]);
    train_flags_rejected("synthetic_s_over_f", &["--synthetic", "dictionary:8,4,5"], &["--synthetic"]);

    let t = Tmp::new("saelens_bad");
    let (model, sl) = exported_dictionary(&t);
    let cfg_text = fs::read_to_string(sl.join("cfg.json")).unwrap();
    let x_path = t.path("x.csv");
    fs::write(&x_path, csv_text(4, 32)).unwrap();
    let out_dir = t.path("encoded");
    fs::create_dir_all(&out_dir).unwrap();
    let encode =
        |t: &Tmp| t.sae(&["encode", "--model", s(&sl), "--data", s(&x_path), "--out", s(&out_dir.join("codes.npy"))]);
    for (needle, from, to) in [
        ("d_sae 65", "\"d_sae\": 64", "\"d_sae\": 65"),
        ("architecture 'gated'", "\"architecture\": \"topk\"", "\"architecture\": \"gated\""),
        (
            "normalize_activations 'layer_norm'",
            "\"normalize_activations\": \"none\"",
            "\"normalize_activations\": \"layer_norm\"",
        ),
        ("--k 80", "\"k\": 3", "\"k\": 80"),
    ] {
        fs::write(sl.join("cfg.json"), cfg_text.replace(from, to)).unwrap();
        let out = encode(&t);
        let line = assert_error(&out, 2, &["cfg.json"]);
        assert!(line.contains(needle) || line.contains(&needle.replace('\'', "")), "{needle}: {line}");
        assert_no_output(&out_dir);
    }
    // A model SAELens cannot hold (the forum's deep all-ReLU model).
    let forum = t.trained_forum_model();
    let other = t.path("other");
    let out = t.sae(&["export", "--format", "saelens", "--model", s(&forum), "--out", s(&other)]);
    assert_error(&out, 2, &["--model", "SAELens", "one hidden layer"]);
    assert!(!other.exists(), "nothing written");
    let out = t.sae(&["export", "--format", "onnx", "--model", s(&model), "--out", s(&other)]);
    assert_error(&out, 2, &["--format onnx"]);
}

// ---------------------------------------------------------------------------------------------
// Data larger than memory: streamed .npy files and shard directories
// ---------------------------------------------------------------------------------------------

/// A `[rows, cols]` f32 .npy written a chunk at a time (never whole in memory): row i, column j
/// holds a smooth function of (i, j) plus a seeded jitter, so the rows differ.
fn write_big_npy(path: &Path, rows: usize, cols: usize) {
    use std::io::Write;
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let header = data::npy_file(&dict, &[]);
    let mut f = std::io::BufWriter::with_capacity(1 << 22, fs::File::create(path).unwrap());
    f.write_all(&header).unwrap();
    let mut rng = sae_wgpu::model::Rng::new(3);
    let mut chunk = Vec::with_capacity(1 << 22);
    for i in 0..rows {
        for j in 0..cols {
            let v = ((i % 97) as f32 * 0.01 + j as f32 * 0.03).sin() + 0.1 * rng.next_f64() as f32;
            chunk.extend_from_slice(&v.to_le_bytes());
        }
        if chunk.len() >= 1 << 22 {
            f.write_all(&chunk).unwrap();
            chunk.clear();
        }
    }
    f.write_all(&chunk).unwrap();
}

/// Training from a 2 GiB .npy (16.8 million rows of 32) streams it: a bounded number of steps
/// (200, with the default 64 MiB mixing buffer and the pre-bias's pass over every row) keeps the
/// process's peak resident memory under 512 MiB, as `sae train` reports it.
#[test]
fn two_gib_npy_streams_in_bounded_memory() {
    let t = Tmp::new("big_npy");
    let big = t.path("big.npy");
    let rows = (2usize << 30) / (32 * 4);
    write_big_npy(&big, rows, 32);
    assert!(fs::metadata(&big).unwrap().len() > 2 << 30);
    let out_dir = t.path("out");
    let out = t.sae(&[
        "train",
        "--preset",
        "dictionary",
        "--data",
        s(&big),
        "--auxk",
        "16",
        "--max-steps",
        "200",
        "--eval-rows",
        "8192",
        "--out",
        s(&out_dir),
    ]);
    let _ = fs::remove_file(&big);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("peak memory:")).expect("the run reports its peak memory");
    let mib: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    println!("2 GiB npy, 200 steps: {line}");
    assert!(mib < 512.0, "{line}");
    assert!(stderr(&out).contains("streamed"), "the data line says it streams: {}", stderr(&out));
    let cfg = config_json(&out_dir);
    assert_eq!(cfg["max_steps"], 200);
}

/// The same rows trained from a directory of shards, from one file streamed, and loaded resident
/// (in the mixing buffer's order, `--shuffle-buffer`), give the same parameters bit for bit, and
/// so does a streamed run stopped after an epoch and resumed; in the unshuffled file order too.
#[test]
fn shards_stream_and_resident_train_the_same() {
    let t = Tmp::new("shards_same");
    let (x, _) = sae_wgpu::synthetic::DictionarySpec { width: 12, features: 20, active: 2 }.generate(1501, 4);
    let whole = t.path("all.npy");
    data::save(&whole, &x).unwrap();
    let shards = t.path("shards");
    fs::create_dir_all(&shards).unwrap();
    for (i, (a, b)) in [(0, 500), (500, 501), (501, 1240), (1240, 1501)].iter().enumerate() {
        let part = data::Dataset { rows: b - a, cols: 12, values: x.values[a * 12..b * 12].to_vec() };
        data::save(&shards.join(format!("part{i}.npy")), &part).unwrap();
    }
    let common = [
        "--layers",
        "12,20",
        "--code-activation",
        "topk",
        "--k",
        "2",
        "--output-activation",
        "identity",
        "--sparsity",
        "none",
        "--pre-bias",
        "--decoder-norm",
        "unit",
        "--auxk",
        "5",
        "--batch-size",
        "64",
        "--epochs",
        "2",
    ];
    for order in [&["--shuffle-buffer", "300"][..], &["--no-shuffle"][..]] {
        let mut models = Vec::new();
        for (name, data, extra) in
            [("resident", &whole, &[][..]), ("stream", &whole, &["--stream"][..]), ("shards", &shards, &[][..])]
        {
            let dir = t.path(&format!("{name}{}", order.len()));
            let mut args = vec!["train", "--data", s(data), "--out", s(&dir)];
            args.extend_from_slice(&common);
            args.extend_from_slice(order);
            args.extend_from_slice(extra);
            let out = t.sae(&args);
            assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
            models.push((name, fs::read(dir.join("model.safetensors")).unwrap()));
        }
        // A streamed run stopped after its first epoch and resumed (AuxK's counters and the
        // mixing buffer's generator restored) ends where the uninterrupted one does.
        let dir = t.path(&format!("resumed{}", order.len()));
        let mut args = vec!["train", "--data", s(&shards), "--out", s(&dir), "--stop-after-epoch", "1"];
        args.extend_from_slice(&common);
        args.extend_from_slice(order);
        let out = t.sae(&args);
        assert_eq!(out.status.code(), Some(0), "stopped run: {}", stderr(&out));
        let out = t.sae(&["train", "--resume", s(&dir), "--epochs", "2"]);
        assert_eq!(out.status.code(), Some(0), "resumed run: {}", stderr(&out));
        models.push(("resumed", fs::read(dir.join("model.safetensors")).unwrap()));
        for (name, bytes) in &models[1..] {
            assert!(bytes == &models[0].1, "{name} {order:?}: parameters differ from the resident run's");
        }
    }
}

/// Bad streamed input: a shard of another width or dtype, an empty directory, streaming
/// settings without streamed data, a streamed run with a validation split: exit 2, one line,
/// nothing written.
#[test]
fn streamed_data_bad_input() {
    let t = Tmp::new("stream_bad");
    let make_dir = |name: &str, parts: &[(&str, Vec<u8>)]| {
        let dir = t.path(name);
        fs::create_dir_all(&dir).unwrap();
        for (file, bytes) in parts {
            fs::write(dir.join(file), bytes).unwrap();
        }
        dir
    };
    let f32_rows =
        |rows: usize, cols: usize| npy_bytes("<f4", &format!("({rows}, {cols})"), &f32_bytes(&vec![0.5; rows * cols]));
    let f64_rows = npy_bytes("<f8", "(3, 20)", &[0u8; 3 * 20 * 8]);
    let wide = make_dir("wide", &[("a.npy", f32_rows(4, 20)), ("b.npy", f32_rows(4, 21))]);
    let dtype = make_dir("dtype", &[("a.npy", f32_rows(4, 20)), ("b.npy", f64_rows)]);
    let empty = make_dir("empty", &[("notes.txt", b"no shards".to_vec())]);
    let cases: [(&Path, &[&str], &[&str]); 3] = [
        (&wide, &[], &["b.npy", "21 columns", "same width"]),
        (&dtype, &[], &["b.npy", "f64", "same dtype"]),
        (&empty, &[], &["no .npy shards"]),
    ];
    for (data, extra, needles) in cases {
        let (out, dir) = train_on(&t, data, extra);
        assert_bad_input(&t, &out, &dir, needles);
    }
    let small = t.write("small.npy", f32_rows(8, 20));
    for (flags, needles) in [
        (&["--max-steps", "5"][..], &["--max-steps", "streamed"][..]),
        (&["--eval-rows", "5"][..], &["--eval-rows", "streamed"][..]),
        (&["--stream", "--validation-split", "0.25"][..], &["--validation-split", "streamed"][..]),
        (&["--stream", "--shuffle-buffer", "0"][..], &["--shuffle-buffer 0"][..]),
    ] {
        let (out, dir) = train_on(&t, &small, flags);
        assert_bad_input(&t, &out, &dir, needles);
    }
}

/// BatchTopK: the checkpoint holds the threshold training estimated; `sae encode` codes by it
/// (every code is 0 or above it), and the SAELens export is a JumpReLU SAE whose forward, from
/// its files alone, equals `sae encode --reconstruct`; read back, it encodes the same.
#[test]
fn batch_topk_threshold_at_inference_and_in_saelens() {
    let t = Tmp::new("batch_topk");
    let dir = trained_dictionary(&t, &["--code-activation", "batch-topk"]);
    let model = dir.join("model.safetensors");
    let (spec, _) = sae_wgpu::checkpoint::load(&model).unwrap();
    let sae_wgpu::model::CodeSelect::BatchTopK { k, threshold } = spec.select else { panic!("{:?}", spec.select) };
    assert_eq!(k, 3);
    assert!(threshold > 0.0, "threshold {threshold}");
    let (x, _) = sae_wgpu::synthetic::DictionarySpec { width: 32, features: 64, active: 3 }.generate(41, 5);
    let x_path = t.path("x.npy");
    data::save(&x_path, &x).unwrap();
    let codes = t.path("codes.npy");
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&x_path), "--out", s(&codes)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let codes = data::load(&codes).unwrap();
    assert!(codes.values.iter().all(|&v| v == 0.0 || v > threshold), "a code below the threshold");
    assert!(codes.values.iter().any(|&v| v > 0.0), "every code is 0");
    let sl = t.path("saelens");
    let out = t.sae(&["export", "--format", "saelens", "--model", s(&model), "--out", s(&sl)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cfg = fs::read_to_string(sl.join("cfg.json")).unwrap();
    assert!(cfg.contains("\"jumprelu\""), "{cfg}");
    let recon = t.path("recon.npy");
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&x_path), "--out", s(&recon), "--reconstruct"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let worst = saelens_forward_error(&sl, &x, &data::load(&recon).unwrap().values);
    println!("JumpReLU forward from the exported files vs sae encode --reconstruct: max error {worst:.2e}");
    assert!(worst < 1e-5, "max error {worst:e}");
    let recon2 = t.path("recon2.npy");
    let out = t.sae(&["encode", "--model", s(&sl), "--data", s(&x_path), "--out", s(&recon2), "--reconstruct"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(data::load(&recon2).unwrap().values, data::load(&recon).unwrap().values);
}

/// JumpReLU: the checkpoint holds each latent's log threshold (`enc1.log_threshold`); the SAELens
/// export is a jumprelu SAE with those thresholds, whose forward from the files alone equals
/// `sae encode --reconstruct`, and which reads back as the same model. Its settings without
/// --code-activation jumprelu, and --sparsity l0 on another code, are refused.
#[test]
fn jumprelu_checkpoint_and_saelens() {
    let t = Tmp::new("jumprelu");
    let dir = trained_dictionary(&t, &["--code-activation", "jumprelu", "--sparsity", "l0"]);
    let model = dir.join("model.safetensors");
    let bytes = fs::read(&model).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (shape, log_t) = read_f32_tensor(&file, "enc1.log_threshold");
    assert_eq!(shape, vec![64]);
    assert!(log_t.iter().any(|&v| (v - 0.1f64.ln()).abs() > 1e-3), "no threshold moved from its init");
    let (x, _) = sae_wgpu::synthetic::DictionarySpec { width: 32, features: 64, active: 3 }.generate(41, 5);
    let x_path = t.path("x.npy");
    data::save(&x_path, &x).unwrap();
    let sl = t.path("saelens");
    let out = t.sae(&["export", "--format", "saelens", "--model", s(&model), "--out", s(&sl)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recon = t.path("recon.npy");
    let out = t.sae(&["encode", "--model", s(&model), "--data", s(&x_path), "--out", s(&recon), "--reconstruct"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = data::load(&recon).unwrap().values;
    let worst = saelens_forward_error(&sl, &x, &got);
    println!("JumpReLU (per latent) forward from the exported files vs sae encode --reconstruct: {worst:.2e}");
    assert!(worst < 1e-5, "max error {worst:e}");
    let recon2 = t.path("recon2.npy");
    let out = t.sae(&["encode", "--model", s(&sl), "--data", s(&x_path), "--out", s(&recon2), "--reconstruct"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let back = data::load(&recon2).unwrap().values;
    let diff = got.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    // The thresholds go through exp and ln once: equal to f32 rounding.
    assert!(diff < 1e-5, "read back, the model encodes differently (max diff {diff})");
    train_flags_rejected(
        "jumprelu_flag_alone",
        &["--jumprelu-bandwidth", "0.1"],
        &["--jumprelu-bandwidth", "jumprelu"],
    );
    train_flags_rejected("l0_on_relu", &["--sparsity", "l0"], &["--sparsity l0", "jumprelu"]);
    train_flags_rejected(
        "jumprelu_bad_bandwidth",
        &["--layers", "20,8", "--code-activation", "jumprelu", "--jumprelu-bandwidth", "0", "--sparsity", "none"],
        &["--jumprelu-bandwidth 0"],
    );
}

/// Start-up (docs/design.md section 13): `sae train` reports its time to the first step, split,
/// having created only the pipelines its path uses; the driver's pipeline cache file is written
/// whole, and a damaged one (flipped bytes, truncated, garbage) is ignored: the run succeeds and
/// gives the same model byte for byte, then leaves a whole file again.
#[test]
fn start_up_is_reported_and_a_damaged_pipeline_cache_is_ignored() {
    let t = Tmp::new("pipeline_cache");
    let cache = t.path("cache");
    let run = |name: &str| {
        let dir = t.path(name);
        let out = Command::new(env!("CARGO_BIN_EXE_sae"))
            .args(["train", "--samples", "128", "--epochs", "1", "--batch-size", "64", "--seed", "3", "--out", s(&dir)])
            .env("XDG_RUNTIME_DIR", t.path("xdg"))
            .env("SAE_CACHE_DIR", &cache)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        (out, fs::read(dir.join("model.safetensors")).unwrap())
    };
    let (out, first) = run("a");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().find(|l| l.starts_with("start-up: device ")).unwrap_or_else(|| panic!("{text}"));
    // "start-up: device 0.045 s, pipelines 0.050 s (12 created), first step ..."
    let created: usize = line.split(" created)").next().and_then(|h| h.rsplit('(').next()).unwrap().parse().unwrap();
    let every = sae_wgpu::kernels::Kernel::ALL.len() + 6;
    assert!(created > 0 && created < every, "{line}: a seed run needs fewer pipelines than one variant's {every}");
    assert!(line.contains(", first step ") && line.contains("to the first step"), "{line}");
    let files: Vec<PathBuf> = fs::read_dir(&cache).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    if stderr(&out).contains("(Vulkan,") {
        assert_eq!(files.len(), 1, "one cache file for the adapter: {files:?}");
        let bytes = fs::read(&files[0]).unwrap();
        assert!(sae_wgpu::cache::unwrap(&bytes).is_some(), "the cache file is whole");
        let mut flipped = bytes.clone();
        let at = flipped.len() - 1;
        flipped[at] ^= 0xff;
        for (i, damaged) in
            [flipped, bytes[..bytes.len() / 2].to_vec(), b"not a pipeline cache".to_vec()].into_iter().enumerate()
        {
            fs::write(&files[0], damaged).unwrap();
            let (_, again) = run(&format!("b{i}"));
            assert!(again == first, "a damaged cache changed the model");
            assert!(sae_wgpu::cache::unwrap(&fs::read(&files[0]).unwrap()).is_some(), "rewritten whole");
        }
    }
}
