//! The fault matrix: `llamagen ingest` SIGKILLed at seeded random moments (while preparing,
//! downloading, writing a shard, or finishing), three times per run, then run to the end; every
//! sample must be in the manifests, the tars and PostgreSQL exactly once, no kill may count as
//! a failed attempt, and no temporary file may be left. Each run prints its line and the test
//! its summary. `LLAMAGEN_FAULT_RUNS=20` runs the long variant (CI runs 4 seeds).

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{self, text};
use llamagen_ingest::reader::{MetaRow, write_metadata};
use llamagen_ingest::testing::{LoopbackServer, bundled_photos};
use llamagen_shards::manifest::{self, Status};
use llamagen_shards::{ShardPaths, webdataset};
use llamagen_store::testing::TestDatabase;

const ROWS: usize = 40;
const ROWS_PER_SHARD: usize = 4;
const KILLS: usize = 3;

/// What one seeded run found.
struct Found {
    /// Leases the kills left to run out (kills that landed while a shard was in hand).
    expiries: i64,
    rows_in_manifests: usize,
    duplicated: usize,
    lost: usize,
}

fn config(dir: &Path, server: &LoopbackServer) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("metadata")).unwrap();
    let rows: Vec<MetaRow> = (0..ROWS)
        .map(|i| {
            // Mostly photos, some that fail for good (404, corrupt) and some that fail once.
            let path = match i % 10 {
                3 => format!("/status/404?{i}"),
                7 => format!("/corrupt.jpg?{i}"),
                5 => format!("/flaky/1/chelsea.jpg?{i}"),
                // Slow enough that most kills land while a shard is in hand.
                _ => format!("/slow/150/{}?{i}", ["astronaut.png", "coffee.jpg"][i % 2]),
            };
            MetaRow {
                caption: Some(format!("row {i}")),
                url: Some(server.url(&path)),
                scores: [640.0, 480.0, 0.33, 6.0, 0.1, 0.01],
            }
        })
        .collect();
    write_metadata(&dir.join("metadata/part-0.parquet"), "URL", "TEXT", &rows).unwrap();
    let path = dir.join("ingest.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"fault-matrix\"\n\n[ingest]\ninput = \"{}\"\noutput = \"{}\"\n\
             rows_per_shard = {ROWS_PER_SHARD}\nconcurrency = 2\ntimeout_secs = 5.0\nretries = 1\n\
             image_size = 32\nallow_private_addresses = true\n",
            dir.join("metadata/*.parquet").display(),
            dir.join("shards").display()
        ),
    )
    .unwrap();
    path
}

async fn one_run(seed: u64, server: &LoopbackServer) -> Found {
    let db = TestDatabase::new().await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cfg = config(dir, server);
    let mut rng = common::Seeded::new(seed);
    let ingest = || {
        let mut cmd = common::llamagen_on(dir, &db.url());
        cmd.args(["ingest", "--lease-secs", "2", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        let mut child = ingest().spawn().unwrap();
        let after = Duration::from_millis(100 + rng.below(2500));
        tokio::time::sleep(after).await;
        child.kill().unwrap(); // SIGKILL: no destructor, no release, no cleanup
        child.wait().unwrap();
        kills.push(after.as_millis());
    }
    let started = Instant::now();
    let last = ingest().output().unwrap();
    assert!(
        last.status.success(),
        "seed {seed}, kills at {kills:?} ms:\n{}",
        text(&last)
    );
    assert!(started.elapsed() < Duration::from_secs(120), "seed {seed}");

    // PostgreSQL: every shard of the run that finished succeeded, none charged a failure.
    let shards = (ROWS / ROWS_PER_SHARD) as i64;
    let (succeeded, failures, expiries, output_rows): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE sh.status = 'succeeded'), coalesce(sum(sh.failures), 0)::bigint,
                coalesce(sum(sh.expiries), 0)::bigint, coalesce(sum(sh.output_rows), 0)::bigint
         FROM shards sh JOIN stage_runs s ON s.id = sh.stage_run_id
         WHERE s.stage = 'ingest' AND s.status = 'succeeded'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(succeeded, shards, "seed {seed}, kills at {kills:?}");
    assert_eq!(failures, 0, "seed {seed}: a kill was counted as a failure");

    // The files: each row once across the manifests, each success once across the tars.
    let folder = dir.join("shards");
    let mut manifest_keys = Vec::new();
    let mut successes = HashSet::new();
    let mut tar_keys = Vec::new();
    for i in 0..shards as u32 {
        let paths = ShardPaths::new(&folder, i);
        for row in manifest::read(&paths.parquet).unwrap() {
            if row.status == Status::Success {
                successes.insert(row.key.clone());
            }
            manifest_keys.push(row.key);
        }
        for (name, _) in webdataset::read_members(&paths.tar).unwrap() {
            if let Some(key) = name.strip_suffix(".jpg") {
                tar_keys.push(key.to_owned());
            }
        }
    }
    let unique: HashSet<&String> = manifest_keys.iter().collect();
    let in_tars: HashSet<String> = tar_keys.iter().cloned().collect();
    assert_eq!(
        in_tars, successes,
        "seed {seed}: tars and manifests disagree"
    );
    assert_eq!(output_rows as usize, successes.len(), "seed {seed}");
    // 4 of every 10 rows fail for good (404, corrupt), the flaky one succeeds on its retry.
    assert_eq!(successes.len(), ROWS * 8 / 10, "seed {seed}");
    let leftovers = common::temporaries(&folder);
    assert!(
        leftovers.is_empty(),
        "seed {seed}: {leftovers:?} left behind"
    );
    let found = Found {
        expiries,
        rows_in_manifests: unique.len(),
        duplicated: manifest_keys.len() - unique.len() + (tar_keys.len() - in_tars.len()),
        lost: ROWS - unique.len(),
    };
    println!(
        "seed {seed}: kills at {kills:?} ms, {} in a shard; {} rows in the manifests, {} lost, {} duplicated",
        found.expiries, found.rows_in_manifests, found.lost, found.duplicated
    );
    db.drop_database().await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_at_random_moments_loses_and_duplicates_nothing() {
    let runs: u64 = std::env::var("LLAMAGEN_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let (mut lost, mut duplicated, mut in_shard) = (0, 0, 0);
    for seed in 0..runs {
        let found = one_run(seed, &server).await;
        lost += found.lost;
        duplicated += found.duplicated;
        in_shard += found.expiries;
    }
    println!(
        "fault matrix, ingest: {runs} runs x {KILLS} SIGKILLs ({in_shard} with a shard in hand), {ROWS} rows each: {lost} lost, {duplicated} duplicated"
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(
        in_shard > 0,
        "no kill landed while a shard was in hand: the matrix tests nothing"
    );
}
