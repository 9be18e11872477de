//! The codes of one shard on disk, next to its name:
//!
//! - `NAME.codes.npy`: uint16 [N, A, T]: N samples, A views (crops and flips), T tokens
//!   (row-major over the h x w token grid). uint16 holds any codebook up to 65,536 entries
//!   (LlamaGen's is 16,384) at a quarter of LlamaGen's int64.
//! - `NAME.labels.npy`: int64 [N], the class of each sample.
//! - `NAME.keys.txt`: the N sample keys, one per line, in the same order.
//! - `NAME.json`: [`ShardSummary`], written last: its presence marks a finished shard.
//!
//! Every file goes through a temporary name, fsync and rename.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array3};
use serde::{Deserialize, Serialize};

use crate::EncodeError;

/// A sample that could not be encoded, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub key: String,
    pub error: String,
}

/// What a finished shard holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub samples: usize,
    pub views: usize,
    pub tokens: usize,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
    /// The input as it was when encoded; a shard whose input changed since is encoded again.
    /// Absent in summaries written before it was recorded (those shards are kept).
    #[serde(default)]
    pub input: Option<crate::source::Fingerprint>,
}

/// A shard's codes in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardCodes {
    /// [N, A, T]
    pub codes: Array3<u16>,
    /// [N]
    pub labels: Array1<i64>,
    pub keys: Vec<String>,
}

/// The file names of shard `name` in `dir`.
pub struct CodePaths {
    pub codes: PathBuf,
    pub labels: PathBuf,
    pub keys: PathBuf,
    pub summary: PathBuf,
}

impl CodePaths {
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            codes: dir.join(format!("{name}.codes.npy")),
            labels: dir.join(format!("{name}.labels.npy")),
            keys: dir.join(format!("{name}.keys.txt")),
            summary: dir.join(format!("{name}.json")),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.summary.is_file()
    }

    /// The summary of a finished shard.
    pub fn summary(&self) -> Result<ShardSummary, EncodeError> {
        let bytes = std::fs::read(&self.summary).map_err(|e| EncodeError::io(&self.summary, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EncodeError::Input(format!("{}: {e}", self.summary.display())))
    }
}

/// Names of the finished shards of a codes folder (each `NAME.json` beside `encode.json`), in
/// name order.
pub fn finished_shards(dir: &Path) -> Result<Vec<String>, EncodeError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| EncodeError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let stem = file.strip_suffix(".json")?.to_string();
            (stem != "encode").then_some(stem)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn shard_error(e: llamagen_shards::ShardError) -> EncodeError {
    EncodeError::Output(e.to_string())
}

/// Writes a shard's files, the summary last.
pub fn write(
    paths: &CodePaths,
    codes: &ShardCodes,
    summary: &ShardSummary,
) -> Result<(), EncodeError> {
    use llamagen_shards::atomic::write_bytes;
    use ndarray_npy::WriteNpyExt as _;
    let npy = |write: &dyn Fn(&mut Vec<u8>) -> Result<(), ndarray_npy::WriteNpyError>| {
        let mut bytes = Vec::new();
        write(&mut bytes).map_err(|e| EncodeError::Output(format!("npy: {e}")))?;
        Ok::<_, EncodeError>(bytes)
    };
    let code_bytes = npy(&|b| codes.codes.write_npy(b))?;
    write_bytes(&paths.codes, &code_bytes).map_err(shard_error)?;
    let label_bytes = npy(&|b| codes.labels.write_npy(b))?;
    write_bytes(&paths.labels, &label_bytes).map_err(shard_error)?;
    let mut keys = codes.keys.join("\n");
    keys.push('\n');
    write_bytes(&paths.keys, keys.as_bytes()).map_err(shard_error)?;
    let json = serde_json::to_vec_pretty(summary)
        .map_err(|e| EncodeError::Output(format!("summary: {e}")))?;
    write_bytes(&paths.summary, &json).map_err(shard_error)
}

/// Reads a finished shard back, checking that its three files agree.
pub fn read(paths: &CodePaths) -> Result<ShardCodes, EncodeError> {
    let codes: Array3<u16> = ndarray_npy::read_npy(&paths.codes)
        .map_err(|e| EncodeError::Input(format!("{}: {e}", paths.codes.display())))?;
    let labels: Array1<i64> = ndarray_npy::read_npy(&paths.labels)
        .map_err(|e| EncodeError::Input(format!("{}: {e}", paths.labels.display())))?;
    let keys: Vec<String> = std::fs::read_to_string(&paths.keys)
        .map_err(|e| EncodeError::io(&paths.keys, e))?
        .lines()
        .map(str::to_string)
        .collect();
    let n = codes.dim().0;
    if labels.len() != n || keys.len() != n {
        return Err(EncodeError::Input(format!(
            "{}: {n} code rows but {} labels and {} keys",
            paths.codes.display(),
            labels.len(),
            keys.len()
        )));
    }
    Ok(ShardCodes {
        codes,
        labels,
        keys,
    })
}
