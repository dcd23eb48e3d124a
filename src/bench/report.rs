//! The benchmark's tables, its JSON document and `--compare`.

use super::*;

pub(crate) fn load_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("--compare {}: cannot read it: {e}", path.display())))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| BadInput(format!("--compare {}: not JSON: {e}", path.display())))?;
    if !doc.get("cases").is_some_and(Value::is_array) {
        return Err(BadInput(format!("--compare {}: not a `sae bench --json` file (no \"cases\")", path.display())));
    }
    Ok(doc)
}

pub(crate) fn sizes(spec: &ModelSpec) -> String {
    spec.sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("-")
}

/// `v` with `digits[0]` decimals from `coarse` up, `digits[1]` from `fine` up, else `digits[2]`.
fn adaptive(v: f64, coarse: f64, fine: f64, digits: [usize; 3]) -> String {
    let d = if v >= coarse {
        digits[0]
    } else if v >= fine {
        digits[1]
    } else {
        digits[2]
    };
    format!("{v:.d$}")
}

/// Microseconds with precision that suits their size.
pub(crate) fn us(seconds: f64) -> String {
    adaptive(seconds * 1e6, 1000.0, 10.0, [0, 1, 2])
}

/// A rate (GFLOP/s, GB/s) with precision that suits its size.
pub(crate) fn rate(v: f64) -> String {
    adaptive(v, 100.0, 1.0, [0, 2, 3])
}

