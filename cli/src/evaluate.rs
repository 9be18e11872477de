//! `llamagen evaluate REFERENCE SAMPLES`: the ADM evaluator's job. Both sides are an ADM-style
//! npz (`arr_0` images and/or `mu`/`sigma` statistics) or a folder of PNG/JPEG images; the
//! output is FID, sFID, Inception Score, precision and recall. `--save-stats` writes a side's
//! statistics as a reference npz for later runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use llamagen_evaluate::frechet::{Statistics, frechet_distance};
use llamagen_evaluate::inception::{Inception, InceptionFeatures};
use llamagen_evaluate::inception_score::{ADM_SPLIT_SIZE, inception_score};
use llamagen_evaluate::npz::{read_reference, write_reference};
use llamagen_evaluate::precision_recall::{ADM_K, precision_recall};
use ndarray::{Array3, Array4, Axis};

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Reference set: ADM npz (arr_0 and/or mu, sigma) or a folder of images.
    pub reference: PathBuf,
    /// Generated set: ADM npz with arr_0, or a folder of images.
    pub samples: PathBuf,
    /// The FID Inception network exported by scripts/export_inception.py.
    #[arg(long, default_value = "weights/pt_inception-2015-12-05.onnx")]
    pub inception: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// ONNX Runtime threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Write the reference side's statistics (mu, sigma, mu_s, sigma_s) to this npz.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bring the images of a folder to SIZE x SIZE first, as ADM's and LlamaGen's
    /// center_crop_arr does (Pillow BOX halvings, BICUBIC resize, centre crop); without it a
    /// folder's images must already share one size.
    #[arg(long, value_name = "SIZE")]
    pub center_crop: Option<usize>,
    #[command(flatten)]
    pub record: RecordArgs,
}

/// Where the result goes on the leaderboard (`--record`): the model and checkpoint that made
/// the samples and how they were sampled. Re-recording the same configuration updates its row.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Store the metrics in PostgreSQL (needs --model and --checkpoint).
    #[arg(long, requires_all = ["model", "checkpoint"])]
    pub record: bool,
    /// Model name, e.g. LlamaGen-B.
    #[arg(long)]
    pub model: Option<String>,
    /// GPT size (B, L, XL, XXL, XXXL, 1B, 3B, 7B).
    #[arg(long)]
    pub size: Option<String>,
    /// The checkpoint file that generated the samples (hashed to identify it).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Training step of the checkpoint.
    #[arg(long, default_value_t = 0)]
    pub step: i64,
    #[arg(long, default_value = "imagenet256-c2i")]
    pub benchmark: String,
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    #[arg(long)]
    pub top_k: Option<i32>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub image_size: Option<i32>,
    #[arg(long)]
    pub seed: Option<i64>,
}

/// One side of the comparison.
pub(crate) struct Side {
    pub features: Option<InceptionFeatures>,
    pub pool: Statistics,
    pub spatial: Option<Statistics>,
}

