//! Models, checkpoints and evaluations: re-runs update instead of duplicating, bad metrics are
//! refused, and the example queries of docs/queries.md run on the result.

use llamagen_store::results::{self, Metric, NewCheckpoint, NewEvaluation, NewModel};
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

#[tokio::test]
async fn another_file_at_a_step_the_model_has_is_a_clear_error() {
    with_database(|pool| async move {
        let first = checkpoint(&pool, "LlamaGen-B", "B", 20).await;
        let model_id: i64 = sqlx::query_scalar("SELECT model_id FROM checkpoints WHERE id = $1")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
        // The same file again keeps its row.
        assert_eq!(checkpoint(&pool, "LlamaGen-B", "B", 20).await, first);
        let retrained = NewCheckpoint {
            model_id,
            path: "/retrained/0000020.safetensors",
            sha256: &"f".repeat(64),
            step: 20,
            ..Default::default()
        };
        let err = results::register_checkpoint(&pool, &retrained)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already has a checkpoint at step 20 from another file")
                && err.contains("/retrained/0000020.safetensors"),
            "{err}"
        );
        // Its EMA weights at the same step are a checkpoint of their own.
        let ema = NewCheckpoint {
            ema: true,
            ..retrained
        };
        assert!(results::register_checkpoint(&pool, &ema).await.is_ok());

        // The same bytes from another model's training are the first model's row, and say so.
        let other = checkpoint(&pool, "LlamaGen-B-again", "B", 40).await;
        let other_model: i64 = sqlx::query_scalar("SELECT model_id FROM checkpoints WHERE id = $1")
            .bind(other)
            .fetch_one(&pool)
            .await
            .unwrap();
        let sha: String = sqlx::query_scalar("SELECT sha256 FROM checkpoints WHERE id = $1")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
        let same_bytes = NewCheckpoint {
            model_id: other_model,
            path: "/again/0000020.safetensors",
            sha256: &sha,
            step: 20,
            ..Default::default()
        };
        let id = results::register_checkpoint(&pool, &same_bytes)
            .await
            .unwrap();
        assert_eq!(id, first);
        assert_eq!(
            results::checkpoint_held_by_another_model(&pool, id, other_model)
                .await
                .unwrap(),
            Some(("LlamaGen-B".to_string(), 20))
        );
        assert_eq!(
            results::checkpoint_held_by_another_model(&pool, id, model_id)
                .await
                .unwrap(),
            None
        );
    })
    .await;
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
            &[
                Metric::new("fid", 6.0),
                Metric::new("inception_score", 150.0),
            ],
            None,
        )
        .await
        .unwrap();
        let again = results::begin_evaluation(&pool, &sweep_point(ckpt, 2.0))
            .await
            .unwrap();
        assert_eq!(first, again, "same configuration, same row");
        results::finish_evaluation(
            &pool,
            again,
            &[
                Metric::new("fid", 5.46).with_interval(5.40, 5.55),
                Metric::new("kid", 0.0012).with_interval(0.0010, 0.0015),
                Metric::new("kid_std", 0.0003),
            ],
            Some("/samples"),
        )
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
        // Intervals and KID reach the view and its indexed copy alike.
        for table in ["leaderboard", "leaderboard_rows"] {
            let row: Vec<Option<f64>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT ARRAY[fid_low, fid_high, kid, kid_std, kid_low, kid_high] FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(
                row,
                [5.40, 5.55, 0.0012, 0.0003, 0.0010, 0.0015].map(Some),
                "{table}"
            );
        }
        // Registering the same model and checkpoint again reuses their rows.
        assert_eq!(checkpoint(&pool, "LlamaGen-B", "B", 1000).await, ckpt);
        // A later registration that knows less keeps what was known; its config's keys are
        // merged in (a benchmark's architecture beside training's settings).
        for later in [
            serde_json::json!({}),
            serde_json::json!({"gpt": {"n_layer": 12}}),
        ] {
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
                    config: &later,
                },
            )
            .await
            .unwrap();
        }
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
                serde_json::json!({"size": "B", "gpt": {"n_layer": 12}})
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
        let err = results::finish_evaluation(
            &pool,
            id,
            &[Metric::new("fid", 5.0), Metric::new("inception_score", f64::NAN)],
            None,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("inception_score"), "{err}");
        for interval in [(5.2, 5.1), (f64::NEG_INFINITY, 5.3)] {
            let err = results::finish_evaluation(
                &pool,
                id,
                &[Metric::new("fid", 5.15).with_interval(interval.0, interval.1)],
                None,
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("fid"), "{err}");
        }
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
                        &[
                            Metric::new("fid", fid).with_interval(fid - 0.6, fid + 0.6),
                            Metric::new("inception_score", 100.0 * cfg),
                        ],
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
        // The ties query: L at step 2000, cfg 2 leads with 4.0 [3.4, 4.6]; L at cfg 1.5
        // (4.5) and B at cfg 2 (5.0) overlap it, B at cfg 1.5 (5.5, from 4.9) does not.
        let ties_sql = queries
            .iter()
            .find(|q| q.contains("fid_low <= b.fid_high"))
            .expect("the ties query");
        let ties: Vec<(String, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT model, fid FROM ({}) AS q",
            ties_sql.trim_end_matches(';')
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            ties,
            vec![
                ("LlamaGen-L".to_owned(), 4.0),
                ("LlamaGen-L".to_owned(), 4.5),
                ("LlamaGen-B".to_owned(), 5.0)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn reference_sets_and_protocols_are_filed_once_and_keep_evaluations_apart() {
    use llamagen_store::results::{NewProtocol, NewReferenceSet};
    with_database(|pool| async move {
        let made = serde_json::json!({"format": "npz"});
        let set = |path: &'static str| NewReferenceSet {
            name: "VIRTUAL_imagenet256-5f1e2d3c4b5a",
            path,
            sha256: "5f1e2d3c4b5a",
            num_images: Some(10_000),
            image_size: Some(256),
            made: &made,
        };
        let first = results::upsert_reference_set(&pool, &set("/data/a.npz"))
            .await
            .unwrap();
        let moved = results::upsert_reference_set(&pool, &set("/data/b.npz"))
            .await
            .unwrap();
        assert_eq!(
            first, moved,
            "the same content is the same set, wherever it lies"
        );
        let path: String = sqlx::query_scalar("SELECT path FROM reference_sets")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(path, "/data/b.npz");

        let protocol = |samples: i32| {
            let definition =
                serde_json::json!({"reference": "5f1e2d3c4b5a", "num_samples": samples});
            let pool = pool.clone();
            async move {
                results::upsert_protocol(
                    &pool,
                    &NewProtocol {
                        kind: "generator",
                        name: "test",
                        feature_extractor_sha256: Some("abc"),
                        reference_set_id: Some(first),
                        num_samples: Some(samples),
                        definition: &definition,
                    },
                )
                .await
                .unwrap()
            }
        };
        let (fid50k, again, fid10k) = (
            protocol(50_000).await,
            protocol(50_000).await,
            protocol(10_000).await,
        );
        assert_eq!(fid50k, again);
        assert_ne!(fid50k, fid10k);

        // One checkpoint and sampling configuration measured under both: two rows, neither
        // overwriting the other.
        let ckpt = checkpoint(&pool, "LlamaGen-B", "B", 1000).await;
        let mut ids = Vec::new();
        for (protocol, fid) in [(fid50k, 5.0), (fid10k, 7.0)] {
            let e = NewEvaluation {
                protocol_id: Some(protocol),
                reference_set_id: Some(first),
                ..sweep_point(ckpt, 2.0)
            };
            let id = results::begin_evaluation(&pool, &e).await.unwrap();
            results::finish_evaluation(&pool, id, &[Metric::new("fid", fid)], None)
                .await
                .unwrap();
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1]);
        let rows: Vec<(i64, f64)> =
            sqlx::query_as("SELECT protocol_id, fid FROM leaderboard ORDER BY fid")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows, [(fid50k, 5.0), (fid10k, 7.0)]);
    })
    .await;
}
