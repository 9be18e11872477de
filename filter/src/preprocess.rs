//! The filter's image decoding and the watermark detector's preprocessing, pixel for pixel as
//! LAION's transform does it on a PIL image: `Resize((256, 256))` (bilinear, aspect not kept),
//! then the ImageNet mean and std. CLIP's view is `llamagen_clip::preprocess`.
//!
//! Resampling is Pillow's, reimplemented in `llamagen_imaging::pillow::resize`.

use llamagen_imaging::pillow::{Filter, resize};
use ndarray::Array3;
use ndarray::ArrayView3;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_view_has_its_shape_and_flat_images_stay_flat() {
        let flat = Array3::from_elem((150, 210, 3), 90u8);
        let v = watermark_view(flat.view(), 256).unwrap();
        assert_eq!(v.dim(), (256, 256, 3));
        assert!(v.iter().all(|&p| p == 90));
        assert!(watermark_view(Array3::zeros((0, 4, 3)).view(), 256).is_err());
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
