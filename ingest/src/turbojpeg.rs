//! libjpeg-turbo through its TurboJPEG API, the JPEG codec that OpenCV (img2dataset's) and
//! Pillow use: SIMD Huffman coding and DCTs, and scaled decoding inside the inverse DCT.
//!
//! Only the 2.x functions are bound (`tjDecompress2`, `tjCompress2`, ...); libjpeg-turbo 3.x
//! keeps them, so Debian 12's 2.1.5 (`libturbojpeg0-dev`) and newer releases both link. The
//! library is linked statically when its archive is there (see `build.rs`), so a copied
//! binary needs no libturbojpeg on the worker.
//!
//! One compressor and one decompressor per thread, made on first use: the resize runs on
//! tokio's blocking pool, whose threads live for many images.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_uchar, c_ulong, c_void};

type Handle = *mut c_void;

unsafe extern "C" {
    fn tjInitCompress() -> Handle;
    fn tjInitDecompress() -> Handle;
    fn tjDestroy(handle: Handle) -> c_int;
    fn tjGetErrorStr2(handle: Handle) -> *mut c_char;
    fn tjGetErrorCode(handle: Handle) -> c_int;
    fn tjBufSize(width: c_int, height: c_int, subsamp: c_int) -> c_ulong;
    fn tjDecompressHeader3(
        handle: Handle,
        jpeg: *const c_uchar,
        jpeg_size: c_ulong,
        width: *mut c_int,
        height: *mut c_int,
        subsamp: *mut c_int,
        colorspace: *mut c_int,
    ) -> c_int;
    fn tjDecompress2(
        handle: Handle,
        jpeg: *const c_uchar,
        jpeg_size: c_ulong,
        dst: *mut c_uchar,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjPlaneWidth(component: c_int, width: c_int, subsamp: c_int) -> c_int;
    fn tjPlaneHeight(component: c_int, height: c_int, subsamp: c_int) -> c_int;
    fn tjDecompressToYUVPlanes(
        handle: Handle,
        jpeg: *const c_uchar,
        jpeg_size: c_ulong,
        dst_planes: *mut *mut c_uchar,
        width: c_int,
        strides: *mut c_int,
        height: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjCompressFromYUVPlanes(
        handle: Handle,
        src_planes: *mut *const c_uchar,
        width: c_int,
        strides: *const c_int,
        height: c_int,
        subsamp: c_int,
        jpeg: *mut *mut c_uchar,
        jpeg_size: *mut c_ulong,
        quality: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjCompress2(
        handle: Handle,
        src: *const c_uchar,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        jpeg: *mut *mut c_uchar,
        jpeg_size: *mut c_ulong,
        subsamp: c_int,
        quality: c_int,
        flags: c_int,
    ) -> c_int;
}

const TJPF_RGB: c_int = 0;
const TJSAMP_420: c_int = 2;
const TJSAMP_GRAY: c_int = 3;
const TJCS_CMYK: c_int = 3;
const TJCS_YCCK: c_int = 4;
const TJERR_WARNING: c_int = 0;
/// The output buffer is ours, sized by `tjBufSize`; the library must never swap it.
const TJFLAG_NOREALLOC: c_int = 1024;
/// Refuses progressive JPEGs of more than 500 scans, a cheap way to make a decoder spin.
const TJFLAG_LIMITSCANS: c_int = 32768;

/// What libjpeg-turbo said when it refused an image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TurboError(String);

/// A JPEG's header: its size and whether RGB output is possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// CMYK and YCCK JPEGs cannot be decoded to RGB by libjpeg-turbo.
    pub cmyk: bool,
    /// The chroma subsampling (a `TJSAMP_*` value), which sets the planes' sizes.
    subsamp: c_int,
}

struct Owned(Handle);

impl Owned {
    fn error(&self) -> TurboError {
        // SAFETY: the handle is live; the string is owned by it and copied at once.
        let message = unsafe { CStr::from_ptr(tjGetErrorStr2(self.0)) };
        TurboError(message.to_string_lossy().into_owned())
    }

    fn only_warned(&self) -> bool {
        // SAFETY: the handle is live.
        unsafe { tjGetErrorCode(self.0) == TJERR_WARNING }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: made by tjInit*, destroyed once.
        unsafe { tjDestroy(self.0) };
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Owned>> = const { RefCell::new(None) };
    static COMPRESSOR: RefCell<Option<Owned>> = const { RefCell::new(None) };
}

fn with_handle<T>(
    slot: &'static std::thread::LocalKey<RefCell<Option<Owned>>>,
    init: unsafe extern "C" fn() -> Handle,
    f: impl FnOnce(&Owned) -> Result<T, TurboError>,
) -> Result<T, TurboError> {
    slot.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            // SAFETY: no arguments; a null return is checked.
            let handle = unsafe { init() };
            if handle.is_null() {
                return Err(TurboError("libjpeg-turbo could not make a handle".into()));
            }
            *cell = Some(Owned(handle));
        }
        match cell.as_ref() {
            Some(handle) => f(handle),
            None => Err(TurboError("libjpeg-turbo handle missing".into())),
        }
    })
}

