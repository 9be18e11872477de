//! The per-pipeline advisory lock of the scheduler and `llamagen run`: one holder at a time,
//! across connections; a holder whose connection breaks learns that it lost the lock, and the
//! next one can take it.

use llamagen_store::schedule::PipelineLock;
use llamagen_store::testing::with_database;

#[tokio::test]
async fn one_holder_and_a_broken_connection_is_noticed() {
    with_database(|pool| async move {
        let mut held = PipelineLock::try_acquire(&pool, "nightly")
            .await
            .unwrap()
            .expect("a free lock");
        held.check().await.unwrap();
        assert!(
            PipelineLock::try_acquire(&pool, "nightly")
                .await
                .unwrap()
                .is_none()
        );
        let other = PipelineLock::try_acquire(&pool, "weekly")
            .await
            .unwrap()
            .expect("another pipeline's lock is its own");
        other.release().await.unwrap();

        // The server ends the holder's session (a restart, a network cut, an admin). Only in
        // this test's database: other tests migrating at the same time hold advisory locks too.
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
             WHERE locktype = 'advisory' AND pid <> pg_backend_pid()
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(killed, 1);
        assert!(held.check().await.is_err(), "a lost lock is noticed");
        // The backend tells its client before it exits, and releases its locks as it exits:
        // wait (at most 10 s) until that has happened.
        for _ in 0..200 {
            let held_by_others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND pid <> pg_backend_pid()
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if held_by_others == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let next = PipelineLock::try_acquire(&pool, "nightly")
            .await
            .unwrap()
            .expect("free again once its session ended");
        next.release().await.unwrap();
        drop(held);
        // Released: free for the next holder.
        PipelineLock::try_acquire(&pool, "nightly")
            .await
            .unwrap()
            .expect("free after release")
            .release()
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_tick_is_decided_once_and_its_decider_can_ask_again() {
    use chrono::TimeZone as _;
    use llamagen_store::schedule::{self, TickOutcome};
    with_database(|pool| async move {
        let at = chrono::Utc.with_ymd_and_hms(2026, 11, 30, 2, 0, 0).unwrap();
        let started = TickOutcome::Started;
        assert!(schedule::decide_tick(&pool, "nightly", at, started, "a:1:1").await.unwrap());
        // The same scheduler asking again (its first answer was lost) still owns the tick;
        // another scheduler does not.
        assert!(schedule::decide_tick(&pool, "nightly", at, started, "a:1:1").await.unwrap());
        assert!(!schedule::decide_tick(&pool, "nightly", at, started, "b:2:2").await.unwrap());
        // Once its run is recorded, nobody decides it again, its decider included.
        let run: i64 = sqlx::query_scalar(
            "INSERT INTO pipeline_runs (pipeline, trigger, config, config_sha256) VALUES ('nightly', 'schedule', '{}', repeat('0', 64)) RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        schedule::update_tick(&pool, "nightly", at, started, Some(run))
            .await
            .unwrap();
        assert!(!schedule::decide_tick(&pool, "nightly", at, started, "a:1:1").await.unwrap());
    })
    .await;
}
