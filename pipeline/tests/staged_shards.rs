//! A worker paused past its lease (a stopped process, a frozen VM) while another worker redid
//! its shard: when it wakes, its staged files must not reach the shard folder, which keeps the
//! other attempt's whole set. The recorded attempt's files are moved in only after the
//! database has recorded it.

use std::time::Duration;

use llamagen_pipeline::shard_worker::{ClaimOptions, ShardDone, work_claims};
use llamagen_shards::{ShardPaths, staging};
use llamagen_store::runs::{self, SharedStage};
use llamagen_store::testing::TestDatabase;

/// Writes a complete set for shard `index` into `staged`, every file saying `who`.
fn stage_set(staged: &std::path::Path, index: u32, who: &str) {
    std::fs::create_dir_all(staged).unwrap();
    let paths = ShardPaths::new(staged, index);
    for path in [&paths.tar, &paths.parquet, &paths.stats] {
        std::fs::write(path, who).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_publishes_nothing() {
    let db = TestDatabase::new().await;
    let pool = db.pool.clone();
    let folder = tempfile::tempdir().unwrap();
    let open = runs::join_or_start_stage(
        &pool,
        &SharedStage {
            stage: "ingest",
            input_path: "in",
            output_path: &folder.path().display().to_string(),
            config: &serde_json::json!({}),
            shards: 2,
            max_attempts: 3,
            run_id: None,
        },
    )
    .await
    .unwrap();
    let options = ClaimOptions {
        worker: "paused:1".into(),
        // No renewal falls due while the test runs: the pause is invisible to this worker.
        lease: Duration::from_secs(60),
        grace: Duration::from_secs(1),
        max_shards: Some(2),
        keep_run_open: false,
        spinner: false,
        open_shards: 1,
    };
    let dir = folder.path().to_path_buf();
    let walked = work_claims(&pool, open, &options, None, |claim| {
        let (pool, dir) = (pool.clone(), dir.clone());
        async move {
            let index = claim.lease.shard_index as u32;
            let staged = staging::attempt_dir(&dir, index, claim.lease.attempt);
            stage_set(&staged, index, "the paused worker");
            if index == 0 {
                // The pause: the lease runs out, another worker claims the shard, redoes it,
                // is recorded, and moves its set into place.
                sqlx::query(
                    "UPDATE shards SET lease_expires_at = now() - interval '1 second'
                     WHERE shard_index = 0",
                )
                .execute(&pool)
                .await
                .unwrap();
                let other =
                    runs::claim_shard(&pool, open.stage_run_id, "other:2", Duration::from_secs(60))
                        .await
                        .unwrap()
                        .expect("the expired shard is claimable");
                assert_eq!((other.shard_index, other.attempt), (0, 2));
                let theirs = staging::attempt_dir(&dir, 0, other.attempt);
                stage_set(&theirs, 0, "the other worker");
                runs::complete_shard(&pool, &other, &Default::default())
                    .await
                    .unwrap();
                staging::publish(&theirs, &dir, 0).unwrap();
            }
            (
                format!("{index:05}"),
                Ok(ShardDone::Staged {
                    line: String::new(),
                    counts: Default::default(),
                    staged,
                    folder: dir,
                }),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        walked.lost,
        ["00000"],
        "the paused worker learnt it lost shard 0"
    );
    let zero = ShardPaths::new(folder.path(), 0);
    for path in [&zero.tar, &zero.parquet, &zero.stats] {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "the other worker",
            "{}",
            path.display()
        );
    }
    // Its own shard 1 was recorded as its attempt, so it went into place.
    let one = ShardPaths::new(folder.path(), 1);
    assert_eq!(
        std::fs::read_to_string(&one.stats).unwrap(),
        "the paused worker"
    );
    // What is left is the losing attempt's staged set, for the stage to discard.
    let left: Vec<(u32, i32)> = staging::staged_attempts(folder.path())
        .unwrap()
        .iter()
        .map(|s| (s.index, s.attempt))
        .collect();
    assert_eq!(left, [(0, 1)]);
    db.drop_database().await;
}
