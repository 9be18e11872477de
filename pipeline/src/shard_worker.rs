//! The shard-worker loop every stage that walks shards runs (ingest, filter, caption, encode vq,
//! encode t5): one process works the shards of a folder either by a fixed split (a Slurm array
//! or Kubernetes indexed Job index: the shards whose position modulo the count is its index) or
//! by claiming them from PostgreSQL one at a time:
//!
//! 1. claim the lowest pending shard (or one whose lease expired) of the stage run;
//! 2. renew the lease every third of its length while the shard is worked on; a renewal that
//!    finds the shard taken over (this worker was presumed dead) cancels the work in hand, and
//!    so do two thirds of a lease without a renewal (the database is out of reach), so that
//!    the work has stopped before another worker can claim the shard;
//! 3. complete the shard with its counts, fail it with the error (retried while attempts
//!    remain), or, on SIGTERM / Ctrl-C after a grace period, release it unfinished (the attempt
//!    does not count);
//! 4. once no shard is pending or running, close the stage run (and its pipeline run unless
//!    the caller keeps it open), whichever worker sees it first.
//!
//! A stage whose shards end with a long tail (ingest: the last downloads wait out dead hosts'
//! timeouts) can hold several shards at once ([`ClaimOptions::open_shards`]): the next is
//! claimed when the newest says its tail has started, each with its own lease and outcome.
//!
//! A stage gives the loop one closure that works shard `i`; whatever runs the closure (a
//! blocking model, an async downloader) the lease protocol is this one.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;

use anyhow::Context as _;
use llamagen_store::runs::{self, OpenStage, Outcome, ShardCounts, ShardLease, ShardProgress};
use llamagen_store::{Store, StoreError, StoreOptions};
use sqlx::PgPool;

use crate::outage::{OUTAGE_LIMIT, through_outage};
use crate::signals::StopSignal;

/// How a worker takes the shards of its folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Sharing {
    /// A fixed split: the shards at positions `index`, `index + count`, ...
    Static { index: usize, count: usize },
    /// Claimed from PostgreSQL with a lease, shared with every other worker of the same output.
    Leases(LeaseOptions),
}

impl Sharing {
    /// One process takes every shard.
    pub const ALL: Self = Sharing::Static { index: 0, count: 1 };
}

/// The lease settings of a claiming worker.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseOptions {
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease: Duration,
    /// Attempts per shard before it is failed for good.
    pub max_attempts: i32,
    /// After a stop request, how long the shard in hand may take before it is released.
    pub grace: Duration,
    /// Where the private cluster lives when `DATABASE_URL` is unset.
    pub data_dir: PathBuf,
}

impl LeaseOptions {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            lease: Duration::from_secs(300),
            max_attempts: 3,
            grace: Duration::from_secs(30),
            data_dir: data_dir.to_path_buf(),
        }
    }
}

/// What working one shard gave.
#[derive(Debug, Clone)]
pub enum ShardDone {
    /// Worked now: a line for the log (empty: the stage printed its own) and the counts
    /// recorded with the shard.
    Worked { line: String, counts: ShardCounts },
    /// Already finished by an earlier run (its files are complete).
    AlreadyDone,
    /// Worked now, with this attempt's files staged in `staged`: moved into `folder` once the
    /// database records the shard as done by this attempt
    /// ([`llamagen_shards::staging::publish`]), never otherwise.
    Staged {
        line: String,
        counts: ShardCounts,
        staged: PathBuf,
        folder: PathBuf,
    },
}

/// Set when the work in hand should stop: the lease was lost, or a stop was requested.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The flag itself, for work that checks it between batches.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An error after which no further shard can succeed (the model server refuses every
/// request, the output folder is pinned to other settings): the walk releases the shard in
/// hand and stops instead of failing every shard in turn.
#[derive(Debug)]
pub struct Fatal(pub anyhow::Error);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Fatal {}

