//! Filter and caption workers sharing one shard folder through PostgreSQL leases, as a Slurm
//! array or a Kubernetes Job of `--leases` workers runs them: one worker is killed with SIGKILL
//! while it holds a shard, the others take that shard over once the lease runs out, and every
//! shard is finished exactly once. Then each stage's fault matrix: workers SIGKILLed at seeded
//! moments after a claim, three times per run, then run to the end (`LLAMAGEN_FAULT_RUNS=10`
//! runs the long variant; CI runs 2 seeds per stage).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, llamagen_on, repo, text};
use llamagen_caption::output::{CaptionStatus, captions_path, journal_path, read_captions};
use llamagen_caption::testing::{CaptionServer, MODEL};
use llamagen_filter::output::{filter_path, read_filter};
use llamagen_shards::webdataset::TarWriter;
use llamagen_store::testing::TestDatabase;

fn fault_runs() -> u64 {
    std::env::var("LLAMAGEN_FAULT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

/// After a matrix run: every shard of the one stage run succeeded, no kill was charged as a
/// failure, no temporary file was left, and the stage closed succeeded.
async fn every_shard_once(db: &TestDatabase, stage: &str, shards: &Path, seed: u64) {
    let rows: Vec<(i32, String, i32)> = sqlx::query_as(
        "SELECT s.shard_index, s.status, s.failures FROM shards s
         JOIN stage_runs r ON r.id = s.stage_run_id WHERE r.stage = $1 ORDER BY s.shard_index",
    )
    .bind(stage)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4, "seed {seed}: {rows:?}");
    for (index, status, failures) in &rows {
        assert_eq!(status, "succeeded", "seed {seed}, shard {index}: {rows:?}");
        assert_eq!(*failures, 0, "seed {seed}: a kill counted as a failure");
    }
    let leftovers = common::temporaries(shards);
    assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
    let stages: Vec<String> = sqlx::query_scalar("SELECT status FROM stage_runs WHERE stage = $1")
        .bind(stage)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stages, ["succeeded"], "seed {seed}: one stage run, closed");
}

/// `count` shards of `per_shard` photos each.
fn shards(dir: &Path, count: usize, per_shard: usize) -> PathBuf {
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let fixtures = repo().join("filter/tests/fixtures");
    let names = ["chelsea", "coffee", "astronaut"];
    for shard in 0..count {
        let mut tar = TarWriter::create(&shards.join(format!("{shard:05}.tar"))).unwrap();
        for i in 0..per_shard {
            let name = names[i % 3];
            let key = format!("{shard:05}{i:04}");
            let png = std::fs::read(fixtures.join(format!("{name}.png"))).unwrap();
            tar.append(&key, "png", &png).unwrap();
            tar.append(&key, "txt", format!("a photo of {name}").as_bytes())
                .unwrap();
        }
        tar.finish().unwrap();
    }
    shards
}

