//! What `llamagen schedule` shares through PostgreSQL: one row per cron tick (whoever inserts
//! it decides that tick, so two schedulers never both act on one), and a session advisory lock
//! per pipeline (held while a run is in progress, so runs of one pipeline never overlap, also
//! across machines; PostgreSQL drops it if the holder dies).

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use crate::StoreError;

/// How a tick ended up; the `schedule_ticks.outcome` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    Started,
    SkippedBusy,
    SkippedMissed,
    Succeeded,
    Failed,
}

impl TickOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TickOutcome::Started => "started",
            TickOutcome::SkippedBusy => "skipped_busy",
            TickOutcome::SkippedMissed => "skipped_missed",
            TickOutcome::Succeeded => "succeeded",
            TickOutcome::Failed => "failed",
        }
    }
}

/// Records `outcome` for the tick unless some scheduler already decided it; `true` when this
/// call was the one that decided.
pub async fn decide_tick(
    pool: &PgPool,
    pipeline: &str,
    at: DateTime<Utc>,
    outcome: TickOutcome,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO schedule_ticks (pipeline, scheduled_for, outcome) VALUES ($1, $2, $3)
         ON CONFLICT (pipeline, scheduled_for) DO NOTHING",
    )
    .bind(pipeline)
    .bind(at)
    .bind(outcome.as_str())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Updates a decided tick: its run, or how the run ended.
pub async fn update_tick(
    pool: &PgPool,
    pipeline: &str,
    at: DateTime<Utc>,
    outcome: TickOutcome,
    run_id: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE schedule_ticks SET outcome = $3, run_id = coalesce($4, run_id), decided_at = now()
         WHERE pipeline = $1 AND scheduled_for = $2",
    )
    .bind(pipeline)
    .bind(at)
    .bind(outcome.as_str())
    .bind(run_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The newest tick any scheduler decided for `pipeline`.
pub async fn last_tick(pool: &PgPool, pipeline: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT max(scheduled_for) FROM schedule_ticks WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_one(pool)
            .await?,
    )
}

/// The advisory lock of one pipeline, held on its own connection until [`PipelineLock::release`]
/// (or until the connection dies with its process).
pub struct PipelineLock {
    conn: Option<PoolConnection<Postgres>>,
    pipeline: String,
}

/// The lock key: a stable 64-bit hash of the pipeline name in PostgreSQL's own function, so
/// every scheduler (any version, any machine) computes the same key.
const LOCK_KEY: &str = "hashtextextended('llamagen schedule ' || $1, 0)";

impl PipelineLock {
    /// Takes the lock if nobody holds it.
    pub async fn try_acquire(pool: &PgPool, pipeline: &str) -> Result<Option<Self>, StoreError> {
        let mut conn = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({LOCK_KEY})"
        )))
        .bind(pipeline)
        .fetch_one(&mut *conn)
        .await?;
        Ok(locked.then(|| Self {
            conn: Some(conn),
            pipeline: pipeline.to_owned(),
        }))
    }

    pub async fn release(mut self) -> Result<(), StoreError> {
        if let Some(mut conn) = self.conn.take() {
            let _: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT pg_advisory_unlock({LOCK_KEY})"
            )))
            .bind(&self.pipeline)
            .fetch_one(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

impl Drop for PipelineLock {
    /// A lock dropped without [`PipelineLock::release`] must not go back into the pool still
    /// held: the connection is closed instead, which ends the session and frees the lock.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
