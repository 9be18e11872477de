//! Bookkeeping of pipeline runs, their stages, and the shards workers share.
//!
//! Workers on any number of machines share a stage by claiming shards one at a time with
//! `SELECT ... FOR UPDATE SKIP LOCKED`: a claim sets a lease, a live worker renews it, and a
//! shard whose lease ran out (its worker died) is claimable again. Every update that finishes a
//! shard checks that the caller still holds the lease, so a worker that was presumed dead cannot
//! overwrite the result of the worker that redid its shard.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use crate::StoreError;

/// What started a pipeline run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Schedule,
    Demo,
    Worker,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Schedule => "schedule",
            Self::Demo => "demo",
            Self::Worker => "worker",
        }
    }
}

/// How a run, stage or evaluation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A pipeline run to record; `config` is the whole resolved pipeline config.
#[derive(Debug, Clone)]
pub struct NewPipelineRun<'a> {
    pub pipeline: &'a str,
    pub trigger: Trigger,
    pub config: &'a serde_json::Value,
    pub git_revision: Option<&'a str>,
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// SHA-256 of a config's canonical JSON (serde_json sorts object keys), so equal configs hash
/// equally whatever order their TOML was written in.
pub fn config_sha256(config: &serde_json::Value) -> String {
    let canonical = serde_json::to_vec(config).unwrap_or_default();
    hex(&Sha256::digest(canonical))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn create_pipeline_run(
    pool: &PgPool,
    run: &NewPipelineRun<'_>,
) -> Result<i64, StoreError> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    // A scheduled tick has one run: a retry after a lost answer gets the row it made, while
    // that run is still open (a finished tick's run is not started again).
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO pipeline_runs (pipeline, trigger, config, config_sha256, git_revision, host, scheduled_for)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (pipeline, scheduled_for) WHERE trigger = 'schedule' AND scheduled_for IS NOT NULL
         DO UPDATE SET host = EXCLUDED.host WHERE pipeline_runs.status = 'running'
         RETURNING id",
    )
    .bind(run.pipeline)
    .bind(run.trigger.as_str())
    .bind(run.config)
    .bind(config_sha256(run.config))
    .bind(run.git_revision)
    .bind(host)
    .bind(run.scheduled_for)
    .fetch_optional(pool)
    .await?;
    id.ok_or_else(|| {
        StoreError::Invalid(format!(
            "pipeline {:?}: the tick of {} already has a finished run",
            run.pipeline,
            run.scheduled_for
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        ))
    })
}

pub async fn finish_pipeline_run(
    pool: &PgPool,
    run_id: i64,
    outcome: Outcome,
    error: Option<&str>,
) -> Result<(), StoreError> {
    if !close_if_running(pool, run_id, outcome, error).await? {
        return Err(StoreError::Invalid(format!(
            "pipeline run {run_id} does not exist or has already finished"
        )));
    }
    Ok(())
}

/// Closes the run if it is still running (one statement, so it cannot race with the run
/// closing itself); returns whether it did.
pub async fn close_if_running(
    pool: &PgPool,
    run_id: i64,
    outcome: Outcome,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE pipeline_runs SET status = $2, error = $3, finished_at = now()
         WHERE id = $1 AND status = 'running'",
    )
    .bind(run_id)
    .bind(outcome.as_str())
    .bind(error)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated > 0)
}

