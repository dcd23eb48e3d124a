//! The pictures of a report, drawn into RGB buffers (see `report`).

use super::{Run, CHART};
use crate::error::{Error, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;
use std::path::Path;

/// The bundled font (DejaVu Sans; licence in assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SANS: &str = "sans-serif";

/// Makes the bundled font the one every chart uses (idempotent).
pub fn register_font() -> Result<()> {
    plotters::style::register_font(SANS, FontStyle::Normal, FONT)
        .map_err(|_| Error::Runtime("the bundled font does not parse".into()))
}

/// An RGB picture, 8 bits a channel, row-major.
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Image {
    fn blank(width: u32, height: u32) -> Image {
        Image { width, height, rgb: vec![255; (width * height * 3) as usize] }
    }

    /// Encodes it as PNG and writes it atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        let fail = |e: String| Error::Runtime(format!("{}: cannot encode it as PNG ({e})", path.display()));
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| fail(e.to_string()))?;
            w.write_image_data(&self.rgb).map_err(|e| fail(e.to_string()))?;
        }
        crate::data::write_atomic(path, &bytes)
            .map_err(|e| Error::Runtime(format!("{}: cannot write it ({e})", path.display())))
    }
}

/// An axis number in at most 4 significant digits, scientific outside [1e-3, 1e4).
fn short(v: f64) -> String {
    if v == 0.0 || (1e-3..1e4).contains(&v.abs()) {
        let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{v:.1e}")
    }
}

/// Epochs, iterations and steps are whole numbers: label only those.
fn whole(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// The chart's legend: the series' labels in a framed, lightly opaque box at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    size: u32,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .label_font((SANS, size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(plot_err)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Runtime(format!("drawing a chart failed: {e:?}"))
}

/// Distinct line colours (Tableau's ten).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// `(x, v[key])` of each line with a finite value.
fn series(lines: &[Value], x_key: &str, value: impl Fn(&Value) -> Option<f64>) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| Some((l[x_key].as_f64()?, value(l)?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// An x range around the points (one point gets a unit-wide range).
fn x_range(points: &[(f64, f64)]) -> std::ops::Range<f64> {
    let lo = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    if lo >= hi || lo.is_nan() {
        return (lo - 0.5)..(hi + 0.5);
    }
    lo..hi
}

/// Points of a line: (x, y).
type Points = Vec<(f64, f64)>;

/// A line of a loss panel: its legend, points, colour, and whether it is dashed.
type Line = (String, Points, RGBColor, bool);

/// A loss panel: each named series of positive values on a log scale.
fn loss_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    lines: Vec<Line>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let lines: Vec<_> = lines.into_iter().filter(|(_, p, _, _)| p.iter().any(|&(_, y)| y > 0.0)).collect();
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|(_, p, _, _)| p.iter().copied()).filter(|p| p.1 > 0.0).collect();
    if all.is_empty() {
        area.titled(&format!("{title}: nothing positive to plot"), (SANS, 22)).map_err(plot_err)?;
        return Ok(());
    }
    let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) * 0.8;
    let hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (SANS, 24))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range(&all), (lo..hi).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("value (log scale)")
        .label_style((SANS, 16))
        .axis_desc_style((SANS, 18))
        .y_label_formatter(&|v| short(*v))
        .x_label_formatter(&whole)
        .draw()
        .map_err(plot_err)?;
    for (name, points, c, dashed) in lines {
        let points: Vec<(f64, f64)> = points.into_iter().filter(|p| p.1 > 0.0).collect();
        let style = c.stroke_width(2);
        if dashed {
            chart.draw_series(DashedLineSeries::new(points, 8, 5, style)).map_err(plot_err)?
        } else {
            chart.draw_series(LineSeries::new(points, style)).map_err(plot_err)?
        }
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight, 16)?;
    Ok(())
}

