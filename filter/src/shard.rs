//! One webdataset shard through the filter: images decoded and scored a batch at a time (a
//! shard of 10,000 decoded 256 px images would be 2 GB), each sample decided, the decisions
//! written next to the shard.

use std::path::Path;
use std::time::Instant;

use ndarray::Array3;

use crate::FilterError;
use crate::output::{self, FilterRecord};
use crate::preprocess::decode_rgb;
use crate::rules::{Facts, Funnel, RULES, Scores, Thresholds, first_failed_rule};
use crate::scorers::Scorers;

#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Images per model batch.
    pub batch_size: usize,
    /// Images over this many pixels are refused undecoded.
    pub max_pixels: u64,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            batch_size: 64,
            max_pixels: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ShardSummary {
    pub name: String,
    pub samples: usize,
    pub kept: usize,
    pub funnel: Funnel,
    pub seconds: f64,
}

/// The size the size rule reads: the original size from the sample's json if it has one
/// (ingest resizes to 256 px, so the decoded size says nothing about the source), else the
/// decoded one.
fn original_size(json: Option<&str>) -> Option<(i32, i32)> {
    let v: serde_json::Value = serde_json::from_str(json?).ok()?;
    let side = |k: &str| v.get(k)?.as_i64().and_then(|x| i32::try_from(x).ok());
    Some((side("original_width")?, side("original_height")?))
}

/// Filters the shard at `tar` into `out_dir`; `None` when its decisions already exist.
pub fn filter_shard(
    scorers: &mut Scorers,
    thresholds: &Thresholds,
    tar: &Path,
    out_dir: &Path,
    options: &ShardOptions,
) -> Result<Option<ShardSummary>, FilterError> {
    let name = llamagen_shards::shard_name_of(tar)
        .map_err(|e| FilterError::Input(e.to_string()))?
        .to_owned();
    let path = output::filter_path(out_dir, &name);
    if path.exists() {
        return Ok(None);
    }
    // Only this attempt writes the shard's decisions now: a temporary of them is a killed
    // attempt's.
    llamagen_shards::atomic::remove_leftovers_for(&[&path])
        .map_err(|e| FilterError::Output(e.to_string()))?;
    let started = Instant::now();
    let samples = llamagen_shards::webdataset::read_samples(tar)
        .map_err(|e| FilterError::Input(e.to_string()))?;
    let mut rows = Vec::with_capacity(samples.len());
    let mut summary = ShardSummary {
        name,
        samples: samples.len(),
        ..ShardSummary::default()
    };
    for chunk in samples.chunks(options.batch_size.max(1)) {
        let mut decoded: Vec<(usize, Array3<u8>)> = Vec::new();
        let mut records = Vec::with_capacity(chunk.len());
        for (i, sample) in chunk.iter().enumerate() {
            let original = original_size(sample.text("json").as_deref());
            let mut r = FilterRecord {
                key: sample.key.clone(),
                keep: false,
                reason: None,
                error: None,
                width: None,
                height: None,
                original_width: original.map(|o| o.0),
                original_height: original.map(|o| o.1),
                watermark: None,
                aesthetic: None,
                clip_similarity: None,
            };
            match sample
                .image()
                .map(|(_, bytes)| decode_rgb(bytes, options.max_pixels))
            {
                None => r.error = Some("no image member".into()),
                Some(Err(e)) => r.error = Some(e),
                Some(Ok(image)) => {
                    r.height = Some(image.dim().0 as i32);
                    r.width = Some(image.dim().1 as i32);
                    decoded.push((i, image));
                }
            }
            records.push(r);
        }
        let captions: Vec<Option<String>> = decoded
            .iter()
            .map(|(i, _)| {
                chunk[*i]
                    .text("txt")
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
            })
            .collect();
        let views: Vec<_> = decoded.iter().map(|(_, img)| img.view()).collect();
        let caption_refs: Vec<Option<&str>> = captions.iter().map(|c| c.as_deref()).collect();
        let scores = scorers.score(&views, &caption_refs)?;
        let mut by_row: Vec<Option<Scores>> = vec![None; chunk.len()];
        for ((i, _), s) in decoded.iter().zip(scores) {
            by_row[*i] = Some(s);
        }
        for (r, scores) in records.iter_mut().zip(by_row) {
            if let Some(s) = scores {
                r.watermark = Some(s.watermark);
                r.aesthetic = Some(s.aesthetic);
                r.clip_similarity = s.clip_similarity;
            }
            // The size rule reads the original size when the json has it (see original_size).
            let size = r.width.zip(r.height).map(|decoded| {
                let (w, h) = r.original_width.zip(r.original_height).unwrap_or(decoded);
                (w.max(0) as u32, h.max(0) as u32)
            });
            let failed = first_failed_rule(&Facts { size, scores }, thresholds);
            summary.funnel.count(failed);
            r.keep = failed.is_none();
            r.reason = failed.map(|i| RULES[i].to_owned());
        }
        rows.extend(records);
    }
    summary.kept = rows.iter().filter(|r| r.keep).count();
    output::write_filter(&path, &rows)?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(Some(summary))
}

/// The funnel of every finished shard in `dir` (recounted from the files, so a re-run or a
/// crash between a file and its database row never counts a shard twice or not at all).
pub fn folder_funnel(dir: &Path) -> Result<(Funnel, usize), FilterError> {
    let mut funnel = Funnel::default();
    let mut shards = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| FilterError::io(dir, e))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let is_filter = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_filter.parquet"));
        if !is_filter {
            continue;
        }
        shards += 1;
        for r in output::read_filter(&path)? {
            let failed = match &r.reason {
                None => None,
                Some(reason) => Some(RULES.iter().position(|x| x == reason).ok_or_else(|| {
                    FilterError::Input(format!("{}: unknown reason {reason:?}", path.display()))
                })?),
            };
            funnel.count(failed);
        }
    }
    Ok((funnel, shards))
}
