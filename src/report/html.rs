//! `index.html` of a report: one self-contained page (inline style, no scripts) with the run's
//! settings, its final figures and the pictures beside it.

use super::Run;
use serde_json::Value;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A JSON value as table text: numbers to 6 significant digits, short arrays inline.
fn text(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.6}").trim_end_matches('0').trim_end_matches('.').to_string(),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            format!("[{}]", a.iter().map(text).collect::<Vec<_>>().join(", "))
        }
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// `key: value` rows of a JSON object, nested objects flattened as `outer.inner`.
fn rows(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                rows(&key, inner, out);
            }
        }
        other => out.push((prefix.to_string(), text(other))),
    }
}

fn table(title: &str, rows: &[(String, String)]) -> String {
    let body: String =
        rows.iter().map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(k), escape(v))).collect();
    format!("<h2>{}</h2>\n<table>\n{body}</table>\n", escape(title))
}

pub fn page(run: &Run, pictures: &[(&str, &str)]) -> String {
    let mut settings = Vec::new();
    rows("", &run.config, &mut settings);
    let last = run.epochs.last().expect("Run::load requires an epoch line");
    let keys = ["epoch", "step", "loss", "reconstruction", "sparsity", "weight_decay", "mse", "fvu", "rho_hat", "freq"];
    let mut finals: Vec<(String, String)> =
        keys.iter().filter(|k| last.get(**k).is_some()).map(|k| (k.to_string(), text(&last[*k]))).collect();
    if let Some(v) = last.get("validation") {
        for k in ["loss", "fvu"] {
            finals.push((format!("validation {k}"), text(&v[k])));
        }
    }
    let figures: String = pictures
        .iter()
        .map(|(file, caption)| {
            format!(
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n",
                escape(file),
                escape(caption),
                escape(caption)
            )
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>sae report: {dir}</title>\n<style>\n\
         body {{ font-family: sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }}\n\
         table {{ border-collapse: collapse; margin-bottom: 1.5em; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 3px 10px; text-align: left; font-size: 14px; }}\n\
         th {{ background: #f4f4f4; font-weight: normal; }}\n\
         img {{ max-width: 100%; border: 1px solid #ddd; }}\n\
         figure {{ margin: 0 0 2em 0; }}\n</style></head>\n<body>\n<h1>sae report</h1>\n<p>{dir}</p>\n{final_table}{figures}{settings_table}</body></html>\n",
        dir = escape(&run.dir.display().to_string()),
        final_table = table("Final figures (last epoch line, whole training set)", &finals),
        settings_table = table("Settings (config.json)", &settings),
    )
}
