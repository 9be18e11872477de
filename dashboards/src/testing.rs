//! Seeded results for the dashboard's tests and its load benchmark: models of the paper's
//! sizes, checkpoints along training, guidance sweeps with metrics shaped like Figure 3, loss
//! curves, a pipeline run with shards and a funnel, and hostile strings where a user's data
//! could carry them.

use sqlx::PgPool;

/// A model name and a caption that must come out of every page as text.
pub const HOSTILE_NAME: &str = "<script>window.pwned='name'</script>GPT-evil";
pub const HOSTILE_CAPTION: &str = "a cat <img src=x onerror=\"window.pwned='caption'\"> on a mat";

/// What [`seed`] made.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub models: Vec<(i64, String)>,
    pub hostile_model_id: i64,
    /// The tokenizer `VQ-16`, with one reconstruction evaluation.
    pub tokenizer_model_id: i64,
    pub run_id: i64,
    pub evaluations: i64,
}

/// Inserts `models` generator models (plus one tokenizer and the hostile model) with
/// `checkpoints` checkpoints each and one evaluation per checkpoint and guidance scale in
/// `cfg_scales`. FID falls with training and has its minimum near cfg 2.0 as in the paper.
/// `samples_dir`, if given, becomes the samples folder of the hostile model's evaluations.
pub async fn seed(
    pool: &PgPool,
    models: i64,
    checkpoints: i64,
    cfg_scales: &[f64],
    samples_dir: Option<&str>,
) -> Result<Seeded, sqlx::Error> {
    let sizes = ["B", "L", "XL", "XXL", "3B"];
    let params = [
        111_000_000_i64,
        343_000_000,
        775_000_000,
        1_400_000_000,
        3_100_000_000,
    ];
    let mut made = Vec::new();
    for i in 0..models {
        let k = (i as usize) % sizes.len();
        let name = format!("LlamaGen-{}-run{i}", sizes[k]);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO models (name, kind, architecture, size, task, params, image_size)
             VALUES ($1, 'generator', 'llamagen-gpt', $2, 'c2i', $3, 256) RETURNING id",
        )
        .bind(&name)
        .bind(sizes[k])
        .bind(params[k])
        .fetch_one(pool)
        .await?;
        made.push((id, name));
    }
    let hostile_model_id: i64 = sqlx::query_scalar(
        "INSERT INTO models (name, kind, architecture, size, task, params, image_size)
         VALUES ($1, 'generator', 'llamagen-gpt', 'B', 'c2i', 111000000, 256) RETURNING id",
    )
    .bind(HOSTILE_NAME)
    .fetch_one(pool)
    .await?;
    made.push((hostile_model_id, HOSTILE_NAME.to_string()));
    let tokenizer: i64 = sqlx::query_scalar(
        "INSERT INTO models (name, kind, architecture, size, params, image_size)
         VALUES ('VQ-16', 'tokenizer', 'vq-16', '16', 72000000, 256) RETURNING id",
    )
    .fetch_one(pool)
    .await?;

    // Checkpoints every 10k steps; the model's size shifts its curve down.
    sqlx::query(
        "INSERT INTO checkpoints (model_id, path, sha256, step, epoch, tokens_seen, train_loss)
         SELECT m.id, 'ckpt/' || m.id || '/' || s, encode(sha256((m.id || '/' || s)::bytea), 'hex'),
                s * 10000, s * 10000 * 256 / 1281167.0, s::bigint * 10000 * 256 * 256, 8.5 - ln(s + 1)
         FROM models m, generate_series(1, $1) s WHERE m.kind = 'generator'",
    )
    .bind(checkpoints)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO checkpoints (model_id, path, sha256, step)
         VALUES ($1, 'vq_ds16_c2i.pt', repeat('a', 64), 0)",
    )
    .bind(tokenizer)
    .execute(pool)
    .await?;

    let evaluations = sqlx::query(
        "INSERT INTO evaluations (checkpoint_id, benchmark, cfg_scale, top_k, image_size,
                                  num_samples, seed, config_sha256, status, finished_at,
                                  samples_path)
         SELECT c.id, 'imagenet256-c2i', cfg, 0, 256, 50000, 0, 'cfg' || cfg, 'succeeded',
                now() - (c.step || ' seconds')::interval,
                CASE WHEN c.model_id = $2 THEN $3 END
         FROM checkpoints c JOIN models m ON m.id = c.model_id, unnest($1::float8[]) cfg
         WHERE m.kind = 'generator'",
    )
    .bind(cfg_scales)
    .bind(hostile_model_id)
    .bind(samples_dir)
    .execute(pool)
    .await?
    .rows_affected() as i64;
    // FID = size term + training term + guidance term (minimum at cfg 2.0), with a little
    // per-row jitter so sorting is total; IS rises with guidance. FID and KID have intervals
    // of -3% / +4%.
    sqlx::query(
        "INSERT INTO metrics (evaluation_id, name, value, ci_low, ci_high)
         SELECT e.id, x.name, x.value,
                CASE WHEN x.name IN ('fid', 'kid') THEN x.value * 0.97 END,
                CASE WHEN x.name IN ('fid', 'kid') THEN x.value * 1.04 END
         FROM evaluations e JOIN checkpoints c ON c.id = e.checkpoint_id JOIN models m ON m.id = c.model_id,
         LATERAL (VALUES
            ('fid', 2.0 + 30.0 / ln(m.params) * 10.0 / sqrt(c.step / 10000.0)
                    + 3.0 * (e.cfg_scale - 2.0) ^ 2 + (e.id % 97) / 1000.0),
            ('sfid', 5.0 + 8.0 / sqrt(c.step / 10000.0) + (e.id % 89) / 1000.0),
            ('inception_score', 80.0 + 60.0 * e.cfg_scale + c.step / 10000.0),
            ('precision', least(0.5 + 0.1 * e.cfg_scale, 0.9)),
            ('recall', greatest(0.7 - 0.08 * e.cfg_scale, 0.3)),
            ('kid', 0.0004 + 0.002 / sqrt(c.step / 10000.0) + (e.id % 83) / 1e6),
            ('kid_std', 0.0002)) AS x(name, value)
         WHERE m.kind = 'generator'",
    )
    .execute(pool)
    .await?;
    let recon: i64 = sqlx::query_scalar(
        "INSERT INTO evaluations (checkpoint_id, benchmark, image_size, num_samples,
                                  config_sha256, status, finished_at)
         SELECT id, 'imagenet256-recon', 256, 50000, 'recon', 'succeeded', now()
         FROM checkpoints WHERE model_id = $1 RETURNING id",
    )
    .bind(tokenizer)
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "INSERT INTO metrics (evaluation_id, name, value) VALUES
         ($1, 'rfid', 2.19), ($1, 'psnr', 20.79), ($1, 'ssim', 0.675), ($1, 'codebook_usage', 0.97)",
    )
    .bind(recon)
    .execute(pool)
    .await?;

    // A training run per generator with a falling loss curve, its gradient norm, speed and
    // peak memory.
    sqlx::query(
        "WITH t AS (
            INSERT INTO training_runs (model_id, status, config, seed, global_batch)
            SELECT id, 'succeeded', '{}', 0, 256 FROM models WHERE kind = 'generator'
            RETURNING id, model_id)
         INSERT INTO training_metrics (training_run_id, step, name, value)
         SELECT t.id, s * 100, x.name, CASE x.name
             WHEN 'loss' THEN 9.7 * exp(-s / 300.0) + 6.0 + (s % 7) / 50.0
             WHEN 'grad_norm' THEN 0.4 + 2.0 * exp(-s / 100.0) + (s % 5) / 40.0
             WHEN 'memory_mib' THEN 50812.0 - (s % 3) * 64.0
             ELSE 228000.0 + (s % 11) * 500.0 END
         FROM t, generate_series(0, $1 * 100) s,
              (VALUES ('loss'), ('grad_norm'), ('tokens_per_s'), ('memory_mib')) x(name)",
    )
    .bind(checkpoints)
    .execute(pool)
    .await?;

    // A pipeline run whose ingest stage has finished, running and failed shards and a funnel.
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO pipeline_runs (pipeline, trigger, status, config, config_sha256)
         VALUES ('laion-coco-t2i', 'schedule', 'running', '{}', repeat('b', 64)) RETURNING id",
    )
    .fetch_one(pool)
    .await?;
    let stage: i64 = sqlx::query_scalar(
        "INSERT INTO stage_runs (run_id, stage, output_path) VALUES ($1, 'ingest', '/data/shards')
         RETURNING id",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "INSERT INTO shards (stage_run_id, shard_index, status, attempts, worker, lease_expires_at,
                             output_rows, failed_rows, error)
         SELECT $1, i,
                CASE WHEN i < 6 THEN 'succeeded' WHEN i = 6 THEN 'running'
                     WHEN i = 7 THEN 'failed' ELSE 'pending' END,
                CASE WHEN i < 8 THEN 1 ELSE 0 END,
                CASE WHEN i = 6 THEN 'node-1' END,
                CASE WHEN i = 6 THEN now() + interval '5 minutes' END,
                CASE WHEN i < 6 THEN 900 END, CASE WHEN i < 6 THEN 100 END,
                CASE WHEN i = 7 THEN $2 END
         FROM generate_series(0, 9) i",
    )
    .bind(stage)
    .bind(HOSTILE_CAPTION)
    .execute(pool)
    .await?;
    // A stage without shards (training) that recorded what it did, a hostile string among it.
    sqlx::query(
        "INSERT INTO stage_runs (run_id, stage, status, output_path, started_at, finished_at,
                                 counts)
         VALUES ($1, 'train', 'succeeded', '/data/checkpoints',
                 now() - interval '2 hours 5 minutes 10 seconds', now(),
                 jsonb_build_object('step', 42000, 'loss', 3.25, 'model', $2::text,
                                    'nested', jsonb_build_object('left', 'out')))",
    )
    .bind(run_id)
    .bind(HOSTILE_NAME)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO filter_funnel (stage_run_id, step, rule, threshold, rows_in, rows_dropped)
         VALUES ($1, 0, 'valid_url', NULL, 600000000, 2000000),
                ($1, 1, 'aesthetic', '>= 5.0', 598000000, 400000000),
                ($1, 2, 'watermark', '< 0.5', 198000000, 48000000),
                ($1, 3, 'similarity', '>= 0.28', 150000000, 100000000)",
    )
    .bind(stage)
    .execute(pool)
    .await?;
    Ok(Seeded {
        models: made,
        hostile_model_id,
        tokenizer_model_id: tokenizer,
        run_id,
        evaluations: evaluations + 1,
    })
}
