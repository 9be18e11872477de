//! Workers sharing a stage through shard claims and leases.

use std::collections::HashSet;
use std::time::Duration;

use llamagen_store::StoreError;
use llamagen_store::runs::{self, AfterFailure, NewPipelineRun, ShardCounts, SharedStage, Trigger};
use llamagen_store::testing::with_database;
use sqlx::PgPool;

async fn stage_with_shards(pool: &PgPool, shards: i32, max_attempts: i32) -> i64 {
    let config = serde_json::json!({"ingest": {"shards": shards}});
    let run = runs::create_pipeline_run(
        pool,
        &NewPipelineRun {
            pipeline: "test",
            trigger: Trigger::Manual,
            config: &config,
            git_revision: Some("abc123"),
            scheduled_for: None,
        },
    )
    .await
    .unwrap();
    let stage = runs::start_stage(pool, run, "ingest", &config)
        .await
        .unwrap();
    assert_eq!(
        runs::add_shards(pool, stage, shards, max_attempts)
            .await
            .unwrap(),
        shards as u64
    );
    // Registering again on resume adds nothing.
    assert_eq!(
        runs::add_shards(pool, stage, shards, max_attempts)
            .await
            .unwrap(),
        0
    );
    stage
}

#[tokio::test]
async fn concurrent_workers_never_claim_the_same_shard() {
    with_database(|pool| async move {
        let stage = stage_with_shards(&pool, 40, 3).await;
        let mut workers = Vec::new();
        for w in 0..4 {
            let pool = pool.clone();
            workers.push(tokio::spawn(async move {
                let name = format!("worker-{w}");
                let mut done = Vec::new();
                while let Some(lease) =
                    runs::claim_shard(&pool, stage, &name, Duration::from_secs(60))
                        .await
                        .unwrap()
                {
                    assert_eq!(lease.attempt, 1);
                    runs::complete_shard(
                        &pool,
                        &lease,
                        &ShardCounts {
                            input_rows: 10,
                            output_rows: 9,
                            failed_rows: 1,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                    done.push(lease.shard_index);
                }
                done
            }));
        }
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        let unique: HashSet<i32> = all.iter().copied().collect();
        assert_eq!(all.len(), 40, "some shard was done twice or not at all");
        assert_eq!(unique, (0..40).collect());
        let progress = runs::shard_progress(&pool, stage).await.unwrap();
        assert_eq!((progress.succeeded, progress.total()), (40, 40));
        assert!(progress.finished());
        let rows: i64 = sqlx::query_scalar(
            "SELECT sum(output_rows)::bigint FROM shards WHERE stage_run_id = $1",
        )
        .bind(stage)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(rows, 360);
    })
    .await;
}

#[tokio::test]
async fn an_expired_lease_is_redone_and_the_old_worker_cannot_finish_it() {
    with_database(|pool| async move {
        let stage = stage_with_shards(&pool, 1, 3).await;
        // A zero lease has expired by the next transaction: the worker "died".
        let dead = runs::claim_shard(&pool, stage, "dead", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let alive = runs::claim_shard(&pool, stage, "alive", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((alive.shard_index, alive.attempt), (dead.shard_index, 2));
        // Nothing else to claim while "alive" holds a live lease.
        assert!(
            runs::claim_shard(&pool, stage, "third", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );

        let err = runs::complete_shard(&pool, &dead, &ShardCounts::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        assert!(matches!(
            runs::renew_lease(&pool, &dead, Duration::from_secs(5)).await,
            Err(StoreError::LeaseLost { .. })
        ));
        let renewed = runs::renew_lease(&pool, &alive, Duration::from_secs(120))
            .await
            .unwrap();
        assert!(renewed.expires_at > alive.expires_at);
        runs::complete_shard(
            &pool,
            &renewed,
            &ShardCounts {
                output_rows: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let worker: String =
            sqlx::query_scalar("SELECT worker FROM shards WHERE stage_run_id = $1")
                .bind(stage)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(worker, "alive");
    })
    .await;
}

#[tokio::test]
async fn failures_retry_until_attempts_run_out() {
    with_database(|pool| async move {
        let stage = stage_with_shards(&pool, 1, 2).await;
        let first = runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            runs::fail_shard(&pool, &first, "disk full").await.unwrap(),
            AfterFailure::WillRetry
        );
        let second = runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.attempt, 2);
        assert_eq!(
            runs::fail_shard(&pool, &second, "disk still full")
                .await
                .unwrap(),
            AfterFailure::GaveUp
        );
        assert!(
            runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
        let progress = runs::shard_progress(&pool, stage).await.unwrap();
        assert_eq!(progress.failed, 1);
        assert!(progress.finished());

        // A killed worker (its lease ran out) does not use up the shard's attempts: with one
        // attempt allowed, the next worker still gets it and can finish it.
        let stage = stage_with_shards(&pool, 1, 1).await;
        runs::claim_shard(&pool, stage, "killed", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let next = runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("an expired lease is not a failed attempt");
        assert_eq!(next.attempt, 2);
        runs::complete_shard(&pool, &next, &ShardCounts::default())
            .await
            .unwrap();
        let counted: (i32, i32) =
            sqlx::query_as("SELECT failures, expiries FROM shards WHERE stage_run_id = $1")
                .bind(stage)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(counted, (0, 1));

        // A shard that kills every worker that takes it ends failed instead of hanging in
        // 'running' or being retried for ever: after 3 expiries per allowed attempt.
        let stage = stage_with_shards(&pool, 1, 1).await;
        for _ in 0..runs::EXPIRIES_PER_ATTEMPT {
            runs::claim_shard(&pool, stage, "dies", Duration::ZERO)
                .await
                .unwrap()
                .unwrap();
        }
        assert!(
            runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
        let (status, error): (String, Option<String>) =
            sqlx::query_as("SELECT status, error FROM shards WHERE stage_run_id = $1")
                .bind(stage)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(status, "failed");
        assert!(error.unwrap().contains("lease expired 3 times"));
        assert!(runs::shard_progress(&pool, stage).await.unwrap().finished());
    })
    .await;
}

#[tokio::test]
async fn funnel_accumulates_across_shards_and_runs_finish_once() {
    with_database(|pool| async move {
        let stage = stage_with_shards(&pool, 2, 1).await;
        let steps = |n: i64| {
            vec![
                runs::FunnelStep { rule: "valid_url".into(), threshold: None, rows_in: n, rows_dropped: 1 },
                runs::FunnelStep { rule: "aesthetic".into(), threshold: Some(">= 5".into()), rows_in: n - 1, rows_dropped: 2 },
            ]
        };
        runs::record_funnel(&pool, stage, &steps(10)).await.unwrap();
        runs::record_funnel(&pool, stage, &steps(20)).await.unwrap();
        let funnel: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT rule, rows_in, rows_out FROM filter_funnel WHERE stage_run_id = $1 ORDER BY step")
                .bind(stage)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(funnel, vec![("valid_url".into(), 30, 28), ("aesthetic".into(), 28, 24)]);
        let bad = runs::FunnelStep { rule: "x".into(), threshold: None, rows_in: 1, rows_dropped: 2 };
        assert!(runs::record_funnel(&pool, stage, &[bad]).await.is_err());

        let run: i64 = sqlx::query_scalar("SELECT run_id FROM stage_runs WHERE id = $1").bind(stage).fetch_one(&pool).await.unwrap();
        runs::finish_stage(&pool, stage, runs::Outcome::Succeeded, &serde_json::json!({"kept": 24}), None).await.unwrap();
        runs::finish_pipeline_run(&pool, run, runs::Outcome::Succeeded, None).await.unwrap();
        assert!(runs::finish_pipeline_run(&pool, run, runs::Outcome::Failed, Some("late")).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_finished_stage_is_found_by_its_output_and_reopened_with_fresh_attempts() {
    with_database(|pool| async move {
        let stage = stage_with_shards(&pool, 2, 1).await;
        runs::set_stage_paths(&pool, stage, "in.parquet", "/out")
            .await
            .unwrap();
        let found = runs::find_stage_run(&pool, "ingest", "/out", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.stage_run_id, found.running), (stage, true));
        assert!(
            runs::find_stage_run(&pool, "ingest", "/elsewhere", None)
                .await
                .unwrap()
                .is_none()
        );

        // One shard succeeds, one fails for good (one attempt allowed); the stage ends.
        let a = runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        runs::complete_shard(&pool, &a, &ShardCounts::default())
            .await
            .unwrap();
        let b = runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            runs::fail_shard(&pool, &b, "disk full").await.unwrap(),
            AfterFailure::GaveUp
        );
        runs::finish_stage(
            &pool,
            stage,
            runs::Outcome::Failed,
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
        let found = runs::find_stage_run(&pool, "ingest", "/out", None)
            .await
            .unwrap()
            .unwrap();
        assert!(!found.running);

        // Re-opening gives the failed shard new attempts and leaves the finished one alone.
        assert_eq!(runs::reopen_stage(&pool, &found).await.unwrap(), 1);
        let progress = runs::shard_progress(&pool, stage).await.unwrap();
        assert_eq!(
            (progress.pending, progress.succeeded, progress.failed),
            (1, 1, 0)
        );
        let again = runs::claim_shard(&pool, stage, "w2", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        // Its second claim (claims keep counting, so no lease identity repeats); its
        // failure count starts again.
        assert_eq!((again.shard_index, again.attempt), (b.shard_index, 2));
        let failures: i32 = sqlx::query_scalar("SELECT failures FROM shards WHERE id = $1")
            .bind(again.shard_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(failures, 0);

        // A funnel recorded again replaces the old one instead of adding to it.
        let steps = [runs::FunnelStep {
            rule: "valid_url".into(),
            threshold: None,
            rows_in: 10,
            rows_dropped: 2,
        }];
        runs::replace_funnel(&pool, stage, &steps).await.unwrap();
        runs::replace_funnel(&pool, stage, &steps).await.unwrap();
        let (rows_in, dropped): (i64, i64) = sqlx::query_as(
            "SELECT rows_in, rows_dropped FROM filter_funnel WHERE stage_run_id = $1",
        )
        .bind(stage)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((rows_in, dropped), (10, 2));
    })
    .await;
}

/// An encode worker joining the stage run of `output` (shards `0..shards`, two attempts each).
async fn join(
    pool: &PgPool,
    output: &str,
    config: &serde_json::Value,
    shards: i32,
) -> Result<runs::OpenStage, StoreError> {
    runs::join_or_start_stage(
        pool,
        &SharedStage {
            stage: "encode",
            input_path: "/in",
            output_path: output,
            config,
            shards,
            max_attempts: 2,
            run_id: None,
        },
    )
    .await
}

/// Workers of a stage without a coordinator: the first one to arrive makes the run, the
/// others join it, a finished one re-opens with fresh attempts for its failed shards, and
/// shards the input gained are added.
#[tokio::test]
async fn workers_starting_together_join_one_stage_run() {
    with_database(|pool| async move {
        let config = serde_json::json!({"encode": {}});
        let mut joins = Vec::new();
        for _ in 0..4 {
            let pool = pool.clone();
            let config = config.clone();
            joins.push(tokio::spawn(async move {
                join(&pool, "/out", &config, 3).await.unwrap()
            }));
        }
        let mut opened = HashSet::new();
        for j in joins {
            let open = j.await.unwrap();
            opened.insert((open.run_id, open.stage_run_id));
        }
        assert_eq!(opened.len(), 1, "one run for all: {opened:?}");
        let (run_id, stage) = opened.into_iter().next().unwrap();
        let trigger: String = sqlx::query_scalar("SELECT trigger FROM pipeline_runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(trigger, "worker");

        // Shard 0 fails for good, the others succeed, the stage is closed.
        for attempt in 0..2 {
            let lease = runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((lease.shard_index, lease.attempt), (0, attempt + 1));
            runs::fail_shard(&pool, &lease, "broken").await.unwrap();
        }
        while let Some(lease) = runs::claim_shard(&pool, stage, "w", Duration::from_secs(60))
            .await
            .unwrap()
        {
            runs::complete_shard(&pool, &lease, &ShardCounts::default())
                .await
                .unwrap();
        }
        runs::finish_stage(
            &pool,
            stage,
            runs::Outcome::Failed,
            &serde_json::json!({}),
            Some("1 shard failed"),
        )
        .await
        .unwrap();

        // A worker coming back later (the input now has 5 shards) re-opens the same stage.
        let again = join(&pool, "/out", &config, 5).await.unwrap();
        assert_eq!((again.run_id, again.stage_run_id), (run_id, stage));
        let progress = runs::shard_progress(&pool, stage).await.unwrap();
        assert_eq!((progress.pending, progress.succeeded), (3, 2));
        // Another output folder is another stage run.
        let other = join(&pool, "/other", &config, 1).await.unwrap();
        assert_ne!(other.stage_run_id, stage);
    })
    .await;
}
