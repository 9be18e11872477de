//! `llamagen train`: trains a class-conditional GPT on precomputed VQ codes in LlamaGen's own
//! on-disk layout (`autoregressive/train/extract_codes_c2i.py` writes `CODES/<name>_codes/N.npy`,
//! [1, augmentations, tokens], and `CODES/<name>_labels/N.npy`, [1]), so codes extracted with
//! LlamaGen's script train here unchanged.
//!
//! Each epoch visits the samples in a permutation drawn from the seed and the epoch; each visit
//! takes one of the sample's augmentations (ten-crop or flip) chosen from the seed, step and
//! sample. Checkpoints (`OUT/NNNNNNN.safetensors` + `.sha256`) are written every
//! `--checkpoint-every` steps and at the end; a re-run with the same `--out` resumes from the
//! newest and continues exactly. Each checkpoint and the loss curve are recorded in PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use llamagen_cli::provenance::{file_sha256, git_revision};
use llamagen_models::gpt::{Conditioning, GptConfig};
use llamagen_models::train::{MixedPrecision, TrainConfig, Trainer};
use llamagen_store::results::{self, NewCheckpoint, NewModel};
use llamagen_store::training;
use ndarray::{ArrayD, IxDyn};
use tch::Tensor;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Folder holding `<name>_codes/` and `<name>_labels/` (LlamaGen's extract_codes_c2i.py).
    #[arg(long)]
    pub codes: PathBuf,
    /// GPT size (GPT-B ... GPT-7B).
    #[arg(long, default_value = "GPT-B", conflicts_with = "gpt_config")]
    pub gpt_model: String,
    /// A JSON GptConfig instead of a named size.
    #[arg(long)]
    pub gpt_config: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub image_size: i64,
    #[arg(long, default_value_t = 16)]
    pub downsample: i64,
    #[arg(long, default_value_t = 16384)]
    pub vocab_size: i64,
    #[arg(long, default_value_t = 1000)]
    pub num_classes: i64,
    /// Samples per optimizer step (over all micro-batches).
    #[arg(long, default_value_t = 256)]
    pub global_batch_size: usize,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation: usize,
    /// Learning rate per 256 samples of global batch (the paper: 1e-4), scaled linearly.
    #[arg(long, default_value_t = 1e-4)]
    pub lr_per_256: f64,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: i64,
    /// Stop after this many optimizer steps in total.
    #[arg(long)]
    pub max_steps: i64,
    #[arg(long, default_value_t = 5000)]
    pub checkpoint_every: i64,
    #[arg(long, default_value_t = 100)]
    pub log_every: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// bf16 autocast of the forward pass on CUDA (LlamaGen's default), or none for fp32; the
    /// CPU always computes in fp32. A resumed run keeps the setting it started with.
    #[arg(long, default_value = "bf16")]
    pub mixed_precision: MixedPrecision,
    /// Checkpoint folder; a run resumes from its newest checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Leaderboard name of the model being trained.
    #[arg(long)]
    pub model: String,
    /// Train without writing to PostgreSQL.
    #[arg(long)]
    pub no_record: bool,
}

/// LlamaGen's code folders: sample i is `codes/i.npy` and `labels/i.npy`.
struct CodeFolder {
    codes: PathBuf,
    labels: PathBuf,
    len: u64,
}

impl CodeFolder {
    fn open(root: &Path) -> anyhow::Result<Self> {
        let mut codes = None;
        let mut labels = None;
        for entry in
            std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with("_codes") && path.is_dir() {
                codes = Some(path.clone());
            } else if name.ends_with("_labels") && path.is_dir() {
                labels = Some(path.clone());
            }
        }
        let (Some(codes), Some(labels)) = (codes, labels) else {
            bail!(
                "{} needs a <name>_codes and a <name>_labels folder (LlamaGen's extract_codes_c2i.py layout)",
                root.display()
            );
        };
        let mut len = 0u64;
        while codes.join(format!("{len}.npy")).is_file() {
            len += 1;
        }
        if len == 0 {
            bail!("{} holds no 0.npy", codes.display());
        }
        Ok(CodeFolder { codes, labels, len })
    }

    /// One augmentation of sample `index`: (class, codes [tokens]).
    fn read(&self, index: u64, pick: u64, tokens: usize) -> anyhow::Result<(i64, Vec<i64>)> {
        let code_path = self.codes.join(format!("{index}.npy"));
        let codes: ArrayD<i64> = ndarray_npy::read_npy(&code_path)
            .with_context(|| format!("reading {} (int64 codes expected)", code_path.display()))?;
        let shape = codes.shape().to_vec();
        let augmentations = match shape.as_slice() {
            [1, a, t] | [a, t] if *t == tokens => *a,
            _ => bail!(
                "{}: shape {shape:?}, expected [1, A, {tokens}]",
                code_path.display()
            ),
        };
        let flat = codes.into_shape_with_order(IxDyn(&[augmentations, tokens]))?;
        let row = flat.index_axis(ndarray::Axis(0), (pick % augmentations as u64) as usize);
        let label_path = self.labels.join(format!("{index}.npy"));
        let label: ArrayD<i64> = ndarray_npy::read_npy(&label_path)
            .with_context(|| format!("reading {}", label_path.display()))?;
        let class = *label
            .iter()
            .next()
            .with_context(|| format!("{} is empty", label_path.display()))?;
        Ok((class, row.iter().copied().collect()))
    }
}