/// Starts (or resumes) `stage` of a run; returns the stage run's id.
pub async fn start_stage(
    pool: &PgPool,
    run_id: i64,
    stage: &str,
    config: &serde_json::Value,
) -> Result<i64, StoreError> {
    let id = sqlx::query_scalar(
        "INSERT INTO stage_runs (run_id, stage, config) VALUES ($1, $2, $3)
         ON CONFLICT (run_id, stage) DO UPDATE
             SET status = 'running', finished_at = NULL, error = NULL, config = EXCLUDED.config
         RETURNING id",
    )
    .bind(run_id)
    .bind(stage)
    .bind(config)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

pub async fn finish_stage(
    pool: &PgPool,
    stage_run_id: i64,
    outcome: Outcome,
    counts: &serde_json::Value,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE stage_runs SET status = $2, counts = $3, error = $4, finished_at = now() WHERE id = $1",
    )
    .bind(stage_run_id)
    .bind(outcome.as_str())
    .bind(counts)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Registers shards `0..count` of a stage run; existing ones are kept as they are, so calling
/// this again on resume adds nothing. Returns how many were new.
pub async fn add_shards(
    pool: &PgPool,
    stage_run_id: i64,
    count: i32,
    max_attempts: i32,
) -> Result<u64, StoreError> {
    if count < 0 || max_attempts < 1 {
        return Err(StoreError::Invalid(format!(
            "add_shards: count {count} and max_attempts {max_attempts} must be >= 0 and >= 1"
        )));
    }
    let added = sqlx::query(
        "INSERT INTO shards (stage_run_id, shard_index, max_attempts)
         SELECT $1, i, $3 FROM generate_series(0, $2 - 1) AS i
         ON CONFLICT (stage_run_id, shard_index) DO NOTHING",
    )
    .bind(stage_run_id)
    .bind(count)
    .bind(max_attempts)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(added)
}

/// A shard this worker holds until `expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLease {
    pub shard_id: i64,
    pub stage_run_id: i64,
    pub shard_index: i32,
    /// 1 on the first claim, 2 on the next (after a failure, an expired lease or a release),
    /// ...: with `worker`, the lease's identity.
    pub attempt: i32,
    pub worker: String,
    pub expires_at: DateTime<Utc>,
}

use crate::lease::{self, HELD, Held, Queue};
pub use crate::lease::{AfterFailure, EXPIRIES_PER_ATTEMPT, Progress as ShardProgress};

/// Claims the lowest-numbered shard that is pending, or whose lease has expired. `None` when
/// nothing is left to claim (all done, failed, or held by live workers). Taking over an
/// expired lease counts an expiry, not a failure (`lease`).
pub async fn claim_shard(
    pool: &PgPool,
    stage_run_id: i64,
    worker: &str,
    lease: Duration,
) -> Result<Option<ShardLease>, StoreError> {
    let mut tx = pool.begin().await?;
    let claimed = lease::claim(&mut tx, Queue::Shards, stage_run_id, worker, lease).await?;
    let row = match claimed {
        Some((shard_id, attempt, expires_at)) => {
            let shard_index: i32 =
                sqlx::query_scalar("SELECT shard_index FROM shards WHERE id = $1")
                    .bind(shard_id)
                    .fetch_one(&mut *tx)
                    .await?;
            Some(ShardLease {
                shard_id,
                stage_run_id,
                shard_index,
                attempt,
                worker: worker.to_owned(),
                expires_at,
            })
        }
        None => None,
    };
    tx.commit().await?;
    Ok(row)
}

impl ShardLease {
    fn held(&self) -> Held<'_> {
        Held {
            id: self.shard_id,
            worker: &self.worker,
            attempt: self.attempt,
        }
    }
}

/// Extends a lease; fails with [`StoreError::LeaseLost`] if another worker has taken the shard.
pub async fn renew_lease(
    pool: &PgPool,
    lease: &ShardLease,
    extend_by: Duration,
) -> Result<ShardLease, StoreError> {
    match lease::renew(pool, Queue::Shards, lease.held(), extend_by).await? {
        Some(expires_at) => Ok(ShardLease {
            expires_at,
            ..lease.clone()
        }),
        None => Err(lease_lost(lease)),
    }
}

/// What a finished shard produced.
#[derive(Debug, Clone, Default)]
pub struct ShardCounts {
    pub input_rows: i64,
    pub output_rows: i64,
    pub failed_rows: i64,
    pub bytes_written: i64,
    /// Stage-specific counts, e.g. errors by kind.
    pub extra: serde_json::Value,
}

