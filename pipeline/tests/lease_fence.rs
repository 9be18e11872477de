//! The shard-worker loop stops its work before its lease can run out when renewals do not get
//! through: here a transaction holds the shard's row locked, so every renewal waits (as it
//! would for a database out of reach) while the database itself still answers the test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use llamagen_pipeline::shard_worker::{ClaimOptions, ShardDone, work_claims};
use llamagen_store::runs::{self, SharedStage};
use llamagen_store::testing::TestDatabase;

/// Records when the work it lives in ended (returned or was dropped).
struct Stopped(Arc<Mutex<Option<DateTime<Utc>>>>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(mut at) = self.0.lock() {
            *at = Some(Utc::now());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stops_before_the_lease_runs_out_when_renewals_hang() {
    let db = TestDatabase::new().await;
    let pool = db.pool.clone();
    let open = runs::join_or_start_stage(
        &pool,
        &SharedStage {
            stage: "encode",
            input_path: "in",
            output_path: "out",
            config: &serde_json::json!({}),
            shards: 1,
            max_attempts: 3,
            run_id: None,
        },
    )
    .await
    .unwrap();
    let options = ClaimOptions {
        worker: "fenced:1".into(),
        lease: Duration::from_secs(3),
        grace: Duration::from_secs(1),
        max_shards: Some(1),
        keep_run_open: false,
        spinner: false,
        open_shards: 1,
    };
    // When the work stopped.
    let cancelled_at: Arc<Mutex<Option<DateTime<Utc>>>> = Arc::default();
    let seen = cancelled_at.clone();
    let locker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            // Once the shard is claimed, lock its row for longer than a lease.
            loop {
                let running: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM shards WHERE status = 'running'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                if running > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut tx = pool.begin().await.unwrap();
            let expires: DateTime<Utc> =
                sqlx::query_scalar("SELECT lease_expires_at FROM shards FOR UPDATE")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            tokio::time::sleep(Duration::from_secs(6)).await;
            tx.rollback().await.unwrap();
            // The lease as the database held it from the lock on: no renewal got through.
            expires
        })
    };
    let started = Instant::now();
    let walked = work_claims(&pool, open, &options, None, |claim| {
        let seen = seen.clone();
        async move {
            // Work that would take 20 s; it stops when the loop drops it, or when it sees the
            // cancel itself, and either way records when.
            let _stopped = Stopped(seen);
            while started.elapsed() < Duration::from_secs(20) && !claim.cancel.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (
                format!("{:05}", claim.lease.shard_index),
                Ok(ShardDone::Worked {
                    line: String::new(),
                    counts: Default::default(),
                }),
            )
        }
    })
    .await;
    let expires = locker.await.unwrap();
    let walked = walked.unwrap();
    assert_eq!(walked.lost, ["00000"], "the shard was given up");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    let cancelled_at = cancelled_at
        .lock()
        .unwrap()
        .expect("the work saw the cancel");
    assert!(
        cancelled_at < expires,
        "cancelled at {cancelled_at}, after the lease ran out at {expires}"
    );
}