fn jpeg_len(bytes: &[u8]) -> Result<c_ulong, TurboError> {
    c_ulong::try_from(bytes.len()).map_err(|_| TurboError("JPEG too large".into()))
}

/// Reads a JPEG's header without decoding any pixels.
pub fn header(jpeg: &[u8]) -> Result<Header, TurboError> {
    let size = jpeg_len(jpeg)?;
    with_handle(&DECOMPRESSOR, tjInitDecompress, |handle| {
        let (mut width, mut height, mut subsamp, mut colorspace) = (0, 0, 0, 0);
        // SAFETY: `jpeg` is valid for `size` bytes; the outputs are plain ints.
        let rc = unsafe {
            tjDecompressHeader3(
                handle.0,
                jpeg.as_ptr(),
                size,
                &mut width,
                &mut height,
                &mut subsamp,
                &mut colorspace,
            )
        };
        if rc != 0 {
            return Err(handle.error());
        }
        Ok(Header {
            width: u32::try_from(width).map_err(|_| TurboError("negative width".into()))?,
            height: u32::try_from(height).map_err(|_| TurboError("negative height".into()))?,
            cmyk: colorspace == TJCS_CMYK || colorspace == TJCS_YCCK,
            subsamp,
        })
    })
}

/// The size a JPEG decodes to at `1 / denominator` scale (libjpeg-turbo's `TJSCALED`).
pub fn scaled_size(width: u32, height: u32, denominator: u32) -> (u32, u32) {
    (width.div_ceil(denominator), height.div_ceil(denominator))
}

/// Where a decode at `1 / denominator` scale starts: the header and the scaled size (also as
/// the library's ints), after refusing scales other than 1, 1/2, 1/4, 1/8 and CMYK files, of
/// which libjpeg-turbo makes no `output`.
fn scaled_decode(
    jpeg: &[u8],
    denominator: u32,
    output: &str,
) -> Result<(Header, Size, (c_int, c_int)), TurboError> {
    if ![1, 2, 4, 8].contains(&denominator) {
        return Err(TurboError(format!(
            "scale 1/{denominator} is not one of 1, 1/2, 1/4, 1/8"
        )));
    }
    let head = header(jpeg)?;
    if head.cmyk {
        return Err(TurboError(format!("CMYK JPEG: no {output}")));
    }
    let (w, h) = scaled_size(head.width, head.height, denominator);
    let (wi, hi) = (
        c_int::try_from(w).map_err(|_| TurboError("width too large".into()))?,
        c_int::try_from(h).map_err(|_| TurboError("height too large".into()))?,
    );
    Ok((head, (w, h), (wi, hi)))
}

