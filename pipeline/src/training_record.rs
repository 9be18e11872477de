//! What a training command records in PostgreSQL, shared by the GPT and tokenizer trainers:
//! the model, one training run (reopened when a run resumes from one of its checkpoints), the
//! logged scalars, each checkpoint, and the run's end.

use std::path::Path;

use llamagen_store::results::{self, NewCheckpoint, NewModel};
use llamagen_store::{Store, training};

use crate::provenance::{file_sha256, git_revision};

/// A training run being recorded.
pub struct TrainingRecord {
    store: Store,
    pub model_id: i64,
    pub run_id: i64,
    revision: Option<String>,
    config: serde_json::Value,
    seed: i64,
}

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Succeeded,
    Failed,
    /// Stopped by SIGTERM or Ctrl-C after writing a checkpoint; the same command resumes it.
    Cancelled,
}

/// One checkpoint as the trainer wrote it.
pub struct CheckpointRow<'a> {
    pub path: &'a Path,
    pub sha256: &'a str,
    pub step: i64,
    pub epoch: f64,
    /// Image tokens (GPT) or images (tokenizer) trained on.
    pub seen: i64,
    pub loss: f64,
}

/// `OUT/training_run.json`: the run that trains into OUT, so that a trainer killed before
/// its first checkpoint is restarted as the same run rather than a second one.
const RUN_MARKER: &str = "training_run.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct RunMarker {
    run_id: i64,
    model_id: i64,
}

impl TrainingRecord {
    /// Registers `model` and opens its training run: the run of `resume_from`'s checkpoint when
    /// there is one; else the run that `out` was started for, if it registered no checkpoint
    /// (a restart from scratch); a new one otherwise.
    pub async fn open(
        data_dir: &Path,
        out: &Path,
        model: &NewModel<'_>,
        resume_from: Option<&Path>,
        seed: i64,
        global_batch: i32,
    ) -> anyhow::Result<Self> {
        let store = Store::open(&llamagen_store::StoreOptions::from_env(data_dir)).await?;
        let pool = store.pool();
        let revision = git_revision();
        let model_id = results::upsert_model(pool, model).await?;
        let marker = out.join(RUN_MARKER);
        let resumed = match resume_from {
            Some(path) => Some((path, file_sha256(path)?.0)),
            None => None,
        };
        let previous = match &resumed {
            Some((_, sha)) => training::training_run_of_checkpoint(pool, model_id, sha).await?,
            None => None,
        };
        let previous = match previous {
            Some(run) => Some(run),
            // The run `out` was started for, when the checkpoint to resume from is not
            // registered (the trainer was killed between writing and registering it) or when
            // there is none and that run registered none either (killed before its first).
            None => {
                // Unreadable (torn, another format) counts as absent: a new run is started.
                let started = std::fs::read(&marker)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<RunMarker>(&bytes).ok())
                    .filter(|m| m.model_id == model_id);
                match started {
                    Some(m) => {
                        match training::checkpoints_of_run(pool, m.run_id, model_id).await? {
                            Some(0) => Some(m.run_id),
                            Some(_) if resumed.is_some() => Some(m.run_id),
                            _ => None,
                        }
                    }
                    None => None,
                }
            }
        };
        let run_id = match previous {
            Some(id) => {
                training::reopen_training_run(pool, id).await?;
                id
            }
            None => {
                let start = resumed
                    .as_ref()
                    .and_then(|(path, _)| step_in_name(path))
                    .unwrap_or(0);
                refuse_steps_taken(pool, model, model_id, start).await?;
                training::begin_training_run(
                    pool,
                    model_id,
                    model.config,
                    revision.as_deref(),
                    seed,
                    global_batch,
                )
                .await?
            }
        };
        let written = serde_json::to_vec(&RunMarker { run_id, model_id })?;
        llamagen_shards::atomic::write_bytes(&marker, &written)?;
        println!("training run #{run_id} of model {:?}", model.name);
        let record = TrainingRecord {
            store,
            model_id,
            run_id,
            revision,
            config: model.config.clone(),
            seed,
        };
        if let Some((path, sha)) = &resumed {
            record.register_resumed(path, sha).await?;
        }
        Ok(record)
    }

    /// Scalars of `step` (a step logged again after a resume replaces its values).
    pub async fn log(&self, step: i64, values: &[(&str, f64)]) -> anyhow::Result<()> {
        training::log_training_metrics(self.store.pool(), self.run_id, step, values).await?;
        Ok(())
    }

    pub async fn checkpoint(&self, c: &CheckpointRow<'_>) -> anyhow::Result<()> {
        self.register(c.path, c.sha256, c.step, Some((c.epoch, c.seen, c.loss)))
            .await
    }

    /// Registers the checkpoint a run resumes from if a kill came between writing and
    /// registering it (what its loss was is not known then; its step is in its name). A
    /// registered one keeps its row.
    async fn register_resumed(&self, path: &Path, sha256: &str) -> anyhow::Result<()> {
        match step_in_name(path) {
            Some(step) => self.register(path, sha256, step, None).await,
            None => Ok(()),
        }
    }

    /// One checkpoint row of this run; `trained` is (epoch, seen, loss) when known.
    async fn register(
        &self,
        path: &Path,
        sha256: &str,
        step: i64,
        trained: Option<(f64, i64, f64)>,
    ) -> anyhow::Result<()> {
        let shown = path.display().to_string();
        let bytes = std::fs::metadata(path)?.len() as i64;
        let id = results::register_checkpoint(
            self.store.pool(),
            &NewCheckpoint {
                model_id: self.model_id,
                training_run_id: Some(self.run_id),
                path: &shown,
                sha256,
                bytes: Some(bytes),
                step,
                epoch: trained.map(|t| t.0),
                tokens_seen: trained.map(|t| t.1),
                train_loss: trained.map(|t| t.2),
                config: Some(&self.config),
                git_revision: self.revision.as_deref(),
                seed: Some(self.seed),
                ..Default::default()
            },
        )
        .await?;
        // Otherwise the benchmark stages would sample nothing for this model, unexplained.
        if let Some((model, at)) =
            results::checkpoint_held_by_another_model(self.store.pool(), id, self.model_id).await?
        {
            tracing::warn!(
                "{shown} has the same bytes as model {model:?}'s checkpoint at step {at}: it \
                 stays that model's (with its evaluations), and this model gets no row for it; \
                 train with another seed or other data to get checkpoints of its own"
            );
        }
        Ok(())
    }

    /// Records how the run ended and closes the connection.
    pub async fn finish(self, end: RunEnd) -> anyhow::Result<()> {
        let status = match end {
            RunEnd::Succeeded => "succeeded",
            RunEnd::Failed => "failed",
            RunEnd::Cancelled => "cancelled",
        };
        training::finish_training_run(self.store.pool(), self.run_id, status).await?;
        self.store.close().await?;
        Ok(())
    }
}

