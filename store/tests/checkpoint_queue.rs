//! Evaluators sharing checkpoints through the queue: selection, exclusive claims, leases.

use std::collections::HashSet;
use std::time::Duration;

use llamagen_store::StoreError;
use llamagen_store::checkpoint_queue::{self as queue, AfterFailure, Selection};
use llamagen_store::results::{self, NewCheckpoint, NewModel};
use llamagen_store::testing::with_database;
use llamagen_store::training;
use sqlx::PgPool;

const PROTOCOL: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A model with one training run that registered checkpoints at `steps`; returns the run id.
async fn trained(pool: &PgPool, name: &str, steps: &[i64]) -> i64 {
    let config = serde_json::json!({"gpt": {"dim": 64}});
    let model = results::upsert_model(
        pool,
        &NewModel {
            name,
            kind: "generator",
            architecture: "llamagen-gpt",
            size: None,
            task: Some("c2i"),
            params: None,
            image_size: Some(32),
            config: &config,
        },
    )
    .await
    .unwrap();
    let run = training::begin_training_run(pool, model, &config, None, 0, 8)
        .await
        .unwrap();
    for &step in steps {
        let sha = format!("{:0>64x}", step as u64 * 7919 + name.len() as u64);
        let path = format!("/ckpt/{name}/{step:07}.safetensors");
        results::register_checkpoint(
            pool,
            &NewCheckpoint {
                model_id: model,
                training_run_id: Some(run),
                path: &path,
                sha256: &sha,
                step,
                config: Some(&config),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    run
}

fn models(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_selection_picks_steps_and_final_checkpoints_once() {
    with_database(|pool| async move {
        let protocol = serde_json::json!({"benchmark": "b"});
        let run = trained(&pool, "m", &[10, 20, 30, 40]).await;
        trained(&pool, "other", &[10]).await;
        let names = models(&["m"]);
        // While training runs, only the steps that are multiples of 20 are due.
        let every = Selection {
            models: &names,
            every_steps: 20,
        };
        assert_eq!(
            queue::enqueue(&pool, PROTOCOL, &protocol, &every, 3)
                .await
                .unwrap(),
            2
        );
        // Final only: nothing until the run has finished, then its last checkpoint.
        let last = Selection {
            models: &names,
            every_steps: 0,
        };
        assert_eq!(
            queue::enqueue(&pool, PROTOCOL, &protocol, &last, 3)
                .await
                .unwrap(),
            0
        );
        training::finish_training_run(&pool, run, "succeeded")
            .await
            .unwrap();
        // Step 40 was queued by the first selection already; nothing is added twice.
        assert_eq!(
            queue::enqueue(&pool, PROTOCOL, &protocol, &last, 3)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            queue::enqueue(&pool, PROTOCOL, &protocol, &every, 3)
                .await
                .unwrap(),
            0
        );
        let steps: Vec<i64> = sqlx::query_scalar(
            "SELECT c.step FROM checkpoint_queue q JOIN checkpoints c ON c.id = q.checkpoint_id
             ORDER BY c.step",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(steps, vec![20, 40]);
        // Another protocol queues the same checkpoints afresh.
        let other = "2".repeat(64);
        assert_eq!(
            queue::enqueue(&pool, &other, &protocol, &last, 3)
                .await
                .unwrap(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn evaluators_never_claim_the_same_checkpoint() {
    with_database(|pool| async move {
        let protocol = serde_json::json!({"benchmark": "b"});
        trained(&pool, "m", &(1..=24).map(|s| s * 5).collect::<Vec<_>>()).await;
        let names = models(&["m"]);
        let selection = Selection {
            models: &names,
            every_steps: 5,
        };
        queue::enqueue(&pool, PROTOCOL, &protocol, &selection, 3)
            .await
            .unwrap();
        let mut evaluators = Vec::new();
        for e in 0..3 {
            let pool = pool.clone();
            evaluators.push(tokio::spawn(async move {
                let name = format!("evaluator-{e}");
                let mut done = Vec::new();
                while let Some(lease) =
                    queue::claim(&pool, PROTOCOL, &name, Duration::from_secs(60))
                        .await
                        .unwrap()
                {
                    assert_eq!(lease.attempt, 1);
                    assert_eq!(lease.checkpoint.model, "m");
                    assert_eq!(lease.checkpoint.config["gpt"]["dim"], 64);
                    queue::complete(&pool, &lease, &[]).await.unwrap();
                    done.push(lease.checkpoint.step);
                }
                done
            }));
        }
        let mut all = Vec::new();
        for e in evaluators {
            all.extend(e.await.unwrap());
        }
        let unique: HashSet<i64> = all.iter().copied().collect();
        assert_eq!((all.len(), unique.len()), (24, 24));
        let progress = queue::progress(&pool, PROTOCOL).await.unwrap();
        assert_eq!(progress.succeeded, 24);
        assert!(progress.finished());
    })
    .await;
}

#[tokio::test]
async fn a_dead_evaluators_checkpoint_is_taken_over_and_it_cannot_finish_it() {
    with_database(|pool| async move {
        let protocol = serde_json::json!({"benchmark": "b"});
        let run = trained(&pool, "m", &[5]).await;
        training::finish_training_run(&pool, run, "succeeded")
            .await
            .unwrap();
        let names = models(&["m"]);
        let selection = Selection {
            models: &names,
            every_steps: 0,
        };
        queue::enqueue(&pool, PROTOCOL, &protocol, &selection, 2)
            .await
            .unwrap();
        let dead = queue::claim(&pool, PROTOCOL, "dead", Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        // Held: a second evaluator finds nothing while the lease runs.
        assert!(
            queue::claim(&pool, PROTOCOL, "live", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let live = queue::claim(&pool, PROTOCOL, "live", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((live.attempt, live.checkpoint.step), (2, 5));
        let err = queue::complete(&pool, &dead, &[1]).await.unwrap_err();
        assert!(
            matches!(err, StoreError::CheckpointLeaseLost { .. }),
            "{err}"
        );
        assert!(
            queue::renew(&pool, &dead, Duration::from_secs(9))
                .await
                .is_err()
        );
        // The killed evaluator's expiry used none of the two attempts: the first failure is
        // retried, the second is final.
        assert_eq!(
            queue::fail(&pool, &live, "boom").await.unwrap(),
            AfterFailure::WillRetry
        );
        let again = queue::claim(&pool, PROTOCOL, "live", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.attempt, 3);
        assert_eq!(
            queue::fail(&pool, &again, "boom").await.unwrap(),
            AfterFailure::GaveUp
        );
        let progress = queue::progress(&pool, PROTOCOL).await.unwrap();
        assert_eq!((progress.failed, progress.pending), (1, 0));
        let (failures, expiries): (i32, i32) =
            sqlx::query_as("SELECT failures, expiries FROM checkpoint_queue")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((failures, expiries), (2, 1));
    })
    .await;
}

#[tokio::test]
async fn a_released_checkpoint_keeps_its_attempts() {
    with_database(|pool| async move {
        let protocol = serde_json::json!({"benchmark": "b"});
        trained(&pool, "m", &[4]).await;
        let names = models(&["m"]);
        let selection = Selection {
            models: &names,
            every_steps: 2,
        };
        queue::enqueue(&pool, PROTOCOL, &protocol, &selection, 1)
            .await
            .unwrap();
        let first = queue::claim(&pool, PROTOCOL, "a", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        queue::release(&pool, &first).await.unwrap();
        let again = queue::claim(&pool, PROTOCOL, "b", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        // The release counted as no failure: with one attempt allowed, the checkpoint is
        // claimed again (the claim counter goes on).
        assert_eq!(again.attempt, 2);
        queue::complete(&pool, &again, &[7, 8]).await.unwrap();
        let ids: Vec<i64> = sqlx::query_scalar("SELECT evaluation_ids FROM checkpoint_queue")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ids, vec![7, 8]);
    })
    .await;
}
