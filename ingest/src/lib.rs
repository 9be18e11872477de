//! Ingest: LAION-COCO metadata to img2dataset-compatible shards, in img2dataset's parts, one
//! file each:
//!
//! - [`reader`]: metadata parquet, batch by batch, whatever the column types;
//! - [`filter`]: the metadata rules before any download, and their funnel;
//! - [`prepare`]: the filtered rows cut into shard inputs that workers claim by index;
//! - [`download`]: http(s) fetching with limits, retries, opt-outs and address checks;
//! - [`resize`]: decoding under limits, img2dataset's resize modes, JPEG encoding;
//! - [`worker`]: one shard's rows to its tar, manifest and stats.
//! - [`testing`]: a loopback HTTP server with real files and hostile responses (tests, demo).
//!
//! The `llamagen ingest` command (cli) adds PostgreSQL: the run, the funnel, and shard claims
//! with leases so that any number of workers share a run.

pub mod config;
pub mod download;
pub mod filter;
pub mod prepare;
pub mod reader;
pub mod resize;
pub mod sql_rule;
pub mod testing;
mod turbojpeg;
pub mod worker;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("metadata {path}: {problem}")]
    Metadata { path: PathBuf, problem: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error(transparent)]
    Shard(#[from] llamagen_shards::ShardError),
    #[error("{0}")]
    Config(String),
}

impl IngestError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        IngestError::Io {
            path: path.to_owned(),
            error: source,
        }
    }
}
