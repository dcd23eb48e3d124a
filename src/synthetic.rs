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
    let mut rng = Rng::new(seed ^ 0x5AE0_C0DE);
    let centre = |k: usize| 2.5 + 5.0 * k as f64;
    let mut values = Vec::with_capacity(samples * WIDTH);
    for _ in 0..samples {
        let mut strength = [0.0; CONTEXTS];
        for s in strength.iter_mut() {
            if rng.next_f64() < 0.25 {
                *s = 0.3 + 0.7 * rng.next_f64();
            }
        }
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
    Dataset { rows: samples, cols: WIDTH, values }
}