/// Decodes a JPEG to packed RGB at `1 / denominator` scale (1, 2, 4 or 8), the scaling done
/// in the inverse DCT. Returns the pixels with their width and height.
///
/// A warning (a truncated file, a corrupt restart marker) keeps the decoded pixels, gray where
/// data was missing, as OpenCV's `imdecode` does; a fatal error is an error.
pub fn decode_rgb(jpeg: &[u8], denominator: u32) -> Result<(Vec<u8>, u32, u32), TurboError> {
    let (_, (w, h), (wi, hi)) = scaled_decode(jpeg, denominator, "RGB decoding")?;
    let len = (w as usize)
        .checked_mul(h as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| TurboError("image too large".into()))?;
    let size = jpeg_len(jpeg)?;
    let mut pixels = vec![0u8; len];
    with_handle(&DECOMPRESSOR, tjInitDecompress, |handle| {
        // SAFETY: `pixels` holds exactly w x h x 3 bytes, the size TurboJPEG writes for the
        // scaled size asked for (pitch 0 = w x 3).
        let rc = unsafe {
            tjDecompress2(
                handle.0,
                jpeg.as_ptr(),
                size,
                pixels.as_mut_ptr(),
                wi,
                0,
                hi,
                TJPF_RGB,
                TJFLAG_LIMITSCANS,
            )
        };
        if rc != 0 && !handle.only_warned() {
            return Err(handle.error());
        }
        Ok(())
    })?;
    Ok((pixels, w, h))
}

/// Encodes packed RGB as a baseline JPEG with 4:2:0 chroma subsampling (OpenCV's default,
/// and so img2dataset's) at `quality` (1 to 100).
pub fn encode_rgb(
    pixels: &[u8],
    width: u32,
    height: u32,
    quality: u8,
) -> Result<Vec<u8>, TurboError> {
    compress_rgb(pixels, width, height, quality, TJSAMP_420)
}

/// [`encode_rgb`] with any `TJSAMP_*` subsampling (the tests make files of every kind).
fn compress_rgb(
    pixels: &[u8],
    width: u32,
    height: u32,
    quality: u8,
    subsamp: c_int,
) -> Result<Vec<u8>, TurboError> {
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3));
    if expected != Some(pixels.len()) {
        return Err(TurboError(format!(
            "{} bytes are not {width} x {height} RGB pixels",
            pixels.len()
        )));
    }
    compress_with(width, height, subsamp, |handle, out, out_size| {
        // SAFETY: `pixels` holds width x height x 3 bytes (checked above); the output is
        // `compress_with`'s worst-case buffer.
        unsafe {
            tjCompress2(
                handle,
                pixels.as_ptr(),
                width as c_int,
                0,
                height as c_int,
                TJPF_RGB,
                out,
                out_size,
                subsamp,
                c_int::from(quality.clamp(1, 100)),
                TJFLAG_NOREALLOC,
            )
        }
    })
}

/// One compression of a `width` x `height` image into a buffer of the worst-case size for
/// `subsamp` (`tjBufSize`): `compress` gets the handle and the output pointer and size to pass
/// on with `TJFLAG_NOREALLOC`, and returns the library's code.
fn compress_with(
    width: u32,
    height: u32,
    subsamp: c_int,
    compress: impl FnOnce(Handle, &mut *mut c_uchar, &mut c_ulong) -> c_int,
) -> Result<Vec<u8>, TurboError> {
    if width == 0 || height == 0 || width > 65_535 || height > 65_535 {
        return Err(TurboError(format!(
            "a JPEG cannot be {width} x {height} (sides 1 to 65,535)"
        )));
    }
    // SAFETY: plain arithmetic on valid dimensions.
    let capacity = unsafe { tjBufSize(width as c_int, height as c_int, subsamp) };
    let capacity = usize::try_from(capacity).map_err(|_| TurboError("buffer too large".into()))?;
    let mut jpeg: Vec<u8> = Vec::with_capacity(capacity);
    with_handle(&COMPRESSOR, tjInitCompress, |handle| {
        let mut out = jpeg.as_mut_ptr();
        let mut out_size = c_ulong::try_from(capacity).map_err(|_| TurboError("buffer".into()))?;
        if compress(handle.0, &mut out, &mut out_size) != 0 {
            return Err(handle.error());
        }
        let written = usize::try_from(out_size).unwrap_or(usize::MAX);
        if written > capacity || out != jpeg.as_mut_ptr() {
            return Err(TurboError("libjpeg-turbo wrote past its buffer".into()));
        }
        // SAFETY: TurboJPEG initialised the first `written` bytes, within the capacity.
        unsafe { jpeg.set_len(written) };
        Ok(())
    })?;
    Ok(jpeg)
}

