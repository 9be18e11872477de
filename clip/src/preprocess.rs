//! CLIP's image preprocessing, pixel for pixel as open_clip's eval transform for OpenAI models
//! (and OpenAI's `clip.load` preprocess) does it on a PIL image, because an embedding moves
//! with every level of every pixel it is fed: torchvision `Resize(S, BICUBIC)` of the short
//! side (the long side truncated, as torchvision computes it), `CenterCrop(S)` (offsets
//! rounded half to even, as Python's `round`), then `(x / 255 - mean) / std` per channel.
//!
//! Resampling is Pillow's, reimplemented in `llamagen_imaging::pillow`.

use llamagen_imaging::pillow::{Filter, resize_crop};
use ndarray::{Array3, Array4, ArrayView3, s};

use crate::ClipError;

/// CLIP's view: the short side resized to `size` (bicubic), the centre `size` x `size` square.
/// image: [H, W, 3] u8; returns [size, size, 3] u8.
pub fn clip_view(image: ArrayView3<'_, u8>, size: usize) -> Result<Array3<u8>, ClipError> {
    let (h, w, c) = image.dim();
    if h == 0 || w == 0 || c != 3 || size == 0 {
        return Err(ClipError::Input(format!(
            "cannot preprocess a {w}x{h}x{c} image"
        )));
    }
    // torchvision's _compute_resized_output_size: the long side is truncated, not rounded.
    let (short, long) = (h.min(w), h.max(w));
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    let top = ((nh - size) as f64 / 2.0).round_ties_even() as usize;
    let left = ((nw - size) as f64 / 2.0).round_ties_even() as usize;
    if (nh, nw) == (h, w) {
        return Ok(image
            .slice(s![top..top + size, left..left + size, ..])
            .to_owned());
    }
    // Only the crop is resampled: the whole resize of a 1 x 200,000 strip would not fit in
    // memory.
    Ok(resize_crop(
        image,
        nw,
        nh,
        top..top + size,
        left..left + size,
        Filter::Bicubic,
    ))
}

/// torchvision's `ToTensor` + `Normalize(mean, std)` of a batch of views.
/// views: N x [S, S, 3] u8; returns [N, 3, S, S] f32.
pub fn normalize(views: &[Array3<u8>], mean: [f32; 3], std: [f32; 3]) -> Array4<f32> {
    let (h, w) = views.first().map_or((0, 0), |v| (v.dim().0, v.dim().1));
    let mut out = Array4::<f32>::zeros((views.len(), 3, h, w));
    for (n, view) in views.iter().enumerate() {
        for c in 0..3 {
            let mut plane = out.slice_mut(s![n, c, .., ..]);
            let channel = view.slice(s![.., .., c]);
            plane.zip_mut_with(&channel, |o, &p| {
                *o = (f32::from(p) / 255.0 - mean[c]) / std[c];
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_have_the_right_shapes_and_flat_images_stay_flat() {
        let flat = Array3::from_elem((150, 210, 3), 90u8);
        let v = clip_view(flat.view(), 224).unwrap();
        assert_eq!(v.dim(), (224, 224, 3));
        assert!(v.iter().all(|&p| p == 90));
        let t = normalize(&[v], [0.5; 3], [0.25; 3]);
        assert_eq!(t.dim(), (1, 3, 224, 224));
        assert!((t[[0, 1, 3, 4]] - (90.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
        assert!(clip_view(Array3::zeros((0, 4, 3)).view(), 224).is_err());
    }

    #[test]
    fn a_one_pixel_wide_strip_gets_a_view_without_resizing_it_whole() {
        // The short side scaled to 224 makes it 224 x 44,800,000: only the view is computed.
        let strip = Array3::from_elem((200_000, 1, 3), 40u8);
        let v = clip_view(strip.view(), 224).unwrap();
        assert_eq!(v.dim(), (224, 224, 3));
        assert!(v.iter().all(|&p| p == 40));
    }
}
