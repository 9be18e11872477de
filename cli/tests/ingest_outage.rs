//! A shard worker through a database outage, on a private PostgreSQL that the test stops and
//! starts again (its own test binary: the restart breaks every connection of the process's
//! test server). `llamagen ingest` is mid-run when the server goes away for 4 s: the shards in
//! hand keep going, the calls that record them are asked again until the server is back, and
//! the run finishes with every row once and no shard redone. Every stage that walks shards
//! runs the same loop.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::text;
use llamagen_ingest::testing::{LoopbackServer, bundled_photos};
use llamagen_shards::{ShardPaths, manifest};
use llamagen_store::testing::{TestDatabase, restart_server};

const ROWS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_pauses_through_a_database_restart_and_finishes() {
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    // One row per shard, each answered after 400 ms, two at a time: about 5 s of work.
    let urls: Vec<String> = (0..ROWS)
        .map(|i| server.url(&format!("/slow/400/coffee.jpg?{i}")))
        .collect();
    let config = common::scheduled_ingest(dir.path(), "outage", "0 0 * * * *", "skip", &urls, 10.0);
    let mut ingest = common::llamagen_on(dir.path(), &db.url())
        .args(["ingest", "--lease-secs", "60", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run: some shards done, more to go.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM shards WHERE status = 'succeeded'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if done >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restarted = tokio::task::spawn_blocking(|| restart_server(Duration::from_secs(4)))
        .await
        .unwrap();
    if !restarted {
        eprintln!("DATABASE_URL is set: its server cannot be restarted by a test; skipped");
        ingest.kill().unwrap();
        ingest.wait().unwrap();
        return;
    }
    let out = common::output_within(ingest, Duration::from_secs(600));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("the database is out of reach, asking again"),
        "no call met the outage? {log}"
    );

    let shards: Vec<(String, i32, i32)> =
        sqlx::query_as("SELECT status, attempts, expiries FROM shards ORDER BY shard_index")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(shards.len(), ROWS);
    assert!(
        shards.iter().all(|s| *s == ("succeeded".to_string(), 1, 0)),
        "every shard done once, none redone: {shards:?}\n{log}"
    );
    let folder = dir.path().join("outage/shards");
    let mut keys = HashSet::new();
    for i in 0..ROWS as u32 {
        for row in manifest::read(&ShardPaths::new(&folder, i).parquet).unwrap() {
            assert!(keys.insert(row.key.clone()), "{} twice", row.key);
            assert_eq!(row.status, manifest::Status::Success, "{row:?}");
        }
    }
    assert_eq!(keys.len(), ROWS);
    let (stage, run): (String, String) = sqlx::query_as(
        "SELECT s.status, p.status FROM stage_runs s JOIN pipeline_runs p ON p.id = s.run_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((stage.as_str(), run.as_str()), ("succeeded", "succeeded"));
}