/// Marks a held shard done with its counts.
pub async fn complete_shard(
    pool: &PgPool,
    lease: &ShardLease,
    counts: &ShardCounts,
) -> Result<(), StoreError> {
    let extra = if counts.extra.is_null() {
        serde_json::json!({})
    } else {
        counts.extra.clone()
    };
    let sql = format!(
        "UPDATE shards SET status = 'succeeded', lease_expires_at = NULL, finished_at = now(),
                duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint,
                input_rows = $4, output_rows = $5, failed_rows = $6, bytes_written = $7,
                counts = $8, error = NULL
         WHERE {HELD}"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(lease.shard_id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .bind(counts.input_rows)
        .bind(counts.output_rows)
        .bind(counts.failed_rows)
        .bind(counts.bytes_written)
        .bind(extra)
        .execute(pool)
        .await?
        .rows_affected();
    if done == 0 {
        return Err(lease_lost(lease));
    }
    Ok(())
}

/// Records a failed attempt at a held shard: it counts against `max_attempts`.
pub async fn fail_shard(
    pool: &PgPool,
    lease: &ShardLease,
    error: &str,
) -> Result<AfterFailure, StoreError> {
    lease::fail(pool, Queue::Shards, lease.held(), error)
        .await?
        .ok_or_else(|| lease_lost(lease))
}

/// Gives a held shard back unfinished (its worker is stopping): pending again, counted neither
/// as a failure nor as an expiry, since the shard itself did nothing wrong.
pub async fn release_shard(pool: &PgPool, lease: &ShardLease) -> Result<(), StoreError> {
    if lease::release(pool, Queue::Shards, lease.held()).await? {
        Ok(())
    } else {
        Err(lease_lost(lease))
    }
}

fn lease_lost(lease: &ShardLease) -> StoreError {
    StoreError::LeaseLost {
        shard_index: lease.shard_index,
        worker: lease.worker.clone(),
    }
}

/// Each shard of a stage run: (index, status, attempts). With the attempt number a staged
/// attempt's files carry, this says whether they are the recorded attempt's.
pub async fn shard_attempts(
    pool: &PgPool,
    stage_run_id: i64,
) -> Result<Vec<(i32, String, i32)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT shard_index, status, attempts FROM shards WHERE stage_run_id = $1
         ORDER BY shard_index",
    )
    .bind(stage_run_id)
    .fetch_all(pool)
    .await?)
}

/// Shard counts by status for one stage run.
pub async fn shard_progress(pool: &PgPool, stage_run_id: i64) -> Result<ShardProgress, StoreError> {
    lease::progress(pool, Queue::Shards, stage_run_id).await
}

/// One rule of a filter funnel: how many rows reached it and how many it removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelStep {
    pub rule: String,
    pub threshold: Option<String>,
    pub rows_in: i64,
    pub rows_dropped: i64,
}

/// Adds `steps` to a stage's funnel, accumulating into rules already recorded (each shard
/// adds its own counts), in the order given.
pub async fn record_funnel(
    pool: &PgPool,
    stage_run_id: i64,
    steps: &[FunnelStep],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    insert_funnel(&mut tx, stage_run_id, steps).await?;
    tx.commit().await?;
    Ok(())
}

/// Sets a stage's funnel to `steps`, replacing what was recorded (a funnel computed in one pass,
/// such as ingest's metadata filter, recorded again on resume).
pub async fn replace_funnel(
    pool: &PgPool,
    stage_run_id: i64,
    steps: &[FunnelStep],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM filter_funnel WHERE stage_run_id = $1")
        .bind(stage_run_id)
        .execute(&mut *tx)
        .await?;
    insert_funnel(&mut tx, stage_run_id, steps).await?;
    tx.commit().await?;
    Ok(())
}

