//! Checkpoints waiting to be benchmarked under a protocol, claimed by evaluators with a lease.
//!
//! A protocol is everything that makes two evaluations comparable (benchmark, reference set,
//! feature network, tokenizer, sampling settings); it is stored as JSON and identified by its
//! sha256. [`enqueue`] adds the checkpoints a selection picks and that have no row for the
//! protocol yet; [`claim`] hands one to an evaluator with `FOR UPDATE SKIP LOCKED`, exactly as
//! shard workers claim shards (`runs::claim_shard`): an evaluator that dies stops renewing, and
//! its checkpoint is claimable again once the lease runs out. Finishing or renewing checks
//! `(worker, attempt)`, so an evaluator presumed dead cannot overwrite the redo.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::StoreError;

/// Which checkpoints of the named models a protocol evaluates.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection<'a> {
    /// Model names (`models.name`).
    pub models: &'a [String],
    /// 0: only the final checkpoint of each finished training run (and checkpoints imported
    /// without a training run); N: also every checkpoint whose step is a multiple of N, as soon
    /// as it is registered, so the FID-against-step chart fills in while training runs.
    pub every_steps: i64,
}

/// FROM and WHERE of the checkpoints a [`Selection`] picks, with the model names bound as
/// parameter `$models` and `every_steps` as `$every` (c: checkpoints, m: models). Only the two
/// parameter numbers are formatted in; every value is bound.
fn selected_from(models: u8, every: u8) -> String {
    format!(
        "FROM checkpoints c
         JOIN models m ON m.id = c.model_id
         LEFT JOIN training_runs t ON t.id = c.training_run_id
         WHERE m.name = ANY(${models})
           AND ((${every} > 0 AND c.step % ${every} = 0)
                OR c.training_run_id IS NULL
                OR (t.status = 'succeeded' AND c.step = (
                        SELECT max(step) FROM checkpoints WHERE training_run_id = c.training_run_id)))"
    )
}

/// A checkpoint a selection picks.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedCheckpoint {
    pub checkpoint_id: i64,
    pub model: String,
    pub path: String,
    pub sha256: String,
    pub step: i64,
    /// The training configuration the trainer stored with the checkpoint (its `gpt` key is the
    /// architecture).
    pub config: serde_json::Value,
}

/// The checkpoints `selection` picks now, by step.
pub async fn selected(
    pool: &PgPool,
    selection: &Selection<'_>,
) -> Result<Vec<SelectedCheckpoint>, StoreError> {
    let sql = format!(
        "SELECT c.id, m.name, c.path, c.sha256, c.step, c.config {} ORDER BY c.step, c.id",
        selected_from(1, 2)
    );
    let rows: Vec<(i64, String, String, String, i64, serde_json::Value)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(selection.models)
            .bind(selection.every_steps)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(
            |(checkpoint_id, model, path, sha256, step, config)| SelectedCheckpoint {
                checkpoint_id,
                model,
                path,
                sha256,
                step,
                config,
            },
        )
        .collect())
}

/// Queues the checkpoints that `selection` picks and that have no row for the protocol yet;
/// returns how many were added.
pub async fn enqueue(
    pool: &PgPool,
    protocol_sha256: &str,
    protocol: &serde_json::Value,
    selection: &Selection<'_>,
    max_attempts: i32,
) -> Result<u64, StoreError> {
    let sql = format!(
        "INSERT INTO checkpoint_queue (checkpoint_id, protocol_sha256, protocol, max_attempts)
         SELECT c.id, $1, $2, $5 {} ON CONFLICT (checkpoint_id, protocol_sha256) DO NOTHING",
        selected_from(3, 4)
    );
    let added = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(protocol_sha256)
        .bind(protocol)
        .bind(selection.models)
        .bind(selection.every_steps)
        .bind(max_attempts)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(added)
}

/// A checkpoint this evaluator holds until `expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointLease {
    pub checkpoint: SelectedCheckpoint,
    pub protocol_sha256: String,
    /// 1 on the first claim, 2 after a failure or an expired lease, ...
    pub attempt: i32,
    pub worker: String,
    pub expires_at: DateTime<Utc>,
}

/// Claims the queued checkpoint of the protocol with the lowest step (then id) that is pending
/// or whose lease expired. `None` when nothing is left to claim.
pub async fn claim(
    pool: &PgPool,
    protocol_sha256: &str,
    worker: &str,
    lease: Duration,
) -> Result<Option<CheckpointLease>, StoreError> {
    let mut tx = pool.begin().await?;
    // Expired leases that used up their attempts end as failed, not as claimable.
    sqlx::query(
        "UPDATE checkpoint_queue SET status = 'failed', lease_expires_at = NULL, finished_at = now(),
                error = coalesce(error, 'lease expired') || ' (gave up after ' || attempts || ' attempts)'
         WHERE protocol_sha256 = $1 AND status = 'running' AND lease_expires_at < now()
           AND attempts >= max_attempts",
    )
    .bind(protocol_sha256)
    .execute(&mut *tx)
    .await?;
    type Row = (
        i64,
        String,
        String,
        String,
        i64,
        serde_json::Value,
        i32,
        DateTime<Utc>,
    );
    let row: Option<Row> = sqlx::query_as(
        "WITH picked AS (
             SELECT q.checkpoint_id FROM checkpoint_queue q
             JOIN checkpoints c ON c.id = q.checkpoint_id
             WHERE q.protocol_sha256 = $1 AND q.attempts < q.max_attempts
               AND (q.status = 'pending' OR (q.status = 'running' AND q.lease_expires_at < now()))
             ORDER BY c.step, c.id
             LIMIT 1
             FOR UPDATE OF q SKIP LOCKED),
         claimed AS (
             UPDATE checkpoint_queue q SET status = 'running', worker = $2,
                    attempts = q.attempts + 1,
                    lease_expires_at = now() + make_interval(secs => $3),
                    started_at = now(), finished_at = NULL
             FROM picked WHERE q.checkpoint_id = picked.checkpoint_id AND q.protocol_sha256 = $1
             RETURNING q.checkpoint_id, q.attempts, q.lease_expires_at)
         SELECT c.id, m.name, c.path, c.sha256, c.step, c.config, claimed.attempts,
                claimed.lease_expires_at
         FROM claimed JOIN checkpoints c ON c.id = claimed.checkpoint_id
         JOIN models m ON m.id = c.model_id",
    )
    .bind(protocol_sha256)
    .bind(worker)
    .bind(lease.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(
        |(checkpoint_id, model, path, sha256, step, config, attempt, expires_at)| CheckpointLease {
            checkpoint: SelectedCheckpoint {
                checkpoint_id,
                model,
                path,
                sha256,
                step,
                config,
            },
            protocol_sha256: protocol_sha256.to_owned(),
            attempt,
            worker: worker.to_owned(),
            expires_at,
        },
    ))
}

