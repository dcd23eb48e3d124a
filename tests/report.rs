//! `sae report` and `sae train --report` (docs/design.md section 10): every picture decodes, is
//! large enough to read, is not blank, and index.html shows each one; for a short run of the
//! built-in model and for an L-BFGS run on image patches (with filters.png).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `sae` (without an adapter a run fails, exit 1, saying how to get one: `ok` shows it).
fn sae(args: &[&str]) -> Output {
    let xdg = std::env::temp_dir().join(format!("sae-report-xdg-{}", std::process::id()));
    std::fs::create_dir_all(&xdg).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_sae")).args(args).env("XDG_RUNTIME_DIR", &xdg).output().expect("runs sae")
}

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sae-report-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Decodes a PNG: (width, height, variance of its grey levels).
fn decode(path: &Path) -> (u32, u32, f64) {
    let mut reader =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    let channels = frame.color_type.samples();
    let grey: Vec<f64> = buf[..frame.buffer_size()]
        .chunks(channels)
        .map(|p| p.iter().take(3).map(|&v| v as f64).sum::<f64>() / p.len().min(3) as f64)
        .collect();
    let mean = grey.iter().sum::<f64>() / grey.len() as f64;
    let var = grey.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / grey.len() as f64;
    (frame.width, frame.height, var)
}

/// The report in `report` has `pictures`, each at least `min` pixels (filters: 200 x 200) and
/// far from blank, and index.html shows each.
fn check_report(report: &Path, pictures: &[&str]) {
    let html = std::fs::read_to_string(report.join("index.html")).expect("index.html");
    for name in pictures {
        let (w, h, var) = decode(&report.join(name));
        let min = if *name == "filters.png" { (200, 200) } else { (400, 300) };
        println!("{name}: {w} x {h}, grey-level variance {var:.0}");
        assert!(w >= min.0 && h >= min.1, "{name} is {w} x {h}");
        // A blank (one-colour) picture has variance 0; the axes, text, lines and tiles of these
        // pictures give 800-6,600 (measured) on 0-255 grey levels, so 100 is a floor with room.
        assert!(var > 100.0, "{name} looks blank (variance {var})");
        assert!(html.contains(&format!("src=\"{name}\"")), "index.html does not show {name}");
    }
    assert!(html.contains("Settings") && html.contains("fvu"), "index.html lacks the tables");
}

#[test]
fn report_of_a_short_run() {
    let d = dir("short");
    let run = d.join("run");
    ok(&sae(&[
        "train",
        "--samples",
        "600",
        "--epochs",
        "3",
        "--log-every",
        "5",
        "--validation-split",
        "0.2",
        "--report",
        "--out",
        run.to_str().unwrap(),
    ]));
    check_report(&run.join("report"), &["loss.png", "sparsity.png", "density.png"]);
    assert!(!run.join("report/filters.png").exists(), "no image shape, no filters");
    // sae report on the same run into another directory, with an image shape of the 20 inputs.
    let other = d.join("other");
    ok(&sae(&["report", run.to_str().unwrap(), "--out", other.to_str().unwrap(), "--image-shape", "4x5"]));
    check_report(&other, &["loss.png", "sparsity.png", "density.png", "filters.png"]);
    // Bad input: a shape that does not match, a directory that is not a run.
    let out = sae(&["report", run.to_str().unwrap(), "--image-shape", "3x3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--image-shape 3x3"));
    let out = sae(&["report", d.join("absent").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
    // A killed run leaves its last metrics line cut off: the report shows what is there.
    let metrics = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, &text[..text.len() - 40]).unwrap();
    let cut = d.join("cut");
    let out = sae(&["report", run.to_str().unwrap(), "--out", cut.to_str().unwrap()]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut off"));
    check_report(&cut, &["loss.png", "sparsity.png", "density.png"]);
    // A broken line in the middle is bad input, and nothing is written.
    std::fs::write(&metrics, format!("{{not json\n{text}")).unwrap();
    let broken = d.join("broken");
    let out = sae(&["report", run.to_str().unwrap(), "--out", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1 is not JSON"));
    assert!(!broken.exists(), "nothing written on bad input");
    let out = sae(&["train", "--samples", "64", "--report"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--report needs --out"));
}

#[test]
fn report_of_a_patch_run_has_filters() {
    let d = dir("patches");
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images");
    let patches = d.join("patches.npy");
    ok(&sae(&[
        "patches",
        images.join("camera.png").to_str().unwrap(),
        images.join("grass.png").to_str().unwrap(),
        "--count",
        "2000",
        "--out",
        patches.to_str().unwrap(),
    ]));
    let run = d.join("run");
    ok(&sae(&[
        "train",
        "--preset",
        "classic",
        "--data",
        patches.to_str().unwrap(),
        "--layers",
        "64,25",
        "--rho",
        "0.01",
        "--weight-decay",
        "1e-4",
        "--optimizer",
        "lbfgs",
        "--epochs",
        "200",
        "--image-shape",
        "8x8",
        "--report",
        "--out",
        run.to_str().unwrap(),
    ]));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["image_shape"], serde_json::json!([8, 8]));
    check_report(&run.join("report"), &["loss.png", "sparsity.png", "density.png", "filters.png"]);
    // The filters turn into edges: more localised and oriented than the initial random weights
    // (measured here after 200 iterations on 2,000 patches: 0.47 and 0.56, from 0.35 and 0.49;
    // the README's example, 400 iterations on 10,000 patches: 0.50 and 0.81).
    use sae_wgpu::report::measure::median_shape;
    let (spec, learned) = sae_wgpu::checkpoint::load(&run.join("model.safetensors")).unwrap();
    let rows = |p: &sae_wgpu::Params| p.weights[0].chunks(64).map(<[f32]>::to_vec).collect::<Vec<_>>();
    let after = median_shape(&rows(&learned), (8, 8));
    let before = median_shape(&rows(&sae_wgpu::Params::init(&spec, 0)), (8, 8));
    println!(
        "localisation {:.3} -> {:.3}, orientation {:.3} -> {:.3}",
        before.localisation, after.localisation, before.orientation, after.orientation
    );
    assert!(after.localisation > before.localisation + 0.05, "{before:?} -> {after:?}");
    assert!(after.orientation > before.orientation, "{before:?} -> {after:?}");
}
