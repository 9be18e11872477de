//! The lease protocol both work queues share: `shards` (stage workers, `runs.rs`) and
//! `checkpoint_queue` (evaluators, `checkpoint_queue.rs`).
//!
//! A row is claimed with `FOR UPDATE SKIP LOCKED` and held while `status = 'running'` by the
//! pair (`worker`, `attempts`); every later update checks that pair, so a holder presumed dead
//! cannot overwrite the work of the one that took the row over. `attempts` counts claims.
//! Failures (the work itself went wrong) count against `max_attempts`; expired leases (a
//! killed or cut-off holder) count only as [`EXPIRIES_PER_ATTEMPT`] per attempt, so killing
//! workers does not use up a row, while a row that kills every worker is given up in the end.
//! A release (the holder is stopping) counts as neither.
//!
//! The table names and SQL pieces below are constants chosen by the two queues, never input.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::StoreError;

/// How many expired leases a row survives per allowed failure.
pub const EXPIRIES_PER_ATTEMPT: i32 = 3;

/// One of the two leased tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    /// `shards`, scoped by `stage_run_id`, claimed in `shard_index` order.
    Shards,
    /// `checkpoint_queue`, scoped by `protocol_sha256`, claimed in training-step order.
    Checkpoints,
}

impl Queue {
    fn table(self) -> &'static str {
        match self {
            Queue::Shards => "shards",
            Queue::Checkpoints => "checkpoint_queue",
        }
    }

    fn scope(self) -> &'static str {
        match self {
            Queue::Shards => "stage_run_id",
            Queue::Checkpoints => "protocol_sha256",
        }
    }

    /// The next claimable row of scope `$1`, locked: pending, or running with an expired lease,
    /// and failures left.
    fn pick(self) -> &'static str {
        match self {
            Queue::Shards => {
                "SELECT id FROM shards
                 WHERE stage_run_id = $1 AND failures < max_attempts
                   AND (status = 'pending' OR (status = 'running' AND lease_expires_at < now()))
                 ORDER BY shard_index
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED"
            }
            Queue::Checkpoints => {
                "SELECT q.id FROM checkpoint_queue q
                 JOIN checkpoints c ON c.id = q.checkpoint_id
                 WHERE q.protocol_sha256 = $1 AND q.failures < q.max_attempts
                   AND (q.status = 'pending' OR (q.status = 'running' AND q.lease_expires_at < now()))
                 ORDER BY c.step, c.id
                 LIMIT 1
                 FOR UPDATE OF q SKIP LOCKED"
            }
        }
    }
}

/// The identity of a held row: its id, and the claim that holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held<'a> {
    pub id: i64,
    pub worker: &'a str,
    pub attempt: i32,
}

/// The `WHERE` of an update by the holder: `$1` id, `$2` worker, `$3` attempt.
pub(crate) const HELD: &str = "id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'";

/// A claimed row: (id, attempt, lease end).
pub(crate) type Claimed = (i64, i32, DateTime<Utc>);

/// Claims the next row of `scope` inside `tx`; rows whose leases expired once too often are
/// failed for good first.
pub(crate) async fn claim<S>(
    tx: &mut Transaction<'_, Postgres>,
    queue: Queue,
    scope: S,
    worker: &str,
    lease: Duration,
) -> Result<Option<Claimed>, StoreError>
where
    S: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Clone + Send + 'static,
{
    let give_up = format!(
        "UPDATE {table} SET status = 'failed', lease_expires_at = NULL, finished_at = now(),
                expiries = expiries + 1,
                error = coalesce(error || '; ', '') || 'lease expired ' || (expiries + 1)
                        || ' times (its holders were killed or lost the database); gave up'
         WHERE {scope} = $1 AND status = 'running' AND lease_expires_at < now()
           AND expiries + 1 >= $2 * max_attempts",
        table = queue.table(),
        scope = queue.scope(),
    );
    sqlx::query(sqlx::AssertSqlSafe(give_up))
        .bind(scope.clone())
        .bind(EXPIRIES_PER_ATTEMPT)
        .execute(&mut **tx)
        .await?;
    let take = format!(
        "UPDATE {table} SET status = 'running', worker = $2, attempts = attempts + 1,
                expiries = expiries + CASE WHEN status = 'running' THEN 1 ELSE 0 END,
                lease_expires_at = now() + make_interval(secs => $3),
                started_at = now(), finished_at = NULL
         WHERE id = ({pick})
         RETURNING id, attempts, lease_expires_at",
        table = queue.table(),
        pick = queue.pick(),
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(take))
        .bind(scope)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .fetch_optional(&mut **tx)
        .await?)
}

