//! Models, checkpoints, evaluations and their metrics: what the leaderboard is made of.
//!
//! An evaluation is identified by (checkpoint, benchmark, hash of everything that changes its
//! result); running the same configuration again updates that row and replaces its metrics,
//! so results are never duplicated.

use sqlx::PgPool;

use crate::StoreError;
use crate::runs::config_sha256;

/// A model to register (or update, matched by name).
#[derive(Debug, Clone)]
pub struct NewModel<'a> {
    pub name: &'a str,
    /// "generator" or "tokenizer".
    pub kind: &'a str,
    pub architecture: &'a str,
    pub size: Option<&'a str>,
    pub task: Option<&'a str>,
    pub params: Option<i64>,
    pub image_size: Option<i32>,
    pub config: &'a serde_json::Value,
}

/// Registers a model by name; an existing model keeps its id and takes the new description,
/// except where the new one says nothing: a `None` field keeps the old value, and the config is
/// merged key by key (the new value wins), so a benchmark that records only the architecture
/// (`{"gpt": ...}`) does not erase the training settings that training registered beside it.
pub async fn upsert_model(pool: &PgPool, model: &NewModel<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO models (name, kind, architecture, size, task, params, image_size, config)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, architecture = EXCLUDED.architecture,
             size = coalesce(EXCLUDED.size, models.size),
             task = coalesce(EXCLUDED.task, models.task),
             params = coalesce(EXCLUDED.params, models.params),
             image_size = coalesce(EXCLUDED.image_size, models.image_size),
             config = models.config || EXCLUDED.config
         RETURNING id",
    )
    .bind(model.name)
    .bind(model.kind)
    .bind(model.architecture)
    .bind(model.size)
    .bind(model.task)
    .bind(model.params)
    .bind(model.image_size)
    .bind(model.config)
    .fetch_one(pool)
    .await?)
}

/// A checkpoint file to register.
#[derive(Debug, Clone, Default)]
pub struct NewCheckpoint<'a> {
    pub model_id: i64,
    pub training_run_id: Option<i64>,
    pub path: &'a str,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: &'a str,
    pub bytes: Option<i64>,
    pub step: i64,
    pub epoch: Option<f64>,
    pub tokens_seen: Option<i64>,
    pub train_loss: Option<f64>,
    pub ema: bool,
    pub config: Option<&'a serde_json::Value>,
    pub git_revision: Option<&'a str>,
    pub seed: Option<i64>,
}

/// Registers a checkpoint; the same file (same SHA-256) registered again keeps its row. A model
/// holds one checkpoint per step (and EMA flag): another file at a step it already has is
/// refused with what to do about it.
pub async fn register_checkpoint(pool: &PgPool, c: &NewCheckpoint<'_>) -> Result<i64, StoreError> {
    let empty = serde_json::json!({});
    sqlx::query_scalar(
        "INSERT INTO checkpoints (model_id, training_run_id, path, sha256, bytes, step, epoch,
                                  tokens_seen, train_loss, ema, config, git_revision, seed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (sha256) DO UPDATE SET path = EXCLUDED.path
         RETURNING id",
    )
    .bind(c.model_id)
    .bind(c.training_run_id)
    .bind(c.path)
    .bind(c.sha256)
    .bind(c.bytes)
    .bind(c.step)
    .bind(c.epoch)
    .bind(c.tokens_seen)
    .bind(c.train_loss)
    .bind(c.ema)
    .bind(c.config.unwrap_or(&empty))
    .bind(c.git_revision)
    .bind(c.seed)
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db)
            if db.constraint() == Some("checkpoints_model_id_step_ema_key") =>
        {
            StoreError::Invalid(format!(
                "{}: model #{} already has a{} checkpoint at step {} from another file (an \
                 earlier training run of the same model name); train under another name (the \
                 pipeline's name is part of it) or keep training the earlier run",
                c.path,
                c.model_id,
                if c.ema { "n EMA" } else { "" },
                c.step
            ))
        }
        _ => StoreError::Database(e),
    })
}

