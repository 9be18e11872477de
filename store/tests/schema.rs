//! The schema's rules, checked against a real database.

use llamagen_store::testing::with_database;
use sqlx::PgPool;

async fn seed_checkpoint(pool: &PgPool, model: &str, size: &str) -> i64 {
    let model_id: i64 = sqlx::query_scalar(
        "INSERT INTO models (name, kind, architecture, size, task, params, image_size)
         VALUES ($1, 'generator', 'llamagen-gpt', $2, 'c2i', 111000000, 256) RETURNING id",
    )
    .bind(model)
    .bind(size)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO checkpoints (model_id, path, sha256, step, epoch)
         VALUES ($1, $2, $3, 1000, 1.5) RETURNING id",
    )
    .bind(model_id)
    .bind(format!("/ckpt/{model}.safetensors"))
    .bind(format!("{:064x}", model_id))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn seed_evaluation(pool: &PgPool, checkpoint: i64, cfg: f64, metrics: &[(&str, f64)]) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO evaluations (checkpoint_id, benchmark, cfg_scale, top_k, top_p, temperature,
                                  image_size, num_samples, seed, config_sha256, status, finished_at)
         VALUES ($1, 'imagenet256-c2i', $2, 0, 1.0, 1.0, 256, 50000, 0, $3, 'succeeded', now())
         RETURNING id",
    )
    .bind(checkpoint)
    .bind(cfg)
    .bind(format!("cfg-{cfg}"))
    .fetch_one(pool)
    .await
    .unwrap();
    for (name, value) in metrics {
        sqlx::query("INSERT INTO metrics (evaluation_id, name, value) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(value)
            .execute(pool)
            .await
            .unwrap();
    }
    id
}

