//! Image preparation that several stages must do identically to the reference code: Pillow's
//! resampler reimplemented to the pixel, and ADM's / LlamaGen's `center_crop_arr` on top of it
//! (filter: CLIP's and the watermark detector's transforms; encode: LlamaGen's crops; evaluate:
//! reference sets made from raw images).

pub mod pillow;

/// A request the resampler cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("{0}")]
    Invalid(String),
}
