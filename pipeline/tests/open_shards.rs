//! A worker that holds more than one shard: the next shard is claimed only once the newest
//! says its tail has started, never more than `open_shards` at once; a stop releases every
//! shard in hand, and so does an error after which nothing can succeed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llamagen_pipeline::shard_worker::{ClaimOptions, Fatal, ShardDone, work_claims};
use llamagen_pipeline::signals::StopSignal;
use llamagen_store::runs::{self, OpenStage, SharedStage};
use llamagen_store::testing::TestDatabase;

async fn stage(db: &TestDatabase, shards: i32) -> OpenStage {
    runs::join_or_start_stage(
        &db.pool,
        &SharedStage {
            stage: "ingest",
            input_path: "in",
            output_path: "out",
            config: &serde_json::json!({}),
            shards,
            max_attempts: 3,
            run_id: None,
        },
    )
    .await
    .unwrap()
}

fn options(open_shards: usize) -> ClaimOptions {
    ClaimOptions {
        worker: "overlapping:1".into(),
        lease: Duration::from_secs(30),
        grace: Duration::ZERO,
        max_shards: None,
        keep_run_open: false,
        spinner: false,
        open_shards,
    }
}

fn worked(index: i32) -> (String, anyhow::Result<ShardDone>) {
    (
        format!("{index:05}"),
        Ok(ShardDone::Worked {
            line: String::new(),
            counts: Default::default(),
        }),
    )
}

