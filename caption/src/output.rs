//! What captioning writes next to a shard:
//!
//! - `NNNNN_captions.parquet`: one row per sample of the shard, in shard order: key, status,
//!   the long and the short caption, the model and prompt that made them, the finish reason,
//!   token counts, attempts and latency. Written atomically once every sample has an outcome,
//!   so its presence marks a finished shard.
//! - `NNNNN_captions.partial.jsonl`: the journal of a shard in progress, one JSON record per
//!   line as answers arrive, so a killed run keeps what it paid for. It is read back on resume
//!   (a torn last line is dropped) and removed once the parquet exists.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::CaptionError;

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
pub fn write_captions(path: &Path, rows: &[CaptionRecord]) -> Result<(), CaptionError> {
    let format =
        |e: &dyn std::fmt::Display| CaptionError::Output(format!("{}: {e}", path.display()));
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
    llamagen_shards::table::write_batch(path, &batch)
        .map_err(|e| CaptionError::Output(e.to_string()))
}

/// Reads a captions file back.
pub fn read_captions(path: &Path) -> Result<Vec<CaptionRecord>, CaptionError> {
    use llamagen_shards::table::{column, read_batches};
    let bad = |e: llamagen_shards::ShardError| CaptionError::Input(e.to_string());
    let mut rows = Vec::new();
    for batch in read_batches(path).map_err(bad)? {
        let text = |n| column::<StringArray>(&batch, n, path).map_err(bad);
        let int = |n| column::<Int64Array>(&batch, n, path).map_err(bad);
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
                CaptionError::Input(format!(
                    "{}: unknown status {:?}",
                    path.display(),
                    status.value(i)
                ))
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

/// Appends records to a shard's journal as they arrive.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Opens the journal for appending, first reading back what an earlier run recorded.
    pub fn open(path: &Path) -> Result<(Self, Vec<CaptionRecord>), CaptionError> {
        let mut done = Vec::new();
        match File::open(path) {
            Ok(file) => {
                let lines: Vec<String> = BufReader::new(file)
                    .lines()
                    .collect::<Result<_, _>>()
                    .map_err(|e| CaptionError::io(path, e))?;
                let last = lines.len().saturating_sub(1);
                for (i, line) in lines.iter().enumerate() {
                    match serde_json::from_str::<CaptionRecord>(line) {
                        Ok(record) => done.push(record),
                        // A killed run can leave its last line half written.
                        Err(_) if i == last => {}
                        Err(e) => {
                            return Err(CaptionError::Input(format!(
                                "{} line {}: {e}",
                                path.display(),
                                i + 1
                            )));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CaptionError::io(path, e)),
        }
        // Rewrite without a torn tail, so appends start on a line of their own; atomically,
        // as a kill during the rewrite must not lose what the journal held.
        let mut text = String::new();
        for record in &done {
            let line =
                serde_json::to_string(record).map_err(|e| CaptionError::Output(e.to_string()))?;
            text.push_str(&line);
            text.push('\n');
        }
        llamagen_shards::atomic::write_bytes(path, text.as_bytes())
            .map_err(|e| CaptionError::Output(e.to_string()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| CaptionError::io(path, e))?;
        Ok((
            Journal {
                file,
                path: path.to_owned(),
            },
            done,
        ))
    }

    pub fn append(&mut self, record: &CaptionRecord) -> Result<(), CaptionError> {
        let line =
            serde_json::to_string(record).map_err(|e| CaptionError::Output(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| CaptionError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, status: CaptionStatus) -> CaptionRecord {
        CaptionRecord {
            key: key.into(),
            status,
            caption: (status == CaptionStatus::Ok).then(|| "A cat. It sits.".into()),
            short_caption: (status == CaptionStatus::Ok).then(|| "A cat.".into()),
            model: "llava".into(),
            prompt: "Describe".into(),
            finish_reason: Some("stop".into()),
            error: (status == CaptionStatus::Failed).then(|| "400: bad image".into()),
            prompt_tokens: Some(600),
            completion_tokens: None,
            attempts: 1,
            latency_ms: 12,
        }
    }

    #[test]
    fn captions_round_trip_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = captions_path(dir.path(), "00000");
        let rows = vec![
            record("0000000", CaptionStatus::Ok),
            record("0000001", CaptionStatus::Failed),
            record("0000002", CaptionStatus::NoImage),
        ];
        write_captions(&path, &rows).unwrap();
        assert_eq!(read_captions(&path).unwrap(), rows);
    }

    #[test]
    fn a_torn_last_journal_line_is_dropped_and_earlier_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path(), "00000");
        let (mut journal, done) = Journal::open(&path).unwrap();
        assert!(done.is_empty());
        journal.append(&record("a", CaptionStatus::Ok)).unwrap();
        journal.append(&record("b", CaptionStatus::Ok)).unwrap();
        drop(journal);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"key\":\"c\",\"sta");
        std::fs::write(&path, &text).unwrap();
        let (mut journal, done) = Journal::open(&path).unwrap();
        assert_eq!(done.len(), 2);
        journal.append(&record("c", CaptionStatus::Ok)).unwrap();
        drop(journal);
        let (_, done) = Journal::open(&path).unwrap();
        assert_eq!(
            done.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        std::fs::write(&path, format!("garbage\n{}", text)).unwrap();
        assert!(Journal::open(&path).is_err());
    }
}
