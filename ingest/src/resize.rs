//! Decode under limits, resize in img2dataset's modes, re-encode as JPEG.
//!
//! Resampling follows img2dataset: an area filter when shrinking (its `cv2.INTER_AREA`; here
//! fast_image_resize's box convolution, which averages the covered source pixels) and
//! Lanczos-3 when enlarging (its `INTER_LANCZOS4`). An alpha channel is dropped.
//!
//! JPEG costs most of the CPU, so JPEG goes through libjpeg-turbo (`turbojpeg.rs`), OpenCV's
//! codec in img2dataset: a JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8
//! scale inside the inverse DCT, never below the size the resize needs, and the output is
//! encoded 4:2:0 as OpenCV's encoder does. `center_crop` and `keep_ratio` (to even sides) of
//! a JPEG never leave YCbCr: the file's planes are resized one by one and encoded as they
//! are, which spares the chroma upsampling and colour conversions of an RGB round trip
//! (`process_planes`). A JPEG libjpeg-turbo cannot decode to RGB (CMYK, 12-bit) goes through
//! the `image` crate, as does every other format.

use std::cell::RefCell;
use std::io::Cursor;
use std::time::{Duration, Instant};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{
    CropBox, FilterType, PixelType, ResizeAlg, ResizeOptions as FrOptions, Resizer,
};
use image::{ImageReader, Limits};

use crate::turbojpeg;

/// img2dataset's `resize_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Keep the downloaded size.
    No,
    /// Scale so the shorter side is `image_size`.
    KeepRatio,
    /// Scale so the shorter side is `image_size`, then cut the centred square (the paper's
    /// training data: 256 x 256).
    CenterCrop,
    /// Scale so the longer side is `image_size`, then pad with black to a square.
    Border,
}

impl std::str::FromStr for ResizeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "no" => ResizeMode::No,
            "keep_ratio" => ResizeMode::KeepRatio,
            "center_crop" => ResizeMode::CenterCrop,
            "border" => ResizeMode::Border,
            other => {
                return Err(format!(
                    "resize mode is no, keep_ratio, center_crop or border, got {other:?}"
                ));
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct ResizeOptions {
    pub image_size: u32,
    pub mode: ResizeMode,
    pub jpeg_quality: u8,
    /// Images with more pixels are refused before decoding (decompression bombs), and so are
    /// images whose resized output would have more.
    pub max_pixels: u64,
    /// Images whose longer side is more than this many times the shorter are refused after
    /// reading the header (img2dataset's `max_aspect_ratio`): the metadata's width and height
    /// can be wrong, and `keep_ratio` scales a 1 x 200,000 strip to 256 x 51,200,000.
    pub max_aspect_ratio: f64,
}

/// A re-encoded image and where its time went.
#[derive(Debug, Clone)]
pub struct Resized {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub original_width: u32,
    pub original_height: u32,
    pub decode: Duration,
    pub resize: Duration,
    pub encode: Duration,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResizeError {
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error(
        "image is {width} x {height} = {pixels} pixels, over the limit of {max} (decompression bomb guard)"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("image is {width} x {height}: aspect ratio over {max}")]
    AspectRatio { width: u32, height: u32, max: f64 },
    #[error(
        "image is {width} x {height}: resized to {out_width} x {out_height} it would be over the {max}-pixel limit"
    )]
    OutputTooLarge {
        width: u32,
        height: u32,
        out_width: u32,
        out_height: u32,
        max: u64,
    },
    #[error("image is {0} x {1}: empty")]
    Empty(u32, u32),
    #[error("could not decode the image: {0}")]
    Decode(String),
    #[error("could not resize: {0}")]
    Resize(String),
    #[error("could not encode JPEG: {0}")]
    Encode(String),
}

