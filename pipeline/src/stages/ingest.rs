//! `llamagen ingest`: LAION-COCO metadata to img2dataset-compatible shards, shared by any
//! number of workers through PostgreSQL.
//!
//! A first process prepares the run: it filters the metadata, cuts the kept rows into shard
//! inputs, records the funnel and registers the shards. Then it, and every `--worker` that
//! joins (same config, same output folder, on any machine that sees the folder), claims shards
//! one at a time with a lease it renews while it works. A worker that dies stops renewing;
//! after the lease its shard is claimed again and redone from its input. Shard files are
//! written atomically and a shard with a stats file is never redone, so a killed worker loses
//! at most the shard in hand and duplicates nothing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{PipelineConfig, record_pipeline_run};
use crate::report::StageReport;
use crate::shard_worker::{self, ClaimOptions, ShardDone, work_claims};
use crate::signals::EXIT_STOPPED;
use anyhow::{Context as _, bail};
use indicatif::ProgressBar;
use llamagen_ingest::download::{DownloadOptions, Downloader};
use llamagen_ingest::prepare::{self, Prepared};
use llamagen_ingest::resize::ResizeOptions;
use llamagen_ingest::worker::{Event, run_shard};
use llamagen_shards::{ShardPaths, staging};
use llamagen_store::runs::{self, FunnelStep, ShardCounts, Trigger};
use llamagen_store::{Store, StoreOptions};

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Pipeline config whose `[ingest]` section applies (built-in defaults without one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Metadata parquet files or globs, instead of `ingest.input`.
    #[arg(long)]
    pub input: Vec<String>,
    /// Output folder for the shards, instead of `ingest.output` (which is relative to the
    /// data directory).
    #[arg(long = "out", alias = "output")]
    pub output: Option<PathBuf>,
    /// Join a run that another process prepared instead of preparing one (Slurm array tasks,
    /// Kubernetes indexed Job pods): waits for the preparation, then claims shards.
    #[arg(long)]
    pub worker: bool,
    /// The pipeline run to work on (default: the newest unfinished one writing to the output).
    #[arg(long)]
    pub run: Option<i64>,
    /// Prepare the run (filter, shard inputs, funnel, shards) and exit; prints the run id.
    #[arg(long)]
    pub prepare_only: bool,
    /// Seconds a claimed shard stays this worker's without renewal.
    #[arg(long, default_value_t = 300)]
    pub lease_secs: u64,
    /// Stop after this many shards.
    #[arg(long)]
    pub max_shards: Option<u32>,
    /// Name of this worker in PostgreSQL (default: HOST:PID-TAG, four random hex digits).
    #[arg(long)]
    pub worker_name: Option<String>,
    /// On SIGTERM or Ctrl-C no new shard is claimed, and the shard in hand gets this many
    /// seconds to finish; after that it is released (pending again, the attempt not counted)
    /// for the next worker or run.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    /// Leave the pipeline run open when the stage ends (`llamagen run` closes it after its
    /// last stage).
    #[arg(skip)]
    pub keep_run_open: bool,
    /// Print what the command did as JSON on stdout (its progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
}

impl IngestArgs {
    /// The arguments `llamagen run` uses for its ingest stage in run `run_id`.
    pub fn for_pipeline_run(run_id: i64, grace_secs: u64) -> Self {
        Self {
            config: None,
            input: Vec::new(),
            output: None,
            worker: false,
            run: Some(run_id),
            prepare_only: false,
            lease_secs: 300,
            max_shards: None,
            worker_name: None,
            grace_secs,
            keep_run_open: true,
            json: false,
        }
    }
}

/// The metadata files, sorted (the same order on every machine, so the same shards).
fn inputs(
    args: &IngestArgs,
    config: &PipelineConfig,
    data_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let patterns: Vec<String> = if args.input.is_empty() {
        vec![
            PipelineConfig::resolve(data_dir, &config.ingest.input)
                .display()
                .to_string(),
        ]
    } else {
        args.input.clone()
    };
    let mut files = Vec::new();
    for pattern in &patterns {
        let matched: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("bad input pattern {pattern:?}"))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            bail!("no metadata files match {pattern:?}");
        }
        files.extend(matched);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn funnel_steps(prepared: &Prepared) -> Vec<FunnelStep> {
    prepared
        .funnel
        .steps()
        .into_iter()
        .map(|(rule, threshold, rows_in, dropped)| FunnelStep {
            rule: rule.name().to_owned(),
            threshold,
            rows_in: rows_in as i64,
            rows_dropped: dropped as i64,
        })
        .collect()
}

