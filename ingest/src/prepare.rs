//! Reads every metadata file once, applies the metadata filter, and cuts the kept rows into
//! shard inputs (`_inputs/NNNNN.parquet`, `rows_per_shard` rows each, in input order), as
//! img2dataset's reader cuts its input into shard files before any download. Workers then
//! claim shards by index.
//!
//! The result is recorded in `_inputs/prepared.json`, written last: a preparation that was
//! killed is redone from the start (it is deterministic, so it writes the same files), and a
//! finished one is reused as long as the inputs and the filter are the same.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::IngestError;
use crate::config::IngestConfig;
use crate::filter::{Filter, Funnel};
use crate::reader::{MetaRow, MetadataReader, write_metadata};

/// What preparation produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepared {
    pub shards: u32,
    pub rows: u64,
    pub funnel: Funnel,
    /// Optional columns missing from at least one input file, with the file.
    pub missing_columns: Vec<(String, String)>,
    /// The metadata files and their sizes, and the filter, this preparation was made from.
    pub inputs: Vec<(String, u64)>,
    pub filter: serde_json::Value,
}

pub const INPUTS_DIR: &str = "_inputs";
const MARKER: &str = "prepared.json";

/// Where shard `index`'s input rows are.
pub fn input_path(output: &Path, index: u32) -> PathBuf {
    output
        .join(INPUTS_DIR)
        .join(format!("{}.parquet", llamagen_shards::shard_name(index)))
}

/// The finished preparation in `output`, if there is one.
pub fn load(output: &Path) -> Result<Option<Prepared>, IngestError> {
    let marker = output.join(INPUTS_DIR).join(MARKER);
    match std::fs::read(&marker) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IngestError::Metadata {
                path: marker,
                problem: format!("unreadable preparation record: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IngestError::io(&marker, e)),
    }
}

/// Filters `inputs` into shard inputs under `output`, or returns the earlier preparation of
/// the same inputs and filter.
pub fn prepare(
    inputs: &[PathBuf],
    config: &IngestConfig,
    output: &Path,
) -> Result<Prepared, IngestError> {
    let mut sized = Vec::new();
    for path in inputs {
        let meta = std::fs::metadata(path).map_err(|e| IngestError::io(path, e))?;
        sized.push((path.display().to_string(), meta.len()));
    }
    let filter_json = serde_json::json!({
        "metadata_filter": config.metadata_filter,
        "rows_per_shard": config.rows_per_shard,
        "url_column": config.url_column,
        "caption_column": config.caption_column,
    });
    if let Some(done) = load(output)? {
        if done.inputs == sized && done.filter == filter_json {
            return Ok(done);
        }
        return Err(IngestError::Config(format!(
            "{} was prepared from other metadata files or another filter; use a new output folder",
            output.display()
        )));
    }
    let dir = output.join(INPUTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| IngestError::io(&dir, e))?;
    llamagen_shards::atomic::remove_leftovers(&dir)?;

    let per_shard = config.rows_per_shard as usize;
    let mut filter: Option<Filter> = None;
    let mut missing_columns = Vec::new();
    let mut pending: Vec<MetaRow> = Vec::with_capacity(per_shard);
    let mut shards = 0u32;
    let mut rows = 0u64;
    let flush = |pending: &mut Vec<MetaRow>, shards: &mut u32| -> Result<(), IngestError> {
        let path = input_path(output, *shards);
        let tmp = dir.join(format!(".tmp-{}", llamagen_shards::shard_name(*shards)));
        write_metadata(&tmp, "url", "caption", pending)?;
        // On disk before the rename, so a crash never leaves a shard input with a hole.
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| IngestError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| IngestError::io(&path, e))?;
        *shards += 1;
        pending.clear();
        Ok(())
    };
    for path in inputs {
        let reader =
            MetadataReader::open(path, &config.url_column, &config.caption_column, 64 * 1024)?;
        for column in &reader.missing {
            missing_columns.push((path.display().to_string(), column.clone()));
        }
        // Rules are decided by the first file's columns; a later file lacking a column the
        // first had leaves NaN there, which fails that rule row by row (and is listed above).
        let f = filter.get_or_insert_with(|| Filter::new(&config.metadata_filter, &reader.missing));
        for batch in reader {
            for row in batch? {
                if f.keep(&row) {
                    rows += 1;
                    pending.push(row);
                    if pending.len() == per_shard {
                        flush(&mut pending, &mut shards)?;
                    }
                }
            }
        }
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut shards)?;
    }
    let funnel = filter.map(|f| f.funnel().clone()).unwrap_or_default();
    let prepared = Prepared {
        shards,
        rows,
        funnel,
        missing_columns,
        inputs: sized,
        filter: filter_json,
    };
    let json =
        serde_json::to_vec_pretty(&prepared).map_err(|e| IngestError::Config(e.to_string()))?;
    // The renames are durable once the folder is synced; only then may the marker say so.
    if let Ok(folder) = std::fs::File::open(&dir) {
        let _ = folder.sync_all();
    }
    llamagen_shards::atomic::write_bytes(&dir.join(MARKER), &json)?;
    Ok(prepared)
}

/// The rows of shard `index`.
pub fn read_shard(output: &Path, index: u32) -> Result<Vec<MetaRow>, IngestError> {
    let path = input_path(output, index);
    let mut rows = Vec::new();
    for batch in MetadataReader::open(&path, "url", "caption", 64 * 1024)? {
        rows.extend(batch?);
    }
    Ok(rows)
}