/// Decodes `bytes`, resizes as `options` say and encodes a JPEG.
pub fn process(bytes: &[u8], options: &ResizeOptions) -> Result<Resized, ResizeError> {
    let t = Instant::now();
    // A JPEG's header comes from libjpeg-turbo, which decodes it; anything else (a JPEG it
    // cannot read included) from the `image` crate. Only the header: a bomb is refused before
    // a pixel is allocated.
    let jpeg = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        turbojpeg::header(bytes).ok().filter(|head| !head.cmyk)
    } else {
        None
    };
    let (w, h) = match jpeg {
        Some(head) => (head.width, head.height),
        None => {
            let probe = ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| ResizeError::Decode(e.to_string()))?;
            if probe.format().is_none() {
                return Err(ResizeError::NotAnImage(
                    "the bytes are in no image format this build decodes".into(),
                ));
            }
            probe
                .into_dimensions()
                .map_err(|e| ResizeError::Decode(e.to_string()))?
        }
    };
    let pixels = w as u64 * h as u64;
    if pixels > options.max_pixels {
        return Err(ResizeError::TooManyPixels {
            width: w,
            height: h,
            pixels,
            max: options.max_pixels,
        });
    }
    if w == 0 || h == 0 {
        return Err(ResizeError::Empty(w, h));
    }
    if f64::from(w.max(h)) > options.max_aspect_ratio * f64::from(w.min(h)) {
        return Err(ResizeError::AspectRatio {
            width: w,
            height: h,
            max: options.max_aspect_ratio,
        });
    }
    // Center crop and border write image_size squared; keep_ratio follows the aspect ratio.
    if let (ResizeMode::KeepRatio, Some((tw, th))) = (options.mode, target_size(w, h, options))
        && u64::from(tw) * u64::from(th) > options.max_pixels
    {
        return Err(ResizeError::OutputTooLarge {
            width: w,
            height: h,
            out_width: tw,
            out_height: th,
            max: options.max_pixels,
        });
    }
    if jpeg.is_some()
        && let Some(done) = process_planes(bytes, w, h, options, t)
    {
        return Ok(done);
    }
    process_rgb(bytes, (w, h), jpeg.is_some(), options, t)
}

/// Every mode and format through packed RGB: libjpeg-turbo for JPEGs it reads, the `image`
/// crate for the rest (and for the JPEGs it refused, so that its error is the one reported).
fn process_rgb(
    bytes: &[u8],
    (w, h): (u32, u32),
    jpeg: bool,
    options: &ResizeOptions,
    t: Instant,
) -> Result<Resized, ResizeError> {
    let jpeg_rgb = if jpeg {
        let target = target_size(w, h, options).unwrap_or((w, h));
        decode_jpeg_scaled(bytes, w, h, target)
    } else {
        None
    };
    let rgb = match jpeg_rgb {
        Some(rgb) => rgb,
        None => {
            let mut decoder = ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| ResizeError::Decode(e.to_string()))?;
            let mut limits = Limits::default();
            limits.max_image_width = Some(w);
            limits.max_image_height = Some(h);
            // RGBA16 at most, plus the decoder's own buffers.
            let pixels = u64::from(w) * u64::from(h);
            limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
            decoder.limits(limits);
            decoder
                .decode()
                .map_err(|e| ResizeError::Decode(e.to_string()))?
                .into_rgb8()
        }
    };
    let decode = t.elapsed();

    let t = Instant::now();
    let (width, height, pixels) = resize(rgb, options)?;
    let resize = t.elapsed();

    let t = Instant::now();
    let jpeg = encode_jpeg(&pixels, width, height, options.jpeg_quality)?;
    Ok(Resized {
        jpeg,
        width,
        height,
        original_width: w,
        original_height: h,
        decode,
        resize,
        encode: t.elapsed(),
    })
}

/// The size the resize scales to before any crop or padding (None: no resize).
fn target_size(w: u32, h: u32, o: &ResizeOptions) -> Option<(u32, u32)> {
    let (short, long) = (w.min(h).max(1), w.max(h).max(1));
    let size = o.image_size;
    match o.mode {
        ResizeMode::No => None,
        ResizeMode::KeepRatio | ResizeMode::CenterCrop => {
            Some((scaled(w, size, short), scaled(h, size, short)))
        }
        ResizeMode::Border => Some((scaled(w, size, long), scaled(h, size, long))),
    }
}

/// The smallest DCT scale (1/8, 1/4, 1/2, 1) whose size still covers `(tw, th)`.
fn jpeg_denominator(w: u32, h: u32, (tw, th): (u32, u32)) -> u32 {
    [8, 4, 2]
        .into_iter()
        .find(|&d| {
            let (sw, sh) = turbojpeg::scaled_size(w, h, d);
            sw >= tw && sh >= th
        })
        .unwrap_or(1)
}

/// Decodes a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8) whose size still covers
/// `target`; None when libjpeg-turbo cannot (the caller then uses the `image` crate, whose
/// error message is the one reported if the file is bad).
fn decode_jpeg_scaled(bytes: &[u8], w: u32, h: u32, target: (u32, u32)) -> Option<image::RgbImage> {
    let (pixels, sw, sh) = turbojpeg::decode_rgb(bytes, jpeg_denominator(w, h, target)).ok()?;
    image::RgbImage::from_raw(sw, sh, pixels)
}

