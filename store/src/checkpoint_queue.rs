//! Checkpoints waiting to be benchmarked under a protocol, claimed by evaluators with a lease.
//!
//! A protocol is everything that makes two evaluations comparable (benchmark, reference set,
//! feature network, tokenizer, sampling settings); it is stored as JSON and identified by its
//! sha256. [`enqueue`] adds the checkpoints a selection picks and that have no row for the
//! protocol yet; [`claim`] hands one to an evaluator with `FOR UPDATE SKIP LOCKED`, exactly as
//! shard workers claim shards (`runs::claim_shard`): an evaluator that dies stops renewing, and
//! its checkpoint is claimable again once the lease runs out. The protocol (`lease`) is the
//! shard workers' own: finishing or renewing checks `(worker, attempt)`, so an evaluator
//! presumed dead cannot overwrite the redo, and a killed evaluator costs the checkpoint an
//! expiry, not one of its attempts.

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
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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

/// The columns of a [`SelectedCheckpoint`] (c: checkpoints, m: models).
const SELECTED_COLUMNS: &str =
    "c.id AS checkpoint_id, m.name AS model, c.path, c.sha256, c.step, c.config";

/// The checkpoints `selection` picks now, by step.
pub async fn selected(
    pool: &PgPool,
    selection: &Selection<'_>,
) -> Result<Vec<SelectedCheckpoint>, StoreError> {
    let sql = format!(
        "SELECT {SELECTED_COLUMNS} {} ORDER BY c.step, c.id",
        selected_from(1, 2)
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(selection.models)
        .bind(selection.every_steps)
        .fetch_all(pool)
        .await?)
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

use crate::lease::{self, HELD, Held, Queue};
pub use crate::lease::{AfterFailure, Progress as QueueProgress};

/// A checkpoint this evaluator holds until `expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointLease {
    /// The queue row.
    pub id: i64,
    pub checkpoint: SelectedCheckpoint,
    pub protocol_sha256: String,
    /// 1 on the first claim, 2 on the next (after a failure, an expired lease or a release),
    /// ...: with `worker`, the lease's identity.
    pub attempt: i32,
    pub worker: String,
    pub expires_at: DateTime<Utc>,
}

impl CheckpointLease {
    fn held(&self) -> Held<'_> {
        Held {
            id: self.id,
            worker: &self.worker,
            attempt: self.attempt,
        }
    }
}

/// Claims the queued checkpoint of the protocol with the lowest step (then id) that is pending
/// or whose lease expired. `None` when nothing is left to claim. Taking over an expired lease
/// counts an expiry, not a failure (`lease`).
pub async fn claim(
    pool: &PgPool,
    protocol_sha256: &str,
    worker: &str,
    lease: Duration,
) -> Result<Option<CheckpointLease>, StoreError> {
    let mut tx = pool.begin().await?;
    let claimed = lease::claim(
        &mut tx,
        Queue::Checkpoints,
        protocol_sha256.to_owned(),
        worker,
        lease,
    )
    .await?;
    let Some((id, attempt, expires_at)) = claimed else {
        tx.commit().await?;
        return Ok(None);
    };
    let sql = format!(
        "SELECT {SELECTED_COLUMNS}
         FROM checkpoint_queue q JOIN checkpoints c ON c.id = q.checkpoint_id
         JOIN models m ON m.id = c.model_id
         WHERE q.id = $1"
    );
    let checkpoint: SelectedCheckpoint = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(CheckpointLease {
        id,
        checkpoint,
        protocol_sha256: protocol_sha256.to_owned(),
        attempt,
        worker: worker.to_owned(),
        expires_at,
    }))
}

/// Extends a lease; fails with [`StoreError::CheckpointLeaseLost`] if another evaluator has
/// taken the checkpoint over.
pub async fn renew(
    pool: &PgPool,
    lease: &CheckpointLease,
    extend_by: Duration,
) -> Result<CheckpointLease, StoreError> {
    match lease::renew(pool, Queue::Checkpoints, lease.held(), extend_by).await? {
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
    let sql = format!(
        "UPDATE checkpoint_queue SET status = 'succeeded', lease_expires_at = NULL,
                finished_at = now(), evaluation_ids = $4, error = NULL
         WHERE {HELD}"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(lease.id)
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

/// Records a failed attempt: it counts against `max_attempts`.
pub async fn fail(
    pool: &PgPool,
    lease: &CheckpointLease,
    error: &str,
) -> Result<AfterFailure, StoreError> {
    lease::fail(pool, Queue::Checkpoints, lease.held(), error)
        .await?
        .ok_or_else(|| lease_lost(lease))
}

/// Gives a held checkpoint back unfinished (its evaluator is stopping); counted neither as a
/// failure nor as an expiry.
pub async fn release(pool: &PgPool, lease: &CheckpointLease) -> Result<(), StoreError> {
    if lease::release(pool, Queue::Checkpoints, lease.held()).await? {
        Ok(())
    } else {
        Err(lease_lost(lease))
    }
}

/// Queue rows of one protocol by status.
pub async fn progress(pool: &PgPool, protocol_sha256: &str) -> Result<QueueProgress, StoreError> {
    lease::progress(pool, Queue::Checkpoints, protocol_sha256.to_owned()).await
}

fn lease_lost(lease: &CheckpointLease) -> StoreError {
    StoreError::CheckpointLeaseLost {
        checkpoint: lease.checkpoint.path.clone(),
        worker: lease.worker.clone(),
    }
}
