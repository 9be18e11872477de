//! Results onto the leaderboard: the model, the checkpoint (identified by its sha256) and
//! the evaluation with its whole configuration; the same configuration recorded again updates
//! its row instead of adding one.

use std::path::{Path, PathBuf};

/// Bumped whenever a metric's code changes its numbers, so results of the old code and the new
/// are different protocols. 2: the Frechet distance of sets of no more samples than
/// dimensions through their low-rank factor (it had square-rooted round-off of zero
/// eigenvalues), and webdataset references read in sample-key order (KID's subsets had
/// followed the order the downloads finished in).
pub const METRICS_IMPLEMENTATION: &str = "llamagen-evaluate 2: ADM evaluator FID/sFID/IS/precision/recall, torch-fidelity 0.4.0 KID, scikit-image PSNR/SSIM";

/// A reference set by content: what [`record`] files in `reference_sets`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceIdentity {
    pub path: PathBuf,
    /// sha256 of the npz, or [`crate::provenance::folder_sha256`] of a folder.
    pub sha256: String,
    pub num_images: Option<usize>,
    pub image_size: Option<usize>,
    /// How it was made: the format and the crop applied.
    pub made: serde_json::Value,
}

impl ReferenceIdentity {
    /// Hashes the reference at `path` (an npz or a folder) as it is read with `center_crop`.
    pub fn of(
        path: &Path,
        center_crop: Option<usize>,
        num_images: Option<usize>,
        image_size: Option<usize>,
    ) -> anyhow::Result<Self> {
        let (sha256, format) = if path.is_dir() {
            (crate::provenance::folder_sha256(path)?, "folder")
        } else {
            (crate::provenance::file_sha256(path)?.0, "npz")
        };
        Ok(Self {
            path: path.to_path_buf(),
            sha256,
            num_images,
            image_size: center_crop.or(image_size),
            made: serde_json::json!({
                "format": format,
                "center_crop": center_crop.map(|s| format!("ADM center_crop_arr {s}")),
            }),
        })
    }

    /// The identity of a reference set read by [`crate::image_sets::load_side`] with
    /// `center_crop` (which applies to folders only).
    pub fn of_side(
        path: &Path,
        center_crop: Option<usize>,
        side: &crate::image_sets::Side,
    ) -> anyhow::Result<Self> {
        Self::of(
            path,
            center_crop.filter(|_| path.is_dir()),
            side.features.as_ref().map(|f| f.pool.nrows()),
            None,
        )
    }

    /// The reference as each evaluation's sampling configuration records it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "path": self.path.display().to_string(), "sha256": self.sha256 })
    }

    /// `stem-sha256[..12]`: unique, and readable in a table.
    fn name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "reference".into());
        format!("{stem}-{}", &self.sha256[..12])
    }
}

/// What an evaluation was measured under, beyond the model and its sampling: the feature
/// extractor, the reference, how images reached the extractor, the sample count and the metric
/// code with its settings. Rows of different protocols are never ranked together.
#[derive(Debug, Clone)]
pub struct MeasurementProtocol<'a> {
    /// sha256 of the FID Inception weights.
    pub feature_extractor_sha256: &'a str,
    pub reference: &'a ReferenceIdentity,
    /// Resizes and crops on the way to the extractor.
    pub preprocessing: serde_json::Value,
    /// Metric settings beyond [`METRICS_IMPLEMENTATION`] (intervals, KID, SSIM convention).
    pub settings: serde_json::Value,
    pub num_samples: usize,
}

/// What an evaluation row says about the model, checkpoint and sampling that produced it.
pub struct Recording<'a> {
    /// "generator" or "tokenizer".
    pub kind: &'a str,
    pub architecture: &'a str,
    pub model: &'a str,
    pub size: Option<&'a str>,
    /// The model's parameters, when the measurement loaded it ([`llamagen_models::weights::parameter_count`]).
    pub params: Option<i64>,
    /// The model's architecture as training records it (`{"gpt": GptConfig}` or
    /// `{"vq": VqConfig}`), merged into the model's config.
    pub config: serde_json::Value,
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
    /// `None` records no protocol (a result whose measurement is unknown).
    pub protocol: Option<MeasurementProtocol<'a>>,
}

