//! `llamagen filter`: the post-download filter over a shard folder (`llamagen-filter`):
//! decisions next to the shards as `NNNNN_filter.parquet`, and the funnel in PostgreSQL as the
//! `filter` stage of the pipeline run that ingested the shards, continuing its metadata funnel.

use std::path::{Path, PathBuf};

use crate::config::{FilterConfig, PipelineConfig};
use anyhow::Context as _;

use crate::report::StageReport;
use crate::shard_worker::WorkerArgs;
use crate::shard_worker::{self, ShardDone, Sharing, StageTarget};
use crate::signals::StopSignal;
use llamagen_filter::FilterSettings;
use llamagen_filter::rules::{RULES, Thresholds, thresholds_text};
use llamagen_filter::scorers::Scorers;
use llamagen_filter::shard::{ShardOptions, filter_shard, folder_funnel};
use llamagen_native::onnx::OnnxDevice;
use llamagen_store::runs::{self, FunnelStep, Outcome, ShardCounts, Trigger};
use llamagen_store::{Store, StoreOptions};

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// The folder of webdataset shards (`llamagen ingest` or img2dataset output).
    #[arg(long)]
    pub input: PathBuf,
    /// Where `NNNNN_filter.parquet` go; the shard folder itself by default.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A pipeline config whose `[filter]` section gives the settings (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The folder of scripts/export_filter_models.py.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Drop images narrower than this (pixels, decoded).
    #[arg(long)]
    pub min_width: Option<u32>,
    /// Drop images lower than this (pixels, decoded).
    #[arg(long)]
    pub min_height: Option<u32>,
    /// Drop images whose watermark probability (LAION's detector) is at least this.
    #[arg(long)]
    pub max_watermark: Option<f64>,
    /// Drop images whose LAION aesthetic score is below this.
    #[arg(long, allow_negative_numbers = true)]
    pub min_aesthetic: Option<f64>,
    /// Drop images whose CLIP image-caption cosine similarity is below this.
    #[arg(long, allow_negative_numbers = true)]
    pub min_clip_similarity: Option<f64>,
    /// Images per model batch.
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// ONNX Runtime threads per model run (0: as many as this process may use; docs/deploy.md).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// cpu, cuda or auto: where CLIP and the two heads run (a GPU through ONNX Runtime's CUDA
    /// execution provider; without it, the CPU, and the log says why).
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Do not record the funnel in PostgreSQL.
    #[arg(long, alias = "no-db")]
    pub no_record: bool,
    /// Print what the command did as JSON on stdout (its progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
}

impl FilterArgs {
    fn settings(&self) -> anyhow::Result<FilterConfig> {
        let mut f = match &self.config {
            Some(path) => PipelineConfig::load(path)?.filter,
            None => FilterConfig::default(),
        };
        if let Some(m) = &self.models {
            f.models = m.display().to_string();
        }
        f.min_width = self.min_width.unwrap_or(f.min_width);
        f.min_height = self.min_height.unwrap_or(f.min_height);
        f.max_watermark = self.max_watermark.unwrap_or(f.max_watermark);
        f.min_aesthetic = self.min_aesthetic.unwrap_or(f.min_aesthetic);
        f.min_clip_similarity = self.min_clip_similarity.unwrap_or(f.min_clip_similarity);
        f.batch_size = self.batch_size.unwrap_or(f.batch_size);
        anyhow::ensure!(f.batch_size > 0, "--batch-size must be positive");
        Ok(f)
    }
}

pub fn thresholds(f: &FilterConfig) -> Thresholds {
    Thresholds {
        min_width: f.min_width,
        min_height: f.min_height,
        max_watermark: f.max_watermark,
        min_aesthetic: f.min_aesthetic,
        min_clip_similarity: f.min_clip_similarity,
    }
}

