//! The image path of ingest (decode under limits, resize in every img2dataset mode, JPEG out)
//! and the shared Pillow-exact center crop, on any bytes. Errors are fine; a panic, an abort
//! (an allocation a header asked for) or a hang is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamagen_ingest::resize::{ResizeMode, ResizeOptions, process};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the mode and the size, so the fuzzer explores them too.
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let mode = [
        ResizeMode::No,
        ResizeMode::KeepRatio,
        ResizeMode::CenterCrop,
        ResizeMode::Border,
    ][usize::from(pick & 3)];
    let options = ResizeOptions {
        image_size: 8 + u32::from(pick >> 2) * 4,
        mode,
        jpeg_quality: 90,
        max_pixels: 4 << 20,
        max_aspect_ratio: if pick & 0x80 != 0 { f64::INFINITY } else { 3.0 },
    };
    if let Ok(resized) = process(bytes, &options) {
        assert!(!resized.jpeg.is_empty());
        // The same pixels through the shared center crop (encode and evaluate use it).
        if let Ok(img) = image::load_from_memory(&resized.jpeg) {
            let rgb = img.into_rgb8();
            let (w, h) = rgb.dimensions();
            if let Ok(array) =
                ndarray::Array3::from_shape_vec((h as usize, w as usize, 3), rgb.into_raw())
            {
                let size = 1 + usize::from(pick & 31);
                let crop = llamagen_imaging::pillow::center_crop(array.view(), size).unwrap();
                assert_eq!(crop.dim(), (size, size, 3));
            }
        }
    }
});
