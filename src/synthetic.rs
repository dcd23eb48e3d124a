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

/// A synthetic dictionary (`--synthetic dictionary:D,F,S`): the ground truth a dictionary
/// recipe should recover. `features` true directions in R^`width`, each a standard-normal
/// vector scaled to unit length; every sample is the sum of `active` distinct directions chosen
/// uniformly, each at a magnitude from U(0.5, 1.5), plus N(0, NOISE^2) on every coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DictionarySpec {
    pub width: usize,
    pub features: usize,
    pub active: usize,
}

/// The noise of a synthetic dictionary's samples (standard deviation per coordinate).
pub const NOISE: f64 = 0.01;

impl DictionarySpec {
    /// `dictionary:D,F,S` (D the width, F the features, S active per sample).
    pub fn parse(text: &str) -> Result<DictionarySpec, String> {
        let usage = "give dictionary:D,F,S (D the width, F the true features, S active per sample, 1 <= S <= F), e.g. dictionary:32,64,3";
        let Some(rest) = text.strip_prefix("dictionary:") else {
            return Err(format!("--synthetic {text}: {usage}"));
        };
        let n: Vec<usize> = rest
            .split(',')
            .map(|t| t.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("--synthetic {text}: {usage}"))?;
        match n.as_slice() {
            &[width, features, active]
                if width >= 1
                    && features >= 1
                    && (1..=features).contains(&active)
                    && width.saturating_mul(features) <= 1 << 26 =>
            {
                Ok(DictionarySpec { width, features, active })
            }
            _ => Err(format!("--synthetic {text}: {usage}")),
        }
    }

    /// `samples` rows and the true directions `[features, width]` (row-major), seeded.
    pub fn generate(&self, samples: usize, seed: u64) -> (Dataset, Vec<f32>) {
        let (d, f, s) = (self.width, self.features, self.active);
        let mut rng = Rng::new(seed ^ 0xD1C7_0000);
        let mut truth = Vec::with_capacity(f * d);
        for _ in 0..f {
            let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            truth.extend(v.iter().map(|x| (x / norm) as f32));
        }
        let mut values = Vec::with_capacity(samples * d);
        let mut chosen: Vec<usize> = (0..f).collect();
        for _ in 0..samples {
            // S distinct features: the first S of a partial Fisher-Yates shuffle.
            for i in 0..s {
                let j = i + rng.below(f - i);
                chosen.swap(i, j);
            }
            let mut row = vec![0.0f64; d];
            for &feature in &chosen[..s] {
                let magnitude = 0.5 + rng.next_f64();
                for (x, t) in row.iter_mut().zip(&truth[feature * d..(feature + 1) * d]) {
                    *x += magnitude * *t as f64;
                }
            }
            values.extend(row.iter().map(|x| (x + NOISE * rng.normal()) as f32));
        }
        (Dataset { rows: samples, cols: d, values }, truth)
    }
}

/// How well a decoder recovers known directions: for each true direction the best |cosine|
/// with any decoder column; their mean (MMCS) and the share above 0.9.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Recovery {
    pub mmcs: f64,
    pub above_0_9: f64,
    pub best: Vec<f64>,
}

/// Recovery of the true directions `truth` (`[features, width]`) by the columns of `decoder`
/// (`[width, latents]`, PyTorch's `W_dec` layout: column j is latent j's direction). Zero
/// vectors have cosine 0 with everything.
pub fn recovery(truth: &[f32], decoder: &[f32], width: usize) -> Recovery {
    let features = truth.len() / width;
    let latents = decoder.len() / width;
    let column = |j: usize| (0..width).map(move |i| decoder[i * latents + j] as f64);
    let norms: Vec<f64> = (0..latents).map(|j| column(j).map(|v| v * v).sum::<f64>().sqrt()).collect();
    let best: Vec<f64> = (0..features)
        .map(|f| {
            let t = &truth[f * width..(f + 1) * width];
            let tn = t.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            (0..latents)
                .map(|j| {
                    let dot: f64 = column(j).zip(t).map(|(a, &b)| a * b as f64).sum();
                    if norms[j] > 0.0 && tn > 0.0 {
                        (dot / (norms[j] * tn)).abs()
                    } else {
                        0.0
                    }
                })
                .fold(0.0, f64::max)
        })
        .collect();
    let n = best.len().max(1) as f64;
    Recovery {
        mmcs: best.iter().sum::<f64>() / n,
        above_0_9: best.iter().filter(|&&b| b > 0.9).count() as f64 / n,
        best,
    }
}
