//! `sae report`: pictures of a run from what `sae train --out` wrote (docs/design.md section 10).
//!
//! * `loss.png`: J and each of its terms per epoch (training solid, validation dashed), and J
//!   per step where the run logged steps; log scale (every term is positive, and they span
//!   decades).
//! * `sparsity.png`: each code unit's rho_hat and hard firing frequency per epoch with the
//!   target rho (for more than 16 units: their minimum, median and maximum).
//! * `density.png`: the histogram of the code units' firing frequencies (log10), as SAELens
//!   plots latent densities; units that never fired get a bar of their own.
//! * `filters.png`: with an image shape, the first layer's rows and the last layer's columns as
//!   grids of tiles, each scaled by its largest magnitude like UFLDL's `display_network`.
//! * `index.html`: the settings and final figures as tables, and the pictures (beside it).
//!
//! Charts are drawn with `plotters` into a pixel buffer with the bundled DejaVu Sans font (no
//! system font lookup) and written as PNG with the `png` crate, atomically.

mod draw;
mod html;
pub mod measure;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::model::{ModelSpec, Params};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Chart size in pixels: legible on a laptop screen, with room for 16-point labels.
pub const CHART: (u32, u32) = (1100, 700);

/// What a run left in its `--out` directory.
pub struct Run {
    pub dir: PathBuf,
    pub config: Value,
    /// `metrics.jsonl`, split by kind.
    pub steps: Vec<Value>,
    pub epochs: Vec<Value>,
    pub spec: ModelSpec,
    pub params: Params,
}

/// `HxW` (`--image-shape`), e.g. `8x8`.
pub fn parse_image_shape(text: &str) -> std::result::Result<(usize, usize), String> {
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    match parts.as_slice() {
        [h, w] => match (h.trim().parse::<usize>(), w.trim().parse::<usize>()) {
            (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h, w)),
            _ => Err(format!("--image-shape {text}: give HxW with positive integers, e.g. 8x8")),
        },
        _ => Err(format!("--image-shape {text}: give HxW, e.g. 8x8")),
    }
}

impl Run {
    /// Reads `metrics.jsonl`, `config.json` and `model.safetensors` from `dir`; a missing or
    /// unreadable one is bad input naming it.
    pub fn load(dir: &Path) -> Result<Run> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| {
                Error::Input(format!(
                    "{}: cannot read it ({e}): give the --out directory of a sae train run",
                    path.display()
                ))
            })
        };
        let config_path = dir.join("config.json");
        let config: Value = serde_json::from_str(&read("config.json")?)
            .map_err(|e| Error::Input(format!("{}: not JSON ({e})", config_path.display())))?;
        let (mut steps, mut epochs) = (Vec::new(), Vec::new());
        let text = read("metrics.jsonl")?;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                // A run killed mid-write leaves its last line cut off: report what is there.
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                    eprintln!(
                        "note: {}: the last line is cut off (a killed run?); reporting the {i} lines before it",
                        dir.join("metrics.jsonl").display()
                    );
                    break;
                }
                Err(e) => {
                    return Err(Error::Input(format!(
                        "{}: line {} is not JSON ({e})",
                        dir.join("metrics.jsonl").display(),
                        i + 1
                    )))
                }
            };
            match v["kind"].as_str() {
                Some("step") => steps.push(v),
                Some("epoch") => epochs.push(v),
                _ => {}
            }
        }
        if epochs.is_empty() {
            return Err(Error::Input(format!(
                "{}: no epoch lines yet; report on a run that has finished an epoch",
                dir.join("metrics.jsonl").display()
            )));
        }
        let (spec, params) = checkpoint::load(&dir.join("model.safetensors"))?;
        Ok(Run { dir: dir.to_path_buf(), config, steps, epochs, spec, params })
    }

    /// The image shape `sae train --image-shape` recorded, if any.
    pub fn recorded_image_shape(&self) -> Option<(usize, usize)> {
        let s = self.config.get("image_shape")?.as_array()?;
        Some((s.first()?.as_u64()? as usize, s.get(1)?.as_u64()? as usize))
    }

    /// The target rho of the run's sparsity term, if it has one.
    pub fn target_rho(&self) -> Option<f64> {
        self.config["loss"]["sparsity"]["rho"].as_f64()
    }
}

/// Writes the report of the run in `run_dir` into `out` (default `run_dir/report`); returns the
/// files written. `image_shape` overrides the one the run recorded.
pub fn write(run_dir: &Path, out: Option<&Path>, image_shape: Option<(usize, usize)>) -> Result<Vec<PathBuf>> {
    let run = Run::load(run_dir)?;
    let shape = image_shape.or(run.recorded_image_shape());
    if let Some((h, w)) = shape {
        let n0 = run.spec.input_width();
        if h * w != n0 {
            return Err(Error::Input(format!(
                "--image-shape {h}x{w}: {} pixels, but the model's input is {n0} wide; give H and W with H*W = {n0}",
                h * w
            )));
        }
    }
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| run_dir.join("report"));
    std::fs::create_dir_all(&out).map_err(|e| {
        Error::Input(format!("--out {}: cannot create it ({e}): give a directory you can write", out.display()))
    })?;
    draw::register_font()?;
    let mut pictures = vec![
        ("loss.png", "J and its terms over training (log scale)", draw::loss(&run)?),
        ("sparsity.png", "Code units' rho_hat and hard firing frequency over training", draw::sparsity(&run)?),
        ("density.png", "Code units' firing frequencies at the end (log10)", draw::density(&run)?),
    ];
    if let Some(shape) = shape {
        pictures.push((
            "filters.png",
            "First layer's rows and last layer's columns as images",
            draw::filters(&run, shape)?,
        ));
    }
    let mut written = Vec::new();
    for (name, _, image) in &pictures {
        let path = out.join(name);
        image.save(&path)?;
        written.push(path);
    }
    let captions: Vec<(&str, &str)> = pictures.iter().map(|(n, c, _)| (*n, *c)).collect();
    let path = out.join("index.html");
    crate::data::write_atomic(&path, html::page(&run, &captions).as_bytes())
        .map_err(|e| Error::Runtime(format!("{}: cannot write it ({e})", path.display())))?;
    written.push(path);
    Ok(written)
}
