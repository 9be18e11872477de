//! Training runs, their loss curves, and where a resumed run picks up its row.

use sqlx::PgPool;

use crate::StoreError;

/// Starts a training run of a registered model; returns its id.
pub async fn begin_training_run(
    pool: &PgPool,
    model_id: i64,
    config: &serde_json::Value,
    git_revision: Option<&str>,
    seed: i64,
    global_batch: i32,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO training_runs (model_id, config, git_revision, seed, global_batch)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(model_id)
    .bind(config)
    .bind(git_revision)
    .bind(seed)
    .bind(global_batch)
    .fetch_one(pool)
    .await?)
}

/// The training run of `model_id` that wrote the checkpoint with this SHA-256, if it was
/// registered; a run resumed from that checkpoint continues the same row and loss curve. The
/// same bytes registered for another model (a deterministic run repeated under another name)
/// are not that model's run to continue.
pub async fn training_run_of_checkpoint(
    pool: &PgPool,
    model_id: i64,
    sha256: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(
        "SELECT training_run_id FROM checkpoints WHERE sha256 = $1 AND model_id = $2",
    )
    .bind(sha256)
    .bind(model_id)
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// How many checkpoints run `run_id` of `model_id` registered; None when there is no such run
/// of that model (another database, another model).
pub async fn checkpoints_of_run(
    pool: &PgPool,
    run_id: i64,
    model_id: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM checkpoints c WHERE c.training_run_id = r.id)
         FROM training_runs r WHERE r.id = $1 AND r.model_id = $2",
    )
    .bind(run_id)
    .bind(model_id)
    .fetch_optional(pool)
    .await?)
}

/// A checkpoint another training run registered for a model.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EarlierCheckpoint {
    pub step: i64,
    pub path: String,
    pub training_run_id: Option<i64>,
}

/// The newest checkpoint of `model_id` past `step`, if any: a new training run of that model
/// from `step` would write its own files at steps the model already has a checkpoint for.
pub async fn newest_checkpoint_after(
    pool: &PgPool,
    model_id: i64,
    step: i64,
) -> Result<Option<EarlierCheckpoint>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT step, path, training_run_id FROM checkpoints
         WHERE model_id = $1 AND step > $2 ORDER BY step DESC, ema LIMIT 1",
    )
    .bind(model_id)
    .bind(step)
    .fetch_optional(pool)
    .await?)
}

/// Marks a (resumed) run as running again.
pub async fn reopen_training_run(pool: &PgPool, run_id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE training_runs SET status = 'running', finished_at = NULL WHERE id = $1")
        .bind(run_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records scalars of one step; a step logged again (after a resume) is overwritten, not
/// duplicated. Non-finite values are refused.
pub async fn log_training_metrics(
    pool: &PgPool,
    run_id: i64,
    step: i64,
    values: &[(&str, f64)],
) -> Result<(), StoreError> {
    if let Some((name, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
        return Err(StoreError::Invalid(format!("{name} = {v} at step {step}")));
    }
    let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
    let numbers: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
    sqlx::query(
        "INSERT INTO training_metrics (training_run_id, step, name, value)
         SELECT $1, $2, * FROM unnest($3::text[], $4::float8[])
         ON CONFLICT (training_run_id, name, step) DO UPDATE
             SET value = EXCLUDED.value, logged_at = now()",
    )
    .bind(run_id)
    .bind(step)
    .bind(&names)
    .bind(&numbers)
    .execute(pool)
    .await?;
    Ok(())
}

/// Closes a run as "succeeded", "failed" or "cancelled".
pub async fn finish_training_run(
    pool: &PgPool,
    run_id: i64,
    status: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE training_runs SET status = $2, finished_at = now() WHERE id = $1")
        .bind(run_id)
        .bind(status)
        .execute(pool)
        .await?;
    Ok(())
}
