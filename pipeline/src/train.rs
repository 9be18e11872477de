//! Training a GPT on precomputed VQ codes (`llamagen train` and the pipeline's train stage),
//! from either
//!
//! - our own shards: a `llamagen encode vq` folder (`--codes`), and for text-to-image the
//!   `llamagen encode t5` folder of its caption embeddings (`--t5`), read through
//!   `llamagen_encode::dataset` (block-shuffled, a few shards in memory at a time); or
//! - LlamaGen's class-conditional layout (`autoregressive/train/extract_codes_c2i.py` writes
//!   `CODES/<name>_codes/N.npy`, [1, augmentations, tokens], and `CODES/<name>_labels/N.npy`,
//!   [1]), so codes extracted with LlamaGen's script train here unchanged.
//!
//! Each epoch visits the samples in a permutation drawn from the seed and the epoch; each visit
//! takes one of the sample's augmentations (ten-crop or flip) chosen from the seed and its
//! position, and for text the short caption 30% of the time (LlamaGen's train_t2i.py). Checkpoints (`OUT/NNNNNNN.safetensors` + `.sha256`) are written every
//! `--checkpoint-every` steps and at the end; a re-run with the same `--out` resumes from the
//! newest and continues exactly. Each checkpoint and the loss curve are recorded in PostgreSQL.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{AdamWKernel, LrSchedule, Precision};
use crate::training_record::{CheckpointRow, TrainingRecord, checkpoint_written, end_run};
use anyhow::{Context as _, bail};
use llamagen_distributed::{GradientBuckets, ProcessGroup};
use llamagen_encode::dataset::{Dataset, TextOptions, mix, permutation};
use llamagen_models::gpt::{Conditioning, GptConfig};
use llamagen_models::train::{MicroBatch, MixedPrecision, Replicas, TrainConfig, Trainer};
use llamagen_store::results::NewModel;
use ndarray::{ArrayD, IxDyn};
use tch::Tensor;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct TrainArgs {
    /// A pipeline config whose sections give this command's defaults (flags given here
    /// override them; relative paths resolve as `llamagen run` resolves them).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// A `llamagen encode vq` output folder, or one holding `<name>_codes/` and
    /// `<name>_labels/` (LlamaGen's extract_codes_c2i.py).
    #[arg(long)]
    pub codes: PathBuf,
    /// Text-to-image: the `llamagen encode t5` folder of the same shards' caption embeddings.
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// Shards shuffled together (and held in memory) at a time, for our shard folders.
    #[arg(long, default_value_t = 16)]
    pub block_shards: usize,
    /// How often the short caption's embedding stands in for the whole caption's.
    #[arg(long, default_value_t = 0.3)]
    pub short_caption_probability: f64,
    /// Keep an exponential moving average of the weights with this decay in the checkpoints
    /// (LlamaGen's --ema: 0.9999); 0 keeps none.
    #[arg(long, default_value_t = 0.0)]
    pub ema_decay: f64,
    /// GPT size: B, L, XL, XXL, XXXL, 1B, 3B or 7B, as the config's model.size (LlamaGen's
    /// GPT-B ... spelling works too).
    #[arg(long, default_value = "GPT-B", conflicts_with = "gpt_config")]
    pub gpt_model: String,
    /// A JSON GptConfig instead of a named size.
    #[arg(long)]
    pub gpt_config: Option<PathBuf>,
    /// Image side in pixels the codes were made at.
    #[arg(long, default_value_t = 256)]
    pub image_size: i64,
    /// The tokenizer's downsample factor (16 for VQ-16): image tokens are (image size / downsample)^2.
    #[arg(long, default_value_t = 16)]
    pub downsample: i64,
    /// Codebook entries of the tokenizer (the GPT vocabulary).
    #[arg(long, default_value_t = 16384)]
    pub vocab_size: i64,
    /// Classes of a class-conditional GPT (ImageNet: 1000).
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
    /// AdamW's first-moment decay (LlamaGen: 0.9).
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// AdamW's second-moment decay (LlamaGen: 0.95).
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f64,
    /// AdamW weight decay on tensors with two or more dimensions (the paper: 0.05).
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (the paper: 1.0); 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Linear learning-rate warm-up steps (LlamaGen: none).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: i64,
    /// constant (LlamaGen) or cosine (to 0 at --max-steps).
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    pub lr_schedule: LrSchedule,
    /// Stop after this many optimizer steps in total.
    #[arg(long)]
    pub max_steps: i64,
    /// Steps between checkpoints (each registered in PostgreSQL); one is also written at the end.
    #[arg(long, default_value_t = 5000)]
    pub checkpoint_every: i64,
    /// Steps between loss records (printed and stored).
    #[arg(long, default_value_t = 100)]
    pub log_every: i64,
    /// Seed of the initialisation, the sample order, dropout and the augmentation picks.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// bf16 (autocast of the forward pass on CUDA, LlamaGen's default) or fp32, as `sample
    /// --precision` and the config's `train.precision` spell it; the CPU computes bf16 runs in
    /// fp32. fp64 keeps weights, optimizer and arithmetic in float64, for checking (data
    /// parallelism against one process, say). A resumed run keeps the setting it started with.
    #[arg(long = "precision", alias = "mixed-precision", default_value = "bf16")]
    pub mixed_precision: MixedPrecision,
    /// Checkpoint folder; a run resumes from its newest checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Weights a fresh run starts from, with a fresh optimizer and step: a checkpoint of any
    /// image size (the paper's 512 px stage from its 256 px model) or converted LlamaGen
    /// weights. Ignored when --out has a checkpoint to resume from.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Data-parallel runs: each rank keeps AdamW's moments for its share of the parameters only
    /// and updates those, then sends them to the others (ZeRO stage 1): the optimizer's memory
    /// divided by the ranks, the same weights. Checkpoints still hold the whole state, so a run
    /// resumes on any number of ranks, sharded or not.
    #[arg(long)]
    pub shard_optimizer: bool,
    /// Data-parallel runs: reduce the gradients after the backward pass instead of each bucket
    /// as soon as the pass completes it. The same weights; for CPU hosts whose cores the
    /// training threads already fill, where the overlap measured slower (docs/models.md).
    #[arg(long)]
    pub reduce_after_backward: bool,
    /// Keep only each block's input through the forward pass and recompute the blocks in the
    /// backward pass: activations of one block instead of all, for about a third more
    /// compute, so that a larger model or batch fits. The same gradients; the network's
    /// dropout masks are drawn per block. A resumed run keeps the setting it started with.
    #[arg(long)]
    pub activation_checkpointing: bool,
    /// fused: libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`, which LlamaGen's
    /// train_c2i.py asks for), one pass over each tensor; plain: the same update written out
    /// operation by operation. They agree up to float rounding. A resumed run keeps the
    /// setting it started with.
    #[arg(long, value_enum, default_value_t = AdamWKernel::Fused)]
    pub adamw: AdamWKernel,
    /// Leaderboard name of the model being trained.
    #[arg(long)]
    pub model: String,
    /// Train without writing to PostgreSQL.
    #[arg(long)]
    pub no_record: bool,
    /// Print where training stands (step, last loss, newest checkpoint) as JSON on stdout;
    /// the progress lines go to stderr.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
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

/// `llamagen run`'s train stage: the [model] and [train] sections of the pipeline config on
/// the codes (and embeddings) its encode stage wrote; `--max-steps` covers `train.epochs`.
pub fn args_from_config(
    config: &crate::config::PipelineConfig,
    data_dir: &Path,
) -> anyhow::Result<TrainArgs> {
    let (m, t) = (&config.model, &config.train);
    let under = |p: &str| crate::config::PipelineConfig::resolve(data_dir, p);
    let codes = under(&config.encode.codes_output);
    let text = m.task == crate::config::Task::T2i;
    let t5 = text.then(|| under(&config.encode.t5_output));
    let out = under(&t.output);
    let conditioning = if text {
        Conditioning::Text
    } else {
        Conditioning::Class
    };
    let grid = i64::from(m.image_size / m.downsample);
    let gpt = if m.gpt_config.is_empty() {
        let mut gpt = GptConfig::named(&format!("GPT-{}", m.size), conditioning, grid)?;
        gpt.vocab_size = i64::from(m.vocab_size);
        gpt.num_classes = i64::from(m.num_classes);
        gpt.caption_dim = i64::from(m.caption_dim);
        gpt.rope_base = m.rope_base;
        gpt.token_dropout_p = m.token_dropout;
        gpt.attn_dropout_p = m.attn_dropout;
        gpt.resid_dropout_p = m.resid_dropout;
        gpt.ffn_dropout_p = m.ffn_dropout;
        gpt.drop_path_rate = m.drop_path;
        gpt.class_dropout_prob = m.class_dropout;
        gpt
    } else {
        let path = under(&m.gpt_config);
        let gpt: GptConfig = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        if gpt.conditioning != conditioning {
            bail!(
                "{} is {:?}-conditioned but model.task is {:?}",
                path.display(),
                gpt.conditioning,
                m.task
            );
        }
        gpt
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let gpt_config = out.join("gpt_config.json");
    std::fs::write(&gpt_config, serde_json::to_vec_pretty(&gpt)?)?;
    let samples = Dataset::open(&codes, t5.as_deref(), 1, 0)?.len() as u64;
    let per_epoch = samples.div_ceil(u64::from(t.global_batch_size));
    Ok(TrainArgs {
        config: None,
        codes,
        t5,
        block_shards: 16,
        short_caption_probability: 0.3,
        ema_decay: if t.ema { t.ema_decay } else { 0.0 },
        gpt_model: String::new(),
        gpt_config: Some(gpt_config),
        image_size: i64::from(m.image_size),
        downsample: i64::from(m.downsample),
        vocab_size: i64::from(m.vocab_size),
        num_classes: i64::from(m.num_classes),
        global_batch_size: t.global_batch_size as usize,
        gradient_accumulation: t.gradient_accumulation as usize,
        lr_per_256: t.lr_per_256,
        beta1: t.beta1,
        beta2: t.beta2,
        weight_decay: t.weight_decay,
        grad_clip: t.grad_clip,
        warmup_steps: i64::from(t.warmup_steps),
        lr_schedule: t.lr_schedule,
        max_steps: (per_epoch * u64::from(t.epochs)).max(1) as i64,
        checkpoint_every: i64::from(t.checkpoint_every),
        log_every: i64::from(t.log_every.max(1)),
        seed: t.seed as i64,
        device: config.pipeline.device.as_str().into(),
        mixed_precision: if t.precision == Precision::Bf16 {
            MixedPrecision::Bf16
        } else {
            MixedPrecision::None
        },
        out,
        model: config.trained_model_name(),
        init_from: (!t.init_from.is_empty()).then(|| under(&t.init_from)),
        shard_optimizer: t.shard_optimizer,
        reduce_after_backward: t.reduce_after_backward,
        activation_checkpointing: t.activation_checkpointing,
        adamw: t.adamw,
        no_record: false,
        json: false,
    })
}

/// Where the samples come from.
enum Source {
    Shards(Box<Dataset>),
    LlamaGen(CodeFolder),
}

impl Source {
    fn open(args: &TrainArgs) -> anyhow::Result<Self> {
        if args
            .codes
            .join(llamagen_encode::EncodeSettings::FILE)
            .is_file()
        {
            let data = Dataset::open(
                &args.codes,
                args.t5.as_deref(),
                args.block_shards,
                args.seed,
            )?;
            println!(
                "{} samples in {} shard(s) of {}{}",
                data.len(),
                data.shards(),
                args.codes.display(),
                args.t5
                    .as_ref()
                    .map(|t| format!(", captions from {}", t.display()))
                    .unwrap_or_default()
            );
            return Ok(Source::Shards(Box::new(data)));
        }
        if args.t5.is_some() {
            bail!(
                "--t5 needs --codes to be a llamagen encode vq folder (LlamaGen's t2i layout is read by its own train_t2i.py)"
            );
        }
        Ok(Source::LlamaGen(CodeFolder::open(&args.codes)?))
    }

    fn len(&self) -> u64 {
        match self {
            Source::Shards(d) => d.len() as u64,
            Source::LlamaGen(f) => f.len,
        }
    }
}

/// The LlamaGen layout's epoch order, cached while a batch stays in one epoch.
struct EpochOrder(Option<(u64, Vec<usize>)>);

impl EpochOrder {
    fn index(&mut self, global: u64, len: u64, seed: i64) -> u64 {
        let epoch = global / len;
        if self.0.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.0 = Some((epoch, permutation(len as usize, seed as u64 ^ mix(epoch))));
        }
        self.0
            .as_ref()
            .map_or(0, |(_, o)| o[(global % len) as usize] as u64)
    }
}

/// The checkpoints of `out` (those with their `.sha256`), oldest first.
pub fn checkpoints(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !out.is_dir() {
        return Ok(Vec::new());
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
    Ok(found)
}

/// Resumes from the newest checkpoint of `out` that loads; a newer one that does not (a power
/// cut mid-write, a damaged disk) is reported and passed over, and training redoes its steps.
/// None when `out` holds no checkpoint; an error when it holds only unusable ones.
pub(crate) fn resume_newest_usable<T>(
    out: &Path,
    resume: impl Fn(&Path) -> Result<T, llamagen_models::ModelError>,
) -> anyhow::Result<Option<(PathBuf, T)>> {
    let all = checkpoints(out)?;
    let mut unusable = Vec::new();
    for path in all.iter().rev() {
        match resume(path) {
            Ok(trainer) => {
                if !unusable.is_empty() {
                    println!(
                        "falling back to {}: the newer checkpoint(s) are unusable",
                        path.display()
                    );
                }
                return Ok(Some((path.clone(), trainer)));
            }
            Err(e) => {
                println!("checkpoint {} is unusable: {e}", path.display());
                unusable.push(path.display().to_string());
            }
        }
    }
    if unusable.is_empty() {
        Ok(None)
    } else {
        bail!(
            "no usable checkpoint in {} ({} unusable); move them aside to start over",
            out.display(),
            unusable.len()
        )
    }
}

/// Where a training run stands when `run` returns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    pub model: String,
    pub step: i64,
    /// Stopped by SIGTERM or Ctrl-C before `--max-steps`, after writing a checkpoint.
    pub stopped: bool,
    /// The loss of the last step this process ran; `None` when it ran none (already trained).
    pub last_loss: Option<f64>,
    /// The newest checkpoint.
    pub checkpoint: Option<PathBuf>,
}

pub async fn run(args: &TrainArgs, data_dir: &Path) -> anyhow::Result<TrainSummary> {
    if args.global_batch_size == 0
        || args.gradient_accumulation == 0
        || !args
            .global_batch_size
            .is_multiple_of(args.gradient_accumulation)
    {
        bail!("--global-batch-size must be a positive multiple of --gradient-accumulation");
    }
    let (group, device) = crate::sample::join_for_training(&args.device)?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world()));
    if !args
        .global_batch_size
        .is_multiple_of(args.gradient_accumulation * world)
    {
        bail!(
            "--global-batch-size {} does not split into {} micro-batches on each of {world} ranks",
            args.global_batch_size,
            args.gradient_accumulation
        );
    }
    let mut data = Source::open(args)?;
    let conditioning = if args.t5.is_some() {
        Conditioning::Text
    } else {
        Conditioning::Class
    };
    let resumed = resume_newest_usable(&args.out, |path| Trainer::resume(path, device))?;
    let resume_from = resumed.as_ref().map(|(path, _)| path.clone());
    let mut trainer = match resumed {
        Some((path, trainer)) => {
            println!("resuming from {}", path.display());
            trainer
        }
        None => fresh_trainer(args, conditioning, device)?,
    };
    if let Some(group) = &group {
        agree_on_the_start(group, trainer.step, &trainer.vs.trainable_variables())?;
        if args.shard_optimizer {
            let whole = trainer.optimizer_bytes();
            trainer.shard_optimizer(rank, world);
            tracing::info!(
                "optimizer state sharded over {world} ranks: {:.1} MB on rank {rank} of {:.1} MB",
                trainer.optimizer_bytes() as f64 / 1e6,
                whole as f64 / 1e6
            );
        }
    } else if args.shard_optimizer {
        tracing::info!("--shard-optimizer has no effect on a single process");
    }
    let gpt_config = trainer.gpt.config.clone();
    if gpt_config.conditioning != conditioning {
        bail!(
            "the model is {:?}-conditioned but the data is {conditioning:?}-conditioned (--t5 gives text)",
            gpt_config.conditioning
        );
    }
    let tokens = gpt_config.block_size as usize;
    let text = (conditioning == Conditioning::Text).then_some(TextOptions {
        prefix: gpt_config.cls_token_num as usize,
        short_probability: args.short_caption_probability,
    });

    let config_json = serde_json::json!({
        "train": trainer.config, "gpt": gpt_config, "codes": args.codes.display().to_string(),
        "t5": args.t5.as_ref().map(|t| t.display().to_string()),
        "global_batch_size": args.global_batch_size,
        "gradient_accumulation": args.gradient_accumulation,
        "init_from": args.init_from.as_ref().map(|p| p.display().to_string()),
        "shard_optimizer": args.shard_optimizer && world > 1,
    });
    // Rank 0 alone records the run and writes checkpoints: every rank holds the same weights.
    let record = if args.no_record || rank != 0 {
        None
    } else {
        let size = args
            .gpt_config
            .is_none()
            .then(|| args.gpt_model.trim_start_matches("GPT-"));
        let params = llamagen_models::weights::parameter_count(&trainer.vs);
        let model = NewModel {
            name: &args.model,
            kind: "generator",
            architecture: "llamagen-gpt",
            size,
            task: Some(if text.is_some() { "t2i" } else { "c2i" }),
            params: Some(params),
            image_size: Some(args.image_size as i32),
            config: &config_json,
        };
        Some(
            TrainingRecord::open(
                data_dir,
                &args.out,
                &model,
                resume_from.as_deref(),
                trainer.config.seed,
                args.global_batch_size as i32,
            )
            .await?,
        )
    };

    let micro = args.global_batch_size / args.gradient_accumulation;
    // Rank r takes the r-th contiguous share of each micro-batch.
    let local = micro / world;
    // The rate is measured over the steps since the last log line.
    let mut last_log = (Instant::now(), trainer.step);
    let mut loss = f64::NAN;
    let mut result = Ok(());
    let mut order = EpochOrder(None);
    let len = data.len();
    // SIGTERM (Slurm preemption, a Kubernetes eviction) or Ctrl-C: finish the step in hand,
    // write a checkpoint, record the run as cancelled, exit 143.
    let stop = crate::signals::StopSignal::listen();
    let mut stopped = false;
    let bar = if rank == 0 {
        crate::progress::bar((args.max_steps - trainer.step).max(0) as u64, "steps")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let ranks = group.as_ref().map(|group| {
        if args.reduce_after_backward {
            Ranks::reducing_after_backward(group)
        } else {
            Ranks::new(group)
        }
    });
    while trainer.step < args.max_steps {
        let step = trainer.step;
        let position = step as u64 * args.global_batch_size as u64;
        let mut batches = Vec::with_capacity(args.gradient_accumulation);
        for m in 0..args.gradient_accumulation {
            let first = position + (m * micro + rank * local) as u64;
            batches.push(micro_batch(
                &mut data,
                &mut order,
                first..first + local as u64,
                tokens,
                text,
                trainer.config.seed,
                device,
            )?);
        }
        let stepped = match &ranks {
            Some(ranks) => trainer.train_step_replicated(&batches, ranks),
            None => trainer.train_step_on(&batches),
        };
        loss = match stepped {
            Ok(l) => l,
            Err(e) => {
                result = Err(anyhow::Error::from(e));
                break;
            }
        };
        let mut stop_here = stop.requested();
        if let Some(group) = &group {
            // The logged loss is the global batch's, and a stop asked of any rank stops all of
            // them at the same step (a launcher may signal one process first).
            match group.sum_f64(&[loss, f64::from(u8::from(stop_here))]) {
                Ok(sums) => {
                    loss = sums[0] / world as f64;
                    stop_here = sums[1] > 0.0;
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        let done = trainer.step;
        bar.inc(1);
        bar.set_message(format!("loss {loss:.4}"));
        let epoch = (done as u64 * args.global_batch_size as u64) as f64 / len as f64;
        let logging = done % args.log_every == 0 || done == args.max_steps;
        // The largest rank's peak memory since the last record (rank 0 holds the most when it
        // gathers a sharded optimizer, but not always).
        let memory_mib = match logging.then(|| peak_memory_mib(device, group.as_ref())) {
            Some(Err(e)) => {
                result = Err(e);
                break;
            }
            read => read.and_then(Result::ok).unwrap_or(f64::NAN),
        };
        if rank == 0 && logging {
            let rate = (done - last_log.1) as f64 * args.global_batch_size as f64 * tokens as f64
                / last_log.0.elapsed().as_secs_f64();
            last_log = (Instant::now(), done);
            let grad_norm = trainer.last_grad_norm;
            crate::progress::println(
                &bar,
                format!(
                    "step {done:>7}  epoch {epoch:>7.3}  loss {loss:.4}  grad norm {grad_norm:.3}  {rate:.0} tokens/s  {memory_mib:.0} MiB"
                ),
            );
            if let Some(record) = &record {
                let lr = trainer.config.lr_at(done - 1);
                let mut values = vec![
                    ("loss", loss),
                    ("lr", lr),
                    ("epoch", epoch),
                    ("grad_norm", grad_norm),
                    ("tokens_per_s", rate),
                ];
                if memory_mib.is_finite() {
                    values.push(("memory_mib", memory_mib));
                }
                record.log(done, &values).await?;
            }
        }
        stopped = stop_here && done < args.max_steps;
        let checkpoint =
            done % args.checkpoint_every.max(1) == 0 || done == args.max_steps || stopped;
        if let (true, Some(ranks)) = (checkpoint && args.shard_optimizer, &ranks) {
            // Every rank sends its share of the optimizer state to rank 0, which writes it.
            if let Err(e) = trainer.gather_optimizer(ranks) {
                result = Err(e.into());
                break;
            }
        }
        if checkpoint && rank == 0 {
            let path = args.out.join(format!("{done:07}.safetensors"));
            let sha = trainer.save(&path)?;
            trainer.release_optimizer();
            let row = CheckpointRow {
                path: &path,
                sha256: &sha,
                step: done,
                epoch,
                seen: trainer.tokens_seen,
                loss,
            };
            checkpoint_written(record.as_ref(), &bar, &row).await?;
        }
        if stopped {
            break;
        }
    }
    bar.finish_and_clear();
    if let (Some(group), Ok(())) = (&group, &result) {
        // Nobody leaves before rank 0's last checkpoint is in place: a launcher that sees one
        // rank exit may stop the others.
        result = group.barrier().map_err(anyhow::Error::from);
    }
    end_run(record, &result, stopped, trainer.step).await?;
    result?;
    if loss.is_nan() {
        // Resumed at --max-steps: no step ran in this process.
        println!("already trained to step {}; nothing to do", trainer.step);
    } else if !stopped {
        println!("trained to step {} (last loss {loss:.4})", trainer.step);
    }
    Ok(TrainSummary {
        model: args.model.clone(),
        step: trainer.step,
        stopped,
        last_loss: (!loss.is_nan()).then_some(loss),
        checkpoint: checkpoints(&args.out)?.pop(),
    })
}

/// A trainer for a run that starts now: the GPT named by `--gpt-model` (or `--gpt-config`)
/// with the run's optimizer settings, optionally from `--init-from`'s weights.
fn fresh_trainer(
    args: &TrainArgs,
    conditioning: Conditioning,
    device: tch::Device,
) -> anyhow::Result<Trainer> {
    let grid = args.image_size / args.downsample;
    let mut gpt = match &args.gpt_config {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice::<GptConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => GptConfig::named(&args.gpt_model, conditioning, grid)?,
    };
    if args.gpt_config.is_none() {
        gpt.vocab_size = args.vocab_size;
        gpt.num_classes = args.num_classes;
        if let Some(t5) = &args.t5 {
            // The caption width is the embeddings' width.
            gpt.caption_dim = llamagen_encode::t5::T5Settings::read(t5)?.d_model as i64;
        }
    }
    let config = TrainConfig {
        lr: args.lr_per_256 * args.global_batch_size as f64 / 256.0,
        beta1: args.beta1,
        beta2: args.beta2,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        warmup_steps: args.warmup_steps,
        seed: args.seed,
        mixed_precision: args.mixed_precision,
        ema_decay: args.ema_decay,
        cosine_steps: if args.lr_schedule == LrSchedule::Cosine {
            (args.max_steps - args.warmup_steps).max(1)
        } else {
            0
        },
        activation_checkpointing: args.activation_checkpointing,
        fused_adamw: args.adamw == AdamWKernel::Fused,
        ..TrainConfig::default()
    };
    std::fs::create_dir_all(&args.out)?;
    let mut trainer = Trainer::new(gpt, config, device)?;
    if let Some(init) = &args.init_from {
        trainer
            .init_from(init)
            .with_context(|| format!("--init-from {}", init.display()))?;
        println!("starting from the weights of {}", init.display());
    }
    Ok(trainer)
}

/// The peak memory since the last call ([`llamagen_models::memory::take_peak`]: CUDA's caching
/// allocator, or the CPU's resident set) in MiB, the largest over the ranks of `group`; NaN
/// where it cannot be read. Every rank of a group calls it at the same step.
pub(crate) fn peak_memory_mib(
    device: tch::Device,
    group: Option<&ProcessGroup>,
) -> anyhow::Result<f64> {
    let mine =
        llamagen_models::memory::take_peak(device).map_or(f64::NAN, |b| b as f64 / 1048576.0);
    let Some(group) = group else {
        return Ok(mine);
    };
    let mut each = vec![0.0; group.world()];
    each[group.rank()] = mine;
    Ok(group.sum_f64(&each)?.into_iter().fold(f64::NAN, f64::max))
}

/// The trainer's view of the process group, with the gradient buckets its parameters'
/// gradients are views of once attached. Keep one for a run: the buckets live here.
pub struct Ranks<'a> {
    group: &'a ProcessGroup,
    /// The buckets and the owners they were laid out for.
    buckets: RefCell<Option<(GradientBuckets, Option<Vec<usize>>)>>,
    /// Whether buckets are reduced during the backward pass.
    overlap: bool,
}

impl<'a> Ranks<'a> {
    /// Reduces each bucket during the backward pass, as soon as its gradients are complete,
    /// where the bucket is on the group's device (CPU buckets with Gloo, CUDA buckets with
    /// NCCL); CUDA buckets under Gloo, staged through host memory, after it.
    pub fn new(group: &'a ProcessGroup) -> Self {
        Ranks {
            group,
            buckets: RefCell::new(None),
            overlap: true,
        }
    }

    /// Reduces the buckets only after the backward pass, for measuring what the overlap saves.
    pub fn reducing_after_backward(group: &'a ProcessGroup) -> Self {
        Ranks {
            overlap: false,
            ..Ranks::new(group)
        }
    }

    /// How many gradient buckets the last step started under the rest of its backward pass,
    /// and how many there are: all but the last when the reduction overlaps the pass as it
    /// should. `None` before the first step, or without the overlap.
    pub fn overlapped_buckets(&self) -> Option<(usize, usize)> {
        self.buckets
            .borrow()
            .as_ref()
            .filter(|(buckets, _)| buckets.overlapping())
            .map(|(buckets, _)| (buckets.started_before_last_gradient(), buckets.len()))
    }

    /// The attached buckets, when `tensors` are still their views; otherwise lets any
    /// reductions the buckets' hooks started finish.
    fn holding(
        &self,
        tensors: &[Tensor],
    ) -> Result<Option<std::cell::Ref<'_, GradientBuckets>>, String> {
        let buckets = self.buckets.borrow();
        if let Some((attached, _)) = buckets.as_ref()
            && !attached.hold(tensors)
        {
            attached.settle(self.group).map_err(|e| e.to_string())?;
        }
        Ok(std::cell::Ref::filter_map(buckets, |b| {
            b.as_ref()
                .map(|(buckets, _)| buckets)
                .filter(|buckets| buckets.hold(tensors))
        })
        .ok())
    }
}

impl Replicas for Ranks<'_> {
    fn rank(&self) -> usize {
        self.group.rank()
    }
    fn world(&self) -> usize {
        self.group.world()
    }
    fn attach_gradients(
        &self,
        params: &[Tensor],
        owners: Option<&[usize]>,
        ready_order: &[usize],
    ) -> Result<(), String> {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        let current = self
            .buckets
            .borrow()
            .as_ref()
            .is_some_and(|(buckets, laid_out)| {
                laid_out.as_deref() == owners && buckets.hold(&grads)
            });
        if !current {
            let mut buckets = GradientBuckets::attach(params, owners, Some(ready_order))
                .map_err(|e| e.to_string())?;
            if self.overlap {
                buckets
                    .reduce_during_backward(self.group)
                    .map_err(|e| e.to_string())?;
            }
            *self.buckets.borrow_mut() = Some((buckets, owners.map(<[usize]>::to_vec)));
        }
        Ok(())
    }
    fn reduce_during_next_backward(&self) {
        if let Some((buckets, _)) = self.buckets.borrow().as_ref() {
            buckets.arm();
        }
    }
    fn mean(&self, tensors: &[Tensor]) -> Result<(), String> {
        match self.holding(tensors)? {
            Some(buckets) => buckets.all_reduce_mean(self.group),
            None => self.group.all_reduce_mean(tensors),
        }
        .map_err(|e| e.to_string())
    }
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), String> {
        self.group
            .broadcast_many(tensors, root)
            .map_err(|e| e.to_string())
    }
    fn mean_to_owners(&self, tensors: &[Tensor], owners: &[usize]) -> Result<(), String> {
        let laid_out = match self.buckets.borrow().as_ref() {
            Some((buckets, o)) if o.as_deref() != Some(owners) => {
                buckets.settle(self.group).map_err(|e| e.to_string())?;
                false
            }
            attached => attached.is_some(),
        };
        match self.holding(tensors)?.filter(|_| laid_out) {
            Some(buckets) => buckets.reduce_mean_to_owners(self.group),
            None => self.group.reduce_mean_to_owners(tensors, owners),
        }
        .map_err(|e| e.to_string())
    }
    fn sum(&self, values: &[f64]) -> Result<Vec<f64>, String> {
        self.group.sum_f64(values).map_err(|e| e.to_string())
    }
}