/// Extends a held lease; `None` when the row is no longer held by this claim.
pub(crate) async fn renew(
    pool: &PgPool,
    queue: Queue,
    held: Held<'_>,
    extend_by: Duration,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let sql = format!(
        "UPDATE {} SET lease_expires_at = now() + make_interval(secs => $4)
         WHERE {HELD} RETURNING lease_expires_at",
        queue.table()
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(held.id)
        .bind(held.worker)
        .bind(held.attempt)
        .bind(extend_by.as_secs_f64())
        .fetch_optional(pool)
        .await?)
}

/// What happens to a row after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to pending: another claim will retry it.
    WillRetry,
    /// Out of attempts: failed for good.
    GaveUp,
}

/// Records a failed attempt at a held row; `None` when the row is no longer held.
pub(crate) async fn fail(
    pool: &PgPool,
    queue: Queue,
    held: Held<'_>,
    error: &str,
) -> Result<Option<AfterFailure>, StoreError> {
    let sql = format!(
        "UPDATE {}
         SET status = CASE WHEN failures + 1 >= max_attempts THEN 'failed' ELSE 'pending' END,
             failures = failures + 1, lease_expires_at = NULL, worker = NULL, error = $4,
             finished_at = CASE WHEN failures + 1 >= max_attempts THEN now() END
         WHERE {HELD}
         RETURNING status",
        queue.table()
    );
    let status: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(held.id)
        .bind(held.worker)
        .bind(held.attempt)
        .bind(error)
        .fetch_optional(pool)
        .await?;
    Ok(status.map(|s| {
        if s == "failed" {
            AfterFailure::GaveUp
        } else {
            AfterFailure::WillRetry
        }
    }))
}

/// Gives a held row back unfinished (its holder is stopping): pending again, counted neither
/// as a failure nor as an expiry. False when the row is no longer held.
pub(crate) async fn release(
    pool: &PgPool,
    queue: Queue,
    held: Held<'_>,
) -> Result<bool, StoreError> {
    let sql = format!(
        "UPDATE {}
         SET status = 'pending', lease_expires_at = NULL, worker = NULL, started_at = NULL
         WHERE {HELD}",
        queue.table()
    );
    let updated = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(held.id)
        .bind(held.worker)
        .bind(held.attempt)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(updated > 0)
}

/// Rows of one scope by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
}

impl Progress {
    pub fn total(&self) -> i64 {
        self.pending + self.running + self.succeeded + self.failed
    }

    /// Nothing is waiting or in flight.
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.running == 0
    }
}

pub(crate) async fn progress<S>(
    pool: &PgPool,
    queue: Queue,
    scope: S,
) -> Result<Progress, StoreError>
where
    S: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'static,
{
    let sql = format!(
        "SELECT status, count(*) FROM {} WHERE {} = $1 GROUP BY status",
        queue.table(),
        queue.scope()
    );
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(scope)
        .fetch_all(pool)
        .await?;
    let mut progress = Progress::default();
    for (status, n) in rows {
        match status.as_str() {
            "pending" => progress.pending = n,
            "running" => progress.running = n,
            "succeeded" => progress.succeeded = n,
            "failed" => progress.failed = n,
            other => {
                return Err(StoreError::Invalid(format!(
                    "unknown {} status {other:?}",
                    queue.table()
                )));
            }
        }
    }
    Ok(progress)
}
