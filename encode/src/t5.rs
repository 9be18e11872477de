//! FLAN-T5's encoder through ONNX Runtime, as `scripts/export_t5.py` exports it into one
//! folder:
//!
//! | file | what |
//! | --- | --- |
//! | `t5_encoder.onnx` | `input_ids` i64 [B, L], `attention_mask` i64 [B, L] -> `last_hidden_state` f32 [B, L, D] |
//! | `tokenizer.json` | T5's SentencePiece vocabulary for the `tokenizers` crate |
//! | `t5_encoder.json` | d_model, vocabulary size, pad and eos ids, what was exported |
//! | `t5_encoder.onnx.data` | the weights, for exports past protobuf's 2 GB (XL) |
//!
//! Text goes the way of LlamaGen's `T5Embedder.get_text_embeddings`: its caption cleaning
//! (twice), the tokenizer with `</s>` appended, cut to `max_length` (120) keeping `</s>` last,
//! and the encoder with an attention mask. LlamaGen pads every caption to 120 tokens; here a
//! batch is padded only to its longest caption, and captions are batched by length. The
//! encoder's masked attention makes the valid tokens' outputs the same either way (checked
//! against LlamaGen's output in `tests/t5_parity.rs`), and the padding is work thrown away.

use std::path::{Path, PathBuf};

use llamagen_native::onnx::{OnnxDevice, Provider};
use ndarray::{Array2, Axis, Ix3};
use ort::session::Session;
use ort::value::TensorRef;

use crate::EncodeError;
use crate::caption_clean::clean_caption_twice;

/// `t5_encoder.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct T5Spec {
    pub d_model: usize,
    pub vocab_size: usize,
    pub pad_id: u32,
    pub eos_id: u32,
    /// What was exported (a weights folder, or "random tiny (seed 0)").
    pub source: String,
}

/// Everything that determines a folder's embeddings, kept as `t5.json` in it: a folder
/// refuses to be continued with another encoder, length or cleaning.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct T5Settings {
    /// sha256 of each file of the export folder, by name.
    pub files: std::collections::BTreeMap<String, String>,
    pub source: String,
    /// The embeddings' width (the text-to-image GPT's caption width).
    pub d_model: usize,
    pub max_length: usize,
    pub cleaning: String,
}

impl T5Settings {
    pub const FILE: &'static str = "t5.json";

    /// Writes the settings into a new folder, or checks them against the folder's own.
    pub fn check_or_write(&self, dir: &Path) -> Result<(), EncodeError> {
        llamagen_shards::settings::pin(dir, Self::FILE, self)
            .map_err(|e| EncodeError::Invalid(e.to_string()))
    }

    /// The settings of an embeddings folder.
    pub fn read(dir: &Path) -> Result<Self, EncodeError> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(|e| EncodeError::io(&path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EncodeError::Input(format!("{}: {e}", path.display())))
    }
}

/// The files of an export folder, in the order they are listed and hashed.
pub const FILES: [&str; 3] = ["t5_encoder.json", "t5_encoder.onnx", "tokenizer.json"];

/// The weights of an export too large for one protobuf (XL), beside `t5_encoder.onnx`.
pub const EXTERNAL_DATA: &str = "t5_encoder.onnx.data";

/// The files of export folder `dir` that the embeddings depend on: [`FILES`], and
/// [`EXTERNAL_DATA`] when the export has it.
pub fn export_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    let data = dir.join(EXTERNAL_DATA);
    if data.is_file() {
        files.push(data);
    }
    files
}

/// LlamaGen's `model_max_length`: the caption prefix of its text-to-image GPTs.
pub const MAX_LENGTH: usize = 120;

pub struct T5Encoder {
    pub spec: T5Spec,
    session: Session,
    provider: Provider,
    tokenizer: tokenizers::Tokenizer,
    max_length: usize,
    dir: PathBuf,
}

fn model_error(path: &Path, message: impl std::fmt::Display) -> EncodeError {
    EncodeError::Model(format!("{}: {message}", path.display()))
}

impl T5Encoder {
    /// Opens an export folder on the CPU; `threads` per run (0: `onnx::default_intra_threads`).
    pub fn open(dir: &Path, max_length: usize, threads: usize) -> Result<Self, EncodeError> {
        Self::open_on(dir, max_length, threads, OnnxDevice::Cpu)
    }