/// Runs blocking shard work (a model on this thread) where the loop expects a future. The work
/// runs when the loop calls for the shard, on a thread the runtime has set aside, so the lease
/// keeps being renewed meanwhile; a stop or a lost lease takes effect when it returns.
pub fn blocking<T>(work: impl FnOnce() -> T) -> std::future::Ready<T> {
    std::future::ready(tokio::task::block_in_place(work))
}

/// What one worker's walk did.
#[derive(Debug, Default)]
pub struct Walked {
    /// Shards worked by this process.
    pub done: usize,
    /// Shards found finished already.
    pub kept: usize,
    /// Shards that failed here, with why (the others went on).
    pub failed: Vec<String>,
    /// The shards released unfinished when a stop was requested.
    pub released: Vec<String>,
    /// Shards abandoned because another worker took them over.
    pub lost: Vec<String>,
    /// A stop (SIGTERM, Ctrl-C) ended the walk early.
    pub stopped: bool,
    /// With leases: the stage run, and its shards by status when this worker left.
    pub stage: Option<OpenStage>,
    pub progress: Option<ShardProgress>,
}

impl Walked {
    /// The walk for a `--json` report.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "shards_done": self.done,
            "shards_already_done": self.kept,
            "failed": self.failed,
            "released": self.released,
            "lost": self.lost,
            "stopped": self.stopped,
            "run_id": self.stage.map(|s| s.run_id),
            "stage_run_id": self.stage.map(|s| s.stage_run_id),
            "stage_shards": self.progress,
        })
    }

    /// An error naming the shards that failed here or for good, if any did.
    pub fn result(&self) -> anyhow::Result<()> {
        if !self.failed.is_empty() {
            anyhow::bail!("shard(s) failed: {}", self.failed.join("; "));
        }
        if let Some(p) = self.progress.as_ref().filter(|p| p.failed > 0) {
            anyhow::bail!("{} shard(s) of the stage failed for good", p.failed);
        }
        Ok(())
    }

    fn record(
        &mut self,
        bar: &indicatif::ProgressBar,
        name: &str,
        result: anyhow::Result<ShardDone>,
    ) -> Option<ShardCounts> {
        bar.inc(1);
        match result {
            Ok(ShardDone::Worked { line, counts } | ShardDone::Staged { line, counts, .. }) => {
                if !line.is_empty() {
                    crate::progress::println(bar, line);
                }
                self.done += 1;
                Some(counts)
            }
            Ok(ShardDone::AlreadyDone) => {
                self.kept += 1;
                Some(ShardCounts::default())
            }
            Err(e) => {
                crate::progress::println(bar, format!("shard {name} failed: {e:#}"));
                self.failed.push(format!("{name}: {e:#}"));
                None
            }
        }
    }
}

/// The stage a claiming walk registers its shards under.
#[derive(Debug, Clone, Copy)]
pub struct StageTarget<'a> {
    /// Stage name (`filter`, `caption`, `encode`, ...).
    pub stage: &'a str,
    pub input: &'a Path,
    pub output: &'a Path,
    /// The stage's settings, stored with the run.
    pub settings: &'a serde_json::Value,
    /// The pipeline run a new stage run joins; `None` starts a run of its own.
    pub run_id: Option<i64>,
}

