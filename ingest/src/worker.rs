//! Turns one shard's input rows into its three output files: downloads run concurrently (at
//! most `concurrency` rows of the shard started at once, and the downloader's slots, shared by
//! every shard a worker holds, bound the requests in flight), decoding, resizing and encoding
//! run on the blocking pool, and samples enter the tar as they finish. The manifest follows,
//! then the stats file, which marks the shard finished. A shard whose stats file exists is
//! never redone.
//!
//! Once its last row has started, a shard says so ([`Event::AllRowsStarted`]): what is left
//! are downloads in flight, a few of them perhaps waiting out a dead host's timeout, and the
//! worker can start the next shard so that its rows take the slots as they come free.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use llamagen_shards::manifest::{self, ManifestRow, Status};
use llamagen_shards::stats::ShardStats;
use llamagen_shards::webdataset::TarWriter;
use llamagen_shards::{ShardPaths, sample_key};
use sha2::{Digest as _, Sha256};

use crate::IngestError;
use crate::download::Downloader;
use crate::reader::{MetaRow, SCORE_COLUMNS};
use crate::resize::{self, ResizeOptions};

/// What a shard tells its caller as it goes: each row's outcome, and when its last row has
/// started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Success,
    FailedToDownload,
    FailedToResize,
    AllRowsStarted,
}

