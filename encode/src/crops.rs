//! The views of an image that LlamaGen encodes, exactly as its extraction scripts make them.
//!
//! - `autoregressive/train/extract_codes_c2i.py --ten-crop`: ADM's `center_crop_arr` to
//!   `int(image_size * crop_range)`, then torchvision's `TenCrop(image_size)`: the four corners
//!   and the center, then the same five of the horizontally flipped image.
//! - `extract_codes_c2i.py` without `--ten-crop`: `center_crop_arr` to `image_size`, and its
//!   horizontal flip.
//! - `extract_codes_t2i.py`: `center_crop_arr` to `image_size` alone.

use ndarray::{Array3, ArrayView3, Axis, s};
use serde::{Deserialize, Serialize};

use crate::EncodeError;

/// Which views of each image are encoded (the `A` axis of the codes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Augment {
    /// 10 views: `TenCrop` of the center crop enlarged by `crop_range` (LlamaGen: 1.1).
    TenCrop { crop_range: f64 },
    /// 2 views: the center crop and its mirror image (class-conditional default).
    CenterFlip,
    /// 1 view: the center crop (text-conditional).
    Center,
}

impl Augment {
    pub fn views(self) -> usize {
        match self {
            Augment::TenCrop { .. } => 10,
            Augment::CenterFlip => 2,
            Augment::Center => 1,
        }
    }
}

/// Python's `round()`: halves go to the even neighbour (torchvision's `center_crop` uses it).
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r as i64 % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

fn mirror(image: ArrayView3<'_, u8>) -> Array3<u8> {
    image.slice(s![.., ..;-1, ..]).to_owned()
}

/// torchvision's `five_crop`: top-left, top-right, bottom-left, bottom-right, center.
fn five_crop(image: ArrayView3<'_, u8>, size: usize) -> Vec<Array3<u8>> {
    let (h, w, _) = image.dim();
    let top = round_half_even((h - size) as f64 / 2.0) as usize;
    let left = round_half_even((w - size) as f64 / 2.0) as usize;
    [
        (0, 0),
        (0, w - size),
        (h - size, 0),
        (h - size, w - size),
        (top, left),
    ]
    .iter()
    .map(|&(y, x)| image.slice(s![y..y + size, x..x + size, ..]).to_owned())
    .collect()
}

/// The views of one image [H, W, 3] uint8, each [size, size, 3], in LlamaGen's order.
pub fn views(
    image: ArrayView3<'_, u8>,
    size: usize,
    augment: Augment,
) -> Result<Vec<Array3<u8>>, EncodeError> {
    let center = |target: usize| {
        llamagen_imaging::pillow::center_crop(image, target)
            .map_err(|e| EncodeError::Image(format!("center crop to {target}: {e}")))
    };
    Ok(match augment {
        Augment::Center => vec![center(size)?],
        Augment::CenterFlip => {
            let c = center(size)?;
            let flipped = mirror(c.view());
            vec![c, flipped]
        }
        Augment::TenCrop { crop_range } => {
            if !(crop_range >= 1.0 && crop_range.is_finite()) {
                return Err(EncodeError::Invalid(format!(
                    "crop_range must be at least 1, got {crop_range}"
                )));
            }
            // Python's int(): truncation.
            let big = center((size as f64 * crop_range) as usize)?;
            let mut out = five_crop(big.view(), size);
            out.extend(five_crop(mirror(big.view()).view(), size));
            out
        }
    })
}

/// Stacks views into one batch [N, size, size, 3].
pub fn stack(views: &[Array3<u8>]) -> Result<ndarray::Array4<u8>, EncodeError> {
    let refs: Vec<_> = views.iter().map(|v| v.view()).collect();
    ndarray::stack(Axis(0), &refs).map_err(|e| EncodeError::Invalid(format!("stacking views: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(12.5), 12);
        assert_eq!(round_half_even(13.5), 14);
        assert_eq!(round_half_even(2.4), 2);
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(3.0), 3);
    }

    /// An image whose pixel (y, x) holds (y, x, 0): every crop says where it came from.
    fn coordinates(h: usize, w: usize) -> Array3<u8> {
        Array3::from_shape_fn((h, w, 3), |(y, x, c)| match c {
            0 => y as u8,
            1 => x as u8,
            _ => 0,
        })
    }

    #[test]
    fn ten_crop_takes_corners_center_then_the_mirrored_five() {
        // 35 = int(32 * 1.1), so center_crop_arr keeps the 35 x 35 image as it is.
        let img = coordinates(35, 35);
        let v = views(img.view(), 32, Augment::TenCrop { crop_range: 1.1 }).unwrap();
        assert_eq!(v.len(), 10);
        let origin = |a: &Array3<u8>| (a[[0, 0, 0]], a[[0, 0, 1]]);
        // (35 - 32) / 2 = 1.5 rounds to 2.
        assert_eq!(
            v[..5].iter().map(origin).collect::<Vec<_>>(),
            [(0, 0), (0, 3), (3, 0), (3, 3), (2, 2)]
        );
        // The mirrored image's top-left is the original's top-right, mirrored.
        assert_eq!(origin(&v[5]), (0, 34));
        assert_eq!(v[5][[0, 31, 1]], 3);
        assert_eq!(origin(&v[9]), (2, 32), "the mirrored center: 34 - 2");
    }

    #[test]
    fn center_flip_and_center() {
        let img = coordinates(32, 32);
        let v = views(img.view(), 32, Augment::CenterFlip).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], img);
        assert_eq!(v[1][[5, 0, 1]], 31);
        assert_eq!(views(img.view(), 32, Augment::Center).unwrap().len(), 1);
        assert!(views(img.view(), 32, Augment::TenCrop { crop_range: 0.9 }).is_err());
    }
}