/// `center_crop` and `keep_ratio` of a JPEG without leaving YCbCr: the file's planes are
/// decoded as stored, each is resized on its own (chroma over the same region as luma) and
/// the 4:2:0 planes of the output are encoded. RGB would cost a chroma upsampling and a
/// colour conversion on each side and three bytes a pixel through the resize instead of one
/// and a half; img2dataset's pixels differ by the rounding of those steps. None when
/// libjpeg-turbo cannot decode the file (the RGB path then reports why).
fn process_planes(
    bytes: &[u8],
    w: u32,
    h: u32,
    o: &ResizeOptions,
    started: Instant,
) -> Option<Resized> {
    let crop_square = match o.mode {
        ResizeMode::CenterCrop => true,
        ResizeMode::KeepRatio => false,
        ResizeMode::No | ResizeMode::Border => return None,
    };
    let denominator = jpeg_denominator(w, h, target_size(w, h, o)?);
    let (sw, sh) = turbojpeg::scaled_size(w, h, denominator);
    let (short, size) = (sw.min(sh), o.image_size);
    let (tw, th) = if crop_square {
        (size, size)
    } else {
        (scaled(sw, size, short), scaled(sh, size, short))
    };
    // An odd side would give the output's last chroma sample half a column of padding to
    // cover, which the RGB path fills exactly (the encoder repeats the edge); keep_ratio's odd
    // sides go there.
    if tw % 2 == 1 || th % 2 == 1 {
        return None;
    }
    let planes = turbojpeg::decode_planes(bytes, denominator).ok()?;
    if (planes.width, planes.height) != (sw, sh) {
        return None;
    }
    let decode = started.elapsed();

    let t = Instant::now();
    let ((lw, lh), (cw, ch)) = turbojpeg::planes_420(tw, th).ok()?;
    if (lw, lh) != (tw, th) {
        return None;
    }
    let crop = if crop_square {
        CropBox::fit_src_into_dst_size(sw, sh, tw, th, Some((0.5, 0.5)))
    } else {
        CropBox {
            left: 0.0,
            top: 0.0,
            width: f64::from(sw),
            height: f64::from(sh),
        }
    };
    // Chroma takes luma's filter: it shrinks by twice the factor when luma enlarges a little.
    let filter = if crop.width > f64::from(tw) {
        FilterType::Box
    } else {
        FilterType::Lanczos3
    };
    let luma = resize_plane(&planes.luma, crop, (tw, th), filter).ok()?;
    let chroma = match &planes.chroma {
        Some([cb, cr]) => {
            // The source's chroma sample i covers luma samples [i x ratio, (i + 1) x ratio),
            // the output's j covers [2j, 2j + 2): the same region, in chroma units.
            let (rx, ry) = (
                f64::from(planes.luma.width) / f64::from(cb.width),
                f64::from(planes.luma.height) / f64::from(cb.height),
            );
            let (left, top) = (crop.left / rx, crop.top / ry);
            let region = CropBox {
                left,
                top,
                width: (crop.width / rx).min(f64::from(cb.width) - left),
                height: (crop.height / ry).min(f64::from(cb.height) - top),
            };
            [
                resize_plane(cb, region, (cw, ch), filter).ok()?,
                resize_plane(cr, region, (cw, ch), filter).ok()?,
            ]
        }
        None => {
            let gray = turbojpeg::Plane::filled(cw, ch, 128);
            [gray.clone(), gray]
        }
    };
    let resize = t.elapsed();

    let t = Instant::now();
    let jpeg =
        turbojpeg::encode_planes(tw, th, &luma, [&chroma[0], &chroma[1]], o.jpeg_quality).ok()?;
    Some(Resized {
        jpeg,
        width: tw,
        height: th,
        original_width: w,
        original_height: h,
        decode,
        resize,
        encode: t.elapsed(),
    })
}

