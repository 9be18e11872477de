//! The checkpoint evaluator: every checkpoint a protocol selects gets benchmarked once.
//!
//! An evaluator queues the checkpoints of its models that lack a row for the protocol
//! (`store::checkpoint_queue`), claims one with a lease, samples it over the guidance sweep,
//! measures the samples against the reference set, records one leaderboard row per scale and
//! marks the checkpoint done; then it claims the next. Any number of evaluators, on any
//! machines that reach the same PostgreSQL, share the queue: a claim is exclusive, an evaluator
//! that dies stops renewing and its checkpoint is taken over when the lease runs out (the
//! sample folder it left is resumed, not redone), and one that learns its lease was lost stops
//! sampling after the batch in hand. With `follow` the evaluator keeps polling, so checkpoints
//! are benchmarked while training is still writing them; without it, it returns once the queue
//! is drained (the pipeline's evaluate stage).
//!
//! A tokenizer's checkpoint (one `llamagen train vq` registered: its configuration holds `vq`
//! and no `gpt`) gets the tokenizer benchmark instead: the protocol's reference images through
//! the tokenizer, rFID, PSNR, SSIM and codebook usage, one leaderboard row per checkpoint, so
//! the model page charts them against step.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use llamagen_store::checkpoint_queue::{
    self as queue, CheckpointLease, SelectedCheckpoint, Selection,
};
use llamagen_store::{Store, StoreError, StoreOptions};

use crate::benchmark::{self, EvaluationArgs, GeneratorArgs, KeepSamples, Measurer, ScaleResult};
use crate::config::{PipelineConfig, Task};
use crate::provenance::file_sha256;
use crate::sample::SampleArgs;
use crate::signals::StopSignal;
use crate::text_to_image::TextToImageArgs;

/// Attempts per checkpoint before it is failed for good.
const MAX_ATTEMPTS: i32 = 3;

/// What makes evaluations comparable, and which checkpoints it applies to.
#[derive(Debug, Clone)]
pub struct Protocol {
    pub benchmark: String,
    /// ADM npz, or a folder of images or webdataset shards.
    pub reference: PathBuf,
    /// Center-crop a reference folder's images to this side first.
    pub center_crop: Option<usize>,
    pub inception: PathBuf,
    /// The metrics recorded (a subset of `config::GENERATOR_METRICS`).
    pub metrics: Vec<String>,
    pub cfg_scales: Vec<f64>,
    /// The sampler's settings; `gpt_ckpt` and `gpt_config` are set per checkpoint, and `out`
    /// is the folder that holds every checkpoint's sample folders.
    pub sample: SampleArgs,
    /// Model names whose checkpoints are evaluated.
    pub models: Vec<String>,
    /// See `store::checkpoint_queue::Selection::every_steps`.
    pub checkpoint_every: i64,
    pub intervals: crate::image_sets::IntervalArgs,
    /// Text-to-image: CLIP and the protocol's evaluation resolution.
    pub text_to_image: TextToImageArgs,
    /// What each scale's sample folder keeps once the checkpoint's result is recorded.
    pub keep_samples: KeepSamples,
}