pub async fn run(args: &FilterArgs, data_dir: &Path) -> anyhow::Result<StageReport> {
    let settings = args.settings()?;
    let out = args.out.clone().unwrap_or_else(|| args.input.clone());
    let sharing = args.workers.sharing(data_dir);
    let device = crate::sample::device(&args.device)?;
    let summary =
        filter_folder(&settings, &args.input, &out, args.threads, device, &sharing).await?;
    let mut run_id = None;
    if !args.no_record {
        let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
        let recorded = record(&store, &settings, &args.input, &out, None, &summary).await;
        store.close().await?;
        run_id = Some(recorded?);
    }
    summary.result()?;
    Ok(StageReport::success(serde_json::json!({
        "shards_done": summary.shards_done,
        "shards_already_done": summary.shards_skipped,
        "shards_total": summary.shards_total,
        "shards_decided": summary.shards_decided,
        "stopped": summary.stopped,
        "run_id": run_id,
        "out": out,
    })))
}

/// What a folder's filtering did.
#[derive(Debug, Default)]
pub struct FolderSummary {
    pub shards_done: usize,
    pub shards_skipped: usize,
    /// Shards of the folder (all workers') and those with decisions.
    pub shards_total: usize,
    pub shards_decided: usize,
    /// Shards that could not be filtered (unreadable tar, ...), with the reason; the others
    /// went on.
    pub failed: Vec<String>,
    /// A stop (SIGTERM, Ctrl-C) ended the walk early.
    pub stopped: bool,
    /// With `--leases`: the stage run the workers share (the funnel is recorded there).
    pub stage: Option<runs::OpenStage>,
    /// How long the folder took, models opened included: without leases the stage run is
    /// recorded once the work is done, and starts this long before.
    pub seconds: f64,
}

impl FolderSummary {
    /// An error naming the shards that failed, if any did.
    pub fn result(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.failed.is_empty(),
            "{} shard(s) could not be filtered (the others were): {}",
            self.failed.len(),
            self.failed.join("; ")
        );
        Ok(())
    }
}

/// Filters every shard of `input` this worker owns into `out`; a shard that fails is reported
/// in the summary and the others go on.
pub async fn filter_folder(
    settings: &FilterConfig,
    input: &Path,
    out: &Path,
    threads: usize,
    device: tch::Device,
    sharing: &Sharing,
) -> anyhow::Result<FolderSummary> {
    let opened = std::time::Instant::now();
    let models = PathBuf::from(&settings.models);
    let mut scorers = Scorers::open_on(&models, threads, OnnxDevice::of(device))
        .with_context(|| format!("opening the filter models in {}", models.display()))?;
    let hashes = crate::provenance::files_sha256(&scorers.files())?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let thresholds = thresholds(settings);
    FilterSettings {
        thresholds: thresholds.clone(),
        models: hashes,
    }
    .check_or_write(out)?;
    let options = ShardOptions {
        batch_size: settings.batch_size as usize,
        ..ShardOptions::default()
    };
    let (all, names) = shard_worker::tar_shards(input)?;
    let mut summary = FolderSummary {
        shards_total: all.len(),
        ..FolderSummary::default()
    };
    let started = std::time::Instant::now();
    let mut images = 0;
    let settings_json = serde_json::to_value(settings)?;
    let target = StageTarget {
        stage: "filter",
        input,
        output: out,
        settings: &settings_json,
        run_id: None,
    };
    let stop = StopSignal::listen();
    let walked = shard_worker::walk(&names, sharing, target, Some(&stop), |i, _| {
        let (s, t, o) = (&mut scorers, &thresholds, &options);
        let tar = &all[i];
        shard_worker::blocking(|| {
            let Some(s) = filter_shard(s, t, tar, out, o)
                .with_context(|| format!("filtering {}", tar.display()))?
            else {
                return Ok(ShardDone::AlreadyDone);
            };
            images += s.samples;
            let reasons: Vec<String> = RULES
                .iter()
                .zip(s.funnel.dropped)
                .filter(|(_, n)| *n > 0)
                .map(|(rule, n)| format!("{n} {rule}"))
                .collect();
            Ok(ShardDone::Worked {
                line: format!(
                    "shard {}: {} of {} kept in {:.1} s (dropped: {})",
                    s.name,
                    s.kept,
                    s.samples,
                    s.seconds,
                    if reasons.is_empty() {
                        "none".into()
                    } else {
                        reasons.join(", ")
                    }
                ),
                counts: ShardCounts {
                    input_rows: s.samples as i64,
                    output_rows: s.kept as i64,
                    ..ShardCounts::default()
                },
            })
        })
    })
    .await?;
    summary.shards_done = walked.done;
    summary.shards_skipped = walked.kept;
    summary.failed = walked.failed.clone();
    summary.stopped = walked.stopped;
    summary.stage = walked.stage;
    summary.seconds = opened.elapsed().as_secs_f64();
    summary.shards_decided = all
        .iter()
        .filter(|tar| {
            llamagen_shards::shard_name_of(tar)
                .is_ok_and(|name| llamagen_filter::output::filter_path(out, name).exists())
        })
        .count();
    println!(
        "{} shard(s) filtered ({images} images, {:.1} images/s), {} already done; decisions in {}",
        summary.shards_done,
        images as f64 / started.elapsed().as_secs_f64().max(1e-9),
        summary.shards_skipped,
        out.display()
    );
    Ok(summary)
}