/// `loss.png`.
pub fn loss(run: &Run) -> Result<Image> {
    let mut img = Image::blank(CHART.0, CHART.1 + if run.steps.is_empty() { 0 } else { CHART.1 / 2 });
    {
        let root = BitMapBackend::with_buffer(&mut img.rgb, (img.width, img.height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (top, bottom) = if run.steps.is_empty() {
            (root.clone(), None)
        } else {
            let (t, b) = root.split_vertically(CHART.1);
            (t, Some(b))
        };
        let terms = [
            ("J", "loss"),
            ("reconstruction", "reconstruction"),
            ("sparsity", "sparsity"),
            ("weight decay", "weight_decay"),
        ];
        let mut lines = Vec::new();
        for (i, (name, key)) in terms.iter().enumerate() {
            lines.push((
                format!("{name} (train)"),
                series(&run.epochs, "epoch", |l| l[*key].as_f64()),
                colour(i),
                false,
            ));
        }
        if run.epochs.iter().any(|l| l.get("validation").is_some()) {
            for (i, (name, key)) in terms.iter().enumerate().take(2) {
                let points = series(&run.epochs, "epoch", |l| l["validation"][*key].as_f64());
                lines.push((format!("{name} (validation)"), points, colour(i), true));
            }
        }
        let lbfgs = run.config["optimizer"]["kind"] == "lbfgs";
        let x_desc = if lbfgs { "iteration" } else { "epoch" };
        loss_panel(&top, &format!("J and its terms per {x_desc}, over the training set"), x_desc, lines)?;
        if let Some(bottom) = bottom {
            let points = series(&run.steps, "step", |l| l["loss"].as_f64());
            let lines = vec![("J of the step's minibatch".to_string(), points, colour(0), false)];
            loss_panel(&bottom, "J per logged step (before its update)", "step", lines)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(img)
}

/// The per-unit values of `key` on each epoch line.
fn per_unit(run: &Run, key: &str) -> Vec<Vec<(f64, f64)>> {
    let units = run.spec.code_width();
    (0..units).map(|j| series(&run.epochs, "epoch", |l| l[key].get(j)?.as_f64())).collect()
}

/// `sparsity.png`.
pub fn sparsity(run: &Run) -> Result<Image> {
    let mut img = Image::blank(CHART.0, CHART.1);
    {
        let root = BitMapBackend::with_buffer(&mut img.rgb, (img.width, img.height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let rho_hat = per_unit(run, "rho_hat");
        let freq = per_unit(run, "freq");
        let rho = run.target_rho();
        let all: Vec<(f64, f64)> = rho_hat.iter().chain(&freq).flatten().copied().collect();
        let hi = all.iter().map(|p| p.1).fold(rho.unwrap_or(0.0) * 1.5, f64::max).max(1e-3) * 1.1;
        let x = if all.is_empty() { 0.0..1.0 } else { x_range(&all) };
        let lbfgs = run.config["optimizer"]["kind"] == "lbfgs";
        let mut chart = ChartBuilder::on(&root)
            .caption("Code units: rho_hat (solid) and hard firing frequency (dashed)", (SANS, 24))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x.clone(), 0.0..hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(if lbfgs { "iteration" } else { "epoch" })
            .y_desc("fraction of samples")
            .x_label_formatter(&whole)
            .label_style((SANS, 16))
            .axis_desc_style((SANS, 18))
            .draw()
            .map_err(plot_err)?;
        let units = rho_hat.len();
        // Many units: the spread (minimum, median, maximum over units) instead of a line each.
        let (solid, dashed, names): (Vec<Points>, Vec<Points>, Vec<String>) = if units <= 16 {
            (rho_hat, freq, (0..units).map(|j| format!("unit {j}")).collect())
        } else {
            let spread = |per: &[Vec<(f64, f64)>]| -> Vec<Vec<(f64, f64)>> {
                let epochs = per.first().map_or(0, Vec::len);
                (0..3)
                    .map(|q| {
                        (0..epochs)
                            .map(|e| {
                                let mut v: Vec<f64> = per.iter().filter_map(|u| u.get(e).map(|p| p.1)).collect();
                                v.sort_by(f64::total_cmp);
                                (per[0][e].0, v[[0, v.len() / 2, v.len() - 1][q]])
                            })
                            .collect()
                    })
                    .collect()
            };
            (spread(&rho_hat), spread(&freq), vec!["min over units".into(), "median".into(), "max".into()])
        };
        for (i, (points, name)) in solid.into_iter().zip(&names).enumerate() {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(plot_err)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
        }
        for (i, points) in dashed.into_iter().enumerate() {
            chart.draw_series(DashedLineSeries::new(points, 8, 5, colour(i).stroke_width(2))).map_err(plot_err)?;
        }
        if let Some(rho) = rho {
            chart
                .draw_series(LineSeries::new(vec![(x.start, rho), (x.end, rho)], BLACK.stroke_width(1)))
                .map_err(plot_err)?
                .label(format!("target rho {rho}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(1)));
        }
        // kl-freq's annealed target (`target` on epoch lines), where it moved during the run.
        let target = series(&run.epochs, "epoch", |l| l["target"].as_f64());
        if target.iter().any(|p| Some(p.1) != rho) {
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(DashedLineSeries::new(target, 3, 4, grey.stroke_width(2)))
                .map_err(plot_err)?
                .label("target during the anneal")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2)));
        }
        if names.len() <= 17 {
            legend(&mut chart, SeriesLabelPosition::UpperRight, 15)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(img)
}

/// `density.png`: a histogram of log10 of each code unit's hard firing frequency on the last
/// epoch line, in bins of 0.25 decades; units that never fired get a bar of their own.
pub fn density(run: &Run) -> Result<Image> {
    let last = run.epochs.last().expect("Run::load requires an epoch line");
    let freq: Vec<f64> = last["freq"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
    let never = freq.iter().filter(|&&f| f <= 0.0).count();
    let logs: Vec<f64> = freq.iter().filter(|&&f| f > 0.0).map(|f| f.log10()).collect();
    const BIN: f64 = 0.25;
    let lo = logs.iter().copied().fold(-3.0, f64::min).div_euclid(BIN) * BIN;
    let bins = ((0.0 - lo) / BIN).round() as usize + 1;
    let mut counts = vec![0usize; bins];
    for l in &logs {
        counts[(((l - lo) / BIN).floor() as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(never).max(1) as f64 * 1.15;
    let mut img = Image::blank(CHART.0, CHART.1);
    {
        let root = BitMapBackend::with_buffer(&mut img.rgb, (img.width, img.height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let x0 = lo - 3.0 * BIN;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Firing frequencies of the {} code units (last {})", freq.len(), last_kind(run)),
                (SANS, 24),
            )
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..BIN, 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("log10 of the fraction of samples a unit fires on")
            .y_desc("units")
            .label_style((SANS, 16))
            .axis_desc_style((SANS, 18))
            .x_label_formatter(&|v| if *v < lo - BIN / 2.0 { String::new() } else { format!("{v:.2}") })
            .draw()
            .map_err(plot_err)?;
        let bars = counts.iter().enumerate().map(|(i, &c)| {
            let x = lo + i as f64 * BIN;
            Rectangle::new([(x + 0.01, 0.0), (x + BIN - 0.01, c as f64)], colour(0).filled())
        });
        chart
            .draw_series(bars)
            .map_err(plot_err)?
            .label("units per 0.25-decade bin")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], colour(0).filled()));
        let dead = Rectangle::new([(x0 + 0.02, 0.0), (x0 + 2.0 * BIN - 0.02, never as f64)], colour(3).filled());
        chart
            .draw_series(std::iter::once(dead))
            .map_err(plot_err)?
            .label(format!("never fired: {never}"))
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], colour(3).filled()));
        legend(&mut chart, SeriesLabelPosition::UpperLeft, 16)?;
        root.present().map_err(plot_err)?;
    }
    Ok(img)
}

fn last_kind(run: &Run) -> &'static str {
    if run.config["optimizer"]["kind"] == "lbfgs" {
        "iteration"
    } else {
        "epoch"
    }
}

/// Tiles of `h x w` pixels, one per vector, in a near-square grid, each scaled like UFLDL's
/// `display_network`: the mean over all the vectors removed, then each divided by its largest
/// magnitude, so -1 is black, 0 mid-grey and 1 white. Returns (width, height, grey pixels),
/// light (235) between tiles.
fn tile_grid(vectors: &[Vec<f32>], (h, w): (usize, usize), scale: usize) -> (usize, usize, Vec<u8>) {
    let n = vectors.len();
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (th, tw) = (h * scale, w * scale);
    let (gw, gh) = (cols * (tw + 2) + 2, rows * (th + 2) + 2);
    let mut px = vec![235u8; gw * gh];
    let count = vectors.iter().map(Vec::len).sum::<usize>().max(1);
    let mean = vectors.iter().flatten().map(|&v| v as f64).sum::<f64>() / count as f64;
    for (t, v) in vectors.iter().enumerate() {
        let peak = v.iter().map(|&x| (x as f64 - mean).abs()).fold(0.0, f64::max).max(1e-12);
        let (r, c) = (t / cols, t % cols);
        for y in 0..th {
            for x in 0..tw {
                let value = (v[(y / scale) * w + x / scale] as f64 - mean) / peak;
                let grey = ((value + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
                px[(2 + r * (th + 2) + y) * gw + 2 + c * (tw + 2) + x] = grey;
            }
        }
    }
    (gw, gh, px)
}

/// `filters.png`: the first layer's rows (what each unit of layer 1 responds to) and the last
/// layer's columns (what each unit of the layer before the output writes), side by side.
pub fn filters(run: &Run, shape: (usize, usize)) -> Result<Image> {
    let spec = &run.spec;
    let (n1, n0) = spec.shape(1);
    let first: Vec<Vec<f32>> = run.params.weights[0].chunks(n0).map(<[f32]>::to_vec).collect();
    let last_l = spec.layers();
    let (n_out, n_in) = spec.shape(last_l);
    let w_last = &run.params.weights[last_l - 1];
    let last: Vec<Vec<f32>> = (0..n_in).map(|j| (0..n_out).map(|i| w_last[i * n_in + j]).collect()).collect();
    let cols = |n: usize| (n as f64).sqrt().ceil() as usize;
    // Integer magnification so each grid is about 400 pixels wide.
    let scale = |n: usize| (400 / (cols(n) * (shape.1 + 2))).max(1);
    let grids = [
        (format!("layer 1: {n1} rows of W1"), tile_grid(&first, shape, scale(n1))),
        (format!("layer {last_l}: {n_in} columns of W{last_l}"), tile_grid(&last, shape, scale(n_in))),
    ];
    let (margin, title) = (24usize, 44usize);
    let width = margin + grids.iter().map(|(_, g)| g.0 + margin).sum::<usize>();
    let height = title + margin + grids.iter().map(|(_, g)| g.1).max().unwrap_or(0);
    let (width, height) = (width.max(420) as u32, height.max(240) as u32);
    let mut img = Image::blank(width, height);
    {
        let root = BitMapBackend::with_buffer(&mut img.rgb, (width, height)).into_drawing_area();
        let mut x = margin as i32;
        for (label, g) in &grids {
            root.draw_text(label, &(SANS, 20).into_text_style(&root), (x, 12)).map_err(plot_err)?;
            x += (g.0 + margin) as i32;
        }
        root.present().map_err(plot_err)?;
    }
    let mut x0 = margin;
    for (_, (gw, gh, px)) in &grids {
        for y in 0..*gh {
            for x in 0..*gw {
                let at = (((title + y) * width as usize) + x0 + x) * 3;
                img.rgb[at..at + 3].fill(px[y * gw + x]);
            }
        }
        x0 += gw + margin;
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tile k of a grid sits at row k / cols, column k % cols, magnified, with each tile scaled
    /// by its own largest magnitude after the mean over all tiles is removed.
    #[test]
    fn tiles_are_placed_and_scaled() {
        let (h, w, scale) = (2, 3, 2);
        // Tile k is 0 but for the value k + 1 at pixel (k % 2, k % 3).
        let tiles: Vec<Vec<f32>> = (0..5)
            .map(|k| {
                let mut t = vec![0.0; h * w];
                t[(k % 2) * w + k % 3] = (k + 1) as f32;
                t
            })
            .collect();
        let (gw, gh, px) = tile_grid(&tiles, (h, w), scale);
        // 5 tiles: 3 columns, 2 rows of 4 x 6 pixels, 2-pixel borders.
        assert_eq!((gw, gh), (3 * (6 + 2) + 2, 2 * (4 + 2) + 2));
        let mean = 15.0 / 30.0;
        for k in 0..5 {
            let (top, left) = (2 + (k / 3) * 6, 2 + (k % 3) * 8);
            let peak = (k as f64 + 1.0 - mean).max(mean);
            let grey = |v: f64| (((v - mean) / peak + 1.0) * 127.5).round() as u8;
            for y in 0..4 {
                for x in 0..6 {
                    let hot = (y / scale, x / scale) == (k % 2, k % 3);
                    let want = grey(if hot { (k + 1) as f64 } else { 0.0 });
                    assert_eq!(px[(top + y) * gw + left + x], want, "tile {k}, pixel ({y}, {x})");
                }
            }
            assert_eq!(grey((k + 1) as f64), 255, "a tile's largest value is white");
        }
        // Borders and the unused sixth slot are light.
        assert_eq!(px[0], 235);
        assert_eq!(px[(2 + 6 + 1) * gw + 2 + 2 * 8 + 1], 235);
    }
}
