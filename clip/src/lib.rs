//! CLIP through ONNX Runtime, from a folder written by `scripts/export_filter_models.py`:
//!
//! | file | input | output |
//! | --- | --- | --- |
//! | `clip_image.onnx` | `pixel_values` f32 [B, 3, S, S] | `image_embeds` f32 [B, D] |
//! | `clip_text.onnx` | `input_ids` i64 [B, 77] | `text_embeds` f32 [B, D] |
//! | `clip_tokenizer.json` | CLIP's BPE ([`tokenizer`]) | |
//! | `filter_models.json` | S, the mean and std, D, the context length ([`ClipSpec`]) | |
//!
//! Two stages use it without depending on each other: the filter scores image-text similarity
//! of downloaded images; the evaluation computes CLIP scores and CLIP features of generated
//! images. The embeddings are the towers' raw outputs (not normalised).

pub mod preprocess;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use llamagen_native::onnx::OnnxDevice;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2, Ix2};
use ort::session::Session;
use ort::value::TensorRef;

use crate::preprocess::normalize;
use crate::tokenizer::ClipTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
}

/// The CLIP part of `filter_models.json`: how the towers want their inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipSpec {
    pub clip_image_size: usize,
    pub clip_mean: [f32; 3],
    pub clip_std: [f32; 3],
    pub embed_dim: usize,
    pub context_length: usize,
    /// What was exported (an architecture name, or "tiny random").
    pub source: String,
}

/// The files of a CLIP export, in the order they are listed and hashed.
pub const FILES: [&str; 4] = [
    "filter_models.json",
    "clip_image.onnx",
    "clip_text.onnx",
    "clip_tokenizer.json",
];

fn model_error(path: &Path, message: impl std::fmt::Display) -> ClipError {
    ClipError::Model {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// CLIP's two towers and its tokenizer.
pub struct Clip {
    pub spec: ClipSpec,
    image: Session,
    text: Session,
    tokenizer: ClipTokenizer,
    dir: PathBuf,
}

impl Clip {
    /// Opens the folder's towers on the CPU; `threads` per run (0: `onnx::default_intra_threads`).
    pub fn open(dir: &Path, threads: usize) -> Result<Self, ClipError> {
        Self::open_on(dir, threads, OnnxDevice::Cpu)
    }

    /// [`Clip::open`] on `device`: a GPU through ONNX Runtime's CUDA execution provider where
    /// the library has it, else the CPU (the log says why).
    pub fn open_on(dir: &Path, threads: usize, device: OnnxDevice) -> Result<Self, ClipError> {
        let spec_path = dir.join(FILES[0]);
        let bytes = std::fs::read(&spec_path).map_err(|source| ClipError::Io {
            path: spec_path.clone(),
            error: source,
        })?;
        let spec: ClipSpec =
            serde_json::from_slice(&bytes).map_err(|e| model_error(&spec_path, e))?;
        Ok(Clip {
            image: open_session(
                dir,
                FILES[1],
                "pixel_values",
                "image_embeds",
                threads,
                device,
            )?,
            text: open_session(dir, FILES[2], "input_ids", "text_embeds", threads, device)?,
            tokenizer: ClipTokenizer::open(&dir.join(FILES[3]), spec.context_length)?,
            spec,
            dir: dir.to_owned(),
        })
    }

    /// The files the embeddings depend on (for their checksums).
    pub fn files(&self) -> Vec<PathBuf> {
        FILES.iter().map(|f| self.dir.join(f)).collect()
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Image embeddings of CLIP views (N x [S, S, 3] u8, see [`preprocess::clip_view`]);
    /// returns [N, D].
    pub fn image_embeds(&mut self, views: &[Array3<u8>]) -> Result<Array2<f32>, ClipError> {
        let pixels = normalize(views, self.spec.clip_mean, self.spec.clip_std);
        let path = self.dir.join(FILES[1]);
        let input = TensorRef::from_array_view(pixels.view()).map_err(|e| model_error(&path, e))?;
        let out = self
            .image
            .run(ort::inputs!["pixel_values" => input])
            .map_err(|e| model_error(&path, e))?;
        rows(&out, "image_embeds", views.len(), &path)
    }

    /// Text embeddings of token ids [N, context] i64; returns [N, D].
    pub fn text_embeds_of_ids(
        &mut self,
        ids: ArrayView2<'_, i64>,
    ) -> Result<Array2<f32>, ClipError> {
        let path = self.dir.join(FILES[2]);
        let ids = ids.as_standard_layout();
        let input = TensorRef::from_array_view(ids.view()).map_err(|e| model_error(&path, e))?;
        let out = self
            .text
            .run(ort::inputs!["input_ids" => input])
            .map_err(|e| model_error(&path, e))?;
        rows(&out, "text_embeds", ids.nrows(), &path)
    }

    /// Text embeddings of `texts`, tokenized as `open_clip.tokenize`; returns [N, D].
    pub fn text_embeds(&mut self, texts: &[&str]) -> Result<Array2<f32>, ClipError> {
        let ids = self.tokenizer.encode(texts)?;
        self.text_embeds_of_ids(ids.view())
    }
}

/// An ONNX model of an export folder on `device`, checked to have the named input and output
/// (the filter's aesthetic and watermark heads are opened this way too).
pub fn open_session(
    dir: &Path,
    name: &str,
    input: &str,
    output: &str,
    threads: usize,
    device: OnnxDevice,
) -> Result<Session, ClipError> {
    let path = dir.join(name);
    let (session, _) = llamagen_native::onnx::session_on(&path, threads, device)
        .map_err(|e| model_error(&path, e))?;
    let has_in = session.inputs().iter().any(|i| i.name() == input);
    let has_out = session.outputs().iter().any(|o| o.name() == output);
    if !(has_in && has_out) {
        return Err(model_error(
            &path,
            format!(
                "not an export of scripts/export_filter_models.py: wants input {input:?} and output {output:?}"
            ),
        ));
    }
    Ok(session)
}

fn rows(
    out: &ort::session::SessionOutputs<'_>,
    name: &str,
    n: usize,
    path: &Path,
) -> Result<Array2<f32>, ClipError> {
    let values = out[name]
        .try_extract_array::<f32>()
        .map_err(|e| model_error(path, e))?
        .into_dimensionality::<Ix2>()
        .map_err(|e| model_error(path, format!("{name}: {e}")))?
        .to_owned();
    if values.nrows() != n {
        return Err(model_error(
            path,
            format!("{name}: {} rows for {n} inputs", values.nrows()),
        ));
    }
    Ok(values)
}

/// Cosine similarity, as CLIP scores are computed (both vectors L2-normalised, then the dot).
pub fn cosine(a: ArrayView1<'_, f32>, b: ArrayView1<'_, f32>) -> f32 {
    let (na, nb) = (a.dot(&a).sqrt(), b.dot(&b).sqrt());
    a.dot(&b) / (na * nb)
}