/// Records the folder's funnel (recounted from its files) as the `filter` stage of `run_id`,
/// or of the run that ingested `input`, or of a new run when none did (img2dataset shards);
/// returns the run it went to.
pub async fn record(
    store: &Store,
    settings: &FilterConfig,
    input: &Path,
    out: &Path,
    run_id: Option<i64>,
    summary: &FolderSummary,
) -> anyhow::Result<i64> {
    let pool = store.pool();
    // The run: the one given; else the one whose filter stage already wrote `out` (a re-run);
    // else the one that ingested `input`; else a new one (shards made elsewhere).
    let (input_text, out_text) = (input.display().to_string(), out.display().to_string());
    if let Some(stage) = summary.stage {
        // The workers' shared stage run: each worker recounts the funnel from the files; the
        // shard-worker loop closes the stage.
        record_funnel(pool, settings, out, stage.stage_run_id).await?;
        return Ok(stage.run_id);
    }
    let run_id = match run_id {
        Some(id) => id,
        None => match runs::find_stage_run(pool, "filter", &out_text, None).await? {
            Some(open) => open.run_id,
            None => match runs::find_stage_run(pool, "ingest", &input_text, None).await? {
                Some(open) => open.run_id,
                None => {
                    let mut config = PipelineConfig::default();
                    config.pipeline.name = "filter".into();
                    config.pipeline.stages = vec![crate::config::Stage::Filter];
                    config.filter = settings.clone();
                    crate::config::record_pipeline_run(pool, &config, Trigger::Manual, None).await?
                }
            },
        },
    };
    let stage_run_id =
        runs::start_stage(pool, run_id, "filter", &serde_json::to_value(settings)?).await?;
    runs::backdate_stage_start(pool, stage_run_id, summary.seconds).await?;
    runs::set_stage_paths(pool, stage_run_id, &input_text, &out_text).await?;
    let funnel = record_funnel(pool, settings, out, stage_run_id).await?;
    if summary.shards_decided == summary.shards_total {
        let counts = serde_json::json!({
            "samples": funnel.rows_in[0],
            "kept": funnel.kept(),
            "shards": summary.shards_total,
        });
        runs::finish_stage(pool, stage_run_id, Outcome::Succeeded, &counts, None).await?;
    }
    Ok(run_id)
}

/// The folder's funnel, recounted from its decision files, as the stage run's funnel.
async fn record_funnel(
    pool: &sqlx::PgPool,
    settings: &FilterConfig,
    out: &Path,
    stage_run_id: i64,
) -> anyhow::Result<llamagen_filter::rules::Funnel> {
    let (funnel, _) = folder_funnel(out)?;
    let texts = thresholds_text(&thresholds(settings));
    let steps: Vec<FunnelStep> = RULES
        .iter()
        .enumerate()
        .map(|(i, rule)| FunnelStep {
            rule: (*rule).to_owned(),
            threshold: texts[i].clone(),
            rows_in: funnel.rows_in[i] as i64,
            rows_dropped: funnel.dropped[i] as i64,
        })
        .collect();
    runs::replace_funnel(pool, stage_run_id, &steps).await?;
    println!(
        "funnel recorded: {} samples, {} kept",
        funnel.rows_in[0],
        funnel.kept()
    );
    Ok(funnel)
}