/// Works `names` (every shard of the folder, in order) under `sharing`: the fixed split runs the
/// closure on this worker's shards; leases join (or start) the stage run of `target.output` and
/// claim shards from it. `work(i, cancel)` works shard `names[i]`.
pub async fn walk<F, Fut>(
    names: &[String],
    sharing: &Sharing,
    target: StageTarget<'_>,
    stop: Option<&StopSignal>,
    mut work: F,
) -> anyhow::Result<Walked>
where
    F: FnMut(usize, Cancel) -> Fut,
    Fut: Future<Output = anyhow::Result<ShardDone>>,
{
    let options = match sharing {
        Sharing::Static { index, count } => {
            anyhow::ensure!(
                index < count,
                "--worker-index {index} must be below --workers {count}"
            );
            let mut walked = Walked::default();
            let bar = crate::progress::bar(names.len().div_ceil(*count.max(&1)) as u64, "shards");
            for (i, name) in names.iter().enumerate() {
                if i % count != *index {
                    continue;
                }
                if stop.is_some_and(StopSignal::requested) {
                    walked.stopped = true;
                    break;
                }
                match work(i, Cancel::default()).await {
                    Err(e) if e.is::<Fatal>() => return Err(e),
                    result => {
                        walked.record(&bar, name, result);
                    }
                }
            }
            bar.finish_and_clear();
            return Ok(walked);
        }
        Sharing::Leases(options) => options,
    };
    let store = Store::open(&StoreOptions::from_env(&options.data_dir)).await?;
    let pool = store.pool().clone();
    let output = std::fs::canonicalize(target.output).unwrap_or_else(|_| target.output.into());
    let open = runs::join_or_start_stage(
        &pool,
        &runs::SharedStage {
            stage: target.stage,
            input_path: &target.input.display().to_string(),
            output_path: &output.display().to_string(),
            config: target.settings,
            shards: i32::try_from(names.len()).context("too many shards")?,
            max_attempts: options.max_attempts,
            run_id: target.run_id,
        },
    )
    .await?;
    let worker = worker_name();
    println!(
        "{} run #{}: {} shard(s) shared through PostgreSQL leases, worker {worker}",
        target.stage,
        open.run_id,
        names.len()
    );
    let claims = ClaimOptions {
        worker,
        lease: options.lease,
        grace: options.grace,
        max_shards: None,
        keep_run_open: target.run_id.is_some(),
        spinner: true,
        open_shards: 1,
    };
    let result = work_claims(&pool, open, &claims, stop, |claim| {
        let i = claim.lease.shard_index as usize;
        let name = names.get(i).cloned();
        let fut = name.as_ref().map(|_| work(i, claim.cancel));
        async move {
            match (name, fut) {
                (Some(name), Some(fut)) => (name, fut.await),
                _ => (
                    format!("{i:05}"),
                    Err(anyhow::anyhow!(
                        "shard {i} is not in this worker's listing of {} shards",
                        names.len()
                    )),
                ),
            }
        }
    })
    .await;
    store.close().await?;
    result
}

/// How a claiming worker runs.
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    /// `HOST:PID-TAG` by default ([`worker_name`]).
    pub worker: String,
    pub lease: Duration,
    pub grace: Duration,
    /// Stop after this many shards.
    pub max_shards: Option<u32>,
    /// Close only the stage run when it is done, not its pipeline run (a `llamagen run` or a
    /// scheduler tick closes that).
    pub keep_run_open: bool,
    /// Count the shards on a spinner (off for stages that draw a finer bar of their own).
    pub spinner: bool,
    /// Shards held at once: above 1, the next shard is claimed as soon as the newest one's
    /// tail has started ([`Claim::tail_started`]).
    pub open_shards: usize,
}

/// The webdataset shards of a folder in name order, and their names (`00000`, ...): what a
/// stage that walks a shard folder walks.
pub fn tar_shards(dir: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<String>)> {
    let tars = llamagen_shards::tar_files(dir, 0, 1)?;
    let names = tars
        .iter()
        .map(|tar| Ok(llamagen_shards::shard_name_of(tar)?.to_string()))
        .collect::<anyhow::Result<Vec<String>>>()?;
    Ok((tars, names))
}

/// `HOST:PID-TAG`, how this process names itself in the shards table and the checkpoint queue:
/// its host and process id, then four hex digits drawn once per process. The tag is there
/// because the first two need not tell processes apart: containers on host networking share
/// the host's name, and each may run as PID 1.
pub fn worker_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        // std's hasher keys are seeded from the operating system's randomness per process.
        use std::hash::{BuildHasher as _, Hasher as _};
        let tag = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            & 0xffff;
        format!(
            "{}:{}-{tag:04x}",
            crate::provenance::hostname(),
            std::process::id()
        )
    })
    .clone()
}

