//! The built-in dataset: 20-wide "context" vectors in [0, 1], so `sae train` runs with no file.
//!
//! Generator (seeded, reproducible): four contexts, each a smooth bump over the features
//! (context k is centred on feature 2.5 + 5k, width 3). A sample switches each context on
//! independently with probability 0.25, at a strength drawn from U(0.3, 1), and sums them:
//!
//! ```text
//! x_f = clip(0.05 + 0.9 * sum_k on_k * strength_k * exp(-((f - c_k) / 3)^2) + N(0, 0.03^2), 0, 1)
//! ```
//!
//! Most samples have zero or one context on, so a code unit per context is naturally sparse:
//! the data a sparsity penalty should help explain, with a little noise on top.

use crate::data::Dataset;
use crate::model::Rng;

pub const WIDTH: usize = 20;
pub const CONTEXTS: usize = 4;
pub const DEFAULT_SAMPLES: usize = 8192;

pub fn context_vectors(samples: usize, seed: u64) -> Dataset {
    context_vectors_with_strengths(samples, seed).0
}

/// The same dataset and, per sample, each context's strength (0 when it is off): the ground
/// truth a code unit can be aligned with (`context_alignment`).
pub fn context_vectors_with_strengths(samples: usize, seed: u64) -> (Dataset, Vec<[f64; CONTEXTS]>) {
    let mut rng = Rng::new(seed ^ 0x5AE0_C0DE);
    let centre = |k: usize| 2.5 + 5.0 * k as f64;
    let mut values = Vec::with_capacity(samples * WIDTH);
    let mut strengths = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut strength = [0.0; CONTEXTS];
        for s in strength.iter_mut() {
            if rng.next_f64() < 0.25 {
                *s = 0.3 + 0.7 * rng.next_f64();
            }
        }
        strengths.push(strength);
        for f in 0..WIDTH {
            let mut v = 0.05;
            for (k, s) in strength.iter().enumerate() {
                let d = (f as f64 - centre(k)) / 3.0;
                v += 0.9 * s * (-d * d).exp();
            }
            v += 0.03 * rng.normal();
            values.push(v.clamp(0.0, 1.0) as f32);
        }
    }
    (Dataset { rows: samples, cols: WIDTH, values }, strengths)
}

/// How a code unit lines up with the built-in data's contexts: the context most often on when
/// the unit fires, that share (precision), and the share of that context's samples in which the
/// unit fires (recall).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alignment {
    pub context: usize,
    pub precision: f64,
    pub recall: f64,
}

/// The alignment of each code unit, from whether it fires on each sample (`fires[i][j]`, unit j
/// on sample i) and the samples' context strengths. A unit that never fires gets precision and
/// recall 0.
pub fn context_alignment(fires: &[Vec<bool>], strengths: &[[f64; CONTEXTS]]) -> Vec<Alignment> {
    let units = fires.first().map_or(0, Vec::len);
    (0..units)
        .map(|j| {
            let firing: Vec<usize> = (0..fires.len()).filter(|&i| fires[i][j]).collect();
            let on_when_firing = |k: usize| {
                firing.iter().filter(|&&i| strengths[i][k] > 0.0).count() as f64 / firing.len().max(1) as f64
            };
            let context = (0..CONTEXTS).max_by(|&a, &b| on_when_firing(a).total_cmp(&on_when_firing(b))).unwrap_or(0);
            let on = strengths.iter().filter(|s| s[context] > 0.0).count();
            let both = firing.iter().filter(|&&i| strengths[i][context] > 0.0).count();
            Alignment { context, precision: on_when_firing(context), recall: both as f64 / on.max(1) as f64 }
        })
        .collect()
}