async fn insert_funnel(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    stage_run_id: i64,
    steps: &[FunnelStep],
) -> Result<(), StoreError> {
    for (i, step) in steps.iter().enumerate() {
        if step.rows_dropped > step.rows_in || step.rows_dropped < 0 {
            return Err(StoreError::Invalid(format!(
                "funnel rule {}: dropped {} of {} rows",
                step.rule, step.rows_dropped, step.rows_in
            )));
        }
        sqlx::query(
            "INSERT INTO filter_funnel (stage_run_id, step, rule, threshold, rows_in, rows_dropped)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (stage_run_id, rule) DO UPDATE
                 SET rows_in = filter_funnel.rows_in + EXCLUDED.rows_in,
                     rows_dropped = filter_funnel.rows_dropped + EXCLUDED.rows_dropped,
                     threshold = EXCLUDED.threshold",
        )
        .bind(stage_run_id)
        .bind(i as i32)
        .bind(&step.rule)
        .bind(&step.threshold)
        .bind(step.rows_in)
        .bind(step.rows_dropped)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Moves a stage run's start `seconds` before now: for a stage recorded once its work is done
/// (the database's clock, so that hosts' clocks need not agree).
pub async fn backdate_stage_start(
    pool: &PgPool,
    stage_run_id: i64,
    seconds: f64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE stage_runs SET started_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(stage_run_id)
    .bind(seconds.max(0.0))
    .execute(pool)
    .await?;
    Ok(())
}

/// Records where a stage reads from and writes to (how workers find a run to join).
pub async fn set_stage_paths(
    pool: &PgPool,
    stage_run_id: i64,
    input_path: &str,
    output_path: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE stage_runs SET input_path = $2, output_path = $3 WHERE id = $1")
        .bind(stage_run_id)
        .bind(input_path)
        .bind(output_path)
        .execute(pool)
        .await?;
    Ok(())
}

/// A stage run: its pipeline run's id, its own, and whether it is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenStage {
    pub run_id: i64,
    pub stage_run_id: i64,
    pub running: bool,
}

/// The newest stage run of `stage` that writes to `output_path` (running ones first), or with
/// `run_id` that run's stage.
pub async fn find_stage_run(
    pool: &PgPool,
    stage: &str,
    output_path: &str,
    run_id: Option<i64>,
) -> Result<Option<OpenStage>, StoreError> {
    let row: Option<(i64, i64, bool)> = match run_id {
        Some(run_id) => {
            sqlx::query_as(
                "SELECT run_id, id, status = 'running' FROM stage_runs WHERE stage = $1 AND run_id = $2",
            )
            .bind(stage)
            .bind(run_id)
            .fetch_optional(pool)
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT run_id, id, status = 'running' FROM stage_runs
                 WHERE stage = $1 AND output_path = $2
                 ORDER BY status = 'running' DESC, id DESC LIMIT 1",
            )
            .bind(stage)
            .bind(output_path)
            .fetch_optional(pool)
            .await?
        }
    };
    Ok(row.map(|(run_id, stage_run_id, running)| OpenStage {
        run_id,
        stage_run_id,
        running,
    }))
}

/// A stage run that workers share: what [`join_or_start_stage`] looks for or makes.
#[derive(Debug, Clone, Copy)]
pub struct SharedStage<'a> {
    pub stage: &'a str,
    pub input_path: &'a str,
    pub output_path: &'a str,
    pub config: &'a serde_json::Value,
    /// Shards `0..shards`.
    pub shards: i32,
    pub max_attempts: i32,
    /// The pipeline run the stage belongs to (a `llamagen run`); `None`: the latest stage run
    /// of this output in any run, or a new run of its own.
    pub run_id: Option<i64>,
}

