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

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use llamagen_pipeline::config::{MissedRuns, PipelineConfig, parse_cron, record_pipeline_run};
use llamagen_store::runs::{self, Outcome, Trigger};
use llamagen_store::schedule::{self, PipelineLock, TickOutcome};
use llamagen_store::{Store, StoreOptions};
use sqlx::PgPool;

use crate::signals::StopSignal;

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
        };
        tasks.push(tokio::spawn(async move {
            let name = p.name.clone();
            let result = schedule_pipeline(p, cx).await;
            if let Err(e) = &result {
                eprintln!("schedule: pipeline {name:?} stopped: {e:#}");
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
}

async fn schedule_pipeline(p: Pipeline, cx: Context) -> anyhow::Result<()> {
    let Context { pool, stop, .. } = &cx;
    let started = Utc::now();
    // Ticks missed while no scheduler ran: between the newest decided tick and now.
    if let Some(last) = schedule::last_tick(pool, &p.name).await?
        && let Some(missed) = p.latest_tick_in(last, started)?
    {
        if p.config.pipeline.missed_runs == MissedRuns::RunOnce {
            println!(
                "schedule: {:?} missed ticks up to {missed}; running once now",
                p.name
            );
            decide(&p, missed, &cx).await?;
        } else if schedule::decide_tick(pool, &p.name, missed, TickOutcome::SkippedMissed).await? {
            println!(
                "schedule: {:?} missed ticks up to {missed}; skipped",
                p.name
            );
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
            schedule::decide_tick(pool, &p.name, passed, TickOutcome::SkippedBusy).await?;
            recorded += 1;
            passed = p.next_tick(passed)?;
        }
        cursor = now.max(tick);
    }
    Ok(())
}

/// Decides one tick: skip it if another scheduler did or a run is in progress, else run it.
async fn decide(p: &Pipeline, tick: DateTime<Utc>, cx: &Context) -> anyhow::Result<()> {
    let pool = &cx.pool;
    if !schedule::decide_tick(pool, &p.name, tick, TickOutcome::Started).await? {
        return Ok(()); // another scheduler has this tick
    }
    let Some(lock) = PipelineLock::try_acquire(pool, &p.name).await? else {
        schedule::update_tick(pool, &p.name, tick, TickOutcome::SkippedBusy, None).await?;
        println!(
            "schedule: {:?} tick {tick}: a run is still going; skipped",
            p.name
        );
        return Ok(());
    };
    let result = run_tick(p, tick, cx).await;
    lock.release().await?;
    result
}

async fn run_tick(p: &Pipeline, tick: DateTime<Utc>, cx: &Context) -> anyhow::Result<()> {
    let Context {
        pool,
        stop,
        data_dir,
        grace_secs,
        overrides,
    } = cx;
    let run_id = record_pipeline_run(pool, &p.config, Trigger::Schedule, Some(tick)).await?;
    schedule::update_tick(pool, &p.name, tick, TickOutcome::Started, Some(run_id)).await?;
    println!("schedule: {:?} tick {tick}: run #{run_id} started", p.name);

    let exe = std::env::current_exe().context("locating the llamagen binary")?;
    let mut child = tokio::process::Command::new(exe)
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
        .context("starting llamagen run")?;
    let status = tokio::select! {
        status = child.wait() => status?,
        () = stop.wait() => {
            if let Some(pid) = child.id() {
                println!("schedule: passing SIGTERM to run #{run_id} (pid {pid})");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            child.wait().await?
        }
    };
    let interrupted = stop.requested();
    let outcome = if status.success() {
        TickOutcome::Succeeded
    } else {
        TickOutcome::Failed
    };
    // The child closes its run; one that was stopped or died leaves it open, and is closed
    // here (a no-op when the child did).
    let (run_outcome, why) = if interrupted {
        (
            Outcome::Cancelled,
            "scheduler stopped by signal".to_string(),
        )
    } else {
        (Outcome::Failed, format!("llamagen run ended with {status}"))
    };
    runs::close_if_running(pool, run_id, run_outcome, Some(&why)).await?;
    schedule::update_tick(pool, &p.name, tick, outcome, None).await?;
    println!("schedule: {:?} run #{run_id} {}", p.name, outcome.as_str());
    Ok(())
}