/// The claim loop over an open stage run: claims shards until none is left (or a stop, or
/// `max_shards`), working each with `work(claim)`, which returns the shard's name and outcome.
/// With `options.open_shards` above 1, a shard whose work calls [`Claim::tail_started`] lets
/// the loop claim the next one while its tail runs out, up to that many shards at once.
/// Closes the stage run (and the pipeline run unless `keep_run_open`) once no shard is pending
/// or running.
pub async fn work_claims<F, Fut>(
    pool: &PgPool,
    open: OpenStage,
    options: &ClaimOptions,
    stop: Option<&StopSignal>,
    mut work: F,
) -> anyhow::Result<Walked>
where
    F: FnMut(Claim) -> Fut,
    Fut: Future<Output = (String, anyhow::Result<ShardDone>)>,
{
    let mut walked = Walked {
        stage: Some(open),
        ..Walked::default()
    };
    // Claims come one at a time, so the bar counts this worker's shards without a total.
    let bar = if options.spinner {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} shard(s) [{elapsed_precise}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let lease_time = options.lease.max(Duration::from_secs(2));
    let stopping = || stop.is_some_and(StopSignal::requested);
    let open_shards = options.open_shards.max(1);
    let mut claimed = 0u32;
    let mut in_hand = InHand::default();
    let mut leases: Vec<ShardLease> = Vec::new();
    // The newest shard in hand, until it says its tail has started or it ends: no other shard
    // is claimed meanwhile.
    let mut newest: Option<(i32, Arc<tokio::sync::Notify>)> = None;
    // When nothing was pending at the last try, the next try waits for a shard to end or for
    // this moment.
    let mut retry_claim_at: Option<tokio::time::Instant> = None;
    loop {
        let may_claim = newest.is_none()
            && in_hand.len() < open_shards
            && options.max_shards.is_none_or(|max| claimed < max)
            && !stopping()
            && retry_claim_at.is_none_or(|at| tokio::time::Instant::now() >= at);
        if may_claim {
            let claimed_at = std::time::Instant::now();
            let claim = in_hand
                .drive(through_outage(
                    "claiming a shard",
                    OUTAGE_LIMIT,
                    stop,
                    || runs::claim_shard(pool, open.stage_run_id, &options.worker, lease_time),
                ))
                .await?;
            match claim {
                Some(held) => {
                    claimed += 1;
                    let cancel = Cancel::default();
                    let tail = Arc::new(tokio::sync::Notify::new());
                    let claim = Claim {
                        lease: held.clone(),
                        cancel: cancel.clone(),
                        tail: tail.clone(),
                    };
                    newest = Some((held.shard_index, tail));
                    leases.push(held.clone());
                    let shard = HeldShard {
                        pool,
                        held,
                        claimed_at,
                        lease_time,
                        grace: options.grace,
                        stop,
                    };
                    in_hand.push(shard.work(work(claim), cancel));
                    continue;
                }
                None if in_hand.is_empty() => {
                    // Shards still held by other workers: one of them may be dead, and its
                    // shard comes free when the lease runs out. Leaving now would let a
                    // pipeline go on to the next stage over unfinished output, so the worker
                    // stays until the stage is finished.
                    let state =
                        through_outage("reading the stage's progress", OUTAGE_LIMIT, stop, || {
                            runs::shard_progress(pool, open.stage_run_id)
                        })
                        .await?;
                    if state.finished() {
                        break;
                    }
                    tokio::time::sleep((lease_time / 3).min(Duration::from_secs(5))).await;
                    continue;
                }
                None => {
                    retry_claim_at = Some(
                        tokio::time::Instant::now() + (lease_time / 3).min(Duration::from_secs(5)),
                    )
                }
            }
        }
        if in_hand.is_empty() {
            // Stopped, or `max_shards` reached.
            break;
        }
        enum Next {
            Ended(Box<(ShardLease, Ended)>),
            TailStarted,
            RetryClaim,
        }
        let next = {
            let tail_started = async {
                match &newest {
                    Some((_, tail)) => tail.notified().await,
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                match retry_claim_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(ended) = in_hand.next_ended() => Next::Ended(Box::new(ended)),
                () = tail_started => Next::TailStarted,
                () = retry => Next::RetryClaim,
            }
        };
        let (held, ended) = match next {
            Next::Ended(ended) => *ended,
            Next::TailStarted => {
                newest = None;
                continue;
            }
            Next::RetryClaim => {
                retry_claim_at = None;
                continue;
            }
        };
        let index = held.shard_index;
        leases.retain(|l| l.shard_index != index);
        if newest.as_ref().is_some_and(|(i, _)| *i == index) {
            newest = None;
        }
        // A shard came free here: pending shards may be claimable again.
        retry_claim_at = None;
        match ended {
            Ended::Stopped => {
                println!("shard {index:05} released unfinished; the next worker or run redoes it");
                walked.released.push(format!("{index:05}"));
                walked.stopped = true;
            }
            Ended::Lost => {
                println!(
                    "shard {index:05}: the lease ran out and another worker took it over; its work here stops"
                );
                walked.lost.push(format!("{index:05}"));
            }
            Ended::Worked(_, Err(e)) if e.is::<Fatal>() => {
                // Nothing else can succeed either: every shard in hand goes back unfinished.
                drop(in_hand);
                for lease in std::iter::once(&held).chain(&leases) {
                    let released = through_outage("releasing a shard", OUTAGE_LIMIT, stop, || {
                        runs::release_shard(pool, lease)
                    })
                    .await;
                    match released {
                        Ok(()) | Err(StoreError::LeaseLost { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                return Err(e);
            }
            Ended::Worked(name, result) => {
                let error = result.as_ref().err().map(|e| format!("{e:#}"));
                let staged = match &result {
                    Ok(ShardDone::Staged { staged, folder, .. }) => {
                        Some((staged.clone(), folder.clone()))
                    }
                    _ => None,
                };
                match walked.record(&bar, &name, result) {
                    Some(counts) => {
                        let completed = in_hand
                            .drive(through_outage(
                                "completing a shard",
                                OUTAGE_LIMIT,
                                stop,
                                || runs::complete_shard(pool, &held, &counts),
                            ))
                            .await;
                        match completed {
                            // Recorded as this attempt's: its files can go into place.
                            Ok(()) => {
                                if let Some((staged, folder)) = staged {
                                    let index = u32::try_from(index).unwrap_or_default();
                                    if let Err(e) =
                                        llamagen_shards::staging::publish(&staged, &folder, index)
                                    {
                                        // The shard is recorded done; whoever finds the staged
                                        // set next (a re-run, another worker) moves it.
                                        crate::progress::println(
                                            &bar,
                                            format!("shard {name}: publishing its files: {e}"),
                                        );
                                        walked.failed.push(format!("{name}: publishing: {e}"));
                                    }
                                }
                            }
                            Err(StoreError::LeaseLost { .. }) => {
                                println!(
                                    "shard {name}: the lease ran out; another worker took it over"
                                );
                                walked.lost.push(name);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    None => {
                        let message = error.unwrap_or_else(|| "failed".into());
                        let failed = in_hand
                            .drive(through_outage(
                                "failing a shard",
                                OUTAGE_LIMIT,
                                stop,
                                || runs::fail_shard(pool, &held, &message),
                            ))
                            .await;
                        match failed {
                            Ok(_) | Err(StoreError::LeaseLost { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    walked.stopped |= stopping();
    let progress = through_outage("closing the stage", OUTAGE_LIMIT, stop, || {
        finish_if_done_once(pool, open, options.keep_run_open)
    })
    .await?;
    walked.progress = Some(progress);
    Ok(walked)
}

/// The shards a claiming worker holds: their work, and the ends not yet handled. The loop's
/// own database calls run through [`InHand::drive`], which keeps the shards' work going
/// meanwhile: a shard whose futures are not polled for the length of a slow call (a database
/// outage) would find its downloads' deadlines passed when it is polled again.
struct InHand<F: Future> {
    working: futures::stream::FuturesUnordered<F>,
    ended: std::collections::VecDeque<F::Output>,
}

impl<F: Future> Default for InHand<F> {
    fn default() -> Self {
        Self {
            working: futures::stream::FuturesUnordered::new(),
            ended: std::collections::VecDeque::new(),
        }
    }
}

impl<F: Future> InHand<F> {
    fn push(&mut self, work: F) {
        self.working.push(work);
    }

    /// Shards held: working, or ended and not yet handled.
    fn len(&self) -> usize {
        self.working.len() + self.ended.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next shard to end (one that ended during a [`drive`](Self::drive) first).
    async fn next_ended(&mut self) -> Option<F::Output> {
        match self.ended.pop_front() {
            Some(ended) => Some(ended),
            None => self.working.next().await,
        }
    }

    /// Awaits `call` while the shards' work goes on; shards that end meanwhile are kept for
    /// [`next_ended`](Self::next_ended). `call` is never dropped before it is done.
    async fn drive<T>(&mut self, call: impl Future<Output = T>) -> T {
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                value = &mut call => return value,
                Some(ended) = self.working.next() => self.ended.push_back(ended),
            }
        }
    }
}

/// One claimed shard as the loop hands it to the stage's work.
pub struct Claim {
    pub lease: ShardLease,
    /// Set when the work should stop (the lease was lost, or a stop was requested).
    pub cancel: Cancel,
    tail: Arc<tokio::sync::Notify>,
}

impl Claim {
    /// Says that what is left of this shard no longer keeps the worker busy (ingest: every
    /// row has started, and what remains are downloads in flight, some waiting out a dead
    /// host's timeout): the loop may claim the next shard now, so that its work fills the
    /// slack. Has an effect only with [`ClaimOptions::open_shards`] above 1.
    pub fn tail_started(&self) {
        self.tail.notify_one();
    }
}

/// How the work on one shard in hand ended.
enum Ended {
    Worked(String, anyhow::Result<ShardDone>),
    /// A stop was requested and the grace ran out: the shard was released.
    Stopped,
    /// The lease was lost (taken over, or not renewed in time).
    Lost,
}

/// A claimed shard and what keeps its lease.
struct HeldShard<'a> {
    pool: &'a PgPool,
    held: ShardLease,
    /// When the claim was asked for: the lease counts from before the database granted it.
    claimed_at: std::time::Instant,
    lease_time: Duration,
    grace: Duration,
    stop: Option<&'a StopSignal>,
}

/// Aborts a spawned task when dropped, so that a renewer never outlives its shard's work.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HeldShard<'_> {
    /// Runs `work` while renewing the lease every third of its length; ends when the work
    /// does, when the lease is lost, or a grace period after a stop request (the shard is then
    /// released unfinished and the attempt does not count).
    async fn work(
        self,
        work: impl Future<Output = (String, anyhow::Result<ShardDone>)>,
        cancel: Cancel,
    ) -> (ShardLease, Ended) {
        let lost = Arc::new(tokio::sync::Notify::new());
        // Set by the renewer before it cancels the work, so that work ending on that cancel
        // still counts as lost below.
        let gave_up = Arc::new(AtomicBool::new(false));
        let lease_time = self.lease_time;
        let _renewer = {
            let (pool, held, cancel, lost, gave_up) = (
                self.pool.clone(),
                self.held.clone(),
                cancel.clone(),
                lost.clone(),
                gave_up.clone(),
            );
            let claimed_at = self.claimed_at;
            AbortOnDrop(tokio::spawn(async move {
                // The lease ends `lease_time` after the database granted it, which was before
                // the answer came back: measured from the claim (then each renewal's request),
                // the local deadline is never later than the database's.
                let mut granted = claimed_at;
                loop {
                    tokio::time::sleep(lease_time / 3).await;
                    let asked = std::time::Instant::now();
                    let renewal = tokio::time::timeout(
                        lease_time / 3,
                        runs::renew_lease(&pool, &held, lease_time),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(StoreError::Invalid(format!(
                            "no answer within {} ms",
                            (lease_time / 3).as_millis()
                        )))
                    });
                    match renewal {
                        Ok(_) => granted = asked,
                        Err(StoreError::LeaseLost { .. }) => break,
                        // A passing database error: the next renewal may get through before
                        // the lease runs out. The work stops a third of a lease before that
                        // (the next try could not come in time), so that it has ended before
                        // another worker can claim the shard and write the same files.
                        Err(e) if granted.elapsed() < lease_time * 2 / 3 => {
                            tracing::warn!("renewing shard {}: {e}", held.shard_index)
                        }
                        Err(e) => {
                            tracing::warn!(
                                "shard {}: no renewal for {} s ({e}); giving the shard up before its lease runs out",
                                held.shard_index,
                                granted.elapsed().as_secs()
                            );
                            break;
                        }
                    }
                }
                // Lost, or about to be: flagged before the cancel, which the work may see
                // first.
                gave_up.store(true, Ordering::SeqCst);
                cancel.cancel();
                lost.notify_one();
            }))
        };
        let index = self.held.shard_index;
        let grace = self.grace;
        let stop_then_grace = async {
            match self.stop {
                Some(s) => {
                    s.then_wait(grace, || {
                        println!(
                            "stop requested: shard {index:05} gets {} s to finish, then it is released",
                            grace.as_secs()
                        )
                    })
                    .await
                }
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            (name, result) = work => Ended::Worked(name, result),
            () = stop_then_grace => Ended::Stopped,
            () = lost.notified() => Ended::Lost,
        };
        // Work that saw the renewer's cancel can end before the select sees the notice; the
        // lease is given up all the same, and what the work returned is not recorded: another
        // worker may hold the shard by now.
        let ended = match ended {
            Ended::Worked(..) if gave_up.load(Ordering::SeqCst) => Ended::Lost,
            ended => ended,
        };
        if let Ended::Stopped = ended {
            cancel.cancel();
            let released = through_outage("releasing a shard", OUTAGE_LIMIT, None, || {
                runs::release_shard(self.pool, &self.held)
            })
            .await;
            match released {
                Ok(()) | Err(StoreError::LeaseLost { .. }) => {}
                Err(e) => tracing::warn!("releasing shard {index:05}: {e}"),
            }
        }
        (self.held, ended)
    }
}

/// Ends the stage, and the run unless `keep_run_open`, once no shard is pending or running
/// (whichever worker sees it).
pub async fn finish_if_done(
    pool: &PgPool,
    open: OpenStage,
    keep_run_open: bool,
) -> anyhow::Result<ShardProgress> {
    Ok(finish_if_done_once(pool, open, keep_run_open).await?)
}

async fn finish_if_done_once(
    pool: &PgPool,
    open: OpenStage,
    keep_run_open: bool,
) -> Result<ShardProgress, StoreError> {
    let state = runs::shard_progress(pool, open.stage_run_id).await?;
    if state.finished() {
        let (outcome, error) = if state.failed > 0 {
            (
                Outcome::Failed,
                Some(format!("{} shard(s) failed", state.failed)),
            )
        } else {
            (Outcome::Succeeded, None)
        };
        let counts = serde_json::to_value(state).map_err(|e| StoreError::Invalid(e.to_string()))?;
        runs::finish_stage(pool, open.stage_run_id, outcome, &counts, error.as_deref()).await?;
        if !keep_run_open {
            // Another worker may have closed the run first; that is fine.
            runs::close_if_running(pool, open.run_id, outcome, error.as_deref()).await?;
        }
    }
    Ok(state)
}

/// Which shards of a folder this process takes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WorkerArgs {
    /// This worker's index among `--workers` (a Slurm array or Kubernetes indexed Job index):
    /// it takes the shards whose position modulo the count is its index.
    #[arg(long, default_value_t = 0)]
    pub worker_index: usize,
    /// How many workers share the folder by position.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Claim shards from PostgreSQL one at a time instead, with every other process given the
    /// same output folder: any number of workers, started in any order; a dead worker's shard
    /// is taken over when its lease runs out. The run and its shards show on the dashboard.
    #[arg(long, conflicts_with_all = ["worker_index", "workers"])]
    pub leases: bool,
    /// With --leases: seconds a claim lasts without renewal (renewed every third of it).
    #[arg(long, default_value_t = 300)]
    pub lease_secs: u64,
    /// With --leases: attempts per shard before it is failed for good.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: i32,
    /// With --leases: after SIGTERM or Ctrl-C, seconds the shard in hand may take to finish
    /// before it is released for another worker.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
}

impl WorkerArgs {
    /// One process takes every shard.
    pub const ALL: Self = Self {
        worker_index: 0,
        workers: 1,
        leases: false,
        lease_secs: 300,
        max_attempts: 3,
        grace_secs: 30,
    };

    /// The flags as the shard-worker loop takes them.
    pub fn sharing(&self, data_dir: &Path) -> Sharing {
        if self.leases {
            Sharing::Leases(LeaseOptions {
                lease: Duration::from_secs(self.lease_secs.max(3)),
                max_attempts: self.max_attempts.max(1),
                grace: Duration::from_secs(self.grace_secs),
                data_dir: data_dir.to_path_buf(),
            })
        } else {
            Sharing::Static {
                index: self.worker_index,
                count: self.workers,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_name_is_host_pid_and_a_tag_drawn_once() {
        let name = worker_name();
        let (host, rest) = name.rsplit_once(':').unwrap();
        let (pid, tag) = rest.split_once('-').unwrap();
        assert_eq!(host, crate::provenance::hostname());
        assert_eq!(pid, std::process::id().to_string());
        assert!(
            tag.len() == 4 && tag.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(worker_name(), name, "one name for the whole process");
    }

    fn walk_static(index: usize, count: usize, fail: Option<usize>) -> anyhow::Result<Walked> {
        let names: Vec<String> = (0..7).map(|i| format!("{i:05}")).collect();
        let settings = serde_json::json!({});
        let target = StageTarget {
            stage: "test",
            input: Path::new("/in"),
            output: Path::new("/out"),
            settings: &settings,
            run_id: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(walk(
            &names,
            &Sharing::Static { index, count },
            target,
            None,
            |i, _| async move {
                match fail {
                    Some(f) if f == i => anyhow::bail!("broken tar"),
                    _ if i == 0 => Ok(ShardDone::AlreadyDone),
                    _ => Ok(ShardDone::Worked {
                        line: String::new(),
                        counts: ShardCounts::default(),
                    }),
                }
            },
        ))
    }

    #[test]
    fn a_fixed_split_takes_every_countth_shard() {
        let all = walk_static(0, 1, None).unwrap();
        assert_eq!((all.done, all.kept), (6, 1));
        let first = walk_static(0, 3, None).unwrap();
        assert_eq!((first.done, first.kept), (2, 1), "shards 0, 3, 6");
        let last = walk_static(2, 3, None).unwrap();
        assert_eq!((last.done, last.kept), (2, 0), "shards 2, 5");
        assert!(walk_static(3, 3, None).is_err());
        assert!(walk_static(0, 0, None).is_err());
    }

    #[test]
    fn a_failing_shard_is_reported_and_the_others_go_on() {
        let walked = walk_static(0, 1, Some(4)).unwrap();
        assert_eq!((walked.done, walked.kept), (5, 1));
        assert_eq!(walked.failed, ["00004: broken tar"]);
        let err = walked.result().unwrap_err().to_string();
        assert!(err.contains("00004: broken tar"), "{err}");
    }
}
