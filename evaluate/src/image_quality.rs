//! PSNR and SSIM of reconstructions, as scikit-image computes them, and the convention of
//! LlamaGen's tokenizer evaluation (`reconstruction_vq_ddp.py`), whose numbers the paper reports.
//!
//! scikit-image's SSIM (the defaults LlamaGen uses): a 7 x 7 uniform window, K1 = 0.01,
//! K2 = 0.03, sample covariances (N / (N - 1)), the SSIM map averaged after cropping 3 pixels
//! from each border (so border handling never matters), and for colour images the mean over
//! channels. PSNR is `10 log10(R^2 / MSE)`.
//!
//! LlamaGen compares the original image as floats in [0, 1] with the reconstruction converted to
//! uint8 by [`llamagen_to_u8`] and divided by 255, and calls
//! `psnr(restored, original)` (data range inferred as 1) and
//! `ssim(restored, original, data_range=2.0, channel_axis=-1)`. That SSIM data range is twice the
//! images' real range, which raises SSIM; [`Convention::LlamaGen`] reproduces it (the default, to
//! be comparable with the paper), [`Convention::Standard`] uses the true range of 1.

use ndarray::ArrayView3;

use crate::EvalError;

/// Which data ranges PSNR and SSIM use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Convention {
    /// PSNR with range 1 and SSIM with range 2 on [0, 1] images, as LlamaGen's tables.
    #[default]
    LlamaGen,
    /// Range 1 for both: the textbook definition.
    Standard,
}

impl Convention {
    fn ranges(self) -> (f64, f64) {
        match self {
            Self::LlamaGen => (1.0, 2.0),
            Self::Standard => (1.0, 1.0),
        }
    }
}

/// A decoder output in [-1, 1] to uint8 as LlamaGen saves samples:
/// `clamp(127.5 x + 128, 0, 255)` truncated (torch's float-to-uint8 cast).
pub fn llamagen_to_u8(x: f32) -> u8 {
    (127.5 * x + 128.0).clamp(0.0, 255.0) as u8
}

/// Side of scikit-image's default SSIM window.
pub const SSIM_WINDOW: usize = 7;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

/// PSNR and SSIM of one pair of uint8 images [H, W, C] under `convention`.
pub fn reconstruction_quality(
    original: ArrayView3<'_, u8>,
    reconstructed: ArrayView3<'_, u8>,
    convention: Convention,
) -> Result<(f64, f64), EvalError> {
    let to_unit = |a: ArrayView3<'_, u8>| a.mapv(|v| f64::from(v) / 255.0);
    let (a, b) = (to_unit(original), to_unit(reconstructed));
    let (psnr_range, ssim_range) = convention.ranges();
    Ok((
        psnr(a.view(), b.view(), psnr_range)?,
        ssim(b.view(), a.view(), ssim_range)?,
    ))
}

fn same_shape(a: &ArrayView3<'_, f64>, b: &ArrayView3<'_, f64>) -> Result<(), EvalError> {
    if a.dim() != b.dim() {
        return Err(EvalError::Shape {
            what: "image pair",
            expected: format!("{:?}", a.dim()),
            got: format!("{:?}", b.dim()),
        });
    }
    Ok(())
}

/// `10 log10(data_range^2 / MSE)` over all pixels and channels; infinite for identical images.
pub fn psnr(
    truth: ArrayView3<'_, f64>,
    test: ArrayView3<'_, f64>,
    data_range: f64,
) -> Result<f64, EvalError> {
    same_shape(&truth, &test)?;
    if truth.is_empty() {
        return Err(EvalError::Invalid("PSNR of empty images".into()));
    }
    let mse = truth
        .iter()
        .zip(test.iter())
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / truth.len() as f64;
    Ok(10.0 * (data_range * data_range / mse).log10())
}

/// Mean SSIM of two images [H, W, C] (H, W >= 7), averaged over channels.
pub fn ssim(
    a: ArrayView3<'_, f64>,
    b: ArrayView3<'_, f64>,
    data_range: f64,
) -> Result<f64, EvalError> {
    same_shape(&a, &b)?;
    let (h, w, c) = a.dim();
    if h < SSIM_WINDOW || w < SSIM_WINDOW || c == 0 {
        return Err(EvalError::Invalid(format!(
            "SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {h} x {w} x {c}"
        )));
    }
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    let (a, b) = (a.as_slice().unwrap_or(&[]), b.as_slice().unwrap_or(&[]));
    let per_channel = ssim_channels(a, b, (h, w, c), data_range);
    Ok(per_channel.iter().sum::<f64>() / c as f64)
}