impl Protocol {
    /// The protocol of a pipeline config: `[evaluate]` against `[sample]`'s settings, the
    /// tokenizer of `[encode]`, the architecture of `[model]`; paths resolved under `data_dir`.
    pub fn from_config(
        config: &PipelineConfig,
        data_dir: &std::path::Path,
        device: &str,
    ) -> anyhow::Result<Self> {
        let (ev, s, m) = (&config.evaluate, &config.sample, &config.model);
        let under = |p: &str| PipelineConfig::resolve(data_dir, p);
        let text = m.task == Task::T2i;
        let reference = under(&ev.reference);
        let sample = SampleArgs::from_config(config, data_dir, device)?;
        Ok(Protocol {
            benchmark: ev.benchmark.clone(),
            center_crop: (!text && reference.is_dir()).then_some(ev.eval_image_size as usize),
            reference,
            inception: under(&ev.inception_model),
            metrics: ev.metrics.clone(),
            cfg_scales: if ev.cfg_sweep.is_empty() {
                vec![s.cfg_scale]
            } else {
                ev.cfg_sweep.clone()
            },
            sample,
            models: if ev.models.is_empty() {
                vec![config.trained_model_name()]
            } else {
                ev.models.clone()
            },
            checkpoint_every: i64::try_from(ev.checkpoint_every)
                .context("evaluate.checkpoint_every is too large")?,
            intervals: crate::image_sets::IntervalArgs {
                interval_resamples: ev.interval_resamples as usize,
                interval_blocks: ev.interval_blocks as usize,
                interval_seed: ev.interval_seed,
            },
            text_to_image: TextToImageArgs {
                clip: text.then(|| under(&ev.clip_model)),
                eval_resolution: ev.eval_image_size as usize,
            },
            keep_samples: ev.keep_samples,
        })
    }

    /// What identifies the protocol: the files by content, the settings by value. Paths of
    /// the sample folders, batch sizes and devices do not change results and are left out.
    pub fn identity(&self) -> anyhow::Result<serde_json::Value> {
        let hash = |p: &std::path::Path| -> anyhow::Result<serde_json::Value> {
            Ok(if p.is_file() {
                serde_json::json!(file_sha256(p)?.0)
            } else {
                serde_json::json!(p.display().to_string())
            })
        };
        let s = &self.sample;
        if !self.inception.is_file() {
            bail!(
                "no Inception network at {}: export it with scripts/export_inception.py (evaluate.inception_model)",
                self.inception.display()
            );
        }
        if !self.reference.exists() {
            bail!(
                "no reference set at {} (evaluate.reference)",
                self.reference.display()
            );
        }
        let mut identity = serde_json::json!({
            "benchmark": self.benchmark,
            "reference": hash(&self.reference)?,
            "center_crop": self.center_crop,
            "inception": hash(&self.inception)?,
            "metrics": self.metrics,
            "metric_settings": crate::image_sets::generator_metric_settings(&self.intervals),
            "cfg_scales": self.cfg_scales,
            "vq": hash(&s.vq.vq_ckpt)?,
            "vq_config": s.vq.config()?,
            "image_size": s.image_size,
            "image_size_eval": s.image_size_eval,
            "prompts": s.prompts.as_deref().map(hash).transpose()?,
            "t5": s.t5.as_ref().map(|t| t.display().to_string()),
            "text_to_image": s
                .prompts
                .is_some()
                .then(|| self.text_to_image.protocol_json())
                .transpose()?,
            "num_samples": s.num_samples,
            "cfg_interval": s.cfg_interval,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "temperature": s.temperature,
            "seed": s.seed,
            "precision": s.precision,
        });
        // Only when on, so that protocols recorded before speculative decoding keep their
        // identity.
        if s.jacobi_window > 0 {
            identity["jacobi_window"] = serde_json::json!(s.jacobi_window);
        }
        Ok(identity)
    }
}

/// How an evaluator runs.
#[derive(Clone)]
pub struct EvaluatorOptions {
    /// Keep polling for new checkpoints instead of returning when the queue is drained.
    pub follow: bool,
    pub poll: Duration,
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease: Duration,
    pub max_checkpoints: Option<u64>,
    /// cpu, cuda or auto.
    pub device: String,
    /// Stop after the checkpoint in hand (its sampling is cancelled and the claim released).
    pub stop: Option<StopSignal>,
}

impl EvaluatorOptions {
    /// Drain the queue once on `device`, no signal handling: the pipeline's evaluate stage.
    pub fn drain(device: &str) -> Self {
        Self {
            follow: false,
            poll: Duration::from_secs(30),
            lease: Duration::from_secs(300),
            max_checkpoints: None,
            device: device.to_string(),
            stop: None,
        }
    }
}