thread_local! {
    /// fast_image_resize keeps its scratch buffers between calls.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resizes `region` of one plane to `width` x `height` samples with `filter`.
fn resize_plane(
    plane: &turbojpeg::Plane,
    region: CropBox,
    (width, height): (u32, u32),
    filter: FilterType,
) -> Result<turbojpeg::Plane, ResizeError> {
    let err = |e: &dyn std::fmt::Display| ResizeError::Resize(e.to_string());
    let src = ImageRef::new(plane.width, plane.height, &plane.data, PixelType::U8)
        .map_err(|e| err(&e))?;
    let options = FrOptions::new()
        .resize_alg(ResizeAlg::Convolution(filter))
        .crop(region.left, region.top, region.width, region.height);
    let mut out = turbojpeg::Plane::reused(width, height);
    let mut dst =
        Image::from_slice_u8(width, height, &mut out.data, PixelType::U8).map_err(|e| err(&e))?;
    RESIZER.with(|r| {
        r.borrow_mut()
            .resize(&src, &mut dst, &options)
            .map_err(|e| err(&e))
    })?;
    Ok(out)
}

fn encode_jpeg(pixels: &[u8], w: u32, h: u32, quality: u8) -> Result<Vec<u8>, ResizeError> {
    turbojpeg::encode_rgb(pixels, w, h, quality).map_err(|e| ResizeError::Encode(e.to_string()))
}

/// Scales `numerator / denominator` of `side`, at least one pixel, at most `u32::MAX` (an
/// output that large is refused by the caller's size check, never wrapped around).
fn scaled(side: u32, numerator: u32, denominator: u32) -> u32 {
    let denominator = u64::from(denominator.max(1));
    ((u64::from(side) * u64::from(numerator) + denominator / 2) / denominator)
        .clamp(1, u64::from(u32::MAX)) as u32
}

fn resize(rgb: image::RgbImage, o: &ResizeOptions) -> Result<(u32, u32, Vec<u8>), ResizeError> {
    let (w, h) = rgb.dimensions();
    let size = o.image_size;
    let (short, long) = (w.min(h), w.max(h));
    let (tw, th, crop_square, pad) = match o.mode {
        ResizeMode::No => return Ok((w, h, rgb.into_raw())),
        ResizeMode::KeepRatio => (scaled(w, size, short), scaled(h, size, short), false, false),
        ResizeMode::CenterCrop => (size, size, true, false),
        ResizeMode::Border => (scaled(w, size, long), scaled(h, size, long), false, true),
    };
    let shrinking = if crop_square { short > size } else { tw < w };
    let alg = if shrinking {
        ResizeAlg::Convolution(FilterType::Box)
    } else {
        ResizeAlg::Convolution(FilterType::Lanczos3)
    };
    let mut fr_options = FrOptions::new().resize_alg(alg);
    if crop_square {
        fr_options = fr_options.fit_into_destination(Some((0.5, 0.5)));
    }
    let src = Image::from_vec_u8(w, h, rgb.into_raw(), PixelType::U8x3)
        .map_err(|e| ResizeError::Resize(e.to_string()))?;
    let mut dst = Image::new(tw, th, PixelType::U8x3);
    if (tw, th) == (w, h) && !crop_square {
        dst = src;
    } else {
        RESIZER
            .with(|r| r.borrow_mut().resize(&src, &mut dst, &fr_options))
            .map_err(|e| ResizeError::Resize(e.to_string()))?;
    }
    if !pad {
        return Ok((tw, th, dst.into_vec()));
    }
    // Centre the scaled image on a black square.
    let mut square = vec![0u8; size as usize * size as usize * 3];
    let (x0, y0) = ((size - tw) / 2, (size - th) / 2);
    let row = tw as usize * 3;
    for (y, line) in dst.buffer().chunks_exact(row).enumerate() {
        let start = ((y0 as usize + y) * size as usize + x0 as usize) * 3;
        square[start..start + row].copy_from_slice(line);
    }
    Ok((size, size, square))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(mode: ResizeMode) -> ResizeOptions {
        ResizeOptions {
            image_size: 64,
            mode,
            jpeg_quality: 95,
            max_pixels: 1 << 24,
            max_aspect_ratio: f64::INFINITY,
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 128]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn decoded(r: &Resized) -> image::RgbImage {
        image::load_from_memory(&r.jpeg).unwrap().into_rgb8()
    }

    #[test]
    fn each_mode_gives_img2dataset_s_sizes() {
        let bytes = png(200, 100);
        let cases = [
            (ResizeMode::No, (200, 100)),
            (ResizeMode::KeepRatio, (128, 64)),
            (ResizeMode::CenterCrop, (64, 64)),
            (ResizeMode::Border, (64, 64)),
        ];
        for (mode, size) in cases {
            let r = process(&bytes, &options(mode)).unwrap();
            assert_eq!((r.width, r.height), size, "{mode:?}");
            assert_eq!(decoded(&r).dimensions(), size);
            assert_eq!((r.original_width, r.original_height), (200, 100));
        }
    }

    #[test]
    fn border_pads_with_black_and_center_crop_keeps_the_middle() {
        let bytes = png(200, 100);
        let b = decoded(&process(&bytes, &options(ResizeMode::Border)).unwrap());
        assert!(
            b.get_pixel(32, 2).0.iter().all(|&v| v < 8),
            "top band is black"
        );
        assert!(b.get_pixel(32, 32).0[2] > 100, "middle is the image");
        // The crop of a horizontal gradient keeps its middle: x from 50 to 150 (red 150..450).
        // Row 16, away from where green wraps around (source row 52), which 4:2:0 chroma
        // subsampling smears across two rows.
        let c = decoded(&process(&bytes, &options(ResizeMode::CenterCrop)).unwrap());
        let left = c.get_pixel(1, 16).0[0] as i32;
        assert!((left - 150).abs() < 12, "left edge red {left}");
    }

    #[test]
    fn large_jpegs_decode_at_the_smallest_scale_that_still_covers_the_target() {
        let img = image::RgbImage::from_fn(1024, 768, |x, y| {
            image::Rgb([(x / 4) as u8, (y / 3) as u8, ((x + y) / 8) as u8])
        });
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        // Center crop to 64 needs the short side at 64: 1/8 gives 128 x 96.
        let scaled = decode_jpeg_scaled(&jpeg, 1024, 768, (85, 64)).unwrap();
        assert_eq!(scaled.dimensions(), (128, 96));
        // Needing 300 x 225 allows 1/2 only.
        assert_eq!(
            decode_jpeg_scaled(&jpeg, 1024, 768, (300, 225))
                .unwrap()
                .dimensions(),
            (512, 384)
        );
        // The crop made through the scaled decode matches one made from full resolution.
        let fast = decoded(&process(&jpeg, &options(ResizeMode::CenterCrop)).unwrap());
        let full = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        let (w, h) = full.dimensions();
        let reference = image::imageops::resize(
            &image::imageops::crop_imm(&full, (w - h) / 2, 0, h, h).to_image(),
            64,
            64,
            image::imageops::FilterType::Triangle,
        );
        let diff: f64 = fast
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / reference.as_raw().len() as f64;
        assert!(diff < 3.0, "mean absolute difference {diff}");
    }

    #[test]
    fn jpegs_resized_in_ycbcr_are_as_faithful_as_through_rgb() {
        use crate::turbojpeg::tests::{EVERY_SUBSAMPLING, jpeg_subsampled};
        // A real photo (scikit-image's coffee, 300 x 200, as the filter's tests keep it).
        let photo = image::open(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../filter/tests/fixtures/coffee.png"),
        )
        .unwrap()
        .into_rgb8();
        let mut lossless = Vec::new();
        photo
            .write_to(&mut Cursor::new(&mut lossless), image::ImageFormat::Png)
            .unwrap();
        let mean_diff = |a: &image::RgbImage, b: &image::RgbImage| {
            a.as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(x, y)| f64::from(x.abs_diff(*y)))
                .sum::<f64>()
                / a.as_raw().len() as f64
        };
        // (mode, image size): shrinking at a DCT scale and at full scale, enlarging, and
        // keep_ratio to 96 x 64.
        let cases = [
            (ResizeMode::CenterCrop, 64),
            (ResizeMode::CenterCrop, 160),
            (ResizeMode::CenterCrop, 256),
            (ResizeMode::KeepRatio, 64),
        ];
        for (subsamp, name) in EVERY_SUBSAMPLING {
            for turned in [false, true] {
                let img = if turned {
                    image::imageops::rotate90(&photo)
                } else {
                    photo.clone()
                };
                let (w, h) = img.dimensions();
                let jpeg = jpeg_subsampled(&img, subsamp);
                let mut png = Vec::new();
                img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                    .unwrap();
                for (mode, image_size) in cases {
                    let o = ResizeOptions {
                        image_size,
                        ..options(mode)
                    };
                    let what = format!("{name} {w} x {h} {mode:?} {image_size}");
                    let planar = process_planes(&jpeg, w, h, &o, Instant::now())
                        .unwrap_or_else(|| panic!("{what}: no planar result"));
                    let rgb = process_rgb(&jpeg, (w, h), true, &o, Instant::now()).unwrap();
                    // The truth: the same resize of the photo itself, no JPEG on the way in.
                    let truth =
                        decoded(&process_rgb(&png, (w, h), false, &o, Instant::now()).unwrap());
                    assert_eq!(
                        (planar.width, planar.height),
                        (rgb.width, rgb.height),
                        "{what}"
                    );
                    let (planar, rgb) = (decoded(&planar), decoded(&rgb));
                    assert_eq!(planar.dimensions(), truth.dimensions(), "{what}");
                    let (off_planar, off_rgb) =
                        (mean_diff(&planar, &truth), mean_diff(&rgb, &truth));
                    assert!(
                        off_planar <= off_rgb * 1.1 + 0.1,
                        "{what}: {off_planar:.3} from the truth through YCbCr, {off_rgb:.3} through RGB"
                    );
                }
            }
        }
        // Border, no resize and odd output sides (keep_ratio to 95 x 63) take the RGB path.
        let jpeg = jpeg_subsampled(&photo, 2);
        let odd = ResizeOptions {
            image_size: 63,
            ..options(ResizeMode::KeepRatio)
        };
        for o in [
            options(ResizeMode::Border),
            options(ResizeMode::No),
            odd.clone(),
        ] {
            assert!(process_planes(&jpeg, 300, 200, &o, Instant::now()).is_none());
        }
        let r = process(&jpeg, &odd).unwrap();
        assert_eq!((r.width, r.height), (95, 63));
        assert_eq!(decoded(&r).dimensions(), (95, 63));
    }

    #[test]
    fn jpegs_libjpeg_turbo_cannot_make_rgb_of_go_through_the_image_crate() {
        let cmyk = crate::turbojpeg::tests::cmyk_jpeg(96, 80);
        let r = process(&cmyk, &options(ResizeMode::CenterCrop)).unwrap();
        assert_eq!((r.width, r.height), (64, 64));
        assert_eq!((r.original_width, r.original_height), (96, 80));
    }

    #[test]
    fn strips_are_refused_by_their_aspect_ratio_or_output_size_before_decoding() {
        // 1 x 200,000 pixels in about a kilobyte of PNG.
        let strip = png_flat(1, 200_000);
        assert!(strip.len() < 4_000, "{} bytes", strip.len());
        let mut o = options(ResizeMode::KeepRatio);
        o.max_pixels = 89_478_485;
        let err = process(&strip, &o).unwrap_err();
        assert!(
            matches!(
                err,
                ResizeError::OutputTooLarge {
                    out_width: 64,
                    out_height: 12_800_000,
                    ..
                }
            ),
            "{err}"
        );
        o.max_aspect_ratio = 2.0;
        let err = process(&strip, &o).unwrap_err();
        assert!(matches!(err, ResizeError::AspectRatio { .. }), "{err}");
        assert!(err.to_string().contains("1 x 200000"), "{err}");
        // Within the ratio every mode still works.
        let r = process(&png(150, 100), &o).unwrap();
        assert_eq!((r.width, r.height), (96, 64));
        // Center crop and border of the strip are small, so only the ratio refuses them.
        o.max_aspect_ratio = f64::INFINITY;
        for mode in [ResizeMode::CenterCrop, ResizeMode::Border] {
            o.mode = mode;
            let r = process(&strip, &o).unwrap();
            assert_eq!((r.width, r.height), (64, 64), "{mode:?}");
        }
    }

    fn png_flat(w: u32, h: u32) -> Vec<u8> {
        use image::ImageEncoder as _;
        use image::codecs::png::{CompressionType, FilterType, PngEncoder};
        let mut out = Vec::new();
        let pixels = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Up)
            .write_image(&pixels, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn bombs_and_garbage_are_refused_with_a_reason() {
        let mut o = options(ResizeMode::CenterCrop);
        o.max_pixels = 100 * 100;
        let err = process(&png(200, 100), &o).unwrap_err();
        assert!(
            matches!(err, ResizeError::TooManyPixels { pixels: 20000, .. }),
            "{err}"
        );
        let err = process(b"<html>not an image</html>", &options(ResizeMode::No)).unwrap_err();
        assert!(matches!(err, ResizeError::NotAnImage(_)), "{err}");
        let mut truncated = png(50, 50);
        truncated.truncate(truncated.len() / 2);
        let err = process(&truncated, &options(ResizeMode::No)).unwrap_err();
        assert!(matches!(err, ResizeError::Decode(_)), "{err}");
    }
}
