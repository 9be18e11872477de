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

impl TrainingRecord {
    /// Registers `model` and opens its training run: the run of `resume_from`'s checkpoint when
    /// there is one, a new one otherwise.
    pub async fn open(
        data_dir: &Path,
        model: &NewModel<'_>,
        resume_from: Option<&Path>,
        seed: i64,
        global_batch: i32,
    ) -> anyhow::Result<Self> {
        let store = Store::open(&llamagen_store::StoreOptions::from_env(data_dir)).await?;
        let pool = store.pool();
        let revision = git_revision();
        let model_id = results::upsert_model(pool, model).await?;
        let previous = match resume_from {
            Some(path) => training::training_run_of_checkpoint(pool, &file_sha256(path)?.0).await?,
            None => None,
        };
        let run_id = match previous {
            Some(id) => {
                training::reopen_training_run(pool, id).await?;
                id
            }
            None => {
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
        println!("training run #{run_id} of model {:?}", model.name);
        Ok(TrainingRecord {
            store,
            model_id,
            run_id,
            revision,
            config: model.config.clone(),
            seed,
        })
    }

    /// Scalars of `step` (a step logged again after a resume replaces its values).
    pub async fn log(&self, step: i64, values: &[(&str, f64)]) -> anyhow::Result<()> {
        training::log_training_metrics(self.store.pool(), self.run_id, step, values).await?;
        Ok(())
    }

    pub async fn checkpoint(&self, c: &CheckpointRow<'_>) -> anyhow::Result<()> {
        let path = c.path.display().to_string();
        let bytes = std::fs::metadata(c.path)?.len() as i64;
        results::register_checkpoint(
            self.store.pool(),
            &NewCheckpoint {
                model_id: self.model_id,
                training_run_id: Some(self.run_id),
                path: &path,
                sha256: c.sha256,
                bytes: Some(bytes),
                step: c.step,
                epoch: Some(c.epoch),
                tokens_seen: Some(c.seen),
                train_loss: Some(c.loss),
                config: Some(&self.config),
                git_revision: self.revision.as_deref(),
                seed: Some(self.seed),
                ..Default::default()
            },
        )
        .await?;
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
