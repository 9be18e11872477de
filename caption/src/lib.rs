//! Captions for shard images from LLaVA (or any vision chat model) behind an OpenAI-compatible
//! chat-completions server: vLLM, SGLang, llama.cpp's `llama-server`, ollama.
//!
//! - [`client`]: the protocol, one image per request as a base64 data URL, retries with backoff;
//! - [`sentence`]: the short caption, the first sentence of the long one (the paper's rule);
//! - [`shard`]: one webdataset shard through the server with bounded concurrency, journaled so
//!   a killed run resumes where it stopped;
//! - [`output`]: `NNNNN_captions.parquet` next to the shard and the journal;
//! - [`testing`]: a loopback server that speaks the protocol, with slow, failing and malformed
//!   answers, for the tests, the demo and the benchmark.
//!
//! `docs/caption.md` has the commands that serve LLaVA with vLLM and llama.cpp.

pub mod client;
pub mod config;
pub mod output;
pub mod sentence;
pub mod shard;
pub mod testing;

use std::path::{Path, PathBuf};

pub use client::{ChatClient, ClientOptions, PAPER_PROMPT, Prompt};
pub use shard::{ShardSummary, caption_shard};

#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Output(String),
    #[error("bad settings: {0}")]
    Invalid(String),
    /// The server cannot serve this run at all (unreachable, wrong key, endpoint or model).
    #[error("caption server: {0}")]
    Server(String),
    /// Samples whose requests kept failing are still open; what was captioned is journaled.
    #[error(
        "shard {shard}: {open} sample(s) still without an answer after every retry ({last}); what was captioned is kept, run again to resume"
    )]
    Unfinished {
        shard: String,
        open: usize,
        last: String,
    },
}

impl From<llamagen_shards::ShardError> for CaptionError {
    fn from(e: llamagen_shards::ShardError) -> Self {
        CaptionError::Output(e.to_string())
    }
}

impl CaptionError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CaptionError::Io {
            path: path.to_owned(),
            error: source,
        }
    }
}

/// What determines the captions, kept as `captions.json` in the output folder: a folder refuses
/// to be continued with another model or prompt, so its shards never mix two captioners.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptionSettings {
    pub prompt: Prompt,
}

impl CaptionSettings {
    pub const FILE: &'static str = "captions.json";

    pub fn check_or_write(&self, dir: &Path) -> Result<(), CaptionError> {
        llamagen_shards::settings::pin(dir, Self::FILE, self)
            .map_err(|e| CaptionError::Invalid(e.to_string()))
    }
}