/// The step a checkpoint's file name gives (`0005000.safetensors`).
fn step_in_name(path: &Path) -> Option<i64> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<i64>().ok())
}

/// A new run of a model that another run has already trained past `start` would write its
/// own checkpoints at steps the model has, and the first of them could not be registered:
/// refused now, before any training, rather than at that first checkpoint.
async fn refuse_steps_taken(
    pool: &sqlx::PgPool,
    model: &NewModel<'_>,
    model_id: i64,
    start: i64,
) -> anyhow::Result<()> {
    let Some(earlier) = training::newest_checkpoint_after(pool, model_id, start).await? else {
        return Ok(());
    };
    let run = earlier.training_run_id.map_or_else(
        || "no training run".to_string(),
        |id| format!("training run #{id}"),
    );
    anyhow::bail!(
        "model {:?} already has checkpoints up to step {} ({run}; newest {}), and this run \
         would start a new one from step {start}: to continue that run, train into the folder \
         that holds its checkpoints; to train afresh, use another model name (a pipeline's \
         trained model is named after the pipeline)",
        model.name,
        earlier.step,
        earlier.path,
    )
}

/// Prints a checkpoint the trainer wrote and registers it when the run is recorded.
pub async fn checkpoint_written(
    record: Option<&TrainingRecord>,
    bar: &indicatif::ProgressBar,
    row: &CheckpointRow<'_>,
) -> anyhow::Result<()> {
    crate::progress::println(
        bar,
        format!(
            "checkpoint {} (sha256 {})",
            row.path.display(),
            &row.sha256[..12.min(row.sha256.len())]
        ),
    );
    if let Some(record) = record {
        record.checkpoint(row).await?;
    }
    Ok(())
}

/// Records how a training loop ended (when the run is recorded) and says so for a stop: failed
/// on an error, cancelled when a signal stopped it, succeeded otherwise.
pub async fn end_run(
    record: Option<TrainingRecord>,
    result: &anyhow::Result<()>,
    stopped: bool,
    step: i64,
) -> anyhow::Result<()> {
    let end = match (result, stopped) {
        (Err(_), _) => RunEnd::Failed,
        (Ok(()), true) => RunEnd::Cancelled,
        (Ok(()), false) => RunEnd::Succeeded,
    };
    if let Some(record) = record {
        record.finish(end).await?;
    }
    if end == RunEnd::Cancelled {
        println!(
            "stopped at step {step} by a signal, checkpoint written; the same command resumes"
        );
    }
    Ok(())
}