pub(crate) fn print_case(r: &CaseResult) {
    let c = &r.case;
    println!();
    println!("== {}: {}, batch {} ==", c.name(), sizes(&c.spec), c.batch);
    match c.recipe {
        super::Recipe::Kl => {
            println!("   relu hidden, sigmoid code with KL sparsity (rho 0.05, beta 3), sigmoid output, SGD lr {LR}")
        }
        super::Recipe::TopK { k, auxk } => println!(
            "   TopK code (k {k}), pre-bias, identity output, unit-norm decoder columns, AuxK (k {auxk}), Adam lr {LR}"
        ),
    }
    for note in &c.notes {
        println!("   note: {note}");
    }
    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8} {:>6}",
        "kernel", "shape (m·k→n)", "×step", "µs/step", "min µs", "max µs", "GFLOP/s", "GB/s", "share"
    );
    let step = r.step.time.median;
    let mut sum = 0.0;
    for row in &r.rows {
        sum += row.time.median;
        println!(
            "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8} {:>5.1}%",
            row.launch.cost.label,
            row.launch.cost.shape,
            1,
            us(row.time.median),
            us(row.time.min),
            us(row.time.max),
            rate(row.gflops()),
            rate(row.gbps()),
            100.0 * row.time.median / step
        );
    }
    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8} {:>5.1}%",
        "sum of kernel rows",
        "",
        r.rows.len(),
        us(sum),
        "",
        "",
        "",
        "",
        100.0 * sum / step
    );
    println!(
        "   (the launches of one step of the {} path, each timed alone; share: of the whole step below)",
        r.step.path.name()
    );

    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8}",
        "optimizer update", "", "", "µs", "min µs", "max µs", "GFLOP/s", "GB/s"
    );
    for row in &r.updates {
        println!(
            "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8}",
            row.launch.cost.label,
            row.launch.cost.shape,
            "",
            us(row.time.median),
            us(row.time.min),
            us(row.time.max),
            rate(row.gflops()),
            rate(row.gbps())
        );
    }
    println!("   (one update of every parameter, each optimizer's kernel timed alone)");
    let lb = &r.lbfgs;
    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8}",
        "lbfgs (full batch)", "", "", "ms", "min ms", "max ms", "GFLOP/s", "GB/s"
    );
    let ms = |t: f64| format!("{:.3}", t * 1e3);
    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8}",
        "objective J + gradient (GPU)",
        format!("{} rows / {}", lb.rows, r.case.batch),
        "",
        ms(lb.evaluation.median),
        ms(lb.evaluation.min),
        ms(lb.evaluation.max),
        rate(lb.evaluation_flops / lb.evaluation.median * 1e-9),
        ""
    );
    if let Some((two, one)) = &lb.one_chunk {
        // Forward twice and backward once in two passes; forward once and backward once in one.
        let (two_flops, one_flops) = (lb.evaluation_flops, lb.evaluation_flops * 2.0 / 3.0);
        for (label, t, flops) in [("one chunk, two passes", two, two_flops), ("one chunk, one pass", one, one_flops)] {
            println!(
                "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8}",
                label,
                format!("{} rows / {}", lb.rows, lb.rows),
                "",
                ms(t.median),
                ms(t.min),
                ms(t.max),
                rate(flops / t.median * 1e-9),
                ""
            );
        }
    }
    println!(
        "{:<30} {:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>8}",
        "two-loop recursion (host f64)",
        format!("{} pairs x {}", lb.pairs, lb.params),
        "",
        ms(lb.two_loop.median),
        ms(lb.two_loop.min),
        ms(lb.two_loop.max),
        rate(lb.two_loop_flops() / lb.two_loop.median * 1e-9),
        rate(lb.two_loop_bytes() / lb.two_loop.median * 1e-9)
    );
    println!(
        "   (an evaluation: {} dispatches, {:.0} kB read back; an iteration takes one or more evaluations and one two-loop)",
        lb.evaluation_dispatches,
        lb.evaluation_bytes_read_back / 1e3
    );

    let st = &r.step;
    let opt = |v: Option<f64>, digits: usize| v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>12} {:>11} {:>12} {:>14}",
        "whole step", "ms/step", "min ms", "max ms", "samples/s", "dispatches", "round trips", "bytes up/step"
    );
    for (st, chosen) in std::iter::once((st, true)).chain(r.other_path.iter().map(|o| (o, false))) {
        println!(
            "{:<34} {:>10.3} {:>10.3} {:>10.3} {:>12.0} {:>11.1} {:>12} {:>14}",
            format!(
                "GPU {} path{} ({}x{})",
                st.path.name(),
                if chosen { " (default)" } else { "" },
                st.time.runs,
                st.time.reps
            ),
            st.time.median * 1e3,
            st.time.min * 1e3,
            st.time.max * 1e3,
            st.samples_per_s,
            st.dispatches,
            opt(st.round_trips, 2),
            opt(st.bytes_uploaded, 0)
        );
    }
    println!("   (train_epoch: data resident on the device, up to 64 steps per submit, no read-back)");
    let launches = r.rows.len();
    if (st.dispatches - launches as f64).abs() > 0.5 {
        println!(
            "   note: the training step ran {:.0} dispatches per step for its {launches} launches (split grids count once per part)",
            st.dispatches
        );
    }
    if st.submits.is_none() {
        println!("   (Trainer::stats did not count: dispatches from dispatches_per_step; round trips and bytes n/a)");
    }
    match &r.reference {
        ReferenceResult::Timed(t) => println!(
            "{:<34} {:>10.3} {:>10.3} {:>10.3} {:>12.0}   <- CPU f64 reference, for scale ({} runs)",
            "f64 CPU reference::step",
            t.median * 1e3,
            t.min * 1e3,
            t.max * 1e3,
            c.batch as f64 / t.median,
            t.runs
        ),
        ReferenceResult::Skipped(why) => println!("{:<34} {why}", "f64 CPU reference::step"),
    }

    if let Some(v) = &r.variants {
        let (m, k, n) = v.mkn;
        println!();
        println!(
            "{:<44} {:>11} {:>11} {:>11} {:>9}",
            format!("forward matmul {m}·{k}→{n}"),
            "µs",
            "min µs",
            "max µs",
            "GFLOP/s"
        );
        for row in [&v.tiled, &v.default].into_iter().chain(&v.others).chain([&v.cpu]) {
            println!(
                "{:<44} {:>11} {:>11} {:>11} {:>9}",
                row.id,
                us(row.time.median),
                us(row.time.min),
                us(row.time.max),
                rate(row.gflops())
            );
        }
        println!(
            "   GFLOP/s ratios: default ({}) / tiled = {:.2}x   default / cpu sgemm (1 thread, the CPU's own figure) = {:.2}x",
            v.default_name,
            v.default.gflops() / v.tiled.gflops(),
            v.default.gflops() / v.cpu.gflops()
        );
    }
}

pub(crate) fn measured_json(t: &Measured, scale: f64, unit: &str) -> Value {
    json!({
        format!("median_{unit}"): t.median * scale,
        format!("min_{unit}"): t.min * scale,
        format!("max_{unit}"): t.max * scale,
        "reps": t.reps,
        "runs": t.runs,
    })
}

pub(crate) fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

