//! `llamagen run CONFIG`: the stages of a pipeline config in order, as one pipeline run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::checkpoint_evaluator::{self, EvaluatorOptions};
use crate::config::{PipelineConfig, Stage, record_pipeline_run};
use llamagen_store::runs::{self, Outcome, Trigger};
use llamagen_store::schedule::PipelineLock;
use llamagen_store::{Store, StoreOptions};

use crate::shard_worker::Sharing;
use crate::signals::EXIT_STOPPED;
use crate::stages::ingest::IngestArgs;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline config (TOML).
    pub config: PathBuf,
    /// Work inside this pipeline run (the scheduler makes it, and holds the pipeline's lock)
    /// instead of recording a new one.
    #[arg(long)]
    pub run_id: Option<i64>,
    /// After SIGTERM or Ctrl-C, seconds the shard in hand may take to finish before it is
    /// released for the next run.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    /// Override a config key for this run, e.g. `--set train.epochs=1` (repeatable; the
    /// value is TOML, or a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run only these stages of the config (repeatable), e.g. `--stage encode` to encode with
    /// the config's settings, or `--stage sample --stage evaluate` to benchmark what training
    /// registered.
    #[arg(long = "stage", value_enum, value_name = "STAGE")]
    pub only: Vec<Stage>,
}

pub async fn run(args: &RunArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let mut config = PipelineConfig::load_with(&args.config, &args.overrides)?;
    if !args.only.is_empty() {
        let mut only = args.only.clone();
        only.sort();
        only.dedup();
        config.pipeline.stages = only;
    }
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    // One run of a pipeline at a time, whoever starts it: the scheduler holds the lock for
    // the runs it starts (with --run-id); a run started by hand takes it here.
    let lock = match args.run_id {
        Some(_) => None,
        None => {
            let name = &config.pipeline.name;
            match PipelineLock::try_acquire(store.pool(), name).await? {
                Some(lock) => Some(lock),
                None => {
                    store.close().await?;
                    anyhow::bail!(
                        "pipeline {name:?} has a run in progress (scheduled, or started by hand here or on another machine); wait for it to end"
                    );
                }
            }
        }
    };
    let result = run_stages(&config, args, &store, data_dir).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    store.close().await?;
    result
}