/// The model that holds checkpoint `checkpoint_id` when it is not `model_id`: its name and the
/// checkpoint's step. The same bytes trained again under another name (the same data, seed
/// and settings) are the first model's row, as [`register_checkpoint`] keeps it.
pub async fn checkpoint_held_by_another_model(
    pool: &PgPool,
    checkpoint_id: i64,
    model_id: i64,
) -> Result<Option<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT m.name, c.step FROM checkpoints c JOIN models m ON m.id = c.model_id
         WHERE c.id = $1 AND c.model_id <> $2",
    )
    .bind(checkpoint_id)
    .bind(model_id)
    .fetch_optional(pool)
    .await?)
}

/// A reference set, recorded whenever one is used or made; matched by content.
#[derive(Debug, Clone)]
pub struct NewReferenceSet<'a> {
    /// Unique label, e.g. `VIRTUAL_imagenet256_labeled-5f1e2d3c4b5a`.
    pub name: &'a str,
    pub path: &'a str,
    /// sha256 of the npz, or of a folder's files in read order.
    pub sha256: &'a str,
    /// Unknown for an npz of statistics only.
    pub num_images: Option<i32>,
    pub image_size: Option<i32>,
    /// How it was made: its format, the crop applied to it.
    pub made: &'a serde_json::Value,
}

/// Records a reference set; the same content recorded again keeps its row (and takes the new
/// path, and an image count where the old row had none).
pub async fn upsert_reference_set(
    pool: &PgPool,
    r: &NewReferenceSet<'_>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO reference_sets (name, path, sha256, num_images, image_size, made)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (sha256) DO UPDATE
             SET path = EXCLUDED.path,
                 num_images = COALESCE(EXCLUDED.num_images, reference_sets.num_images),
                 image_size = COALESCE(EXCLUDED.image_size, reference_sets.image_size)
         RETURNING id",
    )
    .bind(r.name)
    .bind(r.path)
    .bind(r.sha256)
    .bind(r.num_images)
    .bind(r.image_size)
    .bind(r.made)
    .fetch_one(pool)
    .await?)
}

/// What makes evaluations comparable: everything that changes a metric's value besides the
/// model and its sampling settings.
#[derive(Debug, Clone)]
pub struct NewProtocol<'a> {
    /// "generator" or "tokenizer".
    pub kind: &'a str,
    /// A short label for tables.
    pub name: &'a str,
    pub feature_extractor_sha256: Option<&'a str>,
    pub reference_set_id: Option<i64>,
    pub num_samples: Option<i32>,
    /// Everything that defines the protocol (the fields above included); its sha256 is the
    /// protocol's identity.
    pub definition: &'a serde_json::Value,
}

/// Records a protocol, or finds the one with the same definition; returns its id.
pub async fn upsert_protocol(pool: &PgPool, p: &NewProtocol<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO protocols (sha256, name, kind, feature_extractor_sha256, reference_set_id,
                                num_samples, definition)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (sha256) DO UPDATE SET name = protocols.name
         RETURNING id",
    )
    .bind(config_sha256(p.definition))
    .bind(p.name)
    .bind(p.kind)
    .bind(p.feature_extractor_sha256)
    .bind(p.reference_set_id)
    .bind(p.num_samples)
    .bind(p.definition)
    .fetch_one(pool)
    .await?)
}

/// The reproducible configuration of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct NewEvaluation<'a> {
    pub checkpoint_id: i64,
    pub benchmark: &'a str,
    pub reference_set_id: Option<i64>,
    /// The protocol it was measured under; evaluations of different protocols are different
    /// rows, never ranked together.
    pub protocol_id: Option<i64>,
    pub cfg_scale: Option<f64>,
    pub cfg_interval: Option<i32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f64>,
    pub temperature: Option<f64>,
    pub image_size: Option<i32>,
    pub eval_image_size: Option<i32>,
    pub num_samples: Option<i32>,
    pub seed: Option<i64>,
    pub precision: Option<&'a str>,
    /// Everything else that shapes the result (sampler options, reference path, ...).
    pub extra: Option<&'a serde_json::Value>,
    pub git_revision: Option<&'a str>,
}