/// What an evaluator did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EvaluatorSummary {
    pub protocol_sha256: String,
    pub worker: String,
    /// Checkpoints this evaluator benchmarked.
    pub evaluated: u64,
    /// Of them, those that failed (retried by a later claim while attempts remain).
    pub failed: u64,
    /// Leaderboard rows written.
    pub evaluations: Vec<i64>,
    /// Checkpoints failed for good under this protocol, by any evaluator.
    pub failed_for_good: i64,
    /// Stopped by a signal before the queue was drained.
    pub stopped: bool,
}

impl std::fmt::Display for EvaluatorSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "evaluator {}: {} checkpoint(s) evaluated ({} failed), {} leaderboard row(s); protocol {}",
            self.worker,
            self.evaluated,
            self.failed,
            self.evaluations.len(),
            &self.protocol_sha256[..12.min(self.protocol_sha256.len())]
        )?;
        if self.failed_for_good > 0 {
            write!(
                f,
                "; {} checkpoint(s) failed for good",
                self.failed_for_good
            )?;
        }
        if self.stopped {
            write!(f, "; stopped by signal")?;
        }
        Ok(())
    }
}

/// [`evaluate`] with the protocol of a pipeline config.
pub async fn run(
    config: &PipelineConfig,
    data_dir: &std::path::Path,
    options: &EvaluatorOptions,
) -> anyhow::Result<EvaluatorSummary> {
    let protocol = Protocol::from_config(config, data_dir, &options.device)?;
    evaluate(&protocol, data_dir, options).await
}

/// The pipeline's sample stage: every checkpoint the protocol selects now, sampled over the
/// sweep into the folders the evaluator reads (finished images are kept, so the evaluate stage
/// that follows only measures). Returns (checkpoints, images made).
pub async fn sample_selected(
    config: &PipelineConfig,
    data_dir: &std::path::Path,
    device: &str,
) -> anyhow::Result<(usize, u64)> {
    let protocol = Protocol::from_config(config, data_dir, device)?;
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let selection = Selection {
        models: &protocol.models,
        every_steps: protocol.checkpoint_every,
    };
    let picked = queue::selected(store.pool(), &selection).await;
    store.close().await?;
    let picked = picked?;
    let mut made = 0;
    for checkpoint in &picked {
        let args = generator_args(&protocol, checkpoint)?;
        made += tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let (mut made, mut models) = (0, None);
            for s in benchmark::scale_settings(&args)? {
                made += benchmark::sample_scale(&s, None, &mut models)?.made;
            }
            Ok(made)
        })
        .await??;
        tracing::info!("{} step {}: sampled", checkpoint.model, checkpoint.step);
    }
    Ok((picked.len(), made))
}

/// Claims and benchmarks checkpoints of the protocol until the queue is drained (or, with
/// `follow`, until stopped).
pub async fn evaluate(
    protocol: &Protocol,
    data_dir: &std::path::Path,
    options: &EvaluatorOptions,
) -> anyhow::Result<EvaluatorSummary> {
    let identity = protocol.identity()?;
    let sha = llamagen_store::runs::config_sha256(&identity);
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let worker = crate::shard_worker::worker_name();
    let mut summary = EvaluatorSummary {
        protocol_sha256: sha.clone(),
        worker: worker.clone(),
        ..Default::default()
    };
    let result = claim_loop(protocol, &identity, &store, data_dir, options, &mut summary).await;
    if result.is_ok() {
        summary.failed_for_good = queue::progress(store.pool(), &sha).await?.failed;
    }
    store.close().await?;
    result.map(|()| summary)
}