pub async fn run(args: &EvaluateArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    if !args.inception.exists() {
        bail!(
            "no Inception network at {}: export it with scripts/export_inception.py (see its --help)",
            args.inception.display()
        );
    }
    let mut net = Inception::open(&args.inception, args.threads, args.batch_size)?;
    let reference = load_side(&args.reference, &mut net, args.center_crop)
        .with_context(|| format!("reference {}", args.reference.display()))?;
    let samples = load_side(&args.samples, &mut net, args.center_crop)
        .with_context(|| format!("samples {}", args.samples.display()))?;

    let metrics = generation_metrics(&reference, &samples)?;
    if let Some(path) = &args.save_stats {
        write_reference(
            path,
            None,
            Some(&reference.pool),
            reference.spatial.as_ref(),
        )?;
    }
    if args.record.record {
        let r = &args.record;
        let (Some(model), Some(checkpoint)) = (&r.model, &r.checkpoint) else {
            bail!("--record needs --model and --checkpoint");
        };
        let recording = Recording {
            kind: "generator",
            architecture: "llamagen-gpt",
            model,
            size: r.size.as_deref(),
            checkpoint,
            step: r.step,
            benchmark: &r.benchmark,
            cfg_scale: r.cfg_scale,
            cfg_interval: None,
            top_k: r.top_k,
            top_p: r.top_p,
            temperature: r.temperature,
            image_size: r.image_size,
            eval_image_size: None,
            seed: r.seed,
            precision: None,
            extra: None,
            samples_path: args.samples.is_dir().then_some(args.samples.as_path()),
        };
        let count = samples.features.as_ref().map_or(0, |f| f.pool.nrows());
        let id = record(&recording, data_dir, &metrics, count).await?;
        eprintln!("recorded as evaluation #{id}");
    }
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = metrics
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        for (name, value) in &metrics {
            println!("{name:<16} {value:.6}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// FID, sFID (when both sides have spatial statistics), IS, and precision/recall (when the
/// reference has images), as the ADM evaluator computes them.
pub(crate) fn generation_metrics(
    reference: &Side,
    samples: &Side,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let Some(sample_features) = &samples.features else {
        bail!("the generated set must hold images (arr_0 or a folder), not only statistics");
    };
    let mut metrics: Vec<(&'static str, f64)> = Vec::new();
    let is = inception_score(sample_features.logits.view(), ADM_SPLIT_SIZE)?;
    metrics.push(("inception_score", is.mean));
    metrics.push(("fid", frechet_distance(&reference.pool, &samples.pool)?));
    if let (Some(r), Some(s)) = (&reference.spatial, &samples.spatial) {
        metrics.push(("sfid", frechet_distance(r, s)?));
    }
    if let Some(ref_features) = &reference.features {
        let pr = precision_recall(ref_features.pool.view(), sample_features.pool.view(), ADM_K)?;
        metrics.push(("precision", pr.precision));
        metrics.push(("recall", pr.recall));
    }
    Ok(metrics)
}

/// Images (npz arr_0 or a folder) through the Inception, or an npz's stored statistics.
/// `center_crop` applies to folders (see [`read_folder`]).
pub(crate) fn load_side(
    path: &Path,
    net: &mut Inception,
    center_crop: Option<usize>,
) -> anyhow::Result<Side> {
    let images = if path.is_dir() {
        Some(read_folder(path, center_crop)?)
    } else {
        let batch = read_reference(path)?;
        if batch.images.is_none() {
            let pool = batch.pool.context("npz without images has no mu/sigma")?;
            return Ok(Side {
                features: None,
                pool,
                spatial: batch.spatial,
            });
        }
        batch.images
    };
    let images = images.context("no images")?;
    if images.dim().0 < 2 {
        bail!("need at least 2 images, found {}", images.dim().0);
    }
    let features = net.features(images.view())?;
    let pool = Statistics::from_features(features.pool.view())?;
    let spatial = Some(Statistics::from_features(features.spatial.view())?);
    Ok(Side {
        features: Some(features),
        pool,
        spatial,
    })
}

/// PNG and JPEG files of a folder in name order, then the images of its webdataset shards
/// (`*.tar`, as `llamagen ingest` writes them) in shard and member order, as one batch: each
/// center-cropped to `center_crop` when given (ADM's preprocessing), else all must have one size.
pub(crate) fn read_folder(dir: &Path, center_crop: Option<usize>) -> anyhow::Result<Array4<u8>> {
    let extension = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .unwrap_or_default()
    };
    let is_image = |e: &str| matches!(e, "png" | "jpg" | "jpeg");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut images: Vec<Array3<u8>> = Vec::new();
    let mut first_label = String::new();
    let mut add = |label: String, img: image::DynamicImage| -> anyhow::Result<()> {
        let img = img.to_rgb8();
        let (w, h) = img.dimensions();
        let mut img = Array3::from_shape_vec((h as usize, w as usize, 3), img.into_raw())?;
        if let Some(size) = center_crop {
            img = llamagen_evaluate::center_crop::center_crop(img.view(), size)
                .with_context(|| format!("center-cropping {label}"))?;
        }
        match images.first() {
            Some(first) if first.dim() != img.dim() => bail!(
                "{label} is {w}x{h} but {first_label} is {}x{}: resize the set to one size first, or pass --center-crop SIZE",
                first.dim().1,
                first.dim().0
            ),
            Some(_) => {}
            None => first_label = label,
        }
        images.push(img);
        Ok(())
    };
    for file in files.iter().filter(|f| is_image(&extension(f))) {
        let img = image::open(file).with_context(|| format!("decoding {}", file.display()))?;
        add(file.display().to_string(), img)?;
    }
    for tar in files.iter().filter(|f| extension(f) == "tar") {
        for (name, bytes) in llamagen_shards::webdataset::read_members(tar)? {
            if is_image(&extension(Path::new(&name))) {
                let label = format!("{}:{name}", tar.display());
                let img =
                    image::load_from_memory(&bytes).with_context(|| format!("decoding {label}"))?;
                add(label, img)?;
            }
        }
    }
    let views: Vec<_> = images
        .iter()
        .map(|i| i.view().insert_axis(Axis(0)))
        .collect();
    if views.is_empty() {
        bail!(
            "{} holds no PNG or JPEG images and no webdataset shards",
            dir.display()
        );
    }
    Ok(ndarray::concatenate(Axis(0), &views)?)
}

/// What an evaluation row says about the model, checkpoint and sampling that produced it.
pub(crate) struct Recording<'a> {
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
pub(crate) async fn record(
    r: &Recording<'_>,
    data_dir: &Path,
    metrics: &[(&str, f64)],
    num_samples: usize,
) -> anyhow::Result<i64> {
    use llamagen_store::results::{self, NewCheckpoint, NewEvaluation, NewModel};

    let (sha256, bytes) = llamagen_cli::provenance::file_sha256(r.checkpoint)?;
    let revision = llamagen_cli::provenance::git_revision();

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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), format)
            .unwrap();
        out
    }

    #[test]
    fn folders_and_their_webdataset_shards_read_as_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.png"),
            encoded(40, 50, image::ImageFormat::Png),
        )
        .unwrap();
        let mut tar =
            llamagen_shards::webdataset::TarWriter::create(&dir.path().join("00000.tar")).unwrap();
        for key in ["0000", "0001"] {
            tar.append(key, "jpg", &encoded(48, 48, image::ImageFormat::Jpeg))
                .unwrap();
            tar.append(key, "txt", b"a caption").unwrap();
        }
        tar.finish().unwrap();
        let batch = read_folder(dir.path(), Some(32)).unwrap();
        assert_eq!(batch.dim(), (3, 32, 32, 3));
        let err = read_folder(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("00000.tar:0000.jpg is 48x48"), "{err}");
    }
}