/// One plane of a YCbCr image: `width` x `height` samples, row after row.
///
/// Its buffer goes back to a small per-thread pool when the plane is dropped, and
/// [`Plane::reused`] takes from there: the blocking pool's threads resize image after image,
/// and a fresh zeroed buffer per plane cost more than the colour conversion it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plane {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}
/// Buffers kept per thread: a decode's three planes and an encode's three.
const SPARE_BUFFERS: usize = 6;
/// A buffer larger than this (a huge photo's luma) is freed rather than kept.
const SPARE_BYTES: usize = 16 << 20;

impl Plane {
    /// A plane of `width` x `height` samples, all `value`.
    pub fn filled(width: u32, height: u32, value: u8) -> Plane {
        let mut plane = Plane::reused(width, height);
        plane.data.fill(value);
        plane
    }

    /// A plane of `width` x `height` samples in a reused buffer, holding whatever the last
    /// image left there: for writers that set every sample.
    pub fn reused(width: u32, height: u32) -> Plane {
        let len = width as usize * height as usize;
        let mut data = SPARE
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        if data.len() < len {
            data.resize(len, 0);
        } else {
            data.truncate(len);
        }
        Plane {
            width,
            height,
            data,
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.capacity() == 0 || data.capacity() > SPARE_BYTES {
            return;
        }
        // At thread exit the pool may be gone already; the buffer is then simply freed.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(data);
            }
        });
    }
}

/// A JPEG's pixels as the file stores them: luma at full resolution and the two chroma planes
/// at the file's subsampling, full-range YCbCr.
///
/// Plane sizes are libjpeg-turbo's (`tjPlaneWidth`, `tjPlaneHeight`): the image's
/// `width` x `height` rounded up to whole chroma samples, so a plane can be a sample wider or
/// taller than the image. A grayscale JPEG has no chroma planes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planes {
    pub width: u32,
    pub height: u32,
    pub luma: Plane,
    pub chroma: Option<[Plane; 2]>,
}

fn plane_size(
    component: c_int,
    width: c_int,
    height: c_int,
    subsamp: c_int,
) -> Result<(u32, u32), TurboError> {
    // SAFETY: plain arithmetic; out-of-range arguments return -1, refused below.
    let (pw, ph) = unsafe {
        (
            tjPlaneWidth(component, width, subsamp),
            tjPlaneHeight(component, height, subsamp),
        )
    };
    match (u32::try_from(pw), u32::try_from(ph)) {
        (Ok(pw), Ok(ph)) if pw > 0 && ph > 0 => Ok((pw, ph)),
        _ => Err(TurboError(format!(
            "no plane {component} for a {width} x {height} image with subsampling {subsamp}"
        ))),
    }
}