pub async fn run(args: &IngestArgs, data_dir: &Path) -> anyhow::Result<StageReport> {
    let config = match &args.config {
        Some(path) => PipelineConfig::load(path)?,
        None => PipelineConfig::default(),
    };
    run_with(&config, args, data_dir).await
}

/// [`run`] with a config already loaded (the demo's is built in).
pub async fn run_with(
    config: &PipelineConfig,
    args: &IngestArgs,
    data_dir: &Path,
) -> anyhow::Result<StageReport> {
    let ingest = &config.ingest;
    let output = match &args.output {
        Some(path) => path.clone(),
        None => PipelineConfig::resolve(data_dir, &ingest.output),
    };
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let output = output.canonicalize()?;
    let output_text = output.display().to_string();

    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let pool = store.pool();
    let worker = args
        .worker_name
        .clone()
        .unwrap_or_else(crate::shard_worker::worker_name);

    let mut stage = runs::find_stage_run(pool, "ingest", &output_text, args.run).await?;
    if args.worker && args.run.is_some() && stage.is_none() {
        bail!("run {} has no ingest stage", args.run.unwrap_or_default());
    }
    if !args.worker {
        let files = inputs(args, config, data_dir)?;
        // A run is resumed only over its own preparation: an output folder without one (new,
        // or wiped) starts a new run even if an old run wrote there.
        let prepared_before = prepare::load(&output)?.is_some();
        let open = match stage.filter(|_| prepared_before) {
            Some(open) if open.running => {
                println!("resuming ingest run #{} in {output_text}", open.run_id);
                open
            }
            Some(open) => {
                let state = runs::shard_progress(pool, open.stage_run_id).await?;
                if state.failed == 0 {
                    println!(
                        "ingest into {output_text} already finished in run #{} ({} shards); nothing to do",
                        open.run_id, state.succeeded
                    );
                    return Ok(StageReport::success(serde_json::json!({
                        "run_id": open.run_id,
                        "stage_run_id": open.stage_run_id,
                        "stage_shards": state,
                        "out": output,
                    })));
                }
                let reset = runs::reopen_stage(pool, &open).await?;
                println!(
                    "re-opening ingest run #{} in {output_text}: {reset} failed shard(s) get new attempts",
                    open.run_id
                );
                runs::OpenStage {
                    running: true,
                    ..open
                }
            }
            None => {
                let run_id = match args.run {
                    // `llamagen run` made the pipeline run; this stage joins it.
                    Some(run_id) => run_id,
                    None => record_pipeline_run(pool, config, Trigger::Manual, None).await?,
                };
                let ingest_json = serde_json::to_value(ingest)?;
                let stage_run_id = runs::start_stage(pool, run_id, "ingest", &ingest_json).await?;
                println!("ingest run #{run_id} into {output_text}");
                runs::OpenStage {
                    run_id,
                    stage_run_id,
                    running: true,
                }
            }
        };
        let input_text = files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        runs::set_stage_paths(pool, open.stage_run_id, &input_text, &output_text).await?;
        let prepared = {
            let (ingest, output) = (ingest.clone(), output.clone());
            tokio::task::spawn_blocking(move || prepare::prepare(&files, &ingest, &output))
                .await??
        };
        for (file, column) in &prepared.missing_columns {
            println!("note: {file} has no column {column:?}");
        }
        println!("metadata filter:\n{}", prepared.funnel.table());
        runs::replace_funnel(pool, open.stage_run_id, &funnel_steps(&prepared)).await?;
        runs::add_shards(pool, open.stage_run_id, prepared.shards as i32, 3).await?;
        println!(
            "{} rows kept in {} shard(s) of up to {}",
            prepared.rows, prepared.shards, ingest.rows_per_shard
        );
        stage = Some(open);
        if args.prepare_only {
            println!("run id: {}", open.run_id);
            shard_worker::finish_if_done(pool, open, args.keep_run_open).await?;
            return Ok(StageReport::success(serde_json::json!({
                "run_id": open.run_id,
                "stage_run_id": open.stage_run_id,
                "rows_kept": prepared.rows,
                "shards": prepared.shards,
                "out": output,
            })));
        }
    }
    let open = match stage {
        Some(open) => open,
        None => wait_for_run(pool, &output_text).await?,
    };
    if !open.running {
        println!(
            "ingest run #{} into {output_text} has finished; nothing to do",
            open.run_id
        );
        return Ok(StageReport::success(serde_json::json!({
            "run_id": open.run_id,
            "stage_run_id": open.stage_run_id,
            "out": output,
        })));
    }
    let prepared = wait_for_preparation(&output).await?;

    let downloader = Arc::new(Downloader::new(DownloadOptions::from_config(ingest))?);
    let resize = Arc::new(ResizeOptions {
        image_size: ingest.image_size,
        mode: ingest
            .resize_mode
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
        jpeg_quality: ingest.jpeg_quality,
        max_pixels: ingest.max_image_pixels,
        max_aspect_ratio: ingest.metadata_filter.max_aspect_ratio,
    });
    publish_recorded(pool, open.stage_run_id, &output).await?;
    let progress = Progress::new(prepared.rows);
    let stop = crate::signals::StopSignal::listen();
    let claims = ClaimOptions {
        worker: worker.clone(),
        lease: Duration::from_secs(args.lease_secs.max(2)),
        grace: Duration::from_secs(args.grace_secs),
        max_shards: args.max_shards,
        keep_run_open: args.keep_run_open,
        spinner: false,
        open_shards: ingest.open_shards as usize,
    };
    let (progress_ref, output_ref, downloader_ref, resize_ref) =
        (&progress, &output, &downloader, &resize);
    let walked = work_claims(pool, open, &claims, Some(&stop), move |claim| async move {
        let index = claim.lease.shard_index as u32;
        let name = format!("{index:05}");
        let work = async {
            let rows = {
                let output = output_ref.clone();
                tokio::task::spawn_blocking(move || prepare::read_shard(&output, index)).await??
            };
            let on_row = |e: Event| match e {
                Event::AllRowsStarted => claim.tail_started(),
                e => progress_ref.row(e),
            };
            let finished = ShardPaths::new(output_ref, index);
            // This attempt's files go to a folder of its own; the loop moves them into place
            // once the database records the shard as this attempt's.
            let staged = (!finished.is_finished())
                .then(|| staging::attempt_dir(output_ref, index, claim.lease.attempt));
            if let Some(staged) = &staged {
                // Other attempts at this shard are dead (it is claimed by this one now).
                for dead in staging::staged_attempts(output_ref)? {
                    if dead.index == index && &dead.path != staged {
                        staging::discard(&dead.path)?;
                    }
                }
            }
            let stats = run_shard(
                index,
                rows,
                ingest.rows_per_shard,
                staged.as_deref().unwrap_or(output_ref),
                downloader_ref.clone(),
                resize_ref.clone(),
                ingest.concurrency as usize,
                &on_row,
            )
            .await;
            let stats = match (stats, &staged) {
                (Ok(stats), _) => stats,
                // A failed attempt leaves nothing behind (a full disk: not even its folder).
                (Err(e), Some(staged)) => {
                    staging::discard(staged)?;
                    return Err(e.into());
                }
                (Err(e), None) => return Err(e.into()),
            };
            let counts = ShardCounts {
                input_rows: stats.count as i64,
                output_rows: stats.successes as i64,
                failed_rows: (stats.failed_to_download + stats.failed_to_resize) as i64,
                bytes_written: stats.bytes_written as i64,
                extra: serde_json::json!({
                    "failed_to_download": stats.failed_to_download,
                    "failed_to_resize": stats.failed_to_resize,
                    "bytes_downloaded": stats.bytes_downloaded,
                    "status_dict": stats.status_dict,
                    "seconds": stats.seconds,
                }),
            };
            let line = format!(
                "shard {index:05}: {} of {} images in {:.1} s ({} failed to download, {} to resize)",
                stats.successes,
                stats.count,
                stats.duration,
                stats.failed_to_download,
                stats.failed_to_resize
            );
            progress_ref.println(line.clone());
            // Printed above the progress bar already.
            let line = String::new();
            anyhow::Ok(match staged {
                Some(staged) => ShardDone::Staged {
                    line,
                    counts,
                    staged,
                    folder: output_ref.clone(),
                },
                None => ShardDone::Worked { line, counts },
            })
        };
        (name, work.await)
    })
    .await?;
    progress.finish();
    // Another worker may have been recorded and stopped before moving its files.
    publish_recorded(pool, open.stage_run_id, &output).await?;
    let state = walked.progress.unwrap_or_default();
    let done_here = walked.done;
    let released = walked.released.join(", ");
    let mut summary = walked.summary();
    summary["worker"] = worker.clone().into();
    summary["run_id"] = open.run_id.into();
    summary["stage_run_id"] = open.stage_run_id.into();
    summary["images_written"] = progress.ok.load(Ordering::Relaxed).into();
    summary["images_failed"] = progress.failed.load(Ordering::Relaxed).into();
    summary["out"] = serde_json::json!(output);
    if walked.stopped {
        println!(
            "worker {worker}: stopped by signal after {done_here} shard(s){}; run #{} stays open: re-run to resume",
            if released.is_empty() {
                String::new()
            } else {
                format!(", shard(s) {released} released")
            },
            open.run_id
        );
        return Ok(StageReport::new(ExitCode::from(EXIT_STOPPED), summary));
    }
    println!(
        "worker {worker}: {done_here} shard(s), {} images written, {} failed; run #{}: {} of {} shards done{}",
        progress.ok.load(Ordering::Relaxed),
        progress.failed.load(Ordering::Relaxed),
        open.run_id,
        state.succeeded,
        state.total(),
        if state.failed > 0 {
            format!(", {} failed for good", state.failed)
        } else {
            String::new()
        }
    );
    let code = if state.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    Ok(StageReport::new(code, summary))
}

