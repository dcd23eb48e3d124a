//! Natural-image patches, sampled and normalised as UFLDL's sparse autoencoder exercise does
//! (`sampleIMAGES.m`, `normalizeData`): random square patches from grey-scale photographs,
//! each patch's mean removed, values clipped to ±3 standard deviations (of all values) and
//! rescaled to [0.1, 0.9] so a sigmoid output can reach them. `sae patches` and the
//! `natural_patches` example use it; docs/design.md section 9 describes the experiment.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Rng;
use std::path::Path;

/// A grey-scale image, values in [0, 1], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

/// Largest image side `read_png` accepts: a PNG header can claim 2^31 x 2^31 pixels, and the
/// decoder would try to allocate that.
const MAX_SIDE: u32 = 16384;

/// Reads a PNG (8- or 16-bit; grey, grey+alpha, RGB, RGBA or palette) as grey levels:
/// colour is turned grey with the Rec. 601 luma weights (0.299 R + 0.587 G + 0.114 B),
/// alpha ignored. Anything unreadable is bad input naming the file.
pub fn read_png(path: &Path) -> Result<GrayImage> {
    let bad = |what: String| Error::Input(format!("{}: {what}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // Palette images expand to RGB, 16-bit samples to two bytes (kept), low bit depths to 8.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| bad(format!("not a PNG ({e})")))?;
    let (w, h) = (reader.info().width, reader.info().height);
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(bad(format!("{w} x {h} pixels; at most {MAX_SIDE} a side")));
    }
    let size = reader.output_buffer_size().ok_or_else(|| bad("its size overflows".into()))?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| bad(format!("cannot decode it ({e})")))?;
    let channels = frame.color_type.samples();
    let sixteen = frame.bit_depth == png::BitDepth::Sixteen;
    let sample = |i: usize| -> f32 {
        if sixteen {
            u16::from_be_bytes([buf[2 * i], buf[2 * i + 1]]) as f32 / 65535.0
        } else {
            buf[i] as f32 / 255.0
        }
    };
    let (width, height) = (frame.width as usize, frame.height as usize);
    let line = frame.line_size / if sixteen { 2 } else { 1 };
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let at = y * line + x * channels;
            pixels.push(match channels {
                1 | 2 => sample(at),
                _ => 0.299 * sample(at) + 0.587 * sample(at + 1) + 0.114 * sample(at + 2),
            });
        }
    }
    Ok(GrayImage { width, height, pixels })
}

/// `count` patches of `size x size` pixels, each from an image chosen uniformly at random at a
/// uniformly random position (seeded), row-major in a row of `size^2`, not yet normalised.
pub fn sample(images: &[GrayImage], count: usize, size: usize, seed: u64) -> Result<Dataset> {
    if images.is_empty() || size == 0 {
        return Err(Error::input("patches: give at least one image and a patch size of at least 1"));
    }
    if let Some(small) = images.iter().find(|im| im.width < size || im.height < size) {
        return Err(Error::input(format!(
            "patches: an image of {} x {} pixels is smaller than a {size} x {size} patch",
            small.width, small.height
        )));
    }
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(count * size * size);
    for _ in 0..count {
        let im = &images[rng.below(images.len())];
        let (x0, y0) = (rng.below(im.width - size + 1), rng.below(im.height - size + 1));
        for y in y0..y0 + size {
            values.extend_from_slice(&im.pixels[y * im.width + x0..y * im.width + x0 + size]);
        }
    }
    Ok(Dataset { rows: count, cols: size * size, values })
}

/// UFLDL's `normalizeData`: subtract each patch's mean, clip to ±3 standard deviations of all
/// the values (population standard deviation, in f64), and map [-3 sd, 3 sd] to [0.1, 0.9].
pub fn normalize(data: &mut Dataset) {
    let cols = data.cols;
    for row in data.values.chunks_exact_mut(cols) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        row.iter_mut().for_each(|v| *v = (*v as f64 - mean) as f32);
    }
    let n = data.values.len() as f64;
    let mean = data.values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = data.values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let bound = 3.0 * var.sqrt();
    for v in &mut data.values {
        let clipped = if bound > 0.0 { (*v as f64).clamp(-bound, bound) / bound } else { 0.0 };
        *v = ((clipped + 1.0) * 0.4 + 0.1) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: usize, height: usize) -> GrayImage {
        GrayImage { width, height, pixels: (0..width * height).map(|i| (i % 7) as f32 / 7.0).collect() }
    }

    #[test]
    fn patches_come_from_the_images_and_are_seeded() {
        let ims = [image(9, 5), image(5, 12)];
        let a = sample(&ims, 300, 5, 1).unwrap();
        assert_eq!((a.rows, a.cols, a.values.len()), (300, 25, 7500));
        assert_eq!(a, sample(&ims, 300, 5, 1).unwrap());
        assert_ne!(a, sample(&ims, 300, 5, 2).unwrap());
        // Every patch is a window of one of the images.
        let windows = |im: &GrayImage| {
            let mut all = Vec::new();
            for y0 in 0..=im.height - 5 {
                for x0 in 0..=im.width - 5 {
                    let w: Vec<f32> = (y0..y0 + 5)
                        .flat_map(|y| im.pixels[y * im.width + x0..y * im.width + x0 + 5].to_vec())
                        .collect();
                    all.push(w);
                }
            }
            all
        };
        let all: Vec<Vec<f32>> = ims.iter().flat_map(windows).collect();
        assert!(a.values.chunks(25).all(|p| all.iter().any(|w| w == p)));
        assert!(sample(&ims, 3, 6, 0).is_err(), "a patch larger than an image");
        assert!(sample(&[], 3, 2, 0).is_err());
    }

    #[test]
    fn normalisation_is_ufldls() {
        let mut d = sample(&[image(40, 40)], 200, 4, 3).unwrap();
        normalize(&mut d);
        assert!(d.values.iter().all(|&v| (0.1 - 1e-6..=0.9 + 1e-6).contains(&v)), "inside [0.1, 0.9]");
        // Each patch's mean was removed before the affine map, so (unless clipped) each patch
        // averages 0.5: the map sends 0 to 0.5. Clipping at 3 sd touches few values.
        let means: Vec<f64> = d.values.chunks(16).map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / 16.0).collect();
        let near = means.iter().filter(|m| (*m - 0.5).abs() < 1e-6).count();
        assert!(near * 10 > means.len() * 9, "{near} of {} patches average 0.5", means.len());
        // A flat image gives flat patches: all 0.5, no division by a zero spread.
        let mut flat = sample(&[GrayImage { width: 8, height: 8, pixels: vec![0.3; 64] }], 5, 3, 0).unwrap();
        normalize(&mut flat);
        assert!(flat.values.iter().all(|&v| v == 0.5));
    }
}