/// Stores the metrics in PostgreSQL; the same checkpoint, benchmark and configuration update
/// their existing evaluation. Returns the evaluation's id.
pub async fn record(
    r: &Recording<'_>,
    data_dir: &Path,
    metrics: &[llamagen_store::results::Metric],
    num_samples: usize,
) -> anyhow::Result<i64> {
    let store =
        llamagen_store::Store::open(&llamagen_store::StoreOptions::from_env(data_dir)).await?;
    let result = record_in(&store, r, metrics, num_samples).await;
    store.close().await?;
    result
}

/// [`record`] through a store already open (a sweep records each scale through one).
pub async fn record_in(
    store: &llamagen_store::Store,
    r: &Recording<'_>,
    metrics: &[llamagen_store::results::Metric],
    num_samples: usize,
) -> anyhow::Result<i64> {
    use llamagen_store::results::{self, NewCheckpoint, NewEvaluation, NewModel};

    let (sha256, bytes) = crate::provenance::file_sha256(r.checkpoint)?;
    let revision = crate::provenance::git_revision();
    let pool = store.pool();
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
            params: r.params,
            image_size: r.image_size,
            config: &r.config,
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
    let (reference_set_id, protocol_id) = match &r.protocol {
        Some(p) => {
            let (set, protocol) = record_protocol(pool, r.kind, p).await?;
            (Some(set), Some(protocol))
        }
        None => (None, None),
    };
    let evaluation = NewEvaluation {
        checkpoint_id,
        benchmark: r.benchmark,
        reference_set_id,
        protocol_id,
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
    };
    let id = results::begin_evaluation(pool, &evaluation).await?;
    // Absolute, so the dashboard finds them whatever its working directory.
    let samples = r
        .samples_path
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()))
        .map(|p| p.display().to_string());
    results::finish_evaluation(pool, id, metrics, samples.as_deref()).await?;
    Ok(id)
}

/// Files a reference set made from another (`llamagen evaluate --save-stats`), so the
/// statistics file is known by content like the set it summarises.
pub async fn file_reference_set(
    reference: &ReferenceIdentity,
    data_dir: &Path,
) -> anyhow::Result<i64> {
    let store =
        llamagen_store::Store::open(&llamagen_store::StoreOptions::from_env(data_dir)).await?;
    let result = upsert_reference(store.pool(), reference).await;
    store.close().await?;
    result
}

async fn upsert_reference(
    pool: &sqlx::PgPool,
    reference: &ReferenceIdentity,
) -> anyhow::Result<i64> {
    let to_i32 = |n: usize| i32::try_from(n).ok();
    Ok(llamagen_store::results::upsert_reference_set(
        pool,
        &llamagen_store::results::NewReferenceSet {
            name: &reference.name(),
            path: &reference.path.display().to_string(),
            sha256: &reference.sha256,
            num_images: reference.num_images.and_then(to_i32),
            image_size: reference.image_size.and_then(to_i32),
            made: &reference.made,
        },
    )
    .await?)
}

/// Files the reference set and the protocol; returns their ids.
async fn record_protocol(
    pool: &sqlx::PgPool,
    kind: &str,
    p: &MeasurementProtocol<'_>,
) -> anyhow::Result<(i64, i64)> {
    use llamagen_store::results::{self, NewProtocol};
    let to_i32 = |n: usize| i32::try_from(n).ok();
    let reference = p.reference;
    let set = upsert_reference(pool, reference).await?;
    let extractor = p.feature_extractor_sha256;
    let definition = serde_json::json!({
        "kind": kind,
        "feature_extractor": { "name": "FID Inception (pytorch-fid pt_inception-2015-12-05)", "sha256": extractor },
        "reference": { "sha256": reference.sha256, "made": reference.made },
        "preprocessing": p.preprocessing,
        "num_samples": p.num_samples,
        "implementation": METRICS_IMPLEMENTATION,
        "settings": p.settings,
    });
    let name = format!(
        "{kind}: Inception {} · reference {} ({}) · {} samples",
        &extractor[..8],
        &reference.sha256[..8],
        reference
            .num_images
            .map_or_else(|| "statistics".to_string(), |n| format!("{n} images")),
        p.num_samples
    );
    let protocol = results::upsert_protocol(
        pool,
        &NewProtocol {
            kind,
            name: &name,
            feature_extractor_sha256: Some(extractor),
            reference_set_id: Some(set),
            num_samples: to_i32(p.num_samples),
            definition: &definition,
        },
    )
    .await?;
    Ok((set, protocol))
}
