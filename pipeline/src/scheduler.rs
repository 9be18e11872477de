//! `llamagen schedule`: runs pipelines on the cron entries of their configs.
//!
//! Each tick is decided once, by whichever scheduler inserts its `schedule_ticks` row first.
//! The decider then takes the pipeline's advisory lock: held means a run of that pipeline is
//! still going (here or on another machine), and the tick is recorded `skipped_busy`; free
//! means it starts `llamagen run CONFIG --run-id N` as a child process and records how it ended.
//! Ticks that pass while this scheduler's own run is going are `skipped_busy` too: a run
//! never starts late because an earlier one overran.
//!
//! Missed ticks (the scheduler was down): on start, ticks after the newest decided one and
//! before now follow `pipeline.missed_runs`: `skip` records the latest of them as
//! `skipped_missed`; `run_once` runs it now, once, however many were missed.
//!
//! SIGTERM or Ctrl-C: the scheduler stops waiting, passes SIGTERM on to a running child (which
//! finishes or releases its shard within its grace period, see `llamagen ingest
//! --grace-secs`), waits for it, records the run as cancelled, and exits.
//!
//! A scheduler is a service that must outlive a database restart: every database call is
//! retried with backoff (up to a minute apart) until it gets through or a stop is asked for;
//! the lock is checked every [`LOCK_CHECK`] while a run goes, and when its connection broke it
//! is taken again, or, if another process took it meanwhile, the run is stopped rather than
//! left to overlap with another run of the same pipeline.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use crate::config::{MissedRuns, PipelineConfig, parse_cron, record_pipeline_run};
use crate::signals::StopSignal;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use llamagen_store::runs::{self, Outcome, Trigger};
use llamagen_store::schedule::{self, PipelineLock, TickOutcome};
use llamagen_store::{Store, StoreError, StoreOptions};
use sqlx::PgPool;

/// How often a held pipeline lock is checked while its run goes.
pub const LOCK_CHECK: Duration = Duration::from_secs(15);

