//! What `llamagen schedule` shares through PostgreSQL: one row per cron tick (whoever inserts
//! it decides that tick, so two schedulers never both act on one), and a session advisory lock
//! per pipeline (held while a run is in progress, so runs of one pipeline never overlap, also
//! across machines; PostgreSQL drops it if the holder dies).

use chrono::{DateTime, Utc};
use sqlx::{Connection as _, PgConnection, PgPool};

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
/// call was the one that decided, or when `decider` (a scheduler's name, unique per process)
/// had decided it the same way and started no run yet: so a call retried after a lost answer
/// (the insert committed, the connection broke) still knows the tick is its own.
pub async fn decide_tick(
    pool: &PgPool,
    pipeline: &str,
    at: DateTime<Utc>,
    outcome: TickOutcome,
    decider: &str,
) -> Result<bool, StoreError> {
    let decided: bool = sqlx::query_scalar(
        "WITH inserted AS (
             INSERT INTO schedule_ticks (pipeline, scheduled_for, outcome, decided_by)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (pipeline, scheduled_for) DO NOTHING
             RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM inserted)
             OR EXISTS (SELECT 1 FROM schedule_ticks
                        WHERE pipeline = $1 AND scheduled_for = $2 AND decided_by = $4
                          AND outcome = $3 AND run_id IS NULL)",
    )
    .bind(pipeline)
    .bind(at)
    .bind(outcome.as_str())
    .bind(decider)
    .fetch_one(pool)
    .await?;
    Ok(decided)
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

/// The advisory lock of one pipeline, held on its own connection (taken out of the pool, so
/// the pool never recycles it) until [`PipelineLock::release`], until the process dies, or
/// until the connection breaks: PostgreSQL then frees the lock, which [`PipelineLock::check`]
/// notices.
pub struct PipelineLock {
    conn: Option<PgConnection>,
    pipeline: String,
}

/// The lock key: a stable 64-bit hash of the pipeline name in PostgreSQL's own function, so
/// every scheduler (any version, any machine) computes the same key.
const LOCK_KEY: &str = "hashtextextended('llamagen schedule ' || $1, 0)";

impl PipelineLock {
    /// Takes the lock if nobody holds it.
    pub async fn try_acquire(pool: &PgPool, pipeline: &str) -> Result<Option<Self>, StoreError> {
        let mut conn = pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({LOCK_KEY})"
        )))
        .bind(pipeline)
        .fetch_one(&mut conn)
        .await?;
        Ok(locked.then(|| Self {
            conn: Some(conn),
            pipeline: pipeline.to_owned(),
        }))
    }

    /// Whether the lock is still held: its session is alive and owns it. An error when the
    /// connection broke (the server restarted, a network cut): the lock is gone with it.
    pub async fn check(&mut self) -> Result<(), StoreError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| StoreError::Invalid("the pipeline lock was released".into()))?;
        let held: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND pid = pg_backend_pid()
                 AND ((classid::bigint << 32) | objid::bigint) = {LOCK_KEY})"
        )))
        .bind(&self.pipeline)
        .fetch_one(&mut *conn)
        .await?;
        if held {
            Ok(())
        } else {
            Err(StoreError::Invalid(format!(
                "the lock of pipeline {:?} is no longer held",
                self.pipeline
            )))
        }
    }

    pub async fn release(mut self) -> Result<(), StoreError> {
        if let Some(mut conn) = self.conn.take() {
            let _: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT pg_advisory_unlock({LOCK_KEY})"
            )))
            .bind(&self.pipeline)
            .fetch_one(&mut conn)
            .await?;
            conn.close().await?;
        }
        Ok(())
    }
}
