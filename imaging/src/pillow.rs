//! The ADM / LlamaGen `center_crop_arr` preprocessing, pixel for pixel: halve the image with
//! Pillow's BOX filter while its short side is at least twice the target, resize it with
//! Pillow's BICUBIC filter so that the short side equals the target (sides rounded with
//! Python's `round`, ties to even), then crop the centre square.
//!
//! Reference sets (ADM's `VIRTUAL_imagenet256_labeled.npz`) and LlamaGen's training and code
//! extraction images are made this way, so statistics computed from a folder of raw images are
//! only comparable with theirs when the crop is the same to the pixel. Pillow's resampler is
//! reimplemented here (separable convolution, coefficients normalised then fixed-point with 22
//! fractional bits, horizontal pass then vertical, each rounded and clipped to 8 bits) rather
//! than approximated with another library's bicubic, which differs by a level here and there.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, s};

use crate::ImagingError;

/// Fractional bits of Pillow's fixed-point coefficients: 32 - 8 (pixel) - 2 (headroom).
const PRECISION_BITS: u32 = 22;

/// Pillow's resampling filters (`Image.BOX`, `Image.BILINEAR`, `Image.BICUBIC`,
/// `Image.LANCZOS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Bicubic => {
                // Keys' cubic convolution with a = -0.5.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            // Pillow's truncated sinc, sinc(x) * sinc(x / 3) on [-3, 3).
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// For each output position: the first input index and the weights of its window.
struct Kernel<W> {
    start: Vec<usize>,
    weights: Vec<Vec<W>>,
}

impl<W> Kernel<W> {
    /// The input positions the windows read, first to one past the last.
    fn input_range(&self) -> (usize, usize) {
        let first = self.start.first().copied().unwrap_or(0);
        let last = self
            .start
            .iter()
            .zip(&self.weights)
            .map(|(s, k)| s + k.len())
            .max()
            .unwrap_or(first);
        (first, last)
    }
}

/// The windows of output positions `outputs` of a resize from `in_size` to `out_size`, with
/// Pillow's normalised double weights: each output position's window depends on that
/// position alone, so a crop of the output is computed without computing (or allocating) the
/// rest.
fn windows(
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
    filter: Filter,
) -> Kernel<f64> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let mut start = Vec::with_capacity(outputs.len());
    let mut weights = Vec::with_capacity(outputs.len());
    for out in outputs {
        let center = (out as f64 + 0.5) * scale;
        // C's (int) truncates toward zero; negative values are clamped to 0 next anyway.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        // Multiplying by the reciprocal (not dividing) keeps Pillow's rounding.
        let inverse = 1.0 / filter_scale;
        let raw: Vec<f64> = (lo..hi.max(lo))
            .map(|i| filter.weight((i as f64 - center + 0.5) * inverse))
            .collect();
        let total: f64 = raw.iter().sum();
        start.push(lo);
        weights.push(
            raw.iter()
                .map(|w| if total != 0.0 { w / total } else { *w })
                .collect(),
        );
    }
    Kernel { start, weights }
}