pub(crate) fn to_json(
    gpu: &Gpu,
    timer: &Timer,
    s: &Settings,
    validation: Value,
    results: &[CaseResult],
    elapsed: f64,
) -> Value {
    let info = &gpu.info;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let cases: Vec<Value> = results
        .iter()
        .map(|r| {
            let step_s = r.step.time.median;
            let kernels: Vec<Value> = r
                .rows
                .iter()
                .map(|row| {
                    let c = &row.launch.cost;
                    merge(
                        json!({
                            "id": c.label, "kernel": row.launch.name, "shape": c.shape,
                            "per_step": 1, "flops": c.flops, "bytes": c.bytes,
                            "gflops": row.gflops(), "gbps": row.gbps(), "share": row.time.median / step_s,
                        }),
                        measured_json(&row.time, 1e6, "us"),
                    )
                })
                .collect();
            let st = &r.step;
            let step_json = |st: &StepResult| {
                merge(
                    json!({
                        "path": st.path.name(),
                        "samples_per_s": st.samples_per_s, "dispatches_per_step": st.dispatches,
                        "submits_per_step": st.submits, "round_trips_per_step": st.round_trips,
                        "bytes_uploaded_per_step": st.bytes_uploaded, "counters": st.submits.is_some(),
                    }),
                    measured_json(&st.time, 1e3, "ms"),
                )
            };
            let step = step_json(st);
            let other_path = r.other_path.as_ref().map(step_json);
            let reference = match &r.reference {
                ReferenceResult::Timed(t) => {
                    merge(json!({"samples_per_s": r.case.batch as f64 / t.median}), measured_json(t, 1e3, "ms"))
                }
                ReferenceResult::Skipped(why) => json!({"skipped": why}),
            };
            let mut case = json!({
                "name": r.case.name(), "preset": r.case.preset, "sizes": r.case.spec.sizes,
                "recipe": match r.case.recipe {
                    super::Recipe::Kl => json!({"kind": "kl"}),
                    super::Recipe::TopK { k, auxk } => json!({"kind": "topk", "k": k, "auxk": auxk}),
                },
                "code_layer": r.case.spec.code_layer, "batch": r.case.batch,
                "requested_batch": r.case.requested_batch, "notes": r.case.notes,
                "kernels": kernels,
                "kernels_sum_us": r.rows.iter().map(|x| x.time.median).sum::<f64>() * 1e6,
                "step": step, "step_other_path": other_path, "reference": reference,
                "updates": r.updates.iter().map(|row| merge(
                    json!({"id": row.launch.cost.label, "shape": row.launch.cost.shape, "flops": row.launch.cost.flops,
                           "bytes": row.launch.cost.bytes, "gbps": row.gbps()}),
                    measured_json(&row.time, 1e6, "us"),
                )).collect::<Vec<_>>(),
                "lbfgs": {
                    "evaluation": merge(
                        json!({"rows": r.lbfgs.rows, "chunk": r.case.batch, "flops": r.lbfgs.evaluation_flops,
                               "dispatches": r.lbfgs.evaluation_dispatches,
                               "bytes_read_back": r.lbfgs.evaluation_bytes_read_back}),
                        measured_json(&r.lbfgs.evaluation, 1e3, "ms"),
                    ),
                    "one_chunk": r.lbfgs.one_chunk.as_ref().map(|(two, one)| json!({
                        "two_passes": measured_json(two, 1e3, "ms"),
                        "one_pass": measured_json(one, 1e3, "ms"),
                    })),
                    "two_loop": merge(
                        json!({"pairs": r.lbfgs.pairs, "params": r.lbfgs.params,
                               "flops": r.lbfgs.two_loop_flops(), "bytes": r.lbfgs.two_loop_bytes()}),
                        measured_json(&r.lbfgs.two_loop, 1e3, "ms"),
                    ),
                },
            });
            if let Some(v) = &r.variants {
                let row = |x: &VariantRow| {
                    merge(
                        json!({"id": x.id, "gflops": x.gflops(), "flops": x.flops}),
                        measured_json(&x.time, 1e6, "us"),
                    )
                };
                let (m, k, n) = v.mkn;
                case["matmul_variants"] = json!({
                    "m": m, "k": k, "n": n, "default": v.default_name,
                    "tiled": row(&v.tiled), "default_variant": row(&v.default), "cpu_sgemm": row(&v.cpu),
                    "other_variants": v.others.iter().map(row).collect::<Vec<_>>(),
                    "default_over_tiled": v.default.gflops() / v.tiled.gflops(),
                    "default_over_cpu_sgemm": v.default.gflops() / v.cpu.gflops(),
                });
            }
            case
        })
        .collect();
    json!({
        "sae_bench": 1,
        "created_unix": created,
        "adapter": {
            "name": info.name, "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type), "driver": info.driver,
            "driver_info": info.driver_info, "vendor": info.vendor, "device": info.device,
            "description": device::describe(info),
            "timestamp_queries": timer.timestamps.is_some(),
        },
        "host": {
            "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
            "logical_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "quick": s.quick,
        "timing": {
            "kernels": if timer.timestamps.is_some() { "gpu-timestamps" } else { "wall-clock" },
            "step": "wall-clock", "warmups": s.warmups, "runs": s.runs, "pass_target_ms": s.pass_target * 1e3,
        },
        "validation": validation,
        "cases": cases,
        "total_seconds": elapsed,
    })
}

/// The figures a comparison shows: (case, figure, value, smaller is better).
pub(crate) fn figures(doc: &Value) -> Vec<(String, String, f64, bool)> {
    let mut out = Vec::new();
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
    for case in doc["cases"].as_array().into_iter().flatten() {
        let name = case["name"].as_str().unwrap_or("?").to_string();
        let mut push = |fig: String, v: Option<f64>, lower: bool| {
            if let Some(v) = v {
                out.push((name.clone(), fig, v, lower));
            }
        };
        for k in case["kernels"].as_array().into_iter().flatten() {
            let id = k["id"].as_str().unwrap_or("?");
            push(format!("{id} µs/step"), num(k, "median_us"), true);
        }
        push("kernel rows sum µs".into(), num(case, "kernels_sum_us"), true);
        for u in case["updates"].as_array().into_iter().flatten() {
            push(format!("update {} µs", u["id"].as_str().unwrap_or("?")), num(u, "median_us"), true);
        }
        push("lbfgs evaluation ms".into(), num(&case["lbfgs"]["evaluation"], "median_ms"), true);
        push("lbfgs two-loop ms".into(), num(&case["lbfgs"]["two_loop"], "median_ms"), true);
        let st = &case["step"];
        push("step ms".into(), num(st, "median_ms"), true);
        push("step samples/s".into(), num(st, "samples_per_s"), false);
        push("step dispatches".into(), num(st, "dispatches_per_step"), true);
        push("step round trips".into(), num(st, "round_trips_per_step"), true);
        push("step bytes uploaded".into(), num(st, "bytes_uploaded_per_step"), true);
        push("f64 reference step ms".into(), num(&case["reference"], "median_ms"), true);
        let v = &case["matmul_variants"];
        for (key, label) in [("tiled", "tiled16"), ("default_variant", "default variant"), ("cpu_sgemm", "cpu sgemm")] {
            push(format!("fwd matmul {label} GFLOP/s"), num(&v[key], "gflops"), false);
        }
        push("fwd matmul default/tiled".into(), num(v, "default_over_tiled"), false);
        push("fwd matmul default/cpu sgemm".into(), num(v, "default_over_cpu_sgemm"), false);
    }
    out
}

pub(crate) fn print_comparison(old: &Value, new: &Value, path: &Path) {
    println!();
    println!(
        "compare with {} ({}, {})",
        path.display(),
        old["adapter"]["description"].as_str().unwrap_or("unknown adapter"),
        if old["quick"].as_bool() == Some(true) { "--quick" } else { "full run" }
    );
    println!("ratio = NEW / OLD; for times below 1 is faster, for rates (samples/s, GFLOP/s) above 1 is faster");
    let old_figs = figures(old);
    let new_figs = figures(new);
    let mut matched = 0;
    let mut current = String::new();
    for (case, fig, v, lower) in &new_figs {
        let Some((_, _, o, _)) = old_figs.iter().find(|(c, f, _, _)| c == case && f == fig) else { continue };
        if *case != current {
            println!("{case}");
            println!("  {:<40} {:>14} {:>14} {:>9}", "figure", "OLD", "NEW", "NEW/OLD");
            current = case.clone();
        }
        matched += 1;
        let (ratio, mark) = if *o != 0.0 {
            let r = v / o;
            let better = if *lower { r < 0.95 } else { r > 1.05 };
            let worse = if *lower { r > 1.05 } else { r < 0.95 };
            (
                format!("{r:.3}"),
                if better {
                    "better"
                } else if worse {
                    "worse"
                } else {
                    ""
                },
            )
        } else if *v == 0.0 {
            ("=".to_string(), "")
        } else {
            ("n/a".to_string(), "")
        };
        let line = format!("  {:<40} {:>14.4} {:>14.4} {:>9} {}", fig, o, v, ratio, mark);
        println!("{}", line.trim_end());
    }
    let unmatched = new_figs.len() - matched;
    println!(
        "{matched} figures compared (better / worse: by more than 5%){}",
        if unmatched > 0 { format!("; {unmatched} not in OLD (other presets or batch sizes)") } else { String::new() }
    );
}
