//! `sae bench`: a quick run of the seed preset writes a JSON file with the adapter and a positive,
//! finite timing for every kernel row and the whole step; `--compare` against it prints ratios;
//! an unknown preset is bad input (exit 2). Runs on whatever adapter wgpu picks (lavapipe in CI).

use sae_wgpu::kernels::matmul::PAIR_MAX_MACS;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh directory for this test, with a private XDG_RUNTIME_DIR for Mesa.
fn tmp(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sae-bench-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("xdg")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("xdg"), fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

fn sae(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .output()
        .expect("runs the sae binary")
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what}: {x} is not a positive finite figure");
    x
}

#[test]
fn quick_seed_bench_writes_json_and_compares() {
    let dir = tmp("quick");
    let json = dir.join("bench.json");
    let json_arg = json.to_str().unwrap();
    let out = sae(&dir, &["bench", "--quick", "--preset", "seed", "--json", json_arg]);
    assert!(out.status.success(), "sae bench failed\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("validation:") && stdout.contains("pass"), "no validation line\n{stdout}");
    assert!(stdout.contains("summary seed b256") && stdout.contains("ms/step"), "no summary\n{stdout}");

    let doc: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).expect("valid JSON");
    let adapter = &doc["adapter"];
    for key in ["name", "backend", "device_type", "driver"] {
        assert!(adapter[key].is_string(), "adapter.{key} missing: {adapter}");
    }
    assert!(!adapter["name"].as_str().unwrap().is_empty());
    // Time to the first step of the first case, split as `sae train` prints it.
    assert!(stdout.contains("start-up: device "), "no start-up line\n{stdout}");
    let startup = &doc["startup"];
    assert_eq!(startup["case"], "seed b256", "{startup}");
    for key in ["device_seconds", "pipelines_seconds", "pipelines_created", "first_step_seconds"] {
        positive(&startup[key], &format!("startup {key}"));
    }
    let cases = doc["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(names.iter().all(|n| n.starts_with("seed")) && !names.is_empty(), "{names:?}");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kernels = case["kernels"].as_array().expect("kernel rows");
        // The seed model has 6 layers. On a CPU adapter with subgroups (lavapipe) the forward
        // pass is one panel_forward launch (the output delta in it), else 6 forward matmul rows
        // (bias + activation in their epilogues, the output delta in the last one's); then for
        // layers 6..2 a backward pair (a layer's weight and input gradients in one dispatch)
        // where its products are at most PAIR_MAX_MACS, else two rows, and layer 1's weight
        // gradient; and the element-wise kernels: gather, the counts with rho_hat and the KL
        // gradient's column term (which the code layer's pair adds: no kl_backward row; the
        // code layer's products are small at either batch), and the update (which also moves
        // the cursor: no advance_cursor row).
        let panel = adapter["device_type"] == "Cpu" && adapter["backend"] == "Vulkan";
        let forward_rows = if panel { 1 } else { 6 };
        let m: usize = name.trim_start_matches("seed b").parse().expect("a batch size in the case name");
        let widths = [20, 80, 40, 4, 40, 80, 20];
        let backward_rows: usize =
            (2..=6).map(|l| if m * widths[l] * widths[l - 1] <= PAIR_MAX_MACS { 1 } else { 2 }).sum::<usize>() + 1;
        assert_eq!(kernels.len(), forward_rows + backward_rows + 3, "{name}: {} kernel rows", kernels.len());
        for gone in ["advance_cursor", "kl_backward"] {
            assert!(kernels.iter().all(|k| k["kernel"] != gone), "{name}: a {gone} row");
        }
        // Labels name the epilogue and layer, and " vec4" where the vec4 kernel runs.
        let has =
            |id: &str| kernels.iter().any(|k| k["id"].as_str().map(|s| s.replace(" vec4", "")).as_deref() == Some(id));
        if panel {
            assert!(has("panel_forward+delta"), "{name}: no panel forward with the output delta");
        } else {
            assert!(has("matmul_forward+bias_act L1"), "{name}: no fused bias+activation row");
            assert!(has("matmul_forward+bias_act+delta L6"), "{name}: no output delta in the last forward layer");
        }
        assert!(has("matmul_backward_pair+act'+kl L4"), "{name}: no KL term in the code layer's pair");
        let forward = if panel { "panel_forward" } else { "matmul_forward" };
        for kernel in [forward, "matmul_backward_weight", "matmul_backward_pair", "fire_count_rho", "sgd_update"] {
            assert!(kernels.iter().any(|k| k["kernel"] == kernel), "{name}: no {kernel} row");
        }
        for k in kernels {
            let id = format!("{name} {}", k["id"]);
            for key in ["median_us", "min_us", "max_us", "gflops", "gbps", "flops", "bytes", "share"] {
                positive(&k[key], &format!("{id} {key}"));
            }
            assert!(k["min_us"].as_f64() <= k["median_us"].as_f64() && k["median_us"].as_f64() <= k["max_us"].as_f64());
        }
        let step = &case["step"];
        for key in ["median_ms", "min_ms", "max_ms", "samples_per_s", "dispatches_per_step"] {
            positive(&step[key], &format!("{name} step {key}"));
        }
    }

    let out = sae(&dir, &["bench", "--quick", "--preset", "seed", "--compare", json_arg]);
    assert!(out.status.success(), "sae bench --compare failed\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("NEW/OLD"), "no ratio table\n{stdout}");
    // "  step ms   OLD   NEW   NEW/OLD   [better|worse]": the third number is the ratio.
    let ratio = |line: &str, figure: &str| {
        let rest = line.trim_start().strip_prefix(figure)?;
        rest.split_whitespace().nth(2)?.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0)
    };
    let ratio_lines = stdout
        .lines()
        .filter(|l| ratio(l, "step ms").is_some() || ratio(l, "matmul_forward L1 µs/step").is_some())
        .count();
    assert!(ratio_lines >= 2, "no positive ratios printed for the step and the first matmul\n{stdout}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unknown_preset_is_bad_input() {
    let dir = tmp("unknown");
    let out = sae(&dir, &["bench", "--quick", "--preset", "imagenet"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--preset imagenet") && stderr.contains("seed"), "{stderr}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn bad_compare_file_is_bad_input_before_timing() {
    let dir = tmp("badcompare");
    let old = dir.join("old.json");
    fs::write(&old, "{\"not\": \"a bench\"}").unwrap();
    let out = sae(&dir, &["bench", "--quick", "--preset", "seed", "--compare", old.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "timed something before rejecting the file");
    let _ = fs::remove_dir_all(&dir);
}
