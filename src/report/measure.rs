//! How localised and how oriented a filter is: the figures the natural-image example states for
//! its learned filters against the initial random ones (docs/design.md section 10).

/// Shape measures of one `h x w` filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FilterShape {
    /// The fraction of the filter's energy (squared deviations from its mean) inside its
    /// strongest `h/2 x w/2` window: 0.25 for energy spread evenly, 1 when it all sits in a
    /// quarter of the patch.
    pub localisation: f64,
    /// The coherence of the gradient structure tensor, `(l1 - l2) / (l1 + l2)` of
    /// `sum grad grad^T` (forward differences): 1 for a straight edge or a grating (every
    /// gradient parallel), near 0 when gradients point every way.
    pub orientation: f64,
}

pub fn measure(filter: &[f32], (h, w): (usize, usize)) -> FilterShape {
    assert_eq!(filter.len(), h * w, "a filter of {h} x {w} values");
    let f = |y: usize, x: usize| filter[y * w + x] as f64;
    let mean = filter.iter().map(|&v| v as f64).sum::<f64>() / filter.len() as f64;
    let energy = |y: usize, x: usize| (f(y, x) - mean).powi(2);
    let total: f64 = (0..h).flat_map(|y| (0..w).map(move |x| (y, x))).map(|(y, x)| energy(y, x)).sum();
    let (wh, ww) = ((h / 2).max(1), (w / 2).max(1));
    let mut best: f64 = 0.0;
    for y0 in 0..=h - wh {
        for x0 in 0..=w - ww {
            let e: f64 =
                (y0..y0 + wh).flat_map(|y| (x0..x0 + ww).map(move |x| (y, x))).map(|(y, x)| energy(y, x)).sum();
            best = best.max(e);
        }
    }
    let (mut jxx, mut jyy, mut jxy) = (0.0, 0.0, 0.0);
    for y in 0..h.saturating_sub(1) {
        for x in 0..w.saturating_sub(1) {
            let (gx, gy) = (f(y, x + 1) - f(y, x), f(y + 1, x) - f(y, x));
            jxx += gx * gx;
            jyy += gy * gy;
            jxy += gx * gy;
        }
    }
    let trace = jxx + jyy;
    FilterShape {
        localisation: if total > 0.0 { best / total } else { 0.0 },
        orientation: if trace > 0.0 { ((jxx - jyy).powi(2) + 4.0 * jxy * jxy).sqrt() / trace } else { 0.0 },
    }
}

/// The median of each measure over filters.
pub fn median_shape(filters: &[Vec<f32>], shape: (usize, usize)) -> FilterShape {
    let all: Vec<FilterShape> = filters.iter().map(|f| measure(f, shape)).collect();
    let median = |get: fn(&FilterShape) -> f64| {
        let mut v: Vec<f64> = all.iter().map(get).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        }
    };
    FilterShape { localisation: median(|s| s.localisation), orientation: median(|s| s.orientation) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rng;

    fn pattern(h: usize, w: usize, mut f: impl FnMut(usize, usize) -> f64) -> Vec<f32> {
        (0..h * w).map(|i| f(i / w, i % w) as f32).collect()
    }

    #[test]
    fn edges_are_oriented_and_blobs_localised() {
        // A vertical step: every gradient horizontal, coherence exactly 1; energy everywhere.
        let edge = measure(&pattern(8, 8, |_, x| if x < 4 { -1.0 } else { 1.0 }), (8, 8));
        assert!((edge.orientation - 1.0).abs() < 1e-12, "{edge:?}");
        assert!((edge.localisation - 0.25).abs() < 1e-12, "{edge:?}");
        // A diagonal grating is as oriented.
        let diag = measure(&pattern(8, 8, |y, x| ((x + y) as f64).sin()), (8, 8));
        assert!(diag.orientation > 0.99, "{diag:?}");
        // A bump in one corner: localised, its gradients pointing every way.
        let blob = measure(
            &pattern(8, 8, |y, x| (-((y as f64 - 1.5).powi(2) + (x as f64 - 1.5).powi(2)) / 1.5).exp()),
            (8, 8),
        );
        assert!(blob.localisation > 0.85 && blob.orientation < 0.2, "{blob:?}");
        // White noise: the baseline a random filter sits at (measured medians over 200: 0.39
        // and 0.49; 49 random gradients are not perfectly isotropic), far from an edge's 1.
        let mut rng = Rng::new(1);
        let noise: Vec<Vec<f32>> = (0..200).map(|_| pattern(8, 8, |_, _| rng.normal())).collect();
        let m = median_shape(&noise, (8, 8));
        assert!(m.localisation < 0.45 && m.orientation < 0.6, "{m:?}");
        // A flat filter has no energy and no gradient.
        assert_eq!(measure(&[0.5; 16], (4, 4)), FilterShape { localisation: 0.0, orientation: 0.0 });
    }
}