/// Decodes a JPEG to its YCbCr planes at `1 / denominator` scale (1, 2, 4 or 8), without the
/// chroma upsampling and colour conversion that RGB output costs.
///
/// Warnings keep the pixels, as in [`decode_rgb`].
pub fn decode_planes(jpeg: &[u8], denominator: u32) -> Result<Planes, TurboError> {
    let (head, (w, h), (wi, hi)) = scaled_decode(jpeg, denominator, "YCbCr planes")?;
    let plane = |component| -> Result<Plane, TurboError> {
        let (pw, ph) = plane_size(component, wi, hi, head.subsamp)?;
        Ok(Plane::reused(pw, ph))
    };
    let mut luma = plane(0)?;
    let mut chroma = if head.subsamp == TJSAMP_GRAY {
        None
    } else {
        Some([plane(1)?, plane(2)?])
    };
    let size = jpeg_len(jpeg)?;
    with_handle(&DECOMPRESSOR, tjInitDecompress, |handle| {
        let mut ptrs = [std::ptr::null_mut(); 3];
        ptrs[0] = luma.data.as_mut_ptr();
        if let Some([cb, cr]) = chroma.as_mut() {
            ptrs[1] = cb.data.as_mut_ptr();
            ptrs[2] = cr.data.as_mut_ptr();
        }
        // SAFETY: each plane holds tjPlaneWidth x tjPlaneHeight bytes for this scaled size and
        // subsampling, what TurboJPEG writes with the default strides (NULL = plane widths);
        // a grayscale JPEG writes the first plane only.
        let rc = unsafe {
            tjDecompressToYUVPlanes(
                handle.0,
                jpeg.as_ptr(),
                size,
                ptrs.as_mut_ptr(),
                wi,
                std::ptr::null_mut(),
                hi,
                TJFLAG_LIMITSCANS,
            )
        };
        if rc != 0 && !handle.only_warned() {
            return Err(handle.error());
        }
        Ok(())
    })?;
    Ok(Planes {
        width: w,
        height: h,
        luma,
        chroma,
    })
}

/// Width and height.
pub type Size = (u32, u32);

/// The luma and chroma plane sizes of a `width` x `height` image subsampled 4:2:0, as
/// [`encode_planes`] takes them.
pub fn planes_420(width: u32, height: u32) -> Result<(Size, Size), TurboError> {
    let (wi, hi) = (
        c_int::try_from(width).map_err(|_| TurboError("width too large".into()))?,
        c_int::try_from(height).map_err(|_| TurboError("height too large".into()))?,
    );
    Ok((
        plane_size(0, wi, hi, TJSAMP_420)?,
        plane_size(1, wi, hi, TJSAMP_420)?,
    ))
}

