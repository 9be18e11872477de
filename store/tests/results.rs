//! Models, checkpoints and evaluations: re-runs update instead of duplicating, bad metrics are
//! refused, and the example queries of docs/queries.md run on the result.

use llamagen_store::results::{self, NewCheckpoint, NewEvaluation, NewModel};
use llamagen_store::testing::with_database;
use sqlx::PgPool;

async fn checkpoint(pool: &PgPool, model: &str, size: &str, step: i64) -> i64 {
    let config = serde_json::json!({"size": size});
    let model_id = results::upsert_model(
        pool,
        &NewModel {
            name: model,
            kind: "generator",
            architecture: "llamagen-gpt",
            size: Some(size),
            task: Some("c2i"),
            params: Some(111_000_000),
            image_size: Some(256),
            config: &config,
        },
    )
    .await
    .unwrap();
    let sha = format!("{:064x}", model_id * 1_000_000 + step);
    results::register_checkpoint(
        pool,
        &NewCheckpoint {
            model_id,
            path: "/ckpt.safetensors",
            sha256: &sha,
            step,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn sweep_point(checkpoint_id: i64, cfg: f64) -> NewEvaluation<'static> {
    NewEvaluation {
        checkpoint_id,
        benchmark: "imagenet256-c2i",
        cfg_scale: Some(cfg),
        top_k: Some(0),
        top_p: Some(1.0),
        temperature: Some(1.0),
        image_size: Some(256),
        num_samples: Some(50_000),
        seed: Some(0),
        git_revision: Some("abc"),
        ..Default::default()
    }
}

#[tokio::test]
async fn rerunning_an_evaluation_updates_it_in_place() {
    with_database(|pool| async move {
        let ckpt = checkpoint(&pool, "LlamaGen-B", "B", 1000).await;
        let first = results::begin_evaluation(&pool, &sweep_point(ckpt, 2.0))
            .await
            .unwrap();
        results::finish_evaluation(
            &pool,
            first,
            &[("fid", 6.0), ("inception_score", 150.0)],
            None,
        )
        .await
        .unwrap();
        let again = results::begin_evaluation(&pool, &sweep_point(ckpt, 2.0))
            .await
            .unwrap();
        assert_eq!(first, again, "same configuration, same row");
        results::finish_evaluation(&pool, again, &[("fid", 5.46)], Some("/samples"))
            .await
            .unwrap();
        let other = results::begin_evaluation(&pool, &sweep_point(ckpt, 1.75))
            .await
            .unwrap();
        assert_ne!(other, first, "another cfg scale is another evaluation");
        results::fail_evaluation(&pool, other, "out of memory")
            .await
            .unwrap();

        let rows: Vec<(f64, Option<f64>, Option<f64>)> = sqlx::query_as(
            "SELECT cfg_scale, fid, inception_score FROM leaderboard ORDER BY cfg_scale",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            rows,
            vec![(2.0, Some(5.46), None)],
            "old metrics replaced, failed run hidden"
        );
        // Registering the same model and checkpoint again reuses their rows.
        assert_eq!(checkpoint(&pool, "LlamaGen-B", "B", 1000).await, ckpt);
        // A later registration that knows less keeps what was known.
        let empty = serde_json::json!({});
        results::upsert_model(
            &pool,
            &NewModel {
                name: "LlamaGen-B",
                kind: "generator",
                architecture: "llamagen-gpt",
                size: None,
                task: None,
                params: None,
                image_size: None,
                config: &empty,
            },
        )
        .await
        .unwrap();
        let (size, params, config): (Option<String>, Option<i64>, serde_json::Value) =
            sqlx::query_as("SELECT size, params, config FROM models WHERE name = 'LlamaGen-B'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            (size.as_deref(), params, config),
            (
                Some("B"),
                Some(111_000_000),
                serde_json::json!({"size": "B"})
            )
        );
    })
    .await;
}

#[tokio::test]
async fn non_finite_metrics_are_refused_and_nothing_is_half_written() {
    with_database(|pool| async move {
        let ckpt = checkpoint(&pool, "LlamaGen-B", "B", 1).await;
        let id = results::begin_evaluation(&pool, &sweep_point(ckpt, 2.0)).await.unwrap();
        let err = results::finish_evaluation(&pool, id, &[("fid", 5.0), ("inception_score", f64::NAN)], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("inception_score"), "{err}");
        let (status, metrics): (String, i64) = sqlx::query_as(
            "SELECT status, (SELECT count(*) FROM metrics WHERE evaluation_id = $1) FROM evaluations WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((status.as_str(), metrics), ("running", 0));
    })
    .await;
}

/// The SQL blocks of docs/queries.md.
fn documented_queries() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/queries.md");
    let text = std::fs::read_to_string(path).unwrap();
    text.split("```sql")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().trim().to_owned())
        .collect()
}

#[tokio::test]
async fn documented_queries_run_and_answer() {
    with_database(|pool| async move {
        for (model, size) in [("LlamaGen-B", "B"), ("LlamaGen-L", "L")] {
            for step in [1000, 2000] {
                let ckpt = checkpoint(&pool, model, size, step).await;
                for cfg in [1.5, 2.0] {
                    let id = results::begin_evaluation(&pool, &sweep_point(ckpt, cfg))
                        .await
                        .unwrap();
                    let fid = 10.0 / (step as f64 / 1000.0)
                        + (cfg - 2.0).abs()
                        + if size == "L" { -1.0 } else { 0.0 };
                    results::finish_evaluation(
                        &pool,
                        id,
                        &[("fid", fid), ("inception_score", 100.0 * cfg)],
                        None,
                    )
                    .await
                    .unwrap();
                }
            }
        }
        let queries = documented_queries();
        assert!(queries.len() >= 5, "found {} queries", queries.len());
        for sql in &queries {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("docs/queries.md query failed: {e}\n{sql}"));
        }
        // The first query answers "best FID per model".
        let best: Vec<(String, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT model, fid FROM ({}) AS q",
            queries[0].trim_end_matches(';')
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            best,
            vec![
                ("LlamaGen-B".to_owned(), 5.0),
                ("LlamaGen-L".to_owned(), 4.0)
            ]
        );
    })
    .await;
}