/// Extends a lease; fails with [`StoreError::CheckpointLeaseLost`] if another evaluator has
/// taken the checkpoint over.
pub async fn renew(
    pool: &PgPool,
    lease: &CheckpointLease,
    extend_by: Duration,
) -> Result<CheckpointLease, StoreError> {
    let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE checkpoint_queue SET lease_expires_at = now() + make_interval(secs => $5)
         WHERE checkpoint_id = $1 AND protocol_sha256 = $2 AND worker = $3 AND attempts = $4
           AND status = 'running'
         RETURNING lease_expires_at",
    )
    .bind(lease.checkpoint.checkpoint_id)
    .bind(&lease.protocol_sha256)
    .bind(&lease.worker)
    .bind(lease.attempt)
    .bind(extend_by.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    match expires_at {
        Some(expires_at) => Ok(CheckpointLease {
            expires_at,
            ..lease.clone()
        }),
        None => Err(lease_lost(lease)),
    }
}

/// Marks a held checkpoint evaluated, with the evaluations it produced.
pub async fn complete(
    pool: &PgPool,
    lease: &CheckpointLease,
    evaluation_ids: &[i64],
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE checkpoint_queue SET status = 'succeeded', lease_expires_at = NULL,
                finished_at = now(), evaluation_ids = $5, error = NULL
         WHERE checkpoint_id = $1 AND protocol_sha256 = $2 AND worker = $3 AND attempts = $4
           AND status = 'running'",
    )
    .bind(lease.checkpoint.checkpoint_id)
    .bind(&lease.protocol_sha256)
    .bind(&lease.worker)
    .bind(lease.attempt)
    .bind(evaluation_ids)
    .execute(pool)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(lease_lost(lease));
    }
    Ok(())
}

/// Records a failed attempt: pending again while attempts remain, else failed for good.
/// Returns true when it will be retried.
pub async fn fail(pool: &PgPool, lease: &CheckpointLease, error: &str) -> Result<bool, StoreError> {
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE checkpoint_queue
         SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
             lease_expires_at = NULL, worker = NULL, error = $5,
             finished_at = CASE WHEN attempts >= max_attempts THEN now() END
         WHERE checkpoint_id = $1 AND protocol_sha256 = $2 AND worker = $3 AND attempts = $4
           AND status = 'running'
         RETURNING status",
    )
    .bind(lease.checkpoint.checkpoint_id)
    .bind(&lease.protocol_sha256)
    .bind(&lease.worker)
    .bind(lease.attempt)
    .bind(error)
    .fetch_optional(pool)
    .await?;
    match status.as_deref() {
        Some(s) => Ok(s == "pending"),
        None => Err(lease_lost(lease)),
    }
}

/// Gives a held checkpoint back unfinished (its evaluator is stopping); the attempt does not
/// count.
pub async fn release(pool: &PgPool, lease: &CheckpointLease) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE checkpoint_queue
         SET status = 'pending', attempts = attempts - 1, lease_expires_at = NULL, worker = NULL,
             started_at = NULL
         WHERE checkpoint_id = $1 AND protocol_sha256 = $2 AND worker = $3 AND attempts = $4
           AND status = 'running'",
    )
    .bind(lease.checkpoint.checkpoint_id)
    .bind(&lease.protocol_sha256)
    .bind(&lease.worker)
    .bind(lease.attempt)
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(lease_lost(lease));
    }
    Ok(())
}

/// Queue rows of one protocol by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueProgress {
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
}

impl QueueProgress {
    /// Nothing pending or running.
    pub fn drained(&self) -> bool {
        self.pending == 0 && self.running == 0
    }
}

pub async fn progress(pool: &PgPool, protocol_sha256: &str) -> Result<QueueProgress, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM checkpoint_queue WHERE protocol_sha256 = $1 GROUP BY status",
    )
    .bind(protocol_sha256)
    .fetch_all(pool)
    .await?;
    let mut p = QueueProgress::default();
    for (status, n) in rows {
        match status.as_str() {
            "pending" => p.pending = n,
            "running" => p.running = n,
            "succeeded" => p.succeeded = n,
            _ => p.failed = n,
        }
    }
    Ok(p)
}

fn lease_lost(lease: &CheckpointLease) -> StoreError {
    StoreError::CheckpointLeaseLost {
        checkpoint: lease.checkpoint.path.clone(),
        worker: lease.worker.clone(),
    }
}