/// Checks that every rank starts from the same step (the same checkpoint), then gives every
/// rank rank 0's `variables`, as PyTorch's DDP does when it wraps a model.
pub(crate) fn agree_on_the_start(
    group: &ProcessGroup,
    step: i64,
    variables: &[Tensor],
) -> anyhow::Result<()> {
    let step = step as f64;
    let sums = group.sum_f64(&[step, step * step])?;
    let world = group.world() as f64;
    if sums[0] != step * world || sums[1] != step * step * world {
        bail!(
            "the ranks start from different steps (this rank from {step}); they must share --out"
        );
    }
    let _no_grad = tch::no_grad_guard();
    group.broadcast_many(variables, 0)?;
    Ok(())
}

/// The samples at run positions `positions` as one micro-batch on `device`.
fn micro_batch(
    data: &mut Source,
    order: &mut EpochOrder,
    positions: std::ops::Range<u64>,
    tokens: usize,
    text: Option<TextOptions>,
    seed: i64,
    device: tch::Device,
) -> anyhow::Result<MicroBatch> {
    let b = (positions.end - positions.start) as i64;
    let mut classes = Vec::with_capacity(b as usize);
    let mut codes = Vec::with_capacity(b as usize * tokens);
    let mut features: Vec<f32> = Vec::new();
    let mut lengths = Vec::new();
    let len = data.len();
    for global in positions {
        let row = match data {
            Source::Shards(d) => {
                let sample = d.get(global, text)?;
                if let Some((f, n)) = &sample.caption {
                    features.extend(f.iter());
                    lengths.push(*n as i64);
                }
                if sample.codes.len() != tokens {
                    bail!(
                        "sample {} has {} tokens, the model {tokens}",
                        sample.key,
                        sample.codes.len()
                    );
                }
                classes.push(sample.label);
                sample.codes
            }
            Source::LlamaGen(folder) => {
                let index = order.index(global, len, seed);
                let pick = mix(seed as u64 ^ mix(global));
                let (class, row) = folder.read(index, pick, tokens)?;
                classes.push(class);
                row
            }
        };
        codes.extend(row);
    }
    let codes = Tensor::from_slice(&codes)
        .view([b, tokens as i64])
        .to_device(device);
    Ok(match text {
        None => MicroBatch {
            cond: Tensor::from_slice(&classes).to_device(device),
            codes,
            caption_lengths: None,
            valid: None,
        },
        Some(t) => {
            let width = features.len() as i64 / (b * t.prefix as i64).max(1);
            MicroBatch {
                cond: Tensor::from_slice(&features)
                    .view([b, t.prefix as i64, width])
                    .to_device(device),
                codes,
                caption_lengths: Some(Tensor::from_slice(&lengths).to_device(device)),
                valid: None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamagen_encode::codes::{CodePaths, ShardCodes, ShardSummary};

    /// A codes folder of 20 samples over two shards, 2 views of 4 tokens.
    fn codes_folder(dir: &Path) {
        std::fs::write(dir.join(llamagen_encode::EncodeSettings::FILE), "{}").unwrap();
        for (shard, n) in [(0, 12usize), (1, 8)] {
            let name = format!("{shard:05}");
            let data = ShardCodes {
                codes: ndarray::Array3::zeros((n, 2, 4)),
                labels: ndarray::Array1::zeros(n),
                keys: (0..n).map(|i| format!("{name}{i:04}")).collect(),
            };
            let summary = ShardSummary {
                samples: n,
                views: 2,
                tokens: 4,
                skipped: vec![],
                seconds: 0.0,
                input: None,
            };
            llamagen_encode::codes::write(&CodePaths::new(dir, &name), &data, &summary).unwrap();
        }
    }

    #[test]
    fn the_pipeline_config_becomes_train_arguments() {
        let data = tempfile::tempdir().unwrap();
        let codes = data.path().join("codes");
        std::fs::create_dir_all(&codes).unwrap();
        codes_folder(&codes);
        let mut config = crate::config::PipelineConfig::parse(
            "[pipeline]\nname = \"p\"\n[model]\nsize = \"B\"\ntask = \"c2i\"\nnum_classes = 10\nresid_dropout = 0.2\n[train]\nglobal_batch_size = 8\nepochs = 3\nema = true\nlr_schedule = \"cosine\"\nprecision = \"fp32\"\n",
        )
        .unwrap();
        let args = args_from_config(&config, data.path()).unwrap();
        // 20 samples in batches of 8: 3 steps an epoch.
        assert_eq!(args.max_steps, 9);
        assert_eq!(args.codes, data.path().join("codes"));
        assert_eq!(args.t5, None);
        assert_eq!(args.out, data.path().join("checkpoints"));
        assert_eq!(args.model, "p-GPT-B");
        assert_eq!(
            (args.ema_decay, args.lr_schedule),
            (0.9999, LrSchedule::Cosine)
        );
        assert_eq!(args.mixed_precision, MixedPrecision::None);
        let gpt: GptConfig =
            serde_json::from_slice(&std::fs::read(args.gpt_config.unwrap()).unwrap()).unwrap();
        assert_eq!((gpt.n_layer, gpt.dim, gpt.num_classes), (12, 768, 10));
        assert_eq!(gpt.resid_dropout_p, 0.2);
        assert_eq!(gpt.conditioning, Conditioning::Class);

        // Text to image reads the embeddings folder too, and it must exist.
        config.model.task = crate::config::Task::T2i;
        let err = args_from_config(&config, data.path()).err().unwrap();
        assert!(format!("{err:#}").contains("t5"), "{err:#}");
    }
}
