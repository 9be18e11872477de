//! The scorers' image preprocessing, pixel for pixel as the Python references do it on a PIL
//! image, because a model's score moves with every level of every pixel it is fed:
//!
//! - CLIP (open_clip's eval transform for OpenAI models): torchvision `Resize(S, BICUBIC)` of the
//!   short side (the long side truncated, as torchvision computes it), `CenterCrop(S)` (offsets
//!   rounded half to even, as Python's `round`), then `(x / 255 - mean) / std` per channel.
//! - The LAION watermark detector: `Resize((256, 256))` (bilinear, aspect not kept), then the
//!   ImageNet mean and std.
//!
//! Resampling is Pillow's, reimplemented in `llamagen_imaging::pillow::resize`.

use llamagen_imaging::pillow::{Filter, resize, resize_crop};
use ndarray::{Array3, Array4, ArrayView3, s};

use crate::FilterError;

/// Decodes an image's bytes to RGB [H, W, 3], refusing images over `max_pixels` before
/// allocating them (a decompression bomb in a shard is data, not a crash).
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<Array3<u8>, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!("{w}x{h} is over the {max_pixels}-pixel limit"));
    }
    let rgb = image::load_from_memory(bytes)
        .map_err(|e| e.to_string())?
        .into_rgb8();
    let (w, h) = rgb.dimensions();
    Array3::from_shape_vec((h as usize, w as usize, 3), rgb.into_raw()).map_err(|e| e.to_string())
}

/// CLIP's view: the short side resized to `size` (bicubic), the centre `size` x `size` square.
/// image: [H, W, 3] u8; returns [size, size, 3] u8.
pub fn clip_view(image: ArrayView3<'_, u8>, size: usize) -> Result<Array3<u8>, FilterError> {
    let (h, w, c) = image.dim();
    if h == 0 || w == 0 || c != 3 || size == 0 {
        return Err(FilterError::Input(format!(
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

/// The watermark detector's view: the whole image squeezed to `size` x `size` (bilinear).
/// image: [H, W, 3] u8; returns [size, size, 3] u8.
pub fn watermark_view(image: ArrayView3<'_, u8>, size: usize) -> Result<Array3<u8>, FilterError> {
    let (h, w, c) = image.dim();
    if h == 0 || w == 0 || c != 3 || size == 0 {
        return Err(FilterError::Input(format!(
            "cannot preprocess a {w}x{h}x{c} image"
        )));
    }
    Ok(if (h, w) == (size, size) {
        image.to_owned()
    } else {
        resize(image, size, size, Filter::Bilinear)
    })
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
        let v = watermark_view(flat.view(), 256).unwrap();
        assert_eq!(v.dim(), (256, 256, 3));
        assert!(v.iter().all(|&p| p == 90));
        let t = normalize(&[v], [0.5; 3], [0.25; 3]);
        assert_eq!(t.dim(), (1, 3, 256, 256));
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

    #[test]
    fn undecodable_and_oversized_images_are_errors_not_panics() {
        assert!(decode_rgb(b"\xff\xd8 not a jpeg", 1 << 20).is_err());
        let mut png = Vec::new();
        image::RgbImage::new(64, 64)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_rgb(&png, 1 << 20).unwrap().dim(), (64, 64, 3));
        let err = decode_rgb(&png, 1000).unwrap_err();
        assert!(err.contains("over the 1000-pixel limit"), "{err}");
    }
}
