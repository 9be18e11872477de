//! The `[ingest]` section of a pipeline config: where LAION-COCO's metadata is, the metadata
//! filter, and img2dataset's downloader and resizer options. `llamagen config` validates it;
//! docs/config.md documents every key.

use serde::{Deserialize, Serialize};

/// LAION-COCO metadata, the metadata filter, and the downloader (img2dataset's options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Parquet files (a glob) with LAION-COCO's columns.
    pub input: String,
    /// Output folder for shards, relative to the data directory.
    pub output: String,
    pub url_column: String,
    pub caption_column: String,
    pub rows_per_shard: u32,
    /// Downloads in flight at once, across every shard the worker holds.
    pub concurrency: u32,
    /// Shards a worker holds at once: the next is claimed when every row of the newest has
    /// started, so that its rows take the slots that the last one's stragglers leave free.
    pub open_shards: u32,
    pub timeout_secs: f64,
    pub retries: u32,
    pub max_redirects: u32,
    pub max_body_bytes: u64,
    pub user_agent_token: String,
    /// X-Robots-Tag directives that opt an image out (img2dataset's defaults).
    pub disallowed_header_directives: Vec<String>,
    /// Allow loopback and private addresses (local mirrors and tests only).
    pub allow_private_addresses: bool,
    /// A forward proxy for downloads (`http://[user:password@]host:port`); empty goes direct,
    /// whatever `HTTP_PROXY` says.
    pub proxy: String,
    pub image_size: u32,
    /// "no", "keep_ratio", "center_crop" or "border", as img2dataset.
    pub resize_mode: String,
    pub jpeg_quality: u8,
    pub max_image_pixels: u64,
    pub metadata_filter: MetadataFilter,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            input: "laion-coco/*.parquet".into(),
            output: "shards".into(),
            url_column: "URL".into(),
            caption_column: "TEXT".into(),
            rows_per_shard: 10_000,
            concurrency: 128,
            open_shards: 8,
            timeout_secs: 10.0,
            retries: 2,
            max_redirects: 5,
            max_body_bytes: 32 << 20,
            user_agent_token: "llamagen-rs".into(),
            disallowed_header_directives: ["noai", "noimageai", "noindex", "noimageindex"]
                .map(String::from)
                .to_vec(),
            allow_private_addresses: false,
            proxy: String::new(),
            image_size: 256,
            resize_mode: "center_crop".into(),
            jpeg_quality: 95,
            max_image_pixels: 89_478_485,
            metadata_filter: MetadataFilter::default(),
        }
    }
}

/// Rules applied to metadata rows before any download (the paper's filters; it does not
/// publish thresholds, so these are LAION's customary ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataFilter {
    pub min_aesthetic: f64,
    pub max_watermark: f64,
    pub max_unsafe: f64,
    pub min_clip_similarity: f64,
    pub min_width: u32,
    pub min_height: u32,
    pub max_aspect_ratio: f64,
    pub dedup_urls: bool,
    /// The user's own rule, a SQL boolean expression over the metadata's columns
    /// (`sql_rule.rs`), applied after the built-in rules and before the deduplication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#where: Option<String>,
}

impl Default for MetadataFilter {
    fn default() -> Self {
        Self {
            min_aesthetic: 5.0,
            max_watermark: 0.5,
            max_unsafe: 0.5,
            min_clip_similarity: 0.28,
            min_width: 256,
            min_height: 256,
            max_aspect_ratio: 2.0,
            dedup_urls: true,
            r#where: None,
        }
    }
}
