//! The on-disk shard formats every stage shares, img2dataset-compatible so that existing
//! readers (webdataset, img2dataset's own tooling, pandas) open them:
//!
//! - `NNNNN.tar`: a webdataset shard, one `KEY.jpg`, `KEY.txt` (caption) and `KEY.json`
//!   (metadata) per successful sample ([`webdataset`]);
//! - `NNNNN.parquet`: one row per input row, success or not, with its status and error
//!   ([`manifest`]);
//! - `NNNNN_stats.json`: the shard's counts and timings ([`stats`]). It is written last, so it
//!   marks a finished shard;
//! - `NNNNN_captions.parquet`: the long and short caption of each sample, written by the
//!   caption stage and read by encode ([`captions`]).
//!
//! Every file goes to a temporary name in its folder, is fsynced, then renamed ([`atomic`]): a
//! crash never leaves a file that looks finished but is not. Ingest stages each attempt's set
//! of three in a folder of its own and moves it into place once the attempt is recorded
//! ([`staging`]), so a set is never half one attempt and half another.

pub mod atomic;
pub mod captions;
pub mod manifest;
pub mod settings;
pub mod staging;
pub mod stats;
pub mod table;
pub mod webdataset;

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing a shard.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
}

impl ShardError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ShardError::Io {
            path: path.to_owned(),
            error: source,
        }
    }

    pub(crate) fn format(path: &Path, problem: impl std::fmt::Display) -> Self {
        ShardError::Format {
            path: path.to_owned(),
            problem: problem.to_string(),
        }
    }
}

/// `00042`: shard file names are the index in five digits, as img2dataset writes them.
pub fn shard_name(index: u32) -> String {
    format!("{index:05}")
}

/// The three files of shard `index` in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPaths {
    pub tar: PathBuf,
    pub parquet: PathBuf,
    pub stats: PathBuf,
}

impl ShardPaths {
    pub fn new(dir: &Path, index: u32) -> Self {
        let name = shard_name(index);
        ShardPaths {
            tar: dir.join(format!("{name}.tar")),
            parquet: dir.join(format!("{name}.parquet")),
            stats: dir.join(format!("{name}_stats.json")),
        }
    }

    /// Whether the shard was finished: its stats file, written last, exists.
    pub fn is_finished(&self) -> bool {
        self.stats.is_file()
    }
}

/// img2dataset's sample key: the shard index followed by the row's position in the shard,
/// each zero-padded (`rows_per_shard` 10,000 gives `000420123` for row 123 of shard 42).
pub fn sample_key(shard: u32, row: u32, rows_per_shard: u32) -> String {
    let digits = (rows_per_shard.max(2) - 1).to_string().len();
    format!("{shard:05}{row:0digits$}")
}

/// A shard's name from its tar's path (`/s/00042.tar` is `00042`): the stem every file a stage
/// writes beside the shard is named after.
pub fn shard_name_of(tar: &Path) -> Result<&str, ShardError> {
    tar.file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| ShardError::format(tar, "not a shard name"))
}

/// The `*.tar` shards of `dir` in name order, keeping those with `position % workers == worker`
/// (a Slurm array or Kubernetes indexed Job passes its index), for the stages that walk a
/// shard folder (filter, caption).
pub fn tar_files(dir: &Path, worker: usize, workers: usize) -> Result<Vec<PathBuf>, ShardError> {
    if workers == 0 || worker >= workers {
        return Err(ShardError::format(
            dir,
            format!("worker {worker} of {workers}: the index must be below the count"),
        ));
    }
    let mut tars: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ShardError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    tars.sort();
    if tars.is_empty() {
        return Err(ShardError::format(dir, "no *.tar shards"));
    }
    Ok(tars
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % workers == worker)
        .map(|(_, p)| p)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names_follow_img2dataset() {
        assert_eq!(shard_name(42), "00042");
        assert_eq!(sample_key(42, 123, 10_000), "000420123");
        assert_eq!(sample_key(0, 7, 16), "0000007");
        assert_eq!(sample_key(3, 0, 1), "000030");
        let p = ShardPaths::new(Path::new("/s"), 7);
        assert_eq!(p.tar, Path::new("/s/00007.tar"));
        assert_eq!(p.stats, Path::new("/s/00007_stats.json"));
    }
}
