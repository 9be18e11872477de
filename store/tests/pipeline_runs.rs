//! Recording pipeline runs: a scheduled tick has exactly one run, however often the scheduler
//! retries recording it.

use chrono::{TimeZone as _, Utc};
use llamagen_store::runs::{self, NewPipelineRun, Outcome, Trigger};
use llamagen_store::testing::with_database;

#[tokio::test]
async fn a_retried_record_of_a_tick_gets_the_same_run_and_a_finished_tick_is_not_run_again() {
    with_database(|pool| async move {
        let config = serde_json::json!({"pipeline": {"name": "nightly"}});
        let tick = Utc.with_ymd_and_hms(2026, 11, 30, 2, 0, 0).unwrap();
        let run = |trigger, scheduled_for| NewPipelineRun {
            pipeline: "nightly",
            trigger,
            config: &config,
            git_revision: None,
            scheduled_for,
        };
        // The first INSERT committed but its answer was lost; the retry records it again.
        let first = runs::create_pipeline_run(&pool, &run(Trigger::Schedule, Some(tick)))
            .await
            .unwrap();
        let retried = runs::create_pipeline_run(&pool, &run(Trigger::Schedule, Some(tick)))
            .await
            .unwrap();
        assert_eq!(first, retried);
        // Another tick, and runs started by hand, are runs of their own.
        let next = runs::create_pipeline_run(
            &pool,
            &run(Trigger::Schedule, Some(tick + chrono::Duration::hours(24))),
        )
        .await
        .unwrap();
        let manual_a = runs::create_pipeline_run(&pool, &run(Trigger::Manual, None))
            .await
            .unwrap();
        let manual_b = runs::create_pipeline_run(&pool, &run(Trigger::Manual, None))
            .await
            .unwrap();
        let ids = [first, next, manual_a, manual_b];
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            4
        );
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM pipeline_runs")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 4);

        runs::finish_pipeline_run(&pool, first, Outcome::Succeeded, None)
            .await
            .unwrap();
        let err = runs::create_pipeline_run(&pool, &run(Trigger::Schedule, Some(tick)))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("already has a finished run"),
            "{err}"
        );
    })
    .await;
}