/// Where a stage's workers meet without a coordinator: the stage run of `stage` writing to
/// `output_path`, made (with a pipeline run of its own, unless `run_id` names one) by whichever
/// worker comes first, and holding shards `0..shards`. A finished one is re-opened (its failed
/// shards get fresh attempts) and shards the input gained since are added. An advisory lock on
/// the output path serialises workers starting together, so they always join one run.
pub async fn join_or_start_stage(
    pool: &PgPool,
    shared: &SharedStage<'_>,
) -> Result<OpenStage, StoreError> {
    let SharedStage {
        stage,
        input_path,
        output_path,
        config,
        shards,
        max_attempts,
        run_id: in_run,
    } = *shared;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("stage {stage} -> {output_path}"))
        .execute(&mut *tx)
        .await?;
    let found: Option<(i64, i64, bool)> = sqlx::query_as(
        "SELECT run_id, id, status = 'running' FROM stage_runs
         WHERE stage = $1 AND output_path = $2 AND ($3::bigint IS NULL OR run_id = $3)
         ORDER BY status = 'running' DESC, id DESC LIMIT 1",
    )
    .bind(stage)
    .bind(output_path)
    .bind(in_run)
    .fetch_optional(&mut *tx)
    .await?;
    let (run_id, stage_run_id) = match found {
        Some((run_id, stage_run_id, running)) => {
            if !running {
                reopen_in(&mut tx, run_id, stage_run_id).await?;
            }
            (run_id, stage_run_id)
        }
        None => {
            let run_id = match in_run {
                Some(run_id) => run_id,
                None => {
                    let host = nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok());
                    sqlx::query_scalar(
                        "INSERT INTO pipeline_runs (pipeline, trigger, config, config_sha256, host)
                         VALUES ($1, 'worker', $2, $3, $4) RETURNING id",
                    )
                    .bind(stage)
                    .bind(config)
                    .bind(config_sha256(config))
                    .bind(host)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            let stage_run_id: i64 = sqlx::query_scalar(
                "INSERT INTO stage_runs (run_id, stage, config, input_path, output_path)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(run_id)
            .bind(stage)
            .bind(config)
            .bind(input_path)
            .bind(output_path)
            .fetch_one(&mut *tx)
            .await?;
            (run_id, stage_run_id)
        }
    };
    sqlx::query(
        "INSERT INTO shards (stage_run_id, shard_index, max_attempts)
         SELECT $1, i, $3 FROM generate_series(0, $2 - 1) AS i
         ON CONFLICT (stage_run_id, shard_index) DO NOTHING",
    )
    .bind(stage_run_id)
    .bind(shards)
    .bind(max_attempts.max(1))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(OpenStage {
        run_id,
        stage_run_id,
        running: true,
    })
}

/// Re-opens a finished stage and its run, giving the shards that failed for good a fresh set of
/// attempts (a re-run after the cause was fixed). Returns how many shards were reset.
pub async fn reopen_stage(pool: &PgPool, open: &OpenStage) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let reset = reopen_in(&mut tx, open.run_id, open.stage_run_id).await?;
    tx.commit().await?;
    Ok(reset)
}

async fn reopen_in(
    tx: &mut sqlx::PgConnection,
    run_id: i64,
    stage_run_id: i64,
) -> Result<u64, StoreError> {
    let reset = sqlx::query(
        "UPDATE shards SET status = 'pending', failures = 0, expiries = 0, worker = NULL,
                error = NULL, finished_at = NULL, lease_expires_at = NULL
         WHERE stage_run_id = $1 AND status = 'failed'",
    )
    .bind(stage_run_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE stage_runs SET status = 'running', finished_at = NULL, error = NULL WHERE id = $1",
    )
    .bind(stage_run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE pipeline_runs SET status = 'running', finished_at = NULL, error = NULL WHERE id = $1",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    Ok(reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"a": 1, "b": {"c": 2, "d": 3}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"b": {"d": 3, "c": 2}, "a": 1}"#).unwrap();
        assert_eq!(config_sha256(&a), config_sha256(&b));
        let c: serde_json::Value =
            serde_json::from_str(r#"{"a": 2, "b": {"c": 2, "d": 3}}"#).unwrap();
        assert_ne!(config_sha256(&a), config_sha256(&c));
        assert_eq!(config_sha256(&a).len(), 64);
    }
}