/// `call` until it succeeds, waiting 1, 2, 4, ... up to 60 s between failures (a database
/// outage); None when a stop is asked for first, or when the store refuses the call itself.
async fn retrying<T, F, Fut>(stop: &StopSignal, what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = Duration::from_secs(1);
    loop {
        match call().await {
            Ok(value) => return Some(value),
            // A refusal, not an outage: asking again cannot change the answer.
            Err(StoreError::Invalid(reason)) => {
                eprintln!("schedule: {what}: {reason}; giving up on it");
                return None;
            }
            Err(e) => {
                eprintln!("schedule: {what}: {e}; retrying in {} s", wait.as_secs());
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.wait() => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Pipeline configs with `pipeline.schedule` cron entries (UTC).
    #[arg(required = true)]
    pub configs: Vec<PathBuf>,
    /// Seconds a running child gets after SIGTERM to finish or release its shard.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    /// Override a key of every config, e.g. `--set ingest.input=...` (repeatable; passed on
    /// to each run).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

struct Pipeline {
    name: String,
    config_path: PathBuf,
    config: PipelineConfig,
    crons: Vec<croner::Cron>,
}

impl Pipeline {
    /// The first tick of any entry strictly after `after`.
    fn next_tick(&self, after: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
        self.crons
            .iter()
            .map(|c| c.find_next_occurrence(&after, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.name))?
            .into_iter()
            .min()
            .context("no cron entries")
    }

    /// The latest tick in `(after, until]`, if any.
    fn latest_tick_in(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let mut latest = None;
        for c in &self.crons {
            let t = c
                .find_previous_occurrence(&until, true)
                .map_err(|e| anyhow::anyhow!("{}: {e}", self.name))?;
            if t > after && latest.is_none_or(|l| t > l) {
                latest = Some(t);
            }
        }
        Ok(latest)
    }
}

fn load(paths: &[PathBuf], overrides: &[String]) -> anyhow::Result<Vec<Pipeline>> {
    let mut pipelines: Vec<Pipeline> = Vec::new();
    for path in paths {
        let config = PipelineConfig::load_with(path, overrides)?;
        let name = config.pipeline.name.clone();
        anyhow::ensure!(
            !config.pipeline.schedule.is_empty(),
            "{}: pipeline {name:?} has no pipeline.schedule entries",
            path.display()
        );
        anyhow::ensure!(
            pipelines.iter().all(|p| p.name != name),
            "{}: pipeline {name:?} is given twice",
            path.display()
        );
        let crons = config
            .pipeline
            .schedule
            .iter()
            .map(|e| parse_cron(e))
            .collect::<anyhow::Result<Vec<_>>>()?;
        pipelines.push(Pipeline {
            name,
            config_path: path
                .canonicalize()
                .with_context(|| path.display().to_string())?,
            config,
            crons,
        });
    }
    Ok(pipelines)
}

pub async fn run(args: &ScheduleArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let pipelines = load(&args.configs, &args.overrides)?;
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let stop = StopSignal::listen();
    let decider = format!(
        "{}:{}",
        crate::shard_worker::worker_name(),
        Utc::now().timestamp_micros()
    );
    let mut tasks = Vec::new();
    for p in pipelines {
        println!(
            "schedule: pipeline {:?} at {} (UTC; missed runs: {})",
            p.name,
            p.config.pipeline.schedule.join(" | "),
            p.config.pipeline.missed_runs
        );
        let cx = Context {
            pool: store.pool().clone(),
            stop: stop.clone(),
            data_dir: data_dir.to_path_buf(),
            grace_secs: args.grace_secs,
            overrides: args.overrides.clone(),
            decider: decider.clone(),
        };
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let name = p.name.clone();
            let result = schedule_pipeline(p, cx).await;
            if let Err(e) = &result {
                // Not a database error (those are retried): the scheduler stops as a whole,
                // rather than living on with one pipeline no longer scheduled.
                eprintln!("schedule: pipeline {name:?} stopped: {e:#}; stopping the scheduler");
                stop.request();
            }
            result
        }));
    }
    let mut failed = false;
    for t in tasks {
        failed |= !matches!(t.await, Ok(Ok(())));
    }
    store.close().await?;
    println!("schedule: stopped");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What every tick of a scheduler needs besides its pipeline.
struct Context {
    pool: PgPool,
    stop: StopSignal,
    data_dir: PathBuf,
    grace_secs: u64,
    /// `--set` overrides, passed on to every run.
    overrides: Vec<String>,
    /// This scheduler's name in `schedule_ticks.decided_by`: host, pid and start time.
    decider: String,
}

async fn schedule_pipeline(p: Pipeline, cx: Context) -> anyhow::Result<()> {
    let Context {
        pool,
        stop,
        decider,
        ..
    } = &cx;
    let decider = decider.as_str();
    let name = p.name.as_str();
    let started = Utc::now();
    // Ticks missed while no scheduler ran: between the newest decided tick and now.
    let Some(last) = retrying(stop, "reading the last tick", || {
        schedule::last_tick(pool, name)
    })
    .await
    else {
        return Ok(());
    };
    if let Some(last) = last
        && let Some(missed) = p.latest_tick_in(last, started)?
    {
        if p.config.pipeline.missed_runs == MissedRuns::RunOnce {
            println!("schedule: {name:?} missed ticks up to {missed}; running once now");
            decide(&p, missed, &cx).await?;
        } else if retrying(stop, "recording a missed tick", || {
            schedule::decide_tick(pool, name, missed, TickOutcome::SkippedMissed, decider)
        })
        .await
        .unwrap_or(false)
        {
            println!("schedule: {name:?} missed ticks up to {missed}; skipped");
        }
    }
    let mut cursor = Utc::now();
    while !stop.requested() {
        let tick = p.next_tick(cursor)?;
        let wait = (tick - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.wait() => break,
        }
        decide(&p, tick, &cx).await?;
        // Ticks that passed during our own run were due while the pipeline was busy.
        let now = Utc::now();
        let mut passed = p.next_tick(tick)?;
        let mut recorded = 0;
        while passed <= now && recorded < 1000 {
            retrying(stop, "recording a busy tick", || {
                schedule::decide_tick(pool, name, passed, TickOutcome::SkippedBusy, decider)
            })
            .await;
            recorded += 1;
            passed = p.next_tick(passed)?;
        }
        cursor = now.max(tick);
    }
    Ok(())
}

/// Decides one tick: skip it if another scheduler did or a run is in progress, else run it.
async fn decide(p: &Pipeline, tick: DateTime<Utc>, cx: &Context) -> anyhow::Result<()> {
    let Context {
        pool,
        stop,
        decider,
        ..
    } = cx;
    let decider = decider.as_str();
    let name = p.name.as_str();
    let decided = retrying(stop, "deciding a tick", || {
        schedule::decide_tick(pool, name, tick, TickOutcome::Started, decider)
    })
    .await;
    if decided != Some(true) {
        return Ok(()); // another scheduler has this tick, or we are stopping
    }
    let Some(lock) = retrying(stop, "taking the pipeline lock", || {
        PipelineLock::try_acquire(pool, name)
    })
    .await
    else {
        return Ok(());
    };
    let Some(lock) = lock else {
        retrying(stop, "recording a busy tick", || {
            schedule::update_tick(pool, name, tick, TickOutcome::SkippedBusy, None)
        })
        .await;
        println!("schedule: {name:?} tick {tick}: a run is still going; skipped");
        return Ok(());
    };
    let (result, lock) = run_tick(p, tick, cx, lock).await;
    if let Some(lock) = lock
        && let Err(e) = lock.release().await
    {
        // Closing its connection frees it anyway.
        eprintln!("schedule: releasing the lock of {name:?}: {e}");
    }
    result
}

/// Runs one decided tick as a `llamagen run` child while holding `lock`; gives the lock back
/// (None when it was lost to another process).
async fn run_tick(
    p: &Pipeline,
    tick: DateTime<Utc>,
    cx: &Context,
    lock: PipelineLock,
) -> (anyhow::Result<()>, Option<PipelineLock>) {
    let Context {
        pool,
        stop,
        data_dir,
        grace_secs,
        overrides,
        ..
    } = cx;
    let name = p.name.as_str();
    let Some(run_id) = retrying(stop, "recording the run", || {
        record_pipeline_run(pool, &p.config, Trigger::Schedule, Some(tick))
    })
    .await
    else {
        return (Ok(()), Some(lock));
    };
    retrying(stop, "recording the tick's run", || {
        schedule::update_tick(pool, name, tick, TickOutcome::Started, Some(run_id))
    })
    .await;
    println!("schedule: {name:?} tick {tick}: run #{run_id} started");

    let exe = match std::env::current_exe().context("locating the llamagen binary") {
        Ok(exe) => exe,
        Err(e) => return (Err(e), Some(lock)),
    };
    let spawned = tokio::process::Command::new(exe)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("run")
        .arg(&p.config_path)
        .arg("--run-id")
        .arg(run_id.to_string())
        .arg("--grace-secs")
        .arg(grace_secs.to_string())
        .args(overrides.iter().flat_map(|o| ["--set", o.as_str()]))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting llamagen run");
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return (Err(e), Some(lock)),
    };
    let terminate = |child: &tokio::process::Child, why: &str| {
        if let Some(pid) = child.id() {
            println!("schedule: passing SIGTERM to run #{run_id} (pid {pid}): {why}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    };
    let mut held = Some(lock);
    let mut lost_to_another = false;
    let mut terminated = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = stop.wait(), if !terminated => {
                terminate(&child, "the scheduler is stopping");
                terminated = true;
            }
            () = tokio::time::sleep(LOCK_CHECK), if !terminated => {
                let Some(current) = held.as_mut() else { continue };
                if let Err(e) = current.check().await {
                    eprintln!("schedule: {name:?}: {e}; taking the lock again");
                    held = None;
                    match PipelineLock::try_acquire(pool, name).await {
                        Ok(Some(again)) => held = Some(again),
                        Ok(None) => {
                            // Another run of this pipeline may start now: ours stops first.
                            lost_to_another = true;
                            terminate(&child, "another process took the pipeline lock");
                            terminated = true;
                        }
                        // The database is still away; the next check tries again.
                        Err(e) => eprintln!("schedule: {name:?}: taking the lock again: {e}"),
                    }
                }
            }
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => return (Err(e.into()), held),
    };
    let interrupted = stop.requested();
    let outcome = if status.success() {
        TickOutcome::Succeeded
    } else {
        TickOutcome::Failed
    };
    // The child closes its run; one that was stopped or died leaves it open, and is closed
    // here (a no-op when the child did).
    let (run_outcome, why) = if lost_to_another {
        (
            Outcome::Failed,
            "stopped: the pipeline lock was lost to another process".to_string(),
        )
    } else if interrupted {
        (
            Outcome::Cancelled,
            "scheduler stopped by signal".to_string(),
        )
    } else {
        (Outcome::Failed, format!("llamagen run ended with {status}"))
    };
    // Recorded even while stopping: a few tries, then the run stays open for the next look.
    let quiet = StopSignal::never();
    let close = async {
        retrying(&quiet, "closing the run", || {
            runs::close_if_running(pool, run_id, run_outcome, Some(&why))
        })
        .await;
        retrying(&quiet, "recording the tick's outcome", || {
            schedule::update_tick(pool, name, tick, outcome, None)
        })
        .await;
    };
    if tokio::time::timeout(Duration::from_secs(60), close)
        .await
        .is_err()
    {
        eprintln!(
            "schedule: {name:?} run #{run_id}: the database did not come back to record the end"
        );
    }
    println!("schedule: {name:?} run #{run_id} {}", outcome.as_str());
    (Ok(()), held)
}