#[tokio::test]
async fn leaderboard_pivots_metrics_per_evaluation() {
    with_database(|pool| async move {
        let b = seed_checkpoint(&pool, "LlamaGen-B", "B").await;
        let l = seed_checkpoint(&pool, "LlamaGen-L", "L").await;
        seed_evaluation(
            &pool,
            b,
            2.0,
            &[
                ("fid", 5.46),
                ("inception_score", 193.61),
                ("precision", 0.83),
                ("recall", 0.45),
            ],
        )
        .await;
        seed_evaluation(&pool, l, 2.0, &[("fid", 3.07), ("inception_score", 256.06)]).await;
        type Row = (String, Option<f64>, Option<f64>, Option<f64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT model, fid, inception_score, recall FROM leaderboard ORDER BY fid",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            rows,
            vec![
                ("LlamaGen-L".to_owned(), Some(3.07), Some(256.06), None),
                (
                    "LlamaGen-B".to_owned(),
                    Some(5.46),
                    Some(193.61),
                    Some(0.45)
                ),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn the_same_evaluation_config_cannot_be_stored_twice() {
    with_database(|pool| async move {
        let ckpt = seed_checkpoint(&pool, "LlamaGen-B", "B").await;
        seed_evaluation(&pool, ckpt, 1.75, &[("fid", 6.0)]).await;
        let dup = sqlx::query(
            "INSERT INTO evaluations (checkpoint_id, benchmark, config_sha256) VALUES ($1, 'imagenet256-c2i', 'cfg-1.75')",
        )
        .bind(ckpt)
        .execute(&pool)
        .await
        .unwrap_err();
        assert_eq!(dup.as_database_error().and_then(|e| e.code()).as_deref(), Some("23505"));
    })
    .await;
}

#[tokio::test]
async fn constraints_reject_impossible_rows() {
    with_database(|pool| async move {
        let run: i64 = sqlx::query_scalar(
            "INSERT INTO pipeline_runs (pipeline, config, config_sha256) VALUES ('p', '{}', 'x') RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let stage: i64 = sqlx::query_scalar(
            "INSERT INTO stage_runs (run_id, stage) VALUES ($1, 'ingest') RETURNING id",
        )
        .bind(run)
        .fetch_one(&pool)
        .await
        .unwrap();
        let cases = [
            ("INSERT INTO stage_runs (run_id, stage) VALUES ($1, 'laundry')", run),
            ("INSERT INTO filter_funnel (stage_run_id, step, rule, rows_in, rows_dropped) VALUES ($1, 0, 'aesthetic', 10, 11)", stage),
            ("INSERT INTO shards (stage_run_id, shard_index, status) VALUES ($1, 0, 'running')", stage),
            ("UPDATE pipeline_runs SET status = 'succeeded' WHERE id = $1", run),
            ("INSERT INTO evaluations (checkpoint_id, benchmark, config_sha256, top_p) VALUES ($1, 'b', 'h', 1.5)", 1),
        ];
        for (sql, id) in cases {
            let result = sqlx::query(sql).bind(id).execute(&pool).await;
            assert!(result.is_err(), "accepted: {sql}");
        }
        let out: i64 = sqlx::query_scalar(
            "INSERT INTO filter_funnel (stage_run_id, step, rule, rows_in, rows_dropped) VALUES ($1, 0, 'url', 10, 3) RETURNING rows_out",
        )
        .bind(stage)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(out, 7);
    })
    .await;
}

/// Rows of the view missing from its indexed copy and rows of the copy the view lacks.
async fn copy_drift(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT * FROM leaderboard EXCEPT SELECT * FROM leaderboard_rows) a),
                (SELECT count(*) FROM (SELECT * FROM leaderboard_rows EXCEPT SELECT * FROM leaderboard) b)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn leaderboard_rows_follow_the_view_through_every_kind_of_write() {
    with_database(|pool| async move {
        let ckpt = seed_checkpoint(&pool, "GPT-B", "B").await;
        let a = seed_evaluation(&pool, ckpt, 1.5, &[("fid", 5.46), ("inception_score", 193.6)]).await;
        let b = seed_evaluation(&pool, ckpt, 2.0, &[("fid", 6.09)]).await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM leaderboard_rows")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 2);
        assert_eq!(copy_drift(&pool).await, (0, 0));

        // A metric re-recorded, a metric added, a checkpoint re-numbered, a model renamed.
        for sql in [
            "UPDATE metrics SET value = 5.0 WHERE name = 'fid' AND evaluation_id = $1",
            "INSERT INTO metrics (evaluation_id, name, value) VALUES ($1, 'recall', 0.6)",
            "UPDATE checkpoints SET step = 2000 WHERE id = (SELECT checkpoint_id FROM evaluations WHERE id = $1)",
            "UPDATE models SET name = 'GPT-B-renamed' WHERE id = (SELECT c.model_id FROM checkpoints c JOIN evaluations e ON e.checkpoint_id = c.id WHERE e.id = $1)",
        ] {
            sqlx::query(sql).bind(a).execute(&pool).await.unwrap();
            assert_eq!(copy_drift(&pool).await, (0, 0), "after {sql}");
        }
        let (fid, model, step): (f64, String, i64) = sqlx::query_as(
            "SELECT fid, model, step FROM leaderboard_rows WHERE evaluation_id = $1",
        )
        .bind(a)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((fid, model.as_str(), step), (5.0, "GPT-B-renamed", 2000));

        // An evaluation that fails on a re-run leaves the leaderboard; a deleted one too.
        sqlx::query("UPDATE evaluations SET status = 'failed' WHERE id = $1")
            .bind(b)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(copy_drift(&pool).await, (0, 0));
        sqlx::query("DELETE FROM metrics WHERE evaluation_id = $1 AND name = 'recall'")
            .bind(a)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(copy_drift(&pool).await, (0, 0));
        sqlx::query("DELETE FROM models").execute(&pool).await.unwrap();
        assert_eq!(copy_drift(&pool).await, (0, 0));
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM leaderboard_rows")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 0);
    })
    .await;
}