/// [`windows`] with the weights in Pillow's 8-bit fixed point.
fn kernel(
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
    filter: Filter,
) -> Kernel<i64> {
    let Kernel { start, weights } = windows(in_size, out_size, outputs, filter);
    let weights = weights
        .into_iter()
        .map(|k| {
            k.into_iter()
                .map(|w| {
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (scaled - 0.5) as i64
                    } else {
                        (scaled + 0.5) as i64
                    }
                })
                .collect()
        })
        .collect();
    Kernel { start, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((width, height), filter)` of an image [H, W, C] (what torchvision's
/// `Resize` does to a PIL image), to the level.
pub fn resize(
    image: ArrayView3<'_, u8>,
    width: usize,
    height: usize,
    filter: Filter,
) -> Array3<u8> {
    resize_crop(image, width, height, 0..height, 0..width, filter)
}

/// `resize(image, width, height, filter)` cropped to output rows `rows` and columns `cols`,
/// equal to the pixel, in memory proportional to the crop (and the input rows it reads), not
/// to the resized image: a 1 x 200,000 image whose short side is scaled to 256 would be
/// 39 GB whole. Ranges past the output are clamped to it.
pub fn resize_crop(
    image: ArrayView3<'_, u8>,
    width: usize,
    height: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    filter: Filter,
) -> Array3<u8> {
    let (h, w, c) = image.dim();
    let rows = rows.start.min(height)..rows.end.min(height);
    let cols = cols.start.min(width)..cols.end.min(width);
    if rows.is_empty() || cols.is_empty() {
        return Array3::zeros((rows.len(), cols.len(), c));
    }
    let horizontal = kernel(w, width, cols.clone(), filter);
    let vertical = kernel(h, height, rows.clone(), filter);
    let rounding = 1i64 << (PRECISION_BITS - 1);

    // Horizontal pass over the rows the vertical pass will read, as Pillow does.
    let (first_row, last_row) = vertical.input_range();
    let tmp = if width != w {
        let mut tmp = Array3::<u8>::zeros((last_row - first_row, cols.len(), c));
        for y in first_row..last_row {
            for (x, (start, k)) in horizontal.start.iter().zip(&horizontal.weights).enumerate() {
                for ch in 0..c {
                    let acc = k.iter().enumerate().fold(rounding, |acc, (i, wk)| {
                        acc + i64::from(image[[y, start + i, ch]]) * wk
                    });
                    tmp[[y - first_row, x, ch]] = clip8(acc);
                }
            }
        }
        tmp
    } else {
        image
            .slice(s![first_row..last_row, cols.clone(), ..])
            .to_owned()
    };
    if height == h {
        // The vertical pass is the identity: keep the asked rows of the horizontal pass.
        return tmp
            .slice(s![rows.start - first_row..rows.end - first_row, .., ..])
            .to_owned();
    }
    let mut out = Array3::<u8>::zeros((rows.len(), cols.len(), c));
    for (y, (start, k)) in vertical.start.iter().zip(&vertical.weights).enumerate() {
        for x in 0..cols.len() {
            for ch in 0..c {
                let acc = k.iter().enumerate().fold(rounding, |acc, (i, wk)| {
                    acc + i64::from(tmp[[start - first_row + i, x, ch]]) * wk
                });
                out[[y, x, ch]] = clip8(acc);
            }
        }
    }
    out
}

/// Pillow's `Image.resize((width, height), filter)` of a single-channel float image (mode
/// `"F"`), as clean-fid resizes each channel: the same windows as the 8-bit path, but the
/// weights stay doubles, each pass sums in double from zero and stores float32, with no
/// rounding or clipping. image: [H, W] f32; returns [height, width] f32.
pub fn resize_f32(
    image: ArrayView2<'_, f32>,
    width: usize,
    height: usize,
    filter: Filter,
) -> Array2<f32> {
    let (h, w) = image.dim();
    if width == 0 || height == 0 || h == 0 || w == 0 {
        return Array2::zeros((height, width));
    }
    let vertical = windows(h, height, 0..height, filter);
    let (first_row, last_row) = vertical.input_range();
    let tmp = if width != w {
        let horizontal = windows(w, width, 0..width, filter);
        let mut tmp = Array2::<f32>::zeros((last_row - first_row, width));
        for y in first_row..last_row {
            for (x, (start, k)) in horizontal.start.iter().zip(&horizontal.weights).enumerate() {
                let acc = k.iter().enumerate().fold(0.0f64, |acc, (i, wk)| {
                    acc + f64::from(image[[y, start + i]]) * wk
                });
                tmp[[y - first_row, x]] = acc as f32;
            }
        }
        tmp
    } else {
        image.slice(s![first_row..last_row, ..]).to_owned()
    };
    if height == h {
        return tmp;
    }
    let mut out = Array2::<f32>::zeros((height, width));
    for (y, (start, k)) in vertical.start.iter().zip(&vertical.weights).enumerate() {
        for x in 0..width {
            let acc = k.iter().enumerate().fold(0.0f64, |acc, (i, wk)| {
                acc + f64::from(tmp[[start - first_row + i, x]]) * wk
            });
            out[[y, x]] = acc as f32;
        }
    }
    out
}

/// torchvision's `center_crop(img, min(img.size))` (BigGAN's `CenterCropLongEdge`, which the
/// GigaGAN / LlamaGen text-to-image evaluation applies first): the centre square of side
/// `min(H, W)`, its offsets `round((side - min) / 2)` as torchvision computes them.
/// image: [H, W, C]; returns [S, S, C] with S = min(H, W).
pub fn crop_long_edge<T: Clone>(image: ArrayView3<'_, T>) -> Array3<T> {
    let (h, w, _) = image.dim();
    let side = h.min(w);
    // torchvision: int(round((h - side) / 2.0)), Python's round (ties to even).
    let top = ((h - side) as f64 / 2.0).round_ties_even() as usize;
    let left = ((w - side) as f64 / 2.0).round_ties_even() as usize;
    image
        .slice(s![top..top + side, left..left + side, ..])
        .to_owned()
}

/// ADM's `center_crop_arr(pil_image, size)` of an RGB image [H, W, 3]; returns [size, size, 3].
pub fn center_crop(image: ArrayView3<'_, u8>, size: usize) -> Result<Array3<u8>, ImagingError> {
    short_side_crop(image, size, size, |rows, cols| (rows / 2, cols / 2))
}

/// LlamaGen's `random_crop_arr(pil_image, size)` (its tokenizer training augmentation) with the
/// random draws given: the short side is first scaled to `short_side` (the reference draws it
/// from `size ..= ceil(size / 0.8)`), then the crop starts at row `picks.0 % (rows + 1)` and
/// column `picks.1 % (cols + 1)`, where rows and cols are the spare pixels of each side.
pub fn random_crop(
    image: ArrayView3<'_, u8>,
    size: usize,
    short_side: usize,
    picks: (u64, u64),
) -> Result<Array3<u8>, ImagingError> {
    if short_side < size {
        return Err(ImagingError::Invalid(format!(
            "a short side of {short_side} cannot hold a {size} px crop"
        )));
    }
    short_side_crop(image, size, short_side, |rows, cols| {
        (
            (picks.0 % (rows as u64 + 1)) as usize,
            (picks.1 % (cols as u64 + 1)) as usize,
        )
    })
}

/// Halves the image with BOX while its short side is at least twice `short`, scales it with
/// BICUBIC so that the short side is `short` (sides rounded as Python rounds), then crops a
/// `size` square at the offset `place(spare rows, spare columns)` returns.
fn short_side_crop(
    image: ArrayView3<'_, u8>,
    size: usize,
    short: usize,
    place: impl FnOnce(usize, usize) -> (usize, usize),
) -> Result<Array3<u8>, ImagingError> {
    let (h, w, c) = image.dim();
    if size == 0 || h == 0 || w == 0 || c != 3 {
        return Err(ImagingError::Invalid(format!(
            "cannot crop a {w}x{h}x{c} image to {size}"
        )));
    }
    let mut current = image.to_owned();
    while current.dim().0.min(current.dim().1) >= 2 * short {
        let (ch, cw, _) = current.dim();
        current = resize(current.view(), cw / 2, ch / 2, Filter::Box);
    }
    let (ch, cw, _) = current.dim();
    let scale = short as f64 / ch.min(cw) as f64;
    let (nw, nh) = (
        (cw as f64 * scale).round_ties_even() as usize,
        (ch as f64 * scale).round_ties_even() as usize,
    );
    if nw < size || nh < size {
        return Err(ImagingError::Invalid(format!(
            "a {cw}x{ch} image scaled to {nw}x{nh} cannot hold a {size} px crop"
        )));
    }
    let (y, x) = place(nh - size, nw - size);
    if (nw, nh) == (cw, ch) {
        return Ok(current.slice(s![y..y + size, x..x + size, ..]).to_owned());
    }
    Ok(resize_crop(
        current.view(),
        nw,
        nh,
        y..y + size,
        x..x + size,
        Filter::Bicubic,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(160, 64), (80, 200), (7, 3)] {
            let k = kernel(n_in, n_out, 0..n_out, Filter::Bicubic);
            for w in &k.weights {
                let total: i64 = w.iter().sum();
                assert!(
                    (total - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{total}"
                );
            }
        }
    }

    fn noise(h: usize, w: usize) -> Array3<u8> {
        let mut state = 0x2545_f491_u32;
        Array3::from_shape_fn((h, w, 3), |_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
    }

    #[test]
    fn a_crop_of_the_resize_is_the_resize_cropped() {
        let image = noise(37, 53);
        for filter in [
            Filter::Box,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            for (width, height) in [(20, 15), (53, 80), (90, 37), (53, 37), (7, 100)] {
                let whole = resize(image.view(), width, height, filter);
                for (rows, cols) in [
                    (0..height, 0..width),
                    (3..height / 2 + 4, 1..width - 2),
                    (height - 1..height, 0..1),
                    (2..2, 0..width),
                ] {
                    let crop = resize_crop(
                        image.view(),
                        width,
                        height,
                        rows.clone(),
                        cols.clone(),
                        filter,
                    );
                    assert_eq!(
                        crop,
                        whole.slice(s![rows.clone(), cols.clone(), ..]),
                        "{filter:?} to {width}x{height}, rows {rows:?}, cols {cols:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn extreme_aspect_ratios_are_cropped_in_bounded_memory() {
        // Scaling the short side to 256 would make this 256 x 51,200,000 (39 GB) before the
        // crop; only the crop is computed.
        let strip = Array3::from_elem((200_000, 1, 3), 9u8);
        let out = center_crop(strip.view(), 256).unwrap();
        assert_eq!(out.dim(), (256, 256, 3));
        assert!(out.iter().all(|&v| v == 9));
    }

    #[test]
    fn flat_images_stay_flat_and_shapes_are_right() {
        let flat = Array3::from_elem((90, 150, 3), 77u8);
        let out = center_crop(flat.view(), 40).unwrap();
        assert_eq!(out.dim(), (40, 40, 3));
        assert!(out.iter().all(|&v| v == 77));
        assert!(center_crop(flat.view(), 0).is_err());
    }
}