/// A `llamagen filter --leases` worker over `shards`, keeping every sample by score.
fn filter_worker(dir: &Path, db: &TestDatabase, shards: &Path, lease_secs: &str) -> Command {
    let mut cmd = llamagen_on(dir, &db.url());
    cmd.arg("filter")
        .arg("--input")
        .arg(shards)
        .arg("--models")
        .arg(repo().join("filter/tests/fixtures/models"))
        .args(["--min-width", "200", "--min-height", "200"])
        .args(["--min-aesthetic", "-10", "--min-clip-similarity", "-1"])
        .args(["--leases", "--lease-secs", lease_secs, "--batch-size", "4"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A `llamagen caption --leases` worker over `shards`, asking `endpoint` one at a time.
fn caption_worker(dir: &Path, db: &TestDatabase, shards: &Path, endpoint: &str) -> Command {
    let mut cmd = llamagen_on(dir, &db.url());
    cmd.arg("caption")
        .arg("--input")
        .arg(shards)
        .args(["--endpoint", endpoint, "--model", MODEL])
        .args(["--concurrency", "1", "--retries", "0"])
        .args(["--leases", "--lease-secs", "2"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// (shard index, status, attempts) of the one stage run of `stage`.
async fn shard_rows(db: &TestDatabase, stage: &str) -> Vec<(i32, String, i32)> {
    sqlx::query_as(
        "SELECT s.shard_index, s.status, s.attempts FROM shards s
         JOIN stage_runs r ON r.id = s.stage_run_id WHERE r.stage = $1 ORDER BY s.shard_index",
    )
    .bind(stage)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_workers_take_over_a_killed_workers_shard() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let shards = shards(dir.path(), 4, 12);
    let worker = |lease_secs: &str| filter_worker(dir.path(), &db, &shards, lease_secs);
    // The first worker is SIGKILLed as soon as it holds a shard.
    let mut doomed = worker("3").spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let held = loop {
        let running = shard_rows(&db, "filter")
            .await
            .into_iter()
            .find(|(_, status, _)| status == "running");
        if let Some((index, _, _)) = running {
            break index;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never claimed a shard"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let rows = shard_rows(&db, "filter").await;
    assert!(
        rows.contains(&(held, "running".to_string(), 1)),
        "killed while holding shard {held}: {rows:?}"
    );
    assert!(!filter_path(&shards, &format!("{held:05}")).exists());

    // Two workers share the folder and take the killed worker's shard over once its lease
    // has run out.
    let (a, b) = (worker("30").spawn().unwrap(), worker("30").spawn().unwrap());
    let [a, b]: [_; 2] = common::outputs_within(vec![a, b], Duration::from_secs(600))
        .try_into()
        .unwrap();
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let worked = |out: &std::process::Output| text(out).matches(" kept in ").count();
    let done_before_kill = rows.iter().filter(|r| r.1 == "succeeded").count();
    assert_eq!(
        worked(&a) + worked(&b) + done_before_kill,
        4,
        "every shard filtered once: {rows:?}\n{}\n{}",
        text(&a),
        text(&b)
    );

    let rows = shard_rows(&db, "filter").await;
    let expected: Vec<(i32, String, i32)> = (0..4)
        .map(|i| (i, "succeeded".to_string(), if i == held { 2 } else { 1 }))
        .collect();
    assert_eq!(rows, expected);
    for shard in 0..4 {
        let decisions = read_filter(&filter_path(&shards, &format!("{shard:05}"))).unwrap();
        assert_eq!(decisions.len(), 12);
    }
    // The shared stage holds the funnel of all 48 samples and closed as succeeded.
    let (status, rows_in): (String, i64) = sqlx::query_as(
        "SELECT s.status, f.rows_in FROM stage_runs s
         JOIN filter_funnel f ON f.stage_run_id = s.id
         WHERE s.stage = 'filter' ORDER BY f.step LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), rows_in), ("succeeded", 48));
    let stages: i64 = sqlx::query_scalar("SELECT count(*) FROM stage_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stages, 1, "all three workers joined one stage run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caption_workers_take_over_a_killed_workers_shard() {
    let server = CaptionServer::start().unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let shards = shards(dir.path(), 4, 6);
    let worker =
        |scenario: &str| caption_worker(dir.path(), &db, &shards, &server.endpoint(scenario));
    // Slow answers: the first worker is SIGKILLed mid-shard, two answers journaled.
    let mut slow = worker("slow/300").spawn().unwrap();
    let journal = journal_path(&shards, "00000");
    common::wait_for_lines(&journal, 2, Duration::from_secs(60));
    slow.kill().unwrap();
    slow.wait().unwrap();
    assert!(!captions_path(&shards, "00000").exists());
    // Once its lease has run out, two workers share the folder and take shard 0 over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (a, b) = (worker("ok").spawn().unwrap(), worker("ok").spawn().unwrap());
    let [a, b]: [_; 2] = common::outputs_within(vec![a, b], Duration::from_secs(600))
        .try_into()
        .unwrap();
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));

    let rows = shard_rows(&db, "caption").await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0], (0, "succeeded".to_string(), 2), "{rows:?}");
    assert!(
        rows[1..]
            .iter()
            .all(|(_, status, attempts)| status == "succeeded" && *attempts == 1),
        "{rows:?}"
    );
    for shard in 0..4 {
        let captions = read_captions(&captions_path(&shards, &format!("{shard:05}"))).unwrap();
        assert_eq!(captions.len(), 6);
        assert!(captions.iter().all(|r| r.status == CaptionStatus::Ok));
    }
    // The killed worker's answers were resumed from its journal, not asked again.
    let both = text(&a) + &text(&b);
    let line = both
        .lines()
        .find(|l| l.starts_with("shard 00000:"))
        .unwrap_or_else(|| panic!("no line for shard 00000:\n{both}"));
    let resumed: usize = line
        .split(" resumed)")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(resumed >= 2, "{line}");
    assert!(!journal.exists());
}

/// `llamagen filter --leases` SIGKILLed at seeded moments: every sample decided exactly once,
/// and the funnel counts each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_killed_at_random_moments_decides_every_sample_once() {
    let runs = fault_runs();
    let mut in_hand = 0;
    for seed in 1..=runs {
        let db = TestDatabase::new().await;
        let dir = tempfile::tempdir().unwrap();
        let shards = shards(dir.path(), 4, 12);
        let worker = || filter_worker(dir.path(), &db, &shards, "2");
        let (kills, in_shard) =
            common::kill_three_times_then_finish(|| worker().spawn().unwrap(), &db.pool, seed, 600)
                .await;
        in_hand += in_shard;
        every_shard_once(&db, "filter", &shards, seed).await;
        let mut keys = std::collections::HashSet::new();
        for shard in 0..4 {
            for decision in read_filter(&filter_path(&shards, &format!("{shard:05}"))).unwrap() {
                assert!(
                    keys.insert(decision.key.clone()),
                    "seed {seed}: {decision:?} twice"
                );
            }
        }
        assert_eq!(keys.len(), 48, "seed {seed}");
        let rows_in: i64 = sqlx::query_scalar(
            "SELECT f.rows_in FROM filter_funnel f JOIN stage_runs s ON s.id = f.stage_run_id
             WHERE s.stage = 'filter' ORDER BY f.step LIMIT 1",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            rows_in, 48,
            "seed {seed}: the funnel counts each sample once"
        );
        println!("seed {seed}: kills {kills:?} ms after a claim; 48 samples decided once");
        db.drop_database().await;
    }
    println!("fault matrix, filter: {runs} runs x 3 SIGKILLs ({in_hand} with a shard in hand)");
    assert!(in_hand > 0, "no kill landed while a shard was in hand");
}

/// `llamagen caption --leases` SIGKILLed at seeded moments (answers slowed so that kills land
/// mid-shard): every sample captioned exactly once, no journal left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caption_killed_at_random_moments_captions_every_sample_once() {
    let server = CaptionServer::start().unwrap();
    let runs = fault_runs();
    let mut in_hand = 0;
    for seed in 1..=runs {
        let db = TestDatabase::new().await;
        let dir = tempfile::tempdir().unwrap();
        let shards = shards(dir.path(), 4, 6);
        let endpoint = server.endpoint("slow/60");
        let worker = || caption_worker(dir.path(), &db, &shards, &endpoint);
        let (kills, in_shard) =
            common::kill_three_times_then_finish(|| worker().spawn().unwrap(), &db.pool, seed, 600)
                .await;
        in_hand += in_shard;
        every_shard_once(&db, "caption", &shards, seed).await;
        let mut keys = std::collections::HashSet::new();
        for shard in 0..4 {
            let name = format!("{shard:05}");
            for row in read_captions(&captions_path(&shards, &name)).unwrap() {
                assert_eq!(row.status, CaptionStatus::Ok, "seed {seed}: {row:?}");
                assert!(keys.insert(row.key.clone()), "seed {seed}: {row:?} twice");
            }
            assert!(!journal_path(&shards, &name).exists(), "seed {seed}");
        }
        assert_eq!(keys.len(), 24, "seed {seed}");
        println!("seed {seed}: kills {kills:?} ms after a claim; 24 samples captioned once");
        db.drop_database().await;
    }
    println!("fault matrix, caption: {runs} runs x 3 SIGKILLs ({in_hand} with a shard in hand)");
    assert!(in_hand > 0, "no kill landed while a shard was in hand");
}