/// One row's outcome before it is written.
struct Outcome {
    row: u32,
    status: Status,
    error: Option<String>,
    resized: Option<resize::Resized>,
    sha256: Option<String>,
    downloaded_bytes: u64,
    download_seconds: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Downloads, resizes and writes shard `index` into `dir`; returns its stats.
#[allow(clippy::too_many_arguments)]
pub async fn run_shard(
    index: u32,
    rows: Vec<MetaRow>,
    rows_per_shard: u32,
    dir: &Path,
    downloader: Arc<Downloader>,
    resize_options: Arc<ResizeOptions>,
    concurrency: usize,
    on_row: &(dyn Fn(Event) + Sync),
) -> Result<ShardStats, IngestError> {
    let paths = ShardPaths::new(dir, index);
    if paths.is_finished() {
        return Ok(ShardStats::read(&paths.stats)?);
    }
    std::fs::create_dir_all(dir).map_err(|e| IngestError::io(dir, e))?;
    // Only this attempt writes this shard's files now: half-written ones are a killed
    // attempt's (a tar of a 10,000-row shard is hundreds of MB).
    let names: Vec<String> = [&paths.tar, &paths.parquet, &paths.stats]
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let removed = llamagen_shards::atomic::remove_leftovers_of(dir, &names)?;
    if removed > 0 {
        tracing::info!(
            "shard {index:05}: removed {removed} temporary file(s) of an earlier attempt"
        );
    }
    let started = Instant::now();
    let mut stats = ShardStats {
        count: rows.len() as u64,
        start_time: unix_now(),
        ..Default::default()
    };
    let rows = Arc::new(rows);
    let mut tar = TarWriter::create(&paths.tar)?;
    let mut manifest_rows = Vec::with_capacity(rows.len());
    let mut seconds: BTreeMap<String, f64> = BTreeMap::new();

    let last = rows.len().checked_sub(1);
    if last.is_none() {
        on_row(Event::AllRowsStarted);
    }
    // The stream takes row `i` when a place among the `concurrency` started rows comes free.
    let mut outcomes = futures::stream::iter(0..rows.len() as u32)
        .map(|i| {
            if Some(i as usize) == last {
                on_row(Event::AllRowsStarted);
            }
            let downloader = downloader.clone();
            let options = resize_options.clone();
            let rows = rows.clone();
            async move { one_row(i, &rows[i as usize], &downloader, options).await }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(outcome) = outcomes.next().await {
        let row = &rows[outcome.row as usize];
        let key = sample_key(index, outcome.row, rows_per_shard);
        let url = row.url.clone().unwrap_or_default();
        *seconds.entry("download".into()).or_default() += outcome.download_seconds;
        stats.bytes_downloaded += outcome.downloaded_bytes;
        let message = outcome.error.clone().unwrap_or_else(|| "success".into());
        *stats.status_dict.entry(message).or_default() += 1;
        let mut entry = ManifestRow {
            key: key.clone(),
            url,
            caption: row.caption.clone(),
            status: outcome.status,
            error_message: outcome.error.clone(),
            width: None,
            height: None,
            original_width: None,
            original_height: None,
            sha256: outcome.sha256.clone(),
        };
        match (&outcome.status, &outcome.resized) {
            (Status::Success, Some(r)) => {
                entry.width = Some(r.width as i32);
                entry.height = Some(r.height as i32);
                entry.original_width = Some(r.original_width as i32);
                entry.original_height = Some(r.original_height as i32);
                *seconds.entry("decode".into()).or_default() += r.decode.as_secs_f64();
                *seconds.entry("resize".into()).or_default() += r.resize.as_secs_f64();
                *seconds.entry("encode".into()).or_default() += r.encode.as_secs_f64();
                let t = Instant::now();
                tar.append(&key, "jpg", &r.jpeg)?;
                tar.append(&key, "txt", row.caption.as_deref().unwrap_or("").as_bytes())?;
                tar.append(&key, "json", &sample_json(&entry, row))?;
                *seconds.entry("write".into()).or_default() += t.elapsed().as_secs_f64();
                stats.successes += 1;
                on_row(Event::Success);
            }
            (Status::FailedToResize, _) => {
                stats.failed_to_resize += 1;
                on_row(Event::FailedToResize);
            }
            _ => {
                stats.failed_to_download += 1;
                on_row(Event::FailedToDownload);
            }
        }
        manifest_rows.push(entry);
    }
    let t = Instant::now();
    stats.bytes_written = tar.finish()?;
    manifest_rows.sort_by(|a, b| a.key.cmp(&b.key));
    manifest::write(&paths.parquet, &manifest_rows)?;
    *seconds.entry("write".into()).or_default() += t.elapsed().as_secs_f64();
    stats.seconds = seconds;
    stats.end_time = unix_now();
    stats.duration = started.elapsed().as_secs_f64();
    stats.write(&paths.stats)?;
    Ok(stats)
}

async fn one_row(
    i: u32,
    row: &MetaRow,
    downloader: &Downloader,
    options: Arc<ResizeOptions>,
) -> Outcome {
    let mut outcome = Outcome {
        row: i,
        status: Status::FailedToDownload,
        error: None,
        resized: None,
        sha256: None,
        downloaded_bytes: 0,
        download_seconds: 0.0,
    };
    let Some(url) = row.url.as_deref() else {
        outcome.error = Some("no URL".into());
        return outcome;
    };
    let t = Instant::now();
    let fetched = downloader.fetch(url).await;
    outcome.download_seconds = t.elapsed().as_secs_f64();
    let downloaded = match fetched {
        Ok(d) => d,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    outcome.downloaded_bytes = downloaded.bytes.len() as u64;
    outcome.sha256 = Some(hex(&Sha256::digest(&downloaded.bytes)));
    let bytes = downloaded.bytes;
    let result = tokio::task::spawn_blocking(move || resize::process(&bytes, &options)).await;
    match result {
        Ok(Ok(resized)) => {
            outcome.status = Status::Success;
            outcome.resized = Some(resized);
        }
        Ok(Err(e)) => {
            outcome.status = Status::FailedToResize;
            outcome.error = Some(e.to_string());
        }
        Err(e) => {
            outcome.status = Status::FailedToResize;
            outcome.error = Some(format!("image task failed: {e}"));
        }
    }
    outcome
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `KEY.json`: the manifest fields plus LAION's metadata scores that the row had.
fn sample_json(entry: &ManifestRow, row: &MetaRow) -> Vec<u8> {
    let mut value = serde_json::to_value(entry).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for (name, score) in SCORE_COLUMNS.iter().zip(row.scores) {
            if score.is_finite() {
                map.insert(name.to_string(), serde_json::json!(score));
            }
        }
    }
    serde_json::to_vec(&value).unwrap_or_default()
}
