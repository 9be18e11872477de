//! Results onto the leaderboard: the model, the checkpoint (identified by its sha256) and
//! the evaluation with its whole configuration; the same configuration recorded again updates
//! its row instead of adding one.

use std::path::Path;

/// What an evaluation row says about the model, checkpoint and sampling that produced it.
pub struct Recording<'a> {
    /// "generator" or "tokenizer".
    pub kind: &'a str,
    pub architecture: &'a str,
    pub model: &'a str,
    pub size: Option<&'a str>,
    /// The weights file, hashed to identify the checkpoint.
    pub checkpoint: &'a Path,
    pub step: i64,
    pub benchmark: &'a str,
    pub cfg_scale: Option<f64>,
    pub cfg_interval: Option<i32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f64>,
    pub temperature: Option<f64>,
    pub image_size: Option<i32>,
    pub eval_image_size: Option<i32>,
    pub seed: Option<i64>,
    pub precision: Option<&'a str>,
    /// Everything else that shapes the result (reference set, full sampler settings).
    pub extra: Option<serde_json::Value>,
    /// The folder of the evaluated samples' PNGs, for the dashboard's sample grid.
    pub samples_path: Option<&'a Path>,
}

/// Stores the metrics in PostgreSQL; the same checkpoint, benchmark and configuration update
/// their existing evaluation. Returns the evaluation's id.
pub async fn record(
    r: &Recording<'_>,
    data_dir: &Path,
    metrics: &[(&str, f64)],
    num_samples: usize,
) -> anyhow::Result<i64> {
    use llamagen_store::results::{self, NewCheckpoint, NewEvaluation, NewModel};

    let (sha256, bytes) = crate::provenance::file_sha256(r.checkpoint)?;
    let revision = crate::provenance::git_revision();

    let store =
        llamagen_store::Store::open(&llamagen_store::StoreOptions::from_env(data_dir)).await?;
    let result = async {
        let pool = store.pool();
        let config = serde_json::json!({});
        let model_id = results::upsert_model(
            pool,
            &NewModel {
                name: r.model,
                kind: r.kind,
                architecture: r.architecture,
                size: r.size,
                task: (r.kind == "generator").then_some(if r.benchmark.contains("t2i") {
                    "t2i"
                } else {
                    "c2i"
                }),
                params: None,
                image_size: r.image_size,
                config: &config,
            },
        )
        .await?;
        let path = r.checkpoint.display().to_string();
        let checkpoint_id = results::register_checkpoint(
            pool,
            &NewCheckpoint {
                model_id,
                path: &path,
                sha256: &sha256,
                bytes: Some(bytes as i64),
                step: r.step,
                ..Default::default()
            },
        )
        .await?;
        let evaluation = NewEvaluation {
            checkpoint_id,
            benchmark: r.benchmark,
            cfg_scale: r.cfg_scale,
            cfg_interval: r.cfg_interval,
            top_k: r.top_k,
            top_p: r.top_p,
            temperature: r.temperature,
            image_size: r.image_size,
            eval_image_size: r.eval_image_size,
            num_samples: Some(num_samples as i32),
            seed: r.seed,
            precision: r.precision,
            extra: r.extra.as_ref(),
            git_revision: revision.as_deref(),
            ..Default::default()
        };
        let id = results::begin_evaluation(pool, &evaluation).await?;
        // Absolute, so the dashboard finds them whatever its working directory.
        let samples = r
            .samples_path
            .map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()))
            .map(|p| p.display().to_string());
        results::finish_evaluation(pool, id, metrics, samples.as_deref()).await?;
        anyhow::Ok(id)
    }
    .await;
    store.close().await?;
    result
}
