//! `llamagen schedule` through a database outage, on a private PostgreSQL that the test stops
//! and starts again (its own test binary: the restart breaks every connection of the process's
//! test server). The scheduler keeps going: the calls that fail are retried, a run that died
//! with the server is recorded as failed, and the ticks after the outage run again, never two
//! runs at once.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::text;
use llamagen_ingest::testing::{LoopbackServer, bundled_photos};
use llamagen_store::testing::{TestDatabase, restart_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_survives_a_database_restart() {
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::scheduled_ingest(
        dir.path(),
        "outage",
        "*/2 * * * * *",
        "skip",
        &[server.url("/img/coffee.jpg")],
        10.0,
    );
    let mut scheduler = common::llamagen_on(dir.path(), &db.url())
        .arg("schedule")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let succeeded_since = async |since: chrono::DateTime<chrono::Utc>| -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pipeline_runs WHERE status = 'succeeded' AND started_at > $1",
        )
        .bind(since)
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
    };
    let wait_for_success = async |since, limit: Duration| {
        let deadline = Instant::now() + limit;
        while succeeded_since(since).await == 0 {
            assert!(
                Instant::now() < deadline,
                "no run succeeded within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let start = chrono::Utc::now() - chrono::Duration::seconds(5);
    wait_for_success(start, Duration::from_secs(60)).await;

    let restarted = tokio::task::spawn_blocking(|| restart_server(Duration::from_secs(4)))
        .await
        .unwrap();
    if !restarted {
        eprintln!("DATABASE_URL is set: its server cannot be restarted by a test; skipped");
        scheduler.kill().unwrap();
        scheduler.wait().unwrap();
        return;
    }
    let back = chrono::Utc::now();
    assert!(
        scheduler.try_wait().unwrap().is_none(),
        "the scheduler died with the database"
    );
    wait_for_success(back, Duration::from_secs(90)).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(scheduler.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = common::output_within(scheduler, Duration::from_secs(600));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("retrying in"), "no call failed? {log}");

    type Time = chrono::DateTime<chrono::Utc>;
    let runs: Vec<(i64, Time, Option<Time>, String)> = sqlx::query_as(
        "SELECT id, started_at, finished_at, status FROM pipeline_runs ORDER BY started_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for pair in runs.windows(2) {
        let previous_end = pair[0].2.expect("every run was closed");
        assert!(
            pair[1].1 >= previous_end,
            "run #{} overlapped run #{}: {runs:?}\n{log}",
            pair[1].0,
            pair[0].0
        );
    }
    assert!(runs.iter().all(|r| r.3 != "running"), "{runs:?}\n{log}");
    let ticks: Vec<(Time, String, Option<i64>)> = sqlx::query_as(
        "SELECT scheduled_for, outcome, run_id FROM schedule_ticks ORDER BY scheduled_for",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        ticks.iter().all(|t| t.1 != "started"),
        "every decided tick was closed: {ticks:?}\n{log}"
    );
}