async fn claim_loop(
    protocol: &Protocol,
    identity: &serde_json::Value,
    store: &Store,
    data_dir: &std::path::Path,
    options: &EvaluatorOptions,
    summary: &mut EvaluatorSummary,
) -> anyhow::Result<()> {
    let pool = store.pool();
    let sha = summary.protocol_sha256.clone();
    let selection = Selection {
        models: &protocol.models,
        every_steps: protocol.checkpoint_every,
    };
    let stopping = || options.stop.as_ref().is_some_and(StopSignal::requested);
    let mut measurer: Option<Measurer> = None;
    while options
        .max_checkpoints
        .is_none_or(|max| summary.evaluated < max)
        && !stopping()
    {
        let added = queue::enqueue(pool, &sha, identity, &selection, MAX_ATTEMPTS).await?;
        if added > 0 {
            tracing::info!("{added} checkpoint(s) queued for {}", protocol.benchmark);
        }
        let Some(lease) = queue::claim(pool, &sha, &summary.worker, options.lease).await? else {
            if !options.follow {
                break;
            }
            match &options.stop {
                Some(stop) => tokio::select! {
                    () = tokio::time::sleep(options.poll) => {}
                    () = stop.wait() => {}
                },
                None => tokio::time::sleep(options.poll).await,
            }
            continue;
        };
        let checkpoint = &lease.checkpoint;
        tracing::info!(
            "evaluating {} step {} ({})",
            checkpoint.model,
            checkpoint.step,
            checkpoint.path
        );
        if is_tokenizer(checkpoint) {
            summary.evaluated += 1;
            match benchmark_tokenizer(protocol, &lease, pool, options, data_dir).await {
                Ok(id) => {
                    summary.evaluations.push(id);
                    match queue::complete(pool, &lease, &[id]).await {
                        Ok(()) | Err(StoreError::CheckpointLeaseLost { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => {
                    summary.failed += 1;
                    let error = format!("{e:#}");
                    tracing::warn!("{} step {}: {error}", checkpoint.model, checkpoint.step);
                    match queue::fail(pool, &lease, &error).await {
                        Ok(_) | Err(StoreError::CheckpointLeaseLost { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            continue;
        }
        let m = match measurer.take() {
            Some(m) => m,
            None => {
                let e = evaluation_args(protocol, checkpoint);
                let text = protocol.sample.prompts.is_some();
                let samples_out = protocol.sample.out.clone();
                let device = protocol.sample.device.clone();
                let open = tokio::task::spawn_blocking(move || {
                    Measurer::open(&e, text, &samples_out, &device)
                })
                .await?;
                match open {
                    Ok(m) => m,
                    Err(e) => {
                        // Nothing can be measured without the reference: give the claim back.
                        queue::release(pool, &lease).await?;
                        return Err(e);
                    }
                }
            }
        };
        let reference_set = m.reference_set.clone();
        let (m, outcome) = benchmark_checkpoint(protocol, &lease, m, pool, options).await;
        measurer = m;
        summary.evaluated += 1;
        match outcome {
            Outcome::Measured(args, results) => {
                let recorded = benchmark::record(&args, &results, &reference_set, data_dir).await;
                let ids = recorded.ids;
                for (r, id) in results.iter().zip(&ids) {
                    tracing::info!(
                        "{} step {} cfg {}: FID {:.4} (evaluation #{id})",
                        checkpoint.model,
                        checkpoint.step,
                        r.cfg_scale,
                        r.value("fid")
                    );
                }
                // The scales above stay recorded; the samples and their features are kept, so
                // whoever claims the checkpoint next measures nothing again.
                recorded.outcome?;
                summary.evaluations.extend(&ids);
                match queue::complete(pool, &lease, &ids).await {
                    Ok(()) | Err(StoreError::CheckpointLeaseLost { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                benchmark::clear_samples(&results, args.keep_samples);
            }
            Outcome::Stopped => {
                summary.evaluated -= 1;
                summary.stopped = true;
                // Taken over already if the lease was lost; otherwise hand it back.
                match queue::release(pool, &lease).await {
                    Ok(()) | Err(StoreError::CheckpointLeaseLost { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                break;
            }
            Outcome::Failed(error) => {
                summary.failed += 1;
                tracing::warn!("{} step {}: {error}", checkpoint.model, checkpoint.step);
                match queue::fail(pool, &lease, &error).await {
                    Ok(_) | Err(StoreError::CheckpointLeaseLost { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    summary.stopped |= stopping();
    Ok(())
}

enum Outcome {
    Measured(Box<GeneratorArgs>, Vec<ScaleResult>),
    Stopped,
    Failed(String),
}

fn evaluation_args(protocol: &Protocol, checkpoint: &SelectedCheckpoint) -> EvaluationArgs {
    EvaluationArgs {
        reference: protocol.reference.clone(),
        inception: protocol.inception.clone(),
        model: checkpoint.model.clone(),
        step: checkpoint.step,
        benchmark: protocol.benchmark.clone(),
        center_crop: protocol.center_crop,
        eval_batch_size: 32,
        threads: 0,
        no_record: false,
        json: false,
        intervals: protocol.intervals,
        text_to_image: protocol.text_to_image.clone(),
    }
}

/// Samples and measures one claimed checkpoint off the async threads while a task renews the
/// claim; a lost lease or a stop request cancels the sampling after the batch in hand.
async fn benchmark_checkpoint(
    protocol: &Protocol,
    lease: &CheckpointLease,
    m: Measurer,
    pool: &sqlx::PgPool,
    options: &EvaluatorOptions,
) -> (Option<Measurer>, Outcome) {
    let args = match generator_args(protocol, &lease.checkpoint) {
        Ok(args) => args,
        Err(e) => return (Some(m), Outcome::Failed(format!("{e:#}"))),
    };
    let cancel = args.sample.cancel.clone().unwrap_or_default();
    let lost = Arc::new(AtomicBool::new(false));
    let renewer = spawn_renewer(pool, lease, options, cancel.clone(), lost.clone());
    let joined = tokio::task::spawn_blocking(move || {
        let mut m = m;
        let result = benchmark::measure(&args, &mut m);
        (m, args, result)
    })
    .await;
    renewer.abort();
    let (m, args, result) = match joined {
        Ok(parts) => parts,
        Err(e) => {
            return (
                None,
                Outcome::Failed(format!("the sampling thread died: {e}")),
            );
        }
    };
    let outcome = match result {
        _ if lost.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) => Outcome::Stopped,
        Ok(mut results) => {
            for r in &mut results {
                // A metric's companions (kid_std) come with it.
                r.metrics.retain(|m| {
                    let family = m.name.strip_suffix("_std").unwrap_or(&m.name);
                    protocol.metrics.iter().any(|k| k == family)
                });
            }
            Outcome::Measured(Box::new(args), results)
        }
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    (Some(m), outcome)
}

/// Renews `lease` every third of a lease until aborted; sets `cancel` on a stop request and
/// `lost` (and `cancel`) when another evaluator has taken the checkpoint over.
fn spawn_renewer(
    pool: &sqlx::PgPool,
    lease: &CheckpointLease,
    options: &EvaluatorOptions,
    cancel: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (pool, lease) = (pool.clone(), lease.clone());
    let every = options.lease / 3;
    let lease_time = options.lease;
    let stop = options.stop.clone();
    tokio::spawn(async move {
        loop {
            let stop_now = async {
                match &stop {
                    Some(s) => s.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop_now => {
                    cancel.store(true, Ordering::Relaxed);
                    return;
                }
            }
            match queue::renew(&pool, &lease, lease_time).await {
                Ok(_) => {}
                Err(StoreError::CheckpointLeaseLost { .. }) => {
                    tracing::warn!(
                        "{}: another evaluator took this checkpoint over; stopping",
                        lease.checkpoint.path
                    );
                    lost.store(true, Ordering::Relaxed);
                    cancel.store(true, Ordering::Relaxed);
                    return;
                }
                // A passing database error: the next renewal may get through before the lease
                // runs out.
                Err(e) => tracing::warn!("renewing the claim on {}: {e}", lease.checkpoint.path),
            }
        }
    })
}

/// Whether a queued checkpoint is a tokenizer's (registered by `llamagen train vq`).
fn is_tokenizer(checkpoint: &SelectedCheckpoint) -> bool {
    let has = |key: &str| checkpoint.config.get(key).is_some_and(|v| !v.is_null());
    has("vq") && !has("gpt")
}

/// The tokenizer benchmark of one claimed tokenizer checkpoint, recorded under the training
/// run's checkpoint row; returns the evaluation's id. The claim is renewed meanwhile.
async fn benchmark_tokenizer(
    protocol: &Protocol,
    lease: &CheckpointLease,
    pool: &sqlx::PgPool,
    options: &EvaluatorOptions,
    data_dir: &std::path::Path,
) -> anyhow::Result<i64> {
    let checkpoint = &lease.checkpoint;
    let vq = checkpoint.config["vq"].clone();
    let config: llamagen_models::vq::VqConfig = serde_json::from_value(vq)
        .with_context(|| format!("the VQ configuration of {}", checkpoint.path))?;
    let root = &protocol.sample.out;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let vq_config = root.join(format!("{}-vq.json", &checkpoint.sha256[..12]));
    llamagen_shards::atomic::write_bytes(&vq_config, &serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", vq_config.display()))?;
    let args = crate::tokenizer_benchmark::TokenizerArgs {
        vq: crate::sample::VqArgs {
            vq_ckpt: PathBuf::from(&checkpoint.path),
            vq_model: String::new(),
            vq_config: Some(vq_config),
            codebook_size: config.codebook_size,
            codebook_embed_dim: config.codebook_embed_dim,
        },
        batch_size: 16,
        device: protocol.sample.device.clone(),
        reference_features: root.join("reference-features"),
        reconstruction_features: root.join("reconstruction-features"),
        chunk_size: 256,
        forget_chunks_once_recorded: true,
        evaluation: evaluation_args(protocol, checkpoint),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let renewer = spawn_renewer(pool, lease, options, cancel, lost.clone());
    let result = crate::tokenizer_benchmark::run_on(&args, data_dir, None).await;
    renewer.abort();
    if lost.load(Ordering::Relaxed) {
        bail!("another evaluator took {} over", checkpoint.path);
    }
    result?
        .recorded?
        .context("the tokenizer benchmark recorded no evaluation")
}

/// The generator benchmark of one claimed checkpoint: its architecture from the training
/// configuration stored with it (or the `gpt_config.json` beside it), the protocol's sampler.
fn generator_args(
    protocol: &Protocol,
    lease: &SelectedCheckpoint,
) -> anyhow::Result<GeneratorArgs> {
    let checkpoint = PathBuf::from(&lease.path);
    let gpt = match lease.config.get("gpt").filter(|g| !g.is_null()) {
        Some(gpt) => gpt.clone(),
        None => {
            let beside = checkpoint.with_file_name("gpt_config.json");
            let text = std::fs::read(&beside).with_context(|| {
                format!(
                    "checkpoint {} has no GPT configuration registered and no {} beside it",
                    lease.path,
                    beside.display()
                )
            })?;
            serde_json::from_slice(&text)
                .with_context(|| format!("parsing {}", beside.display()))?
        }
    };
    // Refuse a configuration the sampler cannot read before anything is written.
    serde_json::from_value::<llamagen_models::gpt::GptConfig>(gpt.clone())
        .with_context(|| format!("the GPT configuration of {}", lease.path))?;
    let root = &protocol.sample.out;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let gpt_config = root.join(format!("{}-gpt.json", &lease.sha256[..12]));
    llamagen_shards::atomic::write_bytes(&gpt_config, &serde_json::to_vec_pretty(&gpt)?)
        .with_context(|| format!("writing {}", gpt_config.display()))?;
    let sample = SampleArgs {
        gpt_ckpt: checkpoint,
        gpt_config: Some(gpt_config),
        cancel: Some(Arc::new(AtomicBool::new(false))),
        ..protocol.sample.clone()
    };
    Ok(GeneratorArgs {
        sample,
        cfg_scales: protocol.cfg_scales.clone(),
        keep_samples: protocol.keep_samples,
        evaluation: evaluation_args(protocol, lease),
    })
}
