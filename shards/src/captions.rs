//! The captions table `NNNNN_captions.parquet` that captioning writes next to a shard and
//! encoding reads: one row per sample of the shard, in shard order: key, status, the long and
//! the short caption, the model and prompt that made them, the finish reason, token counts,
//! attempts and latency. Written atomically once every sample has an outcome, so its presence
//! marks a finished shard. (`NNNNN_captions.partial.jsonl` is the captioner's journal of a
//! shard in progress.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::ShardError;

/// A sample's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionStatus {
    /// Captioned.
    Ok,
    /// The server rejected the image or never gave a usable answer (see `error`).
    Failed,
    /// The sample has no image member.
    NoImage,
    /// The post-download filter dropped the sample; it was not sent.
    Filtered,
}

impl CaptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptionStatus::Ok => "ok",
            CaptionStatus::Failed => "failed",
            CaptionStatus::NoImage => "no_image",
            CaptionStatus::Filtered => "filtered",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => CaptionStatus::Ok,
            "failed" => CaptionStatus::Failed,
            "no_image" => CaptionStatus::NoImage,
            "filtered" => CaptionStatus::Filtered,
            _ => return None,
        })
    }
}

/// One sample's row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptionRecord {
    pub key: String,
    pub status: CaptionStatus,
    /// The model's whole answer.
    pub caption: Option<String>,
    /// Its first sentence; absent when the answer was cut off before one ended.
    pub short_caption: Option<String>,
    pub model: String,
    pub prompt: String,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub attempts: i64,
    pub latency_ms: i64,
}

/// The paths of shard `name`'s caption files in `dir`.
pub fn captions_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}_captions.parquet"))
}

pub fn journal_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}_captions.partial.jsonl"))
}

fn schema() -> Arc<Schema> {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let int = |name: &str, nullable: bool| Field::new(name, DataType::Int64, nullable);
    Arc::new(Schema::new(vec![
        text("key", false),
        text("status", false),
        text("caption", true),
        text("short_caption", true),
        text("model", false),
        text("prompt", false),
        text("finish_reason", true),
        text("error", true),
        int("prompt_tokens", true),
        int("completion_tokens", true),
        int("attempts", false),
        int("latency_ms", false),
    ]))
}

/// Writes the shard's captions atomically (zstd parquet).
pub fn write_captions(path: &Path, rows: &[CaptionRecord]) -> Result<(), ShardError> {
    let format = |e: &dyn std::fmt::Display| ShardError::format(path, e);
    let strings = |f: &dyn Fn(&CaptionRecord) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&CaptionRecord) -> Option<i64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int64Array>())
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            strings(&|r| Some(&r.key)),
            strings(&|r| Some(r.status.as_str())),
            strings(&|r| r.caption.as_deref()),
            strings(&|r| r.short_caption.as_deref()),
            strings(&|r| Some(&r.model)),
            strings(&|r| Some(&r.prompt)),
            strings(&|r| r.finish_reason.as_deref()),
            strings(&|r| r.error.as_deref()),
            ints(&|r| r.prompt_tokens),
            ints(&|r| r.completion_tokens),
            ints(&|r| Some(r.attempts)),
            ints(&|r| Some(r.latency_ms)),
        ],
    )
    .map_err(|e| format(&e))?;
    crate::table::write_batch(path, &batch)
}

/// Reads a captions file back.
pub fn read_captions(path: &Path) -> Result<Vec<CaptionRecord>, ShardError> {
    use crate::table::{column, read_batches};
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let text = |n| column::<StringArray>(&batch, n, path);
        let int = |n| column::<Int64Array>(&batch, n, path);
        let (key, status, caption, short) = (
            text("key")?,
            text("status")?,
            text("caption")?,
            text("short_caption")?,
        );
        let (model, prompt, finish, error) = (
            text("model")?,
            text("prompt")?,
            text("finish_reason")?,
            text("error")?,
        );
        let (pt, ct, attempts, latency) = (
            int("prompt_tokens")?,
            int("completion_tokens")?,
            int("attempts")?,
            int("latency_ms")?,
        );
        let s = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
        let n = |a: &Int64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        for i in 0..batch.num_rows() {
            let status = CaptionStatus::parse(status.value(i)).ok_or_else(|| {
                ShardError::format(path, format!("unknown status {:?}", status.value(i)))
            })?;
            rows.push(CaptionRecord {
                key: key.value(i).to_owned(),
                status,
                caption: s(caption, i),
                short_caption: s(short, i),
                model: model.value(i).to_owned(),
                prompt: prompt.value(i).to_owned(),
                finish_reason: s(finish, i),
                error: s(error, i),
                prompt_tokens: n(pt, i),
                completion_tokens: n(ct, i),
                attempts: attempts.value(i),
                latency_ms: latency.value(i),
            });
        }
    }
    Ok(rows)
}