/// Settles the staged attempts in `output`: the one the database recorded as a shard's is
/// moved into place (its worker stopped between the record and the moves); those of attempts
/// that were not recorded, and will not be, are removed. An attempt still running is left.
async fn publish_recorded(
    pool: &sqlx::PgPool,
    stage_run_id: i64,
    output: &Path,
) -> anyhow::Result<()> {
    let staged = staging::staged_attempts(output)?;
    if staged.is_empty() {
        return Ok(());
    }
    let shards = runs::shard_attempts(pool, stage_run_id).await?;
    for attempt in staged {
        let shard = shards
            .iter()
            .find(|(index, _, _)| u32::try_from(*index).ok() == Some(attempt.index));
        match shard {
            Some((_, status, attempts))
                if *attempts == attempt.attempt && status == "succeeded" =>
            {
                staging::publish(&attempt.path, output, attempt.index)?;
                println!(
                    "shard {:05}: moved the files of its recorded attempt {} into place",
                    attempt.index, attempt.attempt
                );
            }
            Some((_, status, attempts)) if *attempts == attempt.attempt && status == "running" => {}
            _ => staging::discard(&attempt.path)?,
        }
    }
    Ok(())
}

/// A `--worker` started before the preparing process registered the run waits for it.
async fn wait_for_run(pool: &sqlx::PgPool, output: &str) -> anyhow::Result<runs::OpenStage> {
    for _ in 0..600 {
        if let Some(open) = runs::find_stage_run(pool, "ingest", output, None).await? {
            return Ok(open);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!(
        "no ingest run writing to {output} appeared within 10 minutes; start one without --worker"
    )
}

async fn wait_for_preparation(output: &Path) -> anyhow::Result<Prepared> {
    for _ in 0..3600 {
        if let Some(prepared) = prepare::load(output)? {
            return Ok(prepared);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("{} was not prepared within an hour", output.display())
}

/// The progress bar: images/s and error counts (hidden when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
    ok: AtomicU64,
    failed: AtomicU64,
    started: Instant,
}

impl Progress {
    fn new(rows: u64) -> Self {
        let bar = crate::progress::bar(rows, "rows");
        Progress {
            bar,
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn row(&self, event: Event) {
        match event {
            Event::Success => self.ok.fetch_add(1, Ordering::Relaxed),
            Event::FailedToDownload | Event::FailedToResize => {
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
            Event::AllRowsStarted => return,
        };
        let ok = self.ok.load(Ordering::Relaxed);
        let rate = ok as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.inc(1);
        self.bar.set_message(format!(
            "{rate:.0} images/s, {} errors",
            self.failed.load(Ordering::Relaxed)
        ));
    }

    fn println(&self, line: String) {
        crate::progress::println(&self.bar, line);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