/// Encodes 4:2:0 YCbCr planes (sized as [`planes_420`] says) as a baseline JPEG at `quality`,
/// with no colour conversion or chroma downsampling in the encoder.
pub fn encode_planes(
    width: u32,
    height: u32,
    luma: &Plane,
    chroma: [&Plane; 2],
    quality: u8,
) -> Result<Vec<u8>, TurboError> {
    let ((lw, lh), (cw, ch)) = planes_420(width, height)?;
    let fits = |p: &Plane, w: u32, h: u32| {
        p.width == w && p.height == h && p.data.len() == w as usize * h as usize
    };
    if !fits(luma, lw, lh) || !chroma.iter().all(|p| fits(p, cw, ch)) {
        return Err(TurboError(format!(
            "planes of a {width} x {height} 4:2:0 image must be {lw} x {lh} and {cw} x {ch}"
        )));
    }
    let strides = [lw as c_int, cw as c_int, cw as c_int];
    let mut planes = [
        luma.data.as_ptr(),
        chroma[0].data.as_ptr(),
        chroma[1].data.as_ptr(),
    ];
    compress_with(width, height, TJSAMP_420, |handle, out, out_size| {
        // SAFETY: each plane holds its stride x plane height bytes (checked above), which is
        // what TurboJPEG reads; the output is `compress_with`'s worst-case buffer.
        unsafe {
            tjCompressFromYUVPlanes(
                handle,
                planes.as_mut_ptr(),
                width as c_int,
                strides.as_ptr(),
                height as c_int,
                TJSAMP_420,
                out,
                out_size,
                c_int::from(quality.clamp(1, 100)),
                TJFLAG_NOREALLOC,
            )
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn photo_like(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x ^ y) & 0xff) as u8,
            ])
        })
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x.abs_diff(*y)))
            .sum::<f64>()
            / a.len() as f64
    }

    #[test]
    fn a_round_trip_keeps_the_picture() {
        let img = photo_like(320, 200);
        let jpeg = encode_rgb(img.as_raw(), 320, 200, 95).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
        // The `image` crate reads what we wrote: a well-formed baseline JPEG.
        let other = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        assert_eq!(other.dimensions(), (320, 200));
        let (ours, w, h) = decode_rgb(&jpeg, 1).unwrap();
        assert_eq!((w, h), (320, 200));
        assert!(mean_abs_diff(&ours, img.as_raw()) < 4.0);
        assert!(mean_abs_diff(&ours, other.as_raw()) < 2.0);
    }

    #[test]
    fn scaled_decoding_rounds_up_and_averages() {
        let img = photo_like(333, 250);
        let jpeg = encode_rgb(img.as_raw(), 333, 250, 95).unwrap();
        let (half, w, h) = decode_rgb(&jpeg, 2).unwrap();
        assert_eq!((w, h), (167, 125));
        let (eighth, w8, h8) = decode_rgb(&jpeg, 8).unwrap();
        assert_eq!((w8, h8), (42, 32));
        assert_eq!(half.len(), 167 * 125 * 3);
        assert_eq!(eighth.len(), 42 * 32 * 3);
        assert!(decode_rgb(&jpeg, 3).is_err());
    }

    #[test]
    fn garbage_truncation_and_cmyk_are_told_apart() {
        let err = decode_rgb(b"not a jpeg at all", 1).unwrap_err();
        assert!(!err.0.is_empty());
        // A file cut in half decodes with a warning: the top half, as OpenCV gives it.
        let img = photo_like(256, 256);
        let jpeg = encode_rgb(img.as_raw(), 256, 256, 90).unwrap();
        let (cut, w, h) = decode_rgb(&jpeg[..jpeg.len() / 2], 1).unwrap();
        assert_eq!((w, h), (256, 256));
        assert!(mean_abs_diff(&cut[..256 * 3 * 16], &img.as_raw()[..256 * 3 * 16]) < 4.0);
        let cmyk = cmyk_jpeg(16, 16);
        assert!(header(&cmyk).unwrap().cmyk);
        assert!(decode_rgb(&cmyk, 1).is_err());
    }

    /// A YCCK JPEG, as print workflows make them, written by libjpeg-turbo itself.
    pub(crate) fn cmyk_jpeg(w: u32, h: u32) -> Vec<u8> {
        const TJPF_CMYK: c_int = 11;
        let pixels = vec![60u8; (w * h * 4) as usize];
        let capacity = unsafe { tjBufSize(w as c_int, h as c_int, 0) } as usize;
        let mut jpeg = Vec::with_capacity(capacity);
        with_handle(&COMPRESSOR, tjInitCompress, |handle| {
            let mut out = jpeg.as_mut_ptr();
            let mut size = capacity as c_ulong;
            let rc = unsafe {
                tjCompress2(
                    handle.0,
                    pixels.as_ptr(),
                    w as c_int,
                    0,
                    h as c_int,
                    TJPF_CMYK,
                    &mut out,
                    &mut size,
                    0,
                    90,
                    TJFLAG_NOREALLOC,
                )
            };
            assert_eq!(rc, 0, "{}", handle.error());
            unsafe { jpeg.set_len(size as usize) };
            Ok(())
        })
        .unwrap();
        jpeg
    }

    #[test]
    fn bad_buffers_are_refused_before_the_library_sees_them() {
        assert!(encode_rgb(&[0u8; 10], 2, 2, 90).is_err());
        assert!(encode_rgb(&[], 0, 0, 90).is_err());
    }

    /// A JPEG of `img` with the `TJSAMP_*` subsampling `subsamp` (4 = 4:4:0, 5 = 4:1:1).
    pub(crate) fn jpeg_subsampled(img: &image::RgbImage, subsamp: c_int) -> Vec<u8> {
        let (w, h) = img.dimensions();
        compress_rgb(img.as_raw(), w, h, 95, subsamp).unwrap()
    }

    pub(crate) const EVERY_SUBSAMPLING: [(c_int, &str); 6] = [
        (0, "4:4:4"),
        (1, "4:2:2"),
        (TJSAMP_420, "4:2:0"),
        (TJSAMP_GRAY, "gray"),
        (4, "4:4:0"),
        (5, "4:1:1"),
    ];

    #[test]
    fn planes_have_the_file_s_subsampling_and_its_pixels() {
        // Odd sizes: the planes are padded to whole chroma samples.
        let img = photo_like(333, 251);
        for (subsamp, name) in EVERY_SUBSAMPLING {
            let jpeg = jpeg_subsampled(&img, subsamp);
            let planes = decode_planes(&jpeg, 1).unwrap();
            assert_eq!((planes.width, planes.height), (333, 251), "{name}");
            let (lw, lh) = (planes.luma.width, planes.luma.height);
            assert!(
                lw >= 333 && lh >= 251 && lw <= 336 && lh <= 252,
                "{name}: {lw} x {lh}"
            );
            assert_eq!(planes.luma.data.len(), (lw * lh) as usize);
            let expected = match subsamp {
                0 => Some((lw, lh)),
                1 => Some((lw / 2, lh)),
                2 => Some((lw / 2, lh / 2)),
                4 => Some((lw, lh / 2)),
                5 => Some((lw / 4, lh)),
                _ => None,
            };
            let got = planes.chroma.as_ref().map(|[cb, cr]| {
                assert_eq!((cb.width, cb.height), (cr.width, cr.height));
                (cb.width, cb.height)
            });
            assert_eq!(got, expected, "{name}");
            // Luma is what the RGB decode's pixels give through JPEG's YCbCr matrix.
            let (rgb, _, _) = decode_rgb(&jpeg, 1).unwrap();
            let luma_of_rgb: Vec<u8> = rgb
                .chunks_exact(3)
                .map(|p| {
                    (0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
                        .round() as u8
                })
                .collect();
            let luma: Vec<u8> = planes
                .luma
                .data
                .chunks_exact(lw as usize)
                .take(251)
                .flat_map(|row| row[..333].to_vec())
                .collect();
            let diff = mean_abs_diff(&luma, &luma_of_rgb);
            assert!(diff < 1.5, "{name}: luma differs by {diff} on average");
        }
        // Scaled: the planes of the 1/2 scale.
        let jpeg = jpeg_subsampled(&img, TJSAMP_420);
        let half = decode_planes(&jpeg, 2).unwrap();
        assert_eq!((half.width, half.height), (167, 126));
        assert_eq!((half.luma.width, half.luma.height), (168, 126));
        assert!(decode_planes(&jpeg, 3).is_err());
        assert!(decode_planes(b"not a jpeg", 1).is_err());
        assert!(decode_planes(&cmyk_jpeg(16, 16), 1).is_err());
    }

    #[test]
    fn planes_encode_to_the_picture_they_hold() {
        let img = photo_like(257, 131);
        let jpeg = encode_rgb(img.as_raw(), 257, 131, 95).unwrap();
        let planes = decode_planes(&jpeg, 1).unwrap();
        let ((lw, lh), (cw, ch)) = planes_420(257, 131).unwrap();
        assert_eq!((lw, lh, cw, ch), (258, 132, 129, 66));
        let [cb, cr] = planes.chroma.as_ref().unwrap();
        let again = encode_planes(257, 131, &planes.luma, [cb, cr], 95).unwrap();
        let (a, _, _) = decode_rgb(&jpeg, 1).unwrap();
        let (b, w, h) = decode_rgb(&again, 1).unwrap();
        assert_eq!((w, h), (257, 131));
        let diff = mean_abs_diff(&a, &b);
        assert!(diff < 1.0, "mean absolute difference {diff}");
        // Planes of the wrong size are refused before the library reads them.
        let small = Plane::filled(10, 10, 0);
        assert!(encode_planes(257, 131, &small, [cb, cr], 95).is_err());
        assert!(encode_planes(257, 131, &planes.luma, [cb, &small], 95).is_err());
    }

    #[test]
    fn reused_planes_come_back_at_the_size_asked() {
        drop(Plane::filled(100, 100, 7));
        let p = Plane::reused(10, 3);
        assert_eq!(p.data.len(), 30);
        let q = Plane::filled(300, 200, 9);
        assert_eq!(q.data.len(), 60_000);
        assert!(q.data.iter().all(|&v| v == 9));
    }
}
