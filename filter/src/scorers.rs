//! The four scorers through ONNX Runtime, as `scripts/export_filter_models.py` exports them
//! into one folder:
//!
//! | file | input | output |
//! | --- | --- | --- |
//! | `clip_image.onnx` | `pixel_values` f32 [B, 3, S, S] | `image_embeds` f32 [B, D] |
//! | `clip_text.onnx` | `input_ids` i64 [B, 77] | `text_embeds` f32 [B, D] |
//! | `aesthetic.onnx` | `image_embeds` f32 [B, D] (raw; it L2-normalises) | `score` f32 [B] |
//! | `watermark.onnx` | `pixel_values` f32 [B, 3, 256, 256] | `watermark` f32 [B] (probability) |
//!
//! plus `clip_tokenizer.json` and `filter_models.json` (sizes, means and stds, dimensions).

use std::path::{Path, PathBuf};

use llamagen_clip::OnnxDevice;
use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewD, Axis, Ix1};
use ort::session::Session;
use ort::value::TensorRef;

use llamagen_clip::preprocess::{clip_view, normalize};
use llamagen_clip::tokenizer::ClipTokenizer;
use llamagen_clip::{Clip, ClipSpec, cosine, open_session};

use crate::FilterError;
use crate::preprocess::watermark_view;
use crate::rules::Scores;

/// `filter_models.json`: how the exported models want their inputs (CLIP's part is read by
/// `llamagen_clip`, the watermark detector's here).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    #[serde(flatten)]
    pub clip: ClipSpec,
    pub watermark_size: usize,
    pub watermark_mean: [f32; 3],
    pub watermark_std: [f32; 3],
}

pub struct Scorers {
    pub spec: ModelSpec,
    clip: Clip,
    aesthetic: Session,
    watermark: Session,
    dir: PathBuf,
}

/// The files of a scorer folder, in the order they are listed and hashed.
pub const FILES: [&str; 6] = [
    "filter_models.json",
    "clip_image.onnx",
    "clip_text.onnx",
    "clip_tokenizer.json",
    "aesthetic.onnx",
    "watermark.onnx",
];