impl NewEvaluation<'_> {
    /// The sampling configuration as stored, and hashed to recognise a re-run.
    pub fn sampling_config(&self) -> serde_json::Value {
        serde_json::json!({
            "benchmark": self.benchmark,
            "reference_set_id": self.reference_set_id,
            "protocol_id": self.protocol_id,
            "cfg_scale": self.cfg_scale,
            "cfg_interval": self.cfg_interval,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "temperature": self.temperature,
            "image_size": self.image_size,
            "eval_image_size": self.eval_image_size,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "precision": self.precision,
            "extra": self.extra,
        })
    }
}

/// Starts an evaluation, or restarts the existing one with the same configuration; returns its id.
pub async fn begin_evaluation(pool: &PgPool, e: &NewEvaluation<'_>) -> Result<i64, StoreError> {
    let config = e.sampling_config();
    Ok(sqlx::query_scalar(
        "INSERT INTO evaluations (checkpoint_id, benchmark, reference_set_id, cfg_scale, cfg_interval,
                                  top_k, top_p, temperature, image_size, eval_image_size, num_samples,
                                  seed, precision, sampling_config, config_sha256, git_revision,
                                  protocol_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (checkpoint_id, benchmark, config_sha256) DO UPDATE
             SET status = 'running', started_at = now(), finished_at = NULL, duration_ms = NULL,
                 error = NULL, git_revision = EXCLUDED.git_revision
         RETURNING id",
    )
    .bind(e.checkpoint_id)
    .bind(e.benchmark)
    .bind(e.reference_set_id)
    .bind(e.cfg_scale)
    .bind(e.cfg_interval)
    .bind(e.top_k)
    .bind(e.top_p)
    .bind(e.temperature)
    .bind(e.image_size)
    .bind(e.eval_image_size)
    .bind(e.num_samples)
    .bind(e.seed)
    .bind(e.precision)
    .bind(&config)
    .bind(config_sha256(&config))
    .bind(e.git_revision)
    .bind(e.protocol_id)
    .fetch_one(pool)
    .await?)
}

/// One metric of an evaluation and, where one was computed, its confidence interval.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    /// `(low, high)`.
    pub interval: Option<(f64, f64)>,
}

impl Metric {
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            value,
            interval: None,
        }
    }

    pub fn with_interval(mut self, low: f64, high: f64) -> Self {
        self.interval = Some((low, high));
        self
    }
}

/// Stores the metrics of a running evaluation (replacing those of an earlier run of the same
/// configuration) and marks it succeeded, in one transaction. Non-finite values and inverted
/// intervals are refused.
pub async fn finish_evaluation(
    pool: &PgPool,
    evaluation_id: i64,
    metrics: &[Metric],
    samples_path: Option<&str>,
) -> Result<(), StoreError> {
    for m in metrics {
        let finite = m.value.is_finite()
            && m.interval
                .is_none_or(|(low, high)| low.is_finite() && high.is_finite() && low <= high);
        if !finite {
            return Err(StoreError::Invalid(format!(
                "evaluation {evaluation_id}: metric {} is {} (interval {:?}); refusing to store a non-finite result",
                m.name, m.value, m.interval
            )));
        }
    }
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE evaluations SET status = 'succeeded', finished_at = now(), samples_path = $2,
                duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint
         WHERE id = $1 AND status = 'running'",
    )
    .bind(evaluation_id)
    .bind(samples_path)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(StoreError::Invalid(format!(
            "evaluation {evaluation_id} does not exist or is not running"
        )));
    }
    sqlx::query("DELETE FROM metrics WHERE evaluation_id = $1")
        .bind(evaluation_id)
        .execute(&mut *tx)
        .await?;
    for m in metrics {
        sqlx::query(
            "INSERT INTO metrics (evaluation_id, name, value, ci_low, ci_high)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(evaluation_id)
        .bind(&m.name)
        .bind(m.value)
        .bind(m.interval.map(|i| i.0))
        .bind(m.interval.map(|i| i.1))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Marks a running evaluation failed; an earlier run's metrics are removed with it, since they
/// no longer describe the row's state.
pub async fn fail_evaluation(
    pool: &PgPool,
    evaluation_id: i64,
    error: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE evaluations SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1",
    )
    .bind(evaluation_id)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM metrics WHERE evaluation_id = $1")
        .bind(evaluation_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