/// Mean SSIM of each channel of two interleaved [h, w, c] images.
///
/// Window sums of x, y, x^2, y^2 and xy are running sums, first along rows, then down columns,
/// over every position whose 7 x 7 window fits in the image: exactly the positions that
/// survive scikit-image's final crop, so its border mode never enters. All channels go through
/// together, so every pass reads memory in order.
fn ssim_channels(
    a: &[f64],
    b: &[f64],
    (h, w, c): (usize, usize, usize),
    data_range: f64,
) -> Vec<f64> {
    const Q: usize = 5;
    let k = SSIM_WINDOW;
    let (oh, ow) = (h - k + 1, w - k + 1);
    let np = (k * k) as f64;
    let cov_norm = np / (np - 1.0);
    let c1 = (K1 * data_range).powi(2);
    let c2 = (K2 * data_range).powi(2);
    let stride = c * Q;
    // rows[(i * ow + j) * stride + ch * Q + q]: sum over columns j..j + k of row i.
    let mut rows = vec![0.0; h * ow * stride];
    let mut acc = vec![0.0; stride];
    for i in 0..h {
        acc.fill(0.0);
        let line_a = &a[i * w * c..(i + 1) * w * c];
        let line_b = &b[i * w * c..(i + 1) * w * c];
        for j in 0..w {
            for ch in 0..c {
                let (x, y) = (line_a[j * c + ch], line_b[j * c + ch]);
                let t = &mut acc[ch * Q..(ch + 1) * Q];
                t[0] += x;
                t[1] += y;
                t[2] += x * x;
                t[3] += y * y;
                t[4] += x * y;
                if j >= k {
                    let (x, y) = (line_a[(j - k) * c + ch], line_b[(j - k) * c + ch]);
                    t[0] -= x;
                    t[1] -= y;
                    t[2] -= x * x;
                    t[3] -= y * y;
                    t[4] -= x * y;
                }
            }
            if j + 1 >= k {
                rows[(i * ow + j + 1 - k) * stride..][..stride].copy_from_slice(&acc);
            }
        }
    }
    let row = |r: usize| &rows[r * ow * stride..(r + 1) * ow * stride];
    let mut cols = vec![0.0; ow * stride];
    for r in 0..k - 1 {
        cols.iter_mut().zip(row(r)).for_each(|(s, v)| *s += v);
    }
    let scale = 1.0 / np;
    let mut sums = vec![0.0; c];
    for i in 0..oh {
        cols.iter_mut()
            .zip(row(i + k - 1))
            .for_each(|(s, v)| *s += v);
        for pixel in cols.chunks_exact(stride) {
            for (ch, win) in pixel.chunks_exact(Q).enumerate() {
                let (ux, uy) = (win[0] * scale, win[1] * scale);
                let vx = cov_norm * (win[2] * scale - ux * ux);
                let vy = cov_norm * (win[3] * scale - uy * uy);
                let vxy = cov_norm * (win[4] * scale - ux * uy);
                let num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2);
                let den = (ux * ux + uy * uy + c1) * (vx + vy + c2);
                sums[ch] += num / den;
            }
        }
        cols.iter_mut().zip(row(i)).for_each(|(s, v)| *s -= v);
    }
    sums.iter().map(|s| s / (oh * ow) as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn identical_images_have_ssim_one_and_infinite_psnr() {
        let a = Array3::from_shape_fn((9, 11, 3), |(i, j, c)| {
            ((i * 31 + j * 7 + c) % 255) as f64 / 255.0
        });
        assert!((ssim(a.view(), a.view(), 1.0).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(psnr(a.view(), a.view(), 1.0).unwrap(), f64::INFINITY);
    }

    #[test]
    fn psnr_of_a_constant_offset() {
        let a = Array3::<f64>::zeros((8, 8, 1));
        let b = Array3::from_elem((8, 8, 1), 0.1);
        assert!((psnr(a.view(), b.view(), 1.0).unwrap() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn llamagen_u8_conversion_rounds_like_torch() {
        assert_eq!(llamagen_to_u8(-1.0), 0);
        assert_eq!(llamagen_to_u8(0.0), 128);
        assert_eq!(llamagen_to_u8(1.0), 255);
        assert_eq!(llamagen_to_u8(0.99), 254);
        assert_eq!(llamagen_to_u8(f32::NAN), 0);
    }

    #[test]
    fn refuses_mismatched_or_tiny_images() {
        let a = Array3::<f64>::zeros((8, 8, 3));
        let b = Array3::<f64>::zeros((8, 9, 3));
        assert!(ssim(a.view(), b.view(), 1.0).is_err());
        let tiny = Array3::<f64>::zeros((6, 6, 3));
        assert!(ssim(tiny.view(), tiny.view(), 1.0).is_err());
    }
}