/// How many shards are in hand now, and the most there ever were.
#[derive(Default)]
struct InHand {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl InHand {
    fn enter(self: &Arc<Self>) -> Leaves {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Leaves(self.clone())
    }
}

struct Leaves(Arc<InHand>);

impl Drop for Leaves {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_shard_is_claimed_while_the_last_ones_tail_runs_out() {
    let db = TestDatabase::new().await;
    let open = stage(&db, 4).await;
    let in_hand = Arc::new(InHand::default());
    let finished: Arc<Mutex<Vec<i32>>> = Arc::default();
    let others_done = Arc::new(tokio::sync::Notify::new());
    let walked = work_claims(&db.pool, open, &options(2), None, |claim| {
        let (in_hand, finished, others_done) =
            (in_hand.clone(), finished.clone(), others_done.clone());
        async move {
            let _held = in_hand.enter();
            let index = claim.lease.shard_index;
            claim.tail_started();
            if index == 0 {
                // A straggler: shard 0 ends only after every other shard has.
                others_done.notified().await;
            }
            let mut done = finished.lock().unwrap();
            done.push(index);
            if done.len() == 3 {
                others_done.notify_one();
            }
            worked(index)
        }
    })
    .await
    .unwrap();
    assert_eq!(walked.done, 4);
    assert_eq!(*finished.lock().unwrap(), [1, 2, 3, 0]);
    assert_eq!(
        in_hand.most.load(Ordering::SeqCst),
        2,
        "never above open_shards"
    );
    let state = walked.progress.unwrap();
    assert_eq!((state.succeeded, state.total()), (4, 4));
    let stage_status: String = sqlx::query_scalar("SELECT status FROM stage_runs WHERE id = $1")
        .bind(open.stage_run_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stage_status, "succeeded");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tail_signal_shards_go_one_at_a_time() {
    let db = TestDatabase::new().await;
    let open = stage(&db, 4).await;
    let in_hand = Arc::new(InHand::default());
    let walked = work_claims(&db.pool, open, &options(4), None, |claim| {
        let in_hand = in_hand.clone();
        async move {
            let _held = in_hand.enter();
            tokio::time::sleep(Duration::from_millis(50)).await;
            worked(claim.lease.shard_index)
        }
    })
    .await
    .unwrap();
    assert_eq!(walked.done, 4);
    assert_eq!(in_hand.most.load(Ordering::SeqCst), 1);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_releases_every_shard_in_hand() {
    let db = TestDatabase::new().await;
    let open = stage(&db, 5).await;
    let stop = StopSignal::listen();
    let in_hand = Arc::new(InHand::default());
    let walked = work_claims(&db.pool, open, &options(3), Some(&stop), |claim| {
        let (in_hand, stop) = (in_hand.clone(), stop.clone());
        async move {
            let _held = in_hand.enter();
            claim.tail_started();
            if in_hand.now.load(Ordering::SeqCst) == 3 {
                stop.request();
            }
            // Work that does not end by itself.
            std::future::pending::<()>().await;
            worked(claim.lease.shard_index)
        }
    })
    .await
    .unwrap();
    assert!(walked.stopped);
    let mut released = walked.released.clone();
    released.sort();
    assert_eq!(released, ["00000", "00001", "00002"]);
    let state = walked.progress.unwrap();
    assert_eq!((state.pending, state.running), (5, 0));
    let attempts: i64 = sqlx::query_scalar("SELECT sum(failures)::bigint FROM shards")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "a release is not a failure");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_releases_the_other_shards_in_hand() {
    let db = TestDatabase::new().await;
    let open = stage(&db, 4).await;
    let result = work_claims(&db.pool, open, &options(2), None, |claim| async move {
        let index = claim.lease.shard_index;
        claim.tail_started();
        if index == 0 {
            std::future::pending::<()>().await;
        }
        (
            format!("{index:05}"),
            Err(Fatal(anyhow::anyhow!(
                "the output folder is pinned to other settings"
            ))
            .into()),
        )
    })
    .await;
    let err = result.unwrap_err();
    assert!(err.to_string().contains("pinned"), "{err}");
    let state = runs::shard_progress(&db.pool, open.stage_run_id)
        .await
        .unwrap();
    assert_eq!(
        (state.pending, state.running, state.failed),
        (4, 0, 0),
        "both shards in hand went back"
    );
    db.drop_database().await;
}

/// The loop's own database calls do not starve the other shards in hand: while completing one
/// shard waits on its row (locked here, as a slow or unreachable database would hold it), the
/// next shard's work goes on and ends. A shard left unpolled that long would find its
/// downloads' deadlines passed when it ran again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_call_does_not_stall_the_other_shards() {
    let db = TestDatabase::new().await;
    let open = stage(&db, 2).await;
    let second_started = Arc::new(tokio::sync::Notify::new());
    let lock_it = Arc::new(tokio::sync::Notify::new());
    let locked = Arc::new(tokio::sync::Notify::new());
    let second_ended: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
    let locker = {
        let (pool, lock_it, locked) = (db.pool.clone(), lock_it.clone(), locked.clone());
        tokio::spawn(async move {
            lock_it.notified().await;
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT id FROM shards WHERE shard_index = 0 FOR UPDATE")
                .execute(&mut *tx)
                .await
                .unwrap();
            locked.notify_one();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let released = std::time::Instant::now();
            tx.rollback().await.unwrap();
            released
        })
    };
    let walked = work_claims(&db.pool, open, &options(2), None, |claim| {
        let (second_started, lock_it, locked, second_ended) = (
            second_started.clone(),
            lock_it.clone(),
            locked.clone(),
            second_ended.clone(),
        );
        async move {
            let index = claim.lease.shard_index;
            claim.tail_started();
            if index == 0 {
                // Ends once shard 1 is in hand, with its row locked: completing it waits.
                second_started.notified().await;
                lock_it.notify_one();
                locked.notified().await;
            } else {
                second_started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                *second_ended.lock().unwrap() = Some(std::time::Instant::now());
            }
            worked(index)
        }
    })
    .await
    .unwrap();
    let released = locker.await.unwrap();
    assert_eq!(walked.done, 2);
    let second_ended = second_ended.lock().unwrap().expect("shard 1 ran");
    assert!(
        second_ended < released,
        "shard 1's work waited for shard 0's completion to get through"
    );
    db.drop_database().await;
}
