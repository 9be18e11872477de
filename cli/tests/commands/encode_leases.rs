//! `llamagen encode vq --leases`: workers share one folder's shards through PostgreSQL. Two
//! started together never encode a shard twice; they stay while a shard is held by a worker
//! that died, and take it over once its lease runs out; every worker joins the same run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{self, llamagen_on, text};
use llamagen_shards::webdataset::TarWriter;
use llamagen_store::runs;
use llamagen_store::testing::TestDatabase;

fn shards(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let photos = llamagen_ingest::testing::bundled_photos();
    let names = ["astronaut", "chelsea", "coffee"];
    for shard in 0..count {
        let mut tar = TarWriter::create(&dir.join(format!("{shard:05}.tar"))).unwrap();
        for i in 0..3 {
            let photo = &photos[&format!("{}.jpg", names[(shard + i) % 3])];
            tar.append(&format!("{shard:02}{i:05}"), "jpg", photo)
                .unwrap();
        }
        tar.finish().unwrap();
    }
}

/// A fresh database, and a folder with 6 shards, the tiny models and an empty `codes/`.
async fn six_shards() -> (
    TestDatabase,
    tempfile::TempDir,
    PathBuf,
    llamagen_models::tiny::TinyModels,
) {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    shards(&root.join("shards"), 6);
    let models = llamagen_models::tiny::write(&root.join("models"), 0).unwrap();
    std::fs::create_dir_all(root.join("codes")).unwrap();
    (db, dir, root, models)
}

fn worker(dir: &Path, db: &TestDatabase, models: &llamagen_models::tiny::TinyModels) -> Child {
    let mut cmd: Command = llamagen_on(dir, &db.url());
    cmd.env("RUST_LOG", "warn")
        .args(["encode", "vq", "--leases", "--lease-secs", "3"])
        .args(["--device", "cpu", "--image-size", "32", "--batch-size", "4"])
        .arg("--input")
        .arg(dir.join("shards"))
        .arg("--out")
        .arg(dir.join("codes"))
        .arg("--vq-ckpt")
        .arg(&models.vq_ckpt)
        .arg("--vq-config")
        .arg(&models.vq_config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_share_shards_and_take_over_a_dead_ones() {
    let (db, _dir, root, models) = six_shards().await;
    let pool = &db.pool;

    // A worker that died holding shard 0, with a long lease.
    let output = root.join("codes").display().to_string();
    let open = runs::join_or_start_stage(
        pool,
        &runs::SharedStage {
            stage: "encode",
            input_path: "shards",
            output_path: &output,
            config: &serde_json::json!({}),
            shards: 6,
            max_attempts: 3,
            run_id: None,
        },
    )
    .await
    .unwrap();
    let dead = runs::claim_shard(pool, open.stage_run_id, "dead:1", Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.shard_index, 0);

    // Two workers together share shards 1 to 5, each encoded once; then they stay, because
    // the stage is not finished while shard 0 is held.
    let (mut a, mut b) = (worker(&root, &db, &models), worker(&root, &db, &models));
    let started = std::time::Instant::now();
    let attempts = loop {
        let attempts: Vec<(i32, String, i32)> = sqlx::query_as(
            "SELECT shard_index, status, attempts FROM shards WHERE stage_run_id = $1 ORDER BY shard_index",
        )
        .bind(open.stage_run_id)
        .fetch_all(pool)
        .await
        .unwrap();
        if attempts[1..]
            .iter()
            .all(|(_, status, _)| status == "succeeded")
        {
            break attempts;
        }
        assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none());
        assert!(started.elapsed() < Duration::from_secs(300), "{attempts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        attempts[0],
        (0, "running".to_string(), 1),
        "still the dead worker's"
    );
    for (index, _, tries) in &attempts[1..] {
        assert_eq!(*tries, 1, "shard {index}");
        assert!(root.join(format!("codes/{index:05}.json")).is_file());
    }
    assert!(!root.join("codes/00000.json").exists());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none(),
        "a worker left while the stage was unfinished"
    );

    // Once the lease has run out (moved into the past here rather than waited for), one of the
    // waiting workers takes shard 0 over, and both end with the stage.
    sqlx::query("UPDATE shards SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(dead.shard_id)
        .execute(pool)
        .await
        .unwrap();
    let mut outputs = String::new();
    for out in common::outputs_within(vec![a, b], Duration::from_secs(600)) {
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("run #{}", open.run_id)),
            "{}",
            text(&out)
        );
        outputs += &text(&out);
    }
    assert_eq!(
        outputs.matches("shard 00000:").count(),
        1,
        "shard 0 encoded once: {outputs}"
    );
    let (status, tries, by): (String, i32, String) = sqlx::query_as(
        "SELECT status, attempts, worker FROM shards WHERE stage_run_id = $1 AND shard_index = 0",
    )
    .bind(open.stage_run_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), tries), ("succeeded", 2));
    assert_ne!(by, "dead:1");
    // The dead worker cannot finish what was taken from it.
    assert!(
        runs::complete_shard(pool, &dead, &runs::ShardCounts::default())
            .await
            .is_err()
    );
    let (stage, run): (String, String) = sqlx::query_as(
        "SELECT s.status, p.status FROM stage_runs s JOIN pipeline_runs p ON p.id = s.run_id
         WHERE s.id = $1",
    )
    .bind(open.stage_run_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((stage.as_str(), run.as_str()), ("succeeded", "succeeded"));
    let runs_made: i64 = sqlx::query_scalar("SELECT count(*) FROM pipeline_runs")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(runs_made, 1, "every worker joined the one run");
}

/// The fault matrix for a stage past ingest: `llamagen encode vq --leases` SIGKILLed at seeded
/// random moments after it claims a shard, three times per run, then run to the end. Every shard is encoded exactly
/// once with all its samples, no kill counts as a failed attempt, no temporary file is left,
/// and the stage closes succeeded. `LLAMAGEN_FAULT_RUNS=20` runs the long variant.
#[tokio::test(flavor = "multi_thread")]
async fn encode_killed_at_random_moments_finishes_every_shard_once() {
    let runs: u64 = std::env::var("LLAMAGEN_FAULT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut in_hand = 0;
    for seed in 1..=runs {
        let (db, _dir, root, models) = six_shards().await;
        let (kills, in_shard) = common::kill_three_times_then_finish(
            || worker(&root, &db, &models),
            &db.pool,
            seed,
            400,
        )
        .await;
        in_hand += in_shard;
        let rows: Vec<(i32, String, i32)> =
            sqlx::query_as("SELECT shard_index, status, failures FROM shards ORDER BY shard_index")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 6, "seed {seed}: {rows:?}");
        for (index, status, failures) in &rows {
            assert_eq!(status, "succeeded", "seed {seed}, shard {index}: {rows:?}");
            assert_eq!(*failures, 0, "seed {seed}: a kill counted as a failure");
            let keys =
                std::fs::read_to_string(root.join(format!("codes/{index:05}.keys.txt"))).unwrap();
            assert_eq!(keys.lines().count(), 3, "seed {seed}, shard {index}");
        }
        let leftovers = common::temporaries(&root.join("codes"));
        assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
        let stage: String = sqlx::query_scalar("SELECT status FROM stage_runs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(stage, "succeeded", "seed {seed}");
        println!(
            "seed {seed}: kills {kills:?} ms after a claim; 6 shards encoded once, nothing left over"
        );
    }
    println!("fault matrix, encode: {runs} runs x 3 SIGKILLs ({in_hand} with a shard in hand)");
    assert!(
        in_hand > 0,
        "no kill landed while a shard was in hand: the matrix tests nothing"
    );
}
