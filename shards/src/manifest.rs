//! `NNNNN.parquet`: one row per input row of a shard, as img2dataset writes it (key, url,
//! caption, status, error_message, width, height, original_width, original_height, sha256).

use std::path::Path;
use std::sync::Arc;

use crate::ShardError;
use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

/// img2dataset's three outcomes of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    FailedToDownload,
    FailedToResize,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::FailedToDownload => "failed_to_download",
            Status::FailedToResize => "failed_to_resize",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => Status::Success,
            "failed_to_download" => Status::FailedToDownload,
            "failed_to_resize" => Status::FailedToResize,
            _ => return None,
        })
    }
}

/// One input row's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ManifestRow {
    pub key: String,
    pub url: String,
    pub caption: Option<String>,
    pub status: Status,
    pub error_message: Option<String>,
    /// Size written to the tar (after resizing).
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Size as downloaded.
    pub original_width: Option<i32>,
    pub original_height: Option<i32>,
    /// SHA-256 of the downloaded bytes, hex (img2dataset's `compute_hash="sha256"`).
    pub sha256: Option<String>,
}

fn schema() -> Arc<Schema> {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let int = |name: &str| Field::new(name, DataType::Int32, true);
    Arc::new(Schema::new(vec![
        text("key", false),
        text("url", false),
        text("caption", true),
        text("status", false),
        text("error_message", true),
        int("width"),
        int("height"),
        int("original_width"),
        int("original_height"),
        text("sha256", true),
    ]))
}

/// Writes the manifest atomically (zstd-compressed parquet).
pub fn write(path: &Path, rows: &[ManifestRow]) -> Result<(), ShardError> {
    let strings = |f: &dyn Fn(&ManifestRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&ManifestRow) -> Option<i32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int32Array>())
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            strings(&|r| Some(&r.key)),
            strings(&|r| Some(&r.url)),
            strings(&|r| r.caption.as_deref()),
            strings(&|r| Some(r.status.as_str())),
            strings(&|r| r.error_message.as_deref()),
            ints(&|r| r.width),
            ints(&|r| r.height),
            ints(&|r| r.original_width),
            ints(&|r| r.original_height),
            strings(&|r| r.sha256.as_deref()),
        ],
    )
    .map_err(|e| ShardError::format(path, e))?;
    crate::table::write_batch(path, &batch)
}

/// Reads a manifest back (ours or img2dataset's: extra columns are ignored).
pub fn read(path: &Path) -> Result<Vec<ManifestRow>, ShardError> {
    let mut rows = Vec::new();
    for batch in crate::table::read_batches(path)? {
        let text = |name| crate::table::column::<StringArray>(&batch, name, path);
        let int = |name| crate::table::column::<Int32Array>(&batch, name, path);
        let (key, url, caption, status, error) = (
            text("key")?,
            text("url")?,
            text("caption")?,
            text("status")?,
            text("error_message")?,
        );
        let (w, h, ow, oh) = (
            int("width")?,
            int("height")?,
            int("original_width")?,
            int("original_height")?,
        );
        let sha = text("sha256")?;
        let opt_s = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
        let opt_i = |a: &Int32Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        for i in 0..batch.num_rows() {
            let status = Status::parse(status.value(i)).ok_or_else(|| {
                ShardError::format(path, format!("unknown status {:?}", status.value(i)))
            })?;
            rows.push(ManifestRow {
                key: key.value(i).to_owned(),
                url: url.value(i).to_owned(),
                caption: opt_s(caption, i),
                status,
                error_message: opt_s(error, i),
                width: opt_i(w, i),
                height: opt_i(h, i),
                original_width: opt_i(ow, i),
                original_height: opt_i(oh, i),
                sha256: opt_s(sha, i),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_their_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000.parquet");
        let rows = vec![
            ManifestRow {
                key: "0000000".into(),
                url: "http://a/1.jpg".into(),
                caption: Some("a <b>cat</b>".into()),
                status: Status::Success,
                error_message: None,
                width: Some(256),
                height: Some(256),
                original_width: Some(640),
                original_height: Some(480),
                sha256: Some("ab".repeat(32)),
            },
            ManifestRow {
                key: "0000001".into(),
                url: "http://a/2.jpg".into(),
                caption: None,
                status: Status::FailedToDownload,
                error_message: Some("HTTP 404".into()),
                width: None,
                height: None,
                original_width: None,
                original_height: None,
                sha256: None,
            },
        ];
        write(&path, &rows).unwrap();
        assert_eq!(read(&path).unwrap(), rows);
    }

    #[test]
    fn a_file_that_is_not_parquet_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        std::fs::write(&path, b"not parquet at all").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("bad.parquet"), "{err}");
    }
}
