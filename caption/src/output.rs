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

use crate::CaptionError;

pub use llamagen_shards::captions::{
    CaptionRecord, CaptionStatus, captions_path, journal_path, read_captions, write_captions,
};

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