/// splitmix64: the permutation and augmentation choices depend on the seed and position only.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The order of an epoch: Fisher-Yates driven by (seed, epoch).
fn permutation(len: u64, seed: i64, epoch: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..len).collect();
    let mut state = mix(seed as u64 ^ mix(epoch));
    for i in (1..order.len()).rev() {
        state = mix(state);
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

fn latest_checkpoint(out: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !out.is_dir() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && p.with_file_name(format!(
                    "{}.sha256",
                    p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
                ))
                .is_file()
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

pub async fn run(args: &TrainArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    if args.global_batch_size == 0
        || args.gradient_accumulation == 0
        || !args
            .global_batch_size
            .is_multiple_of(args.gradient_accumulation)
    {
        bail!("--global-batch-size must be a positive multiple of --gradient-accumulation");
    }
    let device = crate::sample::device(&args.device)?;
    let data = CodeFolder::open(&args.codes)?;
    let resume_from = latest_checkpoint(&args.out)?;
    let mut trainer = match &resume_from {
        Some(path) => {
            println!("resuming from {}", path.display());
            Trainer::resume(path, device)?
        }
        None => {
            let grid = args.image_size / args.downsample;
            let mut gpt = match &args.gpt_config {
                Some(path) => serde_json::from_slice::<GptConfig>(&std::fs::read(path)?)
                    .with_context(|| format!("parsing {}", path.display()))?,
                None => GptConfig::named(&args.gpt_model, Conditioning::Class, grid)?,
            };
            if args.gpt_config.is_none() {
                gpt.vocab_size = args.vocab_size;
                gpt.num_classes = args.num_classes;
            }
            let config = TrainConfig {
                lr: args.lr_per_256 * args.global_batch_size as f64 / 256.0,
                weight_decay: args.weight_decay,
                grad_clip: args.grad_clip,
                warmup_steps: args.warmup_steps,
                seed: args.seed,
                mixed_precision: args.mixed_precision,
                ..TrainConfig::default()
            };
            std::fs::create_dir_all(&args.out)?;
            Trainer::new(gpt, config, device)?
        }
    };
    let gpt_config = trainer.gpt.config.clone();
    if gpt_config.conditioning != Conditioning::Class {
        bail!("text-to-image training needs T5 features, which arrive with the rest of issue #7");
    }
    let tokens = gpt_config.block_size as usize;

    let store = if args.no_record {
        None
    } else {
        Some(llamagen_store::Store::open(&llamagen_store::StoreOptions::from_env(data_dir)).await?)
    };
    let revision = git_revision();
    let config_json = serde_json::json!({
        "train": trainer.config, "gpt": gpt_config, "codes": args.codes.display().to_string(),
        "global_batch_size": args.global_batch_size,
        "gradient_accumulation": args.gradient_accumulation,
    });
    let mut ids = None;
    if let Some(store) = &store {
        let pool = store.pool();
        let size = args
            .gpt_config
            .is_none()
            .then(|| args.gpt_model.trim_start_matches("GPT-"));
        let params: i64 = trainer
            .vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        let model_id = results::upsert_model(
            pool,
            &NewModel {
                name: &args.model,
                kind: "generator",
                architecture: "llamagen-gpt",
                size,
                task: Some("c2i"),
                params: Some(params),
                image_size: Some(args.image_size as i32),
                config: &config_json,
            },
        )
        .await?;
        let previous = match &resume_from {
            Some(path) => training::training_run_of_checkpoint(pool, &file_sha256(path)?.0).await?,
            None => None,
        };
        let run_id = match previous {
            Some(id) => {
                training::reopen_training_run(pool, id).await?;
                id
            }
            None => {
                training::begin_training_run(
                    pool,
                    model_id,
                    &config_json,
                    revision.as_deref(),
                    trainer.config.seed,
                    args.global_batch_size as i32,
                )
                .await?
            }
        };
        ids = Some((model_id, run_id));
        println!("training run #{run_id} of model {:?}", args.model);
    }

    let micro = args.global_batch_size / args.gradient_accumulation;
    let started = Instant::now();
    let first_step = trainer.step;
    let mut loss = f64::NAN;
    let mut result = Ok(());
    // The permutation of the epoch being read, recomputed when a batch crosses into the next.
    let mut order: Option<(u64, Vec<u64>)> = None;
    while trainer.step < args.max_steps {
        let step = trainer.step;
        let position = step as u64 * args.global_batch_size as u64;
        let mut batches = Vec::with_capacity(args.gradient_accumulation);
        for m in 0..args.gradient_accumulation {
            let mut classes = Vec::with_capacity(micro);
            let mut codes = Vec::with_capacity(micro * tokens);
            for j in 0..micro {
                let global = position + (m * micro + j) as u64;
                let epoch = global / data.len;
                if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    order = Some((epoch, permutation(data.len, trainer.config.seed, epoch)));
                }
                let index = order
                    .as_ref()
                    .map_or(0, |(_, o)| o[(global % data.len) as usize]);
                let pick = mix(trainer.config.seed as u64 ^ mix(global));
                let (class, row) = data.read(index, pick, tokens)?;
                classes.push(class);
                codes.extend(row);
            }
            batches.push((
                Tensor::from_slice(&classes).to_device(device),
                Tensor::from_slice(&codes)
                    .view([micro as i64, tokens as i64])
                    .to_device(device),
            ));
        }
        loss = match trainer.train_step(&batches) {
            Ok(l) => l,
            Err(e) => {
                result = Err(anyhow::Error::from(e));
                break;
            }
        };
        let done = trainer.step;
        let epoch = (done as u64 * args.global_batch_size as u64) as f64 / data.len as f64;
        if done % args.log_every == 0 || done == args.max_steps {
            let rate = (done - first_step) as f64 * args.global_batch_size as f64 * tokens as f64
                / started.elapsed().as_secs_f64();
            println!("step {done:>7}  epoch {epoch:>7.3}  loss {loss:.4}  {rate:.0} tokens/s");
            if let (Some(store), Some((_, run_id))) = (&store, ids) {
                let lr = trainer.config.lr_at(done - 1);
                training::log_training_metrics(
                    store.pool(),
                    run_id,
                    done,
                    &[("loss", loss), ("lr", lr), ("epoch", epoch)],
                )
                .await?;
            }
        }
        if done % args.checkpoint_every == 0 || done == args.max_steps {
            let path = args.out.join(format!("{done:07}.safetensors"));
            let sha = trainer.save(&path)?;
            println!("checkpoint {} (sha256 {})", path.display(), &sha[..12]);
            if let (Some(store), Some((model_id, run_id))) = (&store, ids) {
                let path_text = path.display().to_string();
                let bytes = std::fs::metadata(&path)?.len() as i64;
                results::register_checkpoint(
                    store.pool(),
                    &NewCheckpoint {
                        model_id,
                        training_run_id: Some(run_id),
                        path: &path_text,
                        sha256: &sha,
                        bytes: Some(bytes),
                        step: done,
                        epoch: Some(epoch),
                        tokens_seen: Some(trainer.tokens_seen),
                        train_loss: Some(loss),
                        config: Some(&config_json),
                        git_revision: revision.as_deref(),
                        seed: Some(trainer.config.seed),
                        ..Default::default()
                    },
                )
                .await?;
            }
        }
    }
    if let (Some(store), Some((_, run_id))) = (&store, ids) {
        let status = if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        training::finish_training_run(store.pool(), run_id, status).await?;
    }
    if let Some(store) = store {
        store.close().await?;
    }
    result?;
    if loss.is_nan() {
        // Resumed at --max-steps: no step ran in this process.
        println!("already trained to step {}; nothing to do", trainer.step);
    } else {
        println!("trained to step {} (last loss {loss:.4})", trainer.step);
    }
    Ok(ExitCode::SUCCESS)
}