/// The stages of `config` in order inside pipeline run `args.run_id` (recorded now when
/// `None`); the run is closed as succeeded or failed, or left open when a signal stopped it.
pub async fn run_stages(
    config: &PipelineConfig,
    args: &RunArgs,
    store: &Store,
    data_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let pool = store.pool();
    let run_id = match args.run_id {
        Some(id) => id,
        None => record_pipeline_run(pool, config, Trigger::Manual, None).await?,
    };
    println!(
        "pipeline {:?}, run #{run_id}: {}",
        config.pipeline.name,
        config.pipeline.stages_text()
    );
    for &stage in &config.pipeline.stages {
        println!("== {stage}");
        // Ingest and filter record their own stage run (with shards and funnel); the others
        // are recorded here, with their config section, so the run page lists every stage.
        let own_record = matches!(stage, Stage::Ingest | Stage::Filter);
        let stage_run = if own_record {
            None
        } else {
            let section = config.to_json()[stage.as_str()].clone();
            let id = runs::start_stage(pool, run_id, stage.as_str(), &section).await?;
            let (input, output) = stage_paths(config, stage, data_dir);
            runs::set_stage_paths(
                pool,
                id,
                &input.to_string_lossy(),
                &output.to_string_lossy(),
            )
            .await?;
            Some(id)
        };
        let outcome = match stage {
            Stage::Ingest => {
                let ingest_args = IngestArgs::for_pipeline_run(run_id, args.grace_secs);
                crate::stages::ingest::run_with(config, &ingest_args, data_dir)
                    .await
                    .map(|report| (report.code, serde_json::Value::Null))
            }
            Stage::Filter => {
                let shards = PipelineConfig::resolve(data_dir, &config.ingest.output);
                let mut settings = config.filter.clone();
                settings.models = PipelineConfig::resolve(data_dir, &settings.models)
                    .display()
                    .to_string();
                let filtered = match crate::sample::device(config.pipeline.device.as_str()) {
                    Ok(device) => {
                        crate::stages::filter::filter_folder(
                            &settings,
                            &shards,
                            &shards,
                            0,
                            device,
                            &Sharing::ALL,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match filtered {
                    Ok(summary) => crate::stages::filter::record(
                        store,
                        &settings,
                        &shards,
                        &shards,
                        Some(run_id),
                        &summary,
                    )
                    .await
                    .and_then(|_| summary.result())
                    .map(|()| (ExitCode::SUCCESS, serde_json::Value::Null)),
                    Err(e) => Err(e),
                }
            }
            Stage::Caption => {
                // Captions go next to the shards the ingest stage wrote.
                let shards = PipelineConfig::resolve(data_dir, &config.ingest.output);
                crate::stages::caption::caption_folder(
                    &config.caption,
                    &shards,
                    &shards,
                    &Sharing::ALL,
                )
                .await
                .map(|s| {
                    let counts = serde_json::json!({
                        "shards": s.shards_done + s.shards_skipped,
                        "captioned": s.captioned,
                        "failed": s.failed,
                        "without_image": s.no_image,
                    });
                    (ExitCode::SUCCESS, counts)
                })
            }
            Stage::Encode => crate::stages::encode::run_from_config(config, data_dir)
                .await
                .map(|(code, summaries)| (code, encode_counts(&summaries))),
            Stage::Train => match crate::train::args_from_config(config, data_dir) {
                Ok(train_args) => crate::train::run(&train_args, data_dir)
                    .await
                    .map(|summary| {
                        let counts = serde_json::json!({
                            "step": summary.step,
                            "loss": summary.last_loss,
                        });
                        if summary.stopped {
                            (ExitCode::from(EXIT_STOPPED), counts)
                        } else {
                            (ExitCode::SUCCESS, counts)
                        }
                    }),
                Err(e) => Err(e),
            },
            Stage::Sample => checkpoint_evaluator::sample_selected(
                config,
                data_dir,
                config.pipeline.device.as_str(),
            )
            .await
            .map(|(checkpoints, made)| {
                println!("{checkpoints} checkpoint(s) sampled, {made} new image(s)");
                let counts = serde_json::json!({"checkpoints": checkpoints, "new_images": made});
                (ExitCode::SUCCESS, counts)
            }),
            Stage::Evaluate => checkpoint_evaluator::run(
                config,
                data_dir,
                &EvaluatorOptions::drain(config.pipeline.device.as_str()),
            )
            .await
            .map(|summary| {
                println!("{summary}");
                let counts = serde_json::json!({
                    "checkpoints": summary.evaluated,
                    "failed": summary.failed,
                    "evaluations": summary.evaluations.len(),
                    "failed_for_good": summary.failed_for_good,
                });
                if summary.failed_for_good > 0 {
                    (ExitCode::FAILURE, counts)
                } else {
                    (ExitCode::SUCCESS, counts)
                }
            }),
        };
        if let Some(id) = stage_run {
            let (result, error, counts) = match &outcome {
                Ok((code, counts)) if *code == ExitCode::SUCCESS => {
                    (Outcome::Succeeded, None, counts.clone())
                }
                Ok((_, counts)) => (
                    Outcome::Failed,
                    Some(format!("{stage} exited with an error")),
                    counts.clone(),
                ),
                Err(e) => (
                    Outcome::Failed,
                    Some(format!("{e:#}")),
                    serde_json::json!({}),
                ),
            };
            runs::finish_stage(pool, id, result, &counts, error.as_deref()).await?;
        }
        let code = match outcome {
            Ok((code, _)) => code,
            Err(e) => {
                let message = format!("{stage}: {e:#}");
                runs::finish_pipeline_run(pool, run_id, Outcome::Failed, Some(&message)).await?;
                return Err(e.context(format!("run #{run_id}, stage {stage}")));
            }
        };
        if code == ExitCode::from(EXIT_STOPPED) {
            // Stopped by a signal: the run stays open, so a re-run of the stage resumes it.
            println!("run #{run_id} stopped during {stage}; it stays open");
            return Ok(code);
        }
        if code != ExitCode::SUCCESS {
            let message = format!("stage {stage} failed");
            runs::finish_pipeline_run(pool, run_id, Outcome::Failed, Some(&message)).await?;
            println!("run #{run_id} failed in {stage}");
            return Ok(code);
        }
    }
    runs::finish_pipeline_run(pool, run_id, Outcome::Succeeded, None).await?;
    println!("run #{run_id} succeeded");
    Ok(ExitCode::SUCCESS)
}

/// Where a stage recorded by the runner reads from and writes to, for its stage run's row
/// (the run page's output column), as absolute paths: canonical where they exist, as the
/// shard stages record theirs.
fn stage_paths(config: &PipelineConfig, stage: Stage, data_dir: &Path) -> (PathBuf, PathBuf) {
    let under = |p: &str| {
        let path = PipelineConfig::resolve(data_dir, p);
        path.canonicalize()
            .or_else(|_| std::path::absolute(&path))
            .unwrap_or(path)
    };
    let shards = under(&config.ingest.output);
    let samples = under(&config.evaluate.samples_output);
    match stage {
        Stage::Ingest | Stage::Filter | Stage::Caption => (shards.clone(), shards),
        Stage::Encode => (shards, under(&config.encode.codes_output)),
        Stage::Train => (
            under(&config.encode.codes_output),
            under(&config.train.output),
        ),
        Stage::Sample | Stage::Evaluate => (under(&config.train.output), samples),
    }
}

/// The encode stage's counts: the VQ pass's images (and, for text-to-image, the FLAN-T5
/// pass's texts), out of each pass's `--json` summary.
fn encode_counts(summaries: &[serde_json::Value]) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for summary in summaries {
        for key in ["images", "texts", "tokens"] {
            if let Some(v) = summary.get(key).filter(|v| !v.is_null()) {
                counts.insert(key.into(), v.clone());
            }
        }
    }
    counts.into()
}