    /// [`T5Encoder::open`] on `device`: a GPU through ONNX Runtime's CUDA execution provider
    /// where the library has it, else the CPU (the log says why; [`T5Encoder::provider`]).
    pub fn open_on(
        dir: &Path,
        max_length: usize,
        threads: usize,
        device: OnnxDevice,
    ) -> Result<Self, EncodeError> {
        if max_length < 1 {
            return Err(EncodeError::Invalid("max_length must be positive".into()));
        }
        let spec_path = dir.join(FILES[0]);
        let spec: T5Spec = serde_json::from_slice(
            &std::fs::read(&spec_path).map_err(|e| EncodeError::io(&spec_path, e))?,
        )
        .map_err(|e| model_error(&spec_path, e))?;
        let model_path = dir.join(FILES[1]);
        let (session, provider) = llamagen_native::onnx::session_on(&model_path, threads, device)
            .map_err(|e| model_error(&model_path, e))?;
        let names_in: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let has_out = session
            .outputs()
            .iter()
            .any(|o| o.name() == "last_hidden_state");
        if !(names_in.contains(&"input_ids") && names_in.contains(&"attention_mask") && has_out) {
            return Err(model_error(
                &model_path,
                "not an export of scripts/export_t5.py: wants inputs input_ids and attention_mask and output last_hidden_state",
            ));
        }
        let tokenizer_path = dir.join(FILES[2]);
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| model_error(&tokenizer_path, e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| model_error(&tokenizer_path, e))?;
        if tokenizer.id_to_token(spec.eos_id).as_deref() != Some("</s>") {
            return Err(model_error(
                &tokenizer_path,
                format!("token {} is not </s>: not T5's tokenizer", spec.eos_id),
            ));
        }
        Ok(T5Encoder {
            spec,
            session,
            provider,
            tokenizer,
            max_length,
            dir: dir.to_owned(),
        })
    }

    /// The execution provider the encoder runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The files the embeddings depend on (for their checksums).
    pub fn files(&self) -> Vec<PathBuf> {
        export_files(&self.dir)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Token ids of a caption as LlamaGen feeds them: cleaned, `</s>` last, at most
    /// `max_length` (an empty caption is `[</s>]`).
    pub fn tokenize(&self, caption: &str) -> Result<Vec<i64>, EncodeError> {
        let cleaned = clean_caption_twice(caption);
        let encoding = self
            .tokenizer
            .encode(cleaned.as_str(), true)
            .map_err(|e| EncodeError::Input(format!("tokenizing {caption:?}: {e}")))?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        if ids.len() > self.max_length {
            ids.truncate(self.max_length);
            ids[self.max_length - 1] = i64::from(self.spec.eos_id);
        }
        Ok(ids)
    }

    /// The valid tokens' embeddings of each caption: [L_i, D] f32, L_i <= max_length.
    /// Captions are run `batch_size` at a time, grouped by length.
    pub fn embed(
        &mut self,
        captions: &[&str],
        batch_size: usize,
    ) -> Result<Vec<Array2<f32>>, EncodeError> {
        let ids: Vec<Vec<i64>> = captions
            .iter()
            .map(|c| self.tokenize(c))
            .collect::<Result<_, _>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out: Vec<Option<Array2<f32>>> = vec![None; ids.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let rows: Vec<&[i64]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, embedding) in chunk.iter().zip(self.run(&rows)?) {
                out[i] = Some(embedding);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// rows: token ids -> their embeddings, the batch padded to its longest row.
    fn run(&mut self, rows: &[&[i64]]) -> Result<Vec<Array2<f32>>, EncodeError> {
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut input_ids = Array2::<i64>::from_elem((rows.len(), longest), self.pad());
        let mut mask = Array2::<i64>::zeros((rows.len(), longest));
        for (b, row) in rows.iter().enumerate() {
            for (t, &id) in row.iter().enumerate() {
                input_ids[[b, t]] = id;
                mask[[b, t]] = 1;
            }
        }
        let path = self.dir.join(FILES[1]);
        let ids_in =
            TensorRef::from_array_view(input_ids.view()).map_err(|e| model_error(&path, e))?;
        let mask_in = TensorRef::from_array_view(mask.view()).map_err(|e| model_error(&path, e))?;
        let outputs = self
            .session
            .run(ort::inputs!["input_ids" => ids_in, "attention_mask" => mask_in])
            .map_err(|e| model_error(&path, e))?;
        let hidden = outputs["last_hidden_state"]
            .try_extract_array::<f32>()
            .map_err(|e| model_error(&path, e))?
            .into_dimensionality::<Ix3>()
            .map_err(|e| model_error(&path, format!("last_hidden_state: {e}")))?;
        let (b, l, d) = hidden.dim();
        if b != rows.len() || l != longest || d != self.spec.d_model {
            return Err(model_error(
                &path,
                format!(
                    "last_hidden_state is [{b}, {l}, {d}], expected [{}, {longest}, {}]",
                    rows.len(),
                    self.spec.d_model
                ),
            ));
        }
        Ok(rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                hidden
                    .index_axis(Axis(0), i)
                    .slice(ndarray::s![..row.len(), ..])
                    .to_owned()
            })
            .collect())
    }

    fn pad(&self) -> i64 {
        i64::from(self.spec.pad_id)
    }
}