fn model_error(path: &Path, message: impl std::fmt::Display) -> FilterError {
    FilterError::Model {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

impl Scorers {
    /// Opens the folder's models on the CPU; `threads` per run (0: `onnx::default_intra_threads`).
    pub fn open(dir: &Path, threads: usize) -> Result<Self, FilterError> {
        Self::open_on(dir, threads, OnnxDevice::Cpu)
    }

    /// [`Scorers::open`] on `device`: a GPU through ONNX Runtime's CUDA execution provider
    /// where the library has it, else the CPU (the log says why).
    pub fn open_on(dir: &Path, threads: usize, device: OnnxDevice) -> Result<Self, FilterError> {
        let spec_path = dir.join(FILES[0]);
        let spec: ModelSpec = serde_json::from_slice(
            &std::fs::read(&spec_path).map_err(|e| FilterError::io(&spec_path, e))?,
        )
        .map_err(|e| model_error(&spec_path, e))?;
        Ok(Scorers {
            clip: Clip::open_on(dir, threads, device)?,
            aesthetic: open_session(dir, FILES[4], "image_embeds", "score", threads, device)?,
            watermark: open_session(dir, FILES[5], "pixel_values", "watermark", threads, device)?,
            spec,
            dir: dir.to_owned(),
        })
    }

    /// The files the scores depend on (for their checksums).
    pub fn files(&self) -> Vec<PathBuf> {
        FILES.iter().map(|f| self.dir.join(f)).collect()
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        self.clip.tokenizer()
    }

    /// CLIP image embeddings of CLIP views ([S, S, 3] u8 each); returns [N, D].
    pub fn image_embeds(&mut self, views: &[Array3<u8>]) -> Result<Array2<f32>, FilterError> {
        Ok(self.clip.image_embeds(views)?)
    }

    /// CLIP text embeddings; returns [N, D].
    pub fn text_embeds(&mut self, texts: &[&str]) -> Result<Array2<f32>, FilterError> {
        Ok(self.clip.text_embeds(texts)?)
    }

    /// Aesthetic scores of raw CLIP image embeddings [N, D]; returns [N].
    pub fn aesthetic(&mut self, embeds: ArrayView2<'_, f32>) -> Result<Array1<f32>, FilterError> {
        let path = self.dir.join(FILES[4]);
        let embeds = embeds.as_standard_layout();
        run1(
            &mut self.aesthetic,
            &path,
            "image_embeds",
            embeds.view().into_dyn(),
            "score",
        )
    }

    /// Watermark probabilities of watermark views ([256, 256, 3] u8 each); returns [N].
    pub fn watermark(&mut self, views: &[Array3<u8>]) -> Result<Array1<f32>, FilterError> {
        let pixels = normalize(views, self.spec.watermark_mean, self.spec.watermark_std);
        let path = self.dir.join(FILES[5]);
        run1(
            &mut self.watermark,
            &path,
            "pixel_values",
            pixels.view().into_dyn(),
            "watermark",
        )
    }

    /// Every score of decoded images ([H, W, 3] u8) and their captions, as one batch.
    pub fn score(
        &mut self,
        images: &[ArrayView3<'_, u8>],
        captions: &[Option<&str>],
    ) -> Result<Vec<Scores>, FilterError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let clip: Vec<Array3<u8>> = images
            .iter()
            .map(|i| clip_view(*i, self.spec.clip.clip_image_size))
            .collect::<Result<_, _>>()?;
        let marks: Vec<Array3<u8>> = images
            .iter()
            .map(|i| watermark_view(*i, self.spec.watermark_size))
            .collect::<Result<_, _>>()?;
        let image_embeds = self.image_embeds(&clip)?;
        let aesthetic = self.aesthetic(image_embeds.view())?;
        let watermark = self.watermark(&marks)?;
        let with_text: Vec<usize> = (0..images.len())
            .filter(|&i| captions[i].is_some())
            .collect();
        let texts: Vec<&str> = with_text.iter().filter_map(|&i| captions[i]).collect();
        let mut similarity = vec![None; images.len()];
        if !texts.is_empty() {
            let text_embeds = self.text_embeds(&texts)?;
            for (row, &i) in with_text.iter().enumerate() {
                similarity[i] = Some(cosine(image_embeds.row(i), text_embeds.row(row)));
            }
        }
        Ok((0..images.len())
            .map(|i| Scores {
                watermark: watermark[i],
                aesthetic: aesthetic[i],
                clip_similarity: similarity[i],
            })
            .collect())
    }
}

fn run_raw<'a>(
    session: &'a mut Session,
    path: &Path,
    input: &str,
    x: ArrayViewD<'_, f32>,
) -> Result<ort::session::SessionOutputs<'a>, FilterError> {
    let tensor = TensorRef::from_array_view(x).map_err(|e| model_error(path, e))?;
    session
        .run(ort::inputs![input => tensor])
        .map_err(|e| model_error(path, e))
}

fn run1(
    session: &mut Session,
    path: &Path,
    input: &str,
    x: ArrayViewD<'_, f32>,
    output: &str,
) -> Result<Array1<f32>, FilterError> {
    let n = x.len_of(Axis(0));
    let out = run_raw(session, path, input, x)?;
    let values = out[output]
        .try_extract_array::<f32>()
        .map_err(|e| model_error(path, e))?;
    let values = values
        .into_dimensionality::<Ix1>()
        .map_err(|e| model_error(path, format!("{output}: {e}")))?;
    if values.len() != n {
        return Err(model_error(
            path,
            format!("{output}: {} values for {n} inputs", values.len()),
        ));
    }
    Ok(values.to_owned())
}
