//! Training a VQ tokenizer (`llamagen train vq`), as LlamaGen's
//! `tokenizer/tokenizer_image/vq_train.py` does, on images from
//!
//! - a folder of webdataset shards (`llamagen ingest`'s output, or img2dataset's), or
//! - an ImageFolder (one subfolder per class; labels are not used),
//!
//! each image augmented as the reference's training transform does (`random_crop_arr`: the short
//! side scaled to a random length between the image size and 1.25 times it, a random square
//! crop; then a horizontal flip half the time). Every draw comes from the seed and the sample's
//! position in the run, so a resumed run sees what the uninterrupted one would.
//!
//! Each epoch visits the shards in a seeded order and each shard's images in a seeded order
//! (one shard in memory at a time; LlamaGen's sampler shuffles the whole set, which random
//! access into tar shards cannot afford). Which images a shard holds is read once and kept in
//! `OUT/images_index.json`, keyed by each shard's size and modification time; an image whose
//! header does not decode is left out there, one whose body fails later is replaced by the next
//! image of the order, with a warning.
//!
//! Checkpoints (`OUT/NNNNNNN.safetensors` + `.sha256`, see `llamagen_models::vq_train`) are
//! written every `--checkpoint-every` steps and at the end; `OUT/vq_config.json` holds the
//! architecture, so `llamagen benchmark tokenizer --vq-ckpt CHECKPOINT --vq-config
//! OUT/vq_config.json` measures any of them. A re-run with the same `--out` resumes from the
//! newest usable checkpoint. The model, its training run, the loss terms and the checkpoints
//! go to PostgreSQL (the model as a tokenizer).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use llamagen_encode::dataset::{mix, permutation};
use llamagen_encode::source::{Fingerprint, Sample, Shard};
use llamagen_models::train::MixedPrecision;
use llamagen_models::vq::VqConfig;
use llamagen_models::vq_loss::{DiscLoss, GenLoss, RecLoss, VqLossConfig};
use llamagen_models::vq_train::{VqStepLosses, VqTrainConfig, VqTrainer};
use llamagen_store::results::NewModel;
use tch::Tensor;

use crate::train::{checkpoints, resume_newest_usable};
use crate::training_record::{CheckpointRow, TrainingRecord, checkpoint_written, end_run};

/// Images per shard when the input is an ImageFolder.
const FOLDER_SHARD: usize = 1000;
/// Largest decoded image accepted (bytes of pixels), against decompression bombs.
const MAX_DECODED_BYTES: u64 = 512 << 20;
/// How far past a failing image the order is searched for one that decodes.
const REPLACEMENT_TRIES: u64 = 16;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct TrainVqArgs {
    /// Webdataset shards (`llamagen ingest` output) or an ImageFolder.
    #[arg(long)]
    pub images: PathBuf,
    /// LPIPS weights (`scripts/export_lpips.py`: torchvision's VGG16 and LPIPS' heads).
    #[arg(long)]
    pub lpips: PathBuf,
    /// VQ-16 or VQ-8 (LlamaGen's names).
    #[arg(long, default_value = "VQ-16", conflicts_with = "vq_config")]
    pub vq_model: String,
    /// A JSON VqConfig instead of a named tokenizer.
    #[arg(long)]
    pub vq_config: Option<PathBuf>,
    /// Codebook entries (with --vq-model).
    #[arg(long, default_value_t = 16384)]
    pub codebook_size: i64,
    /// Dimension of each codebook entry (with --vq-model).
    #[arg(long, default_value_t = 8)]
    pub codebook_embed_dim: i64,
    /// Commitment loss weight (the paper: 0.25; with --vq-model).
    #[arg(long, default_value_t = 0.25)]
    pub commit_loss_beta: f64,
    /// Entropy loss weight (LlamaGen: 0; with --vq-model).
    #[arg(long, default_value_t = 0.0)]
    pub entropy_loss_ratio: f64,
    /// Start from these tokenizer weights (a released checkpoint, converted, or one of ours)
    /// with a fresh discriminator and optimizers, as the paper's text-to-image fine-tune does.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Side of the training crops in pixels (LlamaGen: 256).
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub global_batch_size: usize,
    /// Constant learning rate of both networks.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// First-moment decay of both optimizers (LlamaGen: 0.9).
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// Second-moment decay of both optimizers (LlamaGen: 0.95).
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f64,
    /// Decoupled weight decay: 0 is LlamaGen's code (Adam), 0.05 its paper (AdamW).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Gradient norm limit of each network; 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// The first step with the adversarial losses (the paper: 20,000).
    #[arg(long, default_value_t = 20_000)]
    pub disc_start: i64,
    /// Weight of the adversarial losses (the paper's runs: 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub disc_weight: f64,
    /// hinge, vanilla or non-saturating.
    #[arg(long, default_value = "hinge")]
    pub disc_loss: DiscLoss,
    /// The tokenizer's adversarial loss: hinge or non-saturating.
    #[arg(long, default_value = "hinge")]
    pub gen_loss: GenLoss,
    /// l2 or l1.
    #[arg(long, default_value = "l2")]
    pub reconstruction_loss: RecLoss,
    /// Weight of the pixel reconstruction loss (LlamaGen: 1).
    #[arg(long, default_value_t = 1.0)]
    pub reconstruction_weight: f64,
    /// Weight of the LPIPS loss (LlamaGen: 1).
    #[arg(long, default_value_t = 1.0)]
    pub perceptual_weight: f64,
    /// Scale the adversarial term by the gradient ratio at the decoder's last layer.
    #[arg(long)]
    pub disc_adaptive_weight: bool,
    /// Compute LPIPS without its head dropout (LlamaGen trains with it on).
    #[arg(long)]
    pub no_perceptual_dropout: bool,
    /// Channels of the discriminator's first layer (LlamaGen: 64).
    #[arg(long, default_value_t = 64)]
    pub disc_channels: i64,
    /// Stride-2 layers of the discriminator (LlamaGen: 3).
    #[arg(long, default_value_t = 3)]
    pub disc_layers: i64,
    /// Keep an EMA of the tokenizer's weights with this decay (LlamaGen's --ema: 0.9999).
    #[arg(long, default_value_t = 0.0)]
    pub ema_decay: f64,
    /// Stop after this many steps in total.
    #[arg(long)]
    pub max_steps: i64,
    /// Steps between checkpoints (each registered in PostgreSQL); one is also written at the end.
    #[arg(long, default_value_t = 5000)]
    pub checkpoint_every: i64,
    /// Steps between loss records (printed and stored).
    #[arg(long, default_value_t = 100)]
    pub log_every: i64,
    /// Seed of the initialisation, the image order, the augmentation and the dropouts.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// bf16 (autocast on CUDA, LlamaGen's default) or fp32; the CPU computes in fp32. fp64
    /// keeps the networks and the arithmetic in float64, for checking (data parallelism
    /// against one process, say).
    #[arg(long = "precision", default_value = "bf16")]
    pub mixed_precision: MixedPrecision,
    /// Checkpoint folder; a run resumes from its newest checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Leaderboard name of the tokenizer being trained.
    #[arg(long)]
    pub model: String,
    /// Train without writing to PostgreSQL.
    #[arg(long)]
    pub no_record: bool,
    /// Print where training stands as JSON on stdout; progress goes to stderr.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
}

impl TrainVqArgs {
    fn vq_config(&self) -> anyhow::Result<VqConfig> {
        if let Some(path) = &self.vq_config {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_slice(&text)
                .with_context(|| format!("parsing {}", path.display()));
        }
        Ok(VqConfig {
            codebook_size: self.codebook_size,
            codebook_embed_dim: self.codebook_embed_dim,
            commit_loss_beta: self.commit_loss_beta,
            entropy_loss_ratio: self.entropy_loss_ratio,
            ..VqConfig::named(&self.vq_model)?
        })
    }

    fn train_config(&self) -> VqTrainConfig {
        VqTrainConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            seed: self.seed,
            mixed_precision: self.mixed_precision,
            ema_decay: self.ema_decay,
            loss: VqLossConfig {
                disc_start: self.disc_start,
                disc_weight: self.disc_weight,
                disc_adaptive_weight: self.disc_adaptive_weight,
                disc_loss: self.disc_loss,
                gen_loss: self.gen_loss,
                reconstruction_loss: self.reconstruction_loss,
                reconstruction_weight: self.reconstruction_weight,
                perceptual_weight: self.perceptual_weight,
                perceptual_dropout: !self.no_perceptual_dropout,
                discriminator: llamagen_models::patchgan::PatchGanConfig {
                    input_channels: 3,
                    channels: self.disc_channels,
                    layers: self.disc_layers,
                },
            },
            ..VqTrainConfig::default()
        }
    }
}

/// Which images of each shard are usable, as `OUT/images_index.json` keeps it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ImageIndex {
    shards: BTreeMap<String, IndexedShard>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct IndexedShard {
    fingerprint: Fingerprint,
    /// Images in the shard, in its order.
    images: usize,
    /// Positions (in the shard's order) of images whose header did not decode.
    unusable: Vec<usize>,
}

impl IndexedShard {
    fn usable(&self) -> usize {
        self.images - self.unusable.len()
    }
}

/// The training images: shards, their usable images, and the shard in memory.
struct Images {
    shards: Vec<Shard>,
    index: Vec<IndexedShard>,
    total: u64,
    seed: i64,
    /// The epoch whose shard order `order` is.
    order: Option<(u64, Vec<usize>)>,
    /// The shard in memory: (epoch, shard position in `shards`, its usable images, their
    /// order in that epoch).
    loaded: Option<(u64, usize, Vec<Sample>, Vec<usize>)>,
}

impl Images {
    fn open(input: &Path, out: &Path, seed: i64) -> anyhow::Result<Self> {
        let shards = llamagen_encode::source::shards(input, FOLDER_SHARD)?;
        let index_path = out.join("images_index.json");
        let mut cached: ImageIndex = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => ImageIndex::default(),
        };
        let mut index = Vec::with_capacity(shards.len());
        let mut changed = false;
        for shard in &shards {
            let fingerprint = shard.fingerprint()?;
            let entry = match cached.shards.get(shard.name()) {
                Some(e) if e.fingerprint == fingerprint => e.clone(),
                _ => {
                    let samples = shard.read()?;
                    let unusable = samples
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| image_dimensions(&s.bytes).is_err())
                        .map(|(i, _)| i)
                        .collect();
                    changed = true;
                    IndexedShard {
                        fingerprint,
                        images: samples.len(),
                        unusable,
                    }
                }
            };
            cached
                .shards
                .insert(shard.name().to_string(), entry.clone());
            index.push(entry);
        }
        if changed {
            std::fs::create_dir_all(out)?;
            // Per process: the ranks of a data-parallel run index the same images at once.
            let tmp = out.join(format!("images_index.json.tmp.{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(&cached)?)?;
            std::fs::rename(&tmp, &index_path)?;
        }
        let total: u64 = index.iter().map(|s| s.usable() as u64).sum();
        if total == 0 {
            bail!("{} holds no usable image", input.display());
        }
        let unusable: usize = index.iter().map(|s| s.unusable.len()).sum();
        println!(
            "{total} images in {} shard(s) of {}{}",
            shards.len(),
            input.display(),
            if unusable > 0 {
                format!(" ({unusable} left out: their headers do not decode)")
            } else {
                String::new()
            }
        );
        Ok(Images {
            shards,
            index,
            total,
            seed,
            order: None,
            loaded: None,
        })
    }

    /// The image at run position `position` (its bytes and key).
    fn get(&mut self, position: u64) -> anyhow::Result<&Sample> {
        let epoch = position / self.total;
        let mut offset = position % self.total;
        let epoch_key = self.seed as u64 ^ mix(epoch);
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order = Some((epoch, permutation(self.shards.len(), epoch_key)));
        }
        let order = &self.order.as_ref().context("the epoch's order is set")?.1;
        let mut chosen = None;
        for &shard in order {
            let n = self.index[shard].usable() as u64;
            if offset < n {
                chosen = Some(shard);
                break;
            }
            offset -= n;
        }
        let shard = chosen.context("position past the indexed images")?;
        if self
            .loaded
            .as_ref()
            .is_none_or(|(e, s, _, _)| (*e, *s) != (epoch, shard))
        {
            let unusable = &self.index[shard].unusable;
            let samples: Vec<Sample> = self.shards[shard]
                .read()?
                .into_iter()
                .enumerate()
                .filter(|(i, _)| unusable.binary_search(i).is_err())
                .map(|(_, s)| s)
                .collect();
            if samples.len() != self.index[shard].usable() {
                bail!(
                    "shard {} changed while training: {} usable images, the index says {}",
                    self.shards[shard].name(),
                    samples.len(),
                    self.index[shard].usable()
                );
            }
            let within = permutation(samples.len(), epoch_key ^ mix(shard as u64 + 1));
            self.loaded = Some((epoch, shard, samples, within));
        }
        let (_, _, samples, within) = self.loaded.as_ref().context("a shard is loaded")?;
        Ok(&samples[within[offset as usize]])
    }
}

/// Width and height from the header, within the decoded-size limit.
fn image_dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) * 3 > MAX_DECODED_BYTES {
        return Err(format!("{w}x{h} pixels"));
    }
    Ok((w, h))
}

/// The reference's training transform of one image: [size, size, 3] uint8.
fn augment(bytes: &[u8], size: usize, draw: u64) -> Result<ndarray::Array3<u8>, String> {
    image_dimensions(bytes)?;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let rgb = reader.decode().map_err(|e| e.to_string())?.to_rgb8();
    let (w, h) = rgb.dimensions();
    let array = ndarray::ArrayView3::from_shape((h as usize, w as usize, 3), rgb.as_raw())
        .map_err(|e| e.to_string())?;
    // random_crop_arr(min_crop_frac=0.8): the short side in size ..= ceil(size / 0.8).
    let longest = (size * 5).div_ceil(4);
    let short = size + (mix(draw) % (longest - size + 1) as u64) as usize;
    let picks = (mix(draw ^ 1), mix(draw ^ 2));
    let mut crop = llamagen_evaluate::center_crop::random_crop(array, size, short, picks)
        .map_err(|e| e.to_string())?;
    if mix(draw ^ 3) & 1 == 1 {
        crop.invert_axis(ndarray::Axis(1));
    }
    Ok(crop)
}

/// The batch at run positions `positions`: [B, 3, size, size] in [-1, 1] on `device`.
fn batch(
    images: &mut Images,
    positions: std::ops::Range<u64>,
    size: usize,
    seed: i64,
    device: tch::Device,
) -> anyhow::Result<Tensor> {
    let b = (positions.end - positions.start) as i64;
    let mut pixels: Vec<u8> = Vec::with_capacity(b as usize * size * size * 3);
    for position in positions {
        let draw = mix(seed as u64 ^ mix(position));
        let mut crop = None;
        for shift in 0..REPLACEMENT_TRIES {
            let sample = images.get(position + shift)?;
            match augment(&sample.bytes, size, draw) {
                Ok(c) => {
                    crop = Some(c);
                    break;
                }
                Err(e) => tracing::warn!(
                    "image {} does not decode ({e}); the next image of the order stands in",
                    sample.key
                ),
            }
        }
        let crop = crop.with_context(|| {
            format!("{REPLACEMENT_TRIES} images in a row from position {position} do not decode")
        })?;
        pixels.extend(crop.iter());
    }
    let nhwc = Tensor::from_slice(&pixels).view([b, size as i64, size as i64, 3]);
    Ok(llamagen_models::images::from_uint8_nhwc(
        &nhwc.to_device(device),
    ))
}

/// Where a tokenizer training run stands when `run` returns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainVqSummary {
    pub model: String,
    pub step: i64,
    /// Stopped by SIGTERM or Ctrl-C before `--max-steps`, after writing a checkpoint.
    pub stopped: bool,
    /// The last step this process ran; `None` when it ran none (already trained).
    pub last: Option<VqStepLosses>,
    pub checkpoint: Option<PathBuf>,
}

pub async fn run(args: &TrainVqArgs, data_dir: &Path) -> anyhow::Result<TrainVqSummary> {
    if args.global_batch_size == 0 || args.image_size == 0 {
        bail!("--global-batch-size and --image-size must be positive");
    }
    let (group, device) = crate::sample::join_for_training(&args.device)?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world()));
    if !args.global_batch_size.is_multiple_of(world) {
        bail!(
            "--global-batch-size {} does not split among {world} ranks",
            args.global_batch_size
        );
    }
    let local = args.global_batch_size / world;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let resumed = resume_newest_usable(&args.out, |path| {
        VqTrainer::resume(path, &args.lpips, device)
    })?;
    let resume_from = resumed.as_ref().map(|(path, _)| path.clone());
    let mut trainer = match resumed {
        Some((path, trainer)) => {
            println!("resuming from {}", path.display());
            trainer
        }
        None => {
            let mut trainer =
                VqTrainer::new(args.vq_config()?, args.train_config(), &args.lpips, device)?;
            if let Some(init) = &args.init_from {
                trainer
                    .init_from(init)
                    .with_context(|| format!("--init-from {}", init.display()))?;
                println!("starting from the weights of {}", init.display());
            }
            trainer
        }
    };
    if let Some(group) = &group {
        let mut variables = trainer.vs.trainable_variables();
        variables.extend(trainer.disc_vs.trainable_variables());
        crate::train::agree_on_the_start(group, trainer.step, &variables)?;
    }
    let vq_config = trainer.vq.config.clone();
    let downsample = vq_config.downsample() as usize;
    if !args.image_size.is_multiple_of(downsample) {
        bail!(
            "--image-size {} is not a multiple of the tokenizer's downsample {downsample}",
            args.image_size
        );
    }
    if rank == 0 {
        std::fs::write(
            args.out.join("vq_config.json"),
            serde_json::to_vec_pretty(&vq_config)?,
        )?;
    }
    let mut images = Images::open(&args.images, &args.out, trainer.config.seed)?;

    let config_json = serde_json::json!({
        "train": trainer.config, "vq": vq_config, "images": args.images.display().to_string(),
        "image_size": args.image_size, "global_batch_size": args.global_batch_size,
        "init_from": args.init_from.as_ref().map(|p| p.display().to_string()),
    });
    // Rank 0 alone records the run and writes checkpoints: every rank holds the same weights.
    let record = if args.no_record || rank != 0 {
        None
    } else {
        let params = llamagen_models::weights::parameter_count(&trainer.vs);
        let named = args.vq_config.is_none().then_some(args.vq_model.as_str());
        let model = NewModel {
            name: &args.model,
            kind: "tokenizer",
            architecture: "llamagen-vq",
            size: named,
            task: None,
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

    let started = Instant::now();
    let first_step = trainer.step;
    let mut last = None;
    let mut result = Ok(());
    // SIGTERM (Slurm preemption, a Kubernetes eviction) or Ctrl-C: finish the step in hand,
    // write a checkpoint, record the run as cancelled, exit 143.
    let stop = crate::signals::StopSignal::listen();
    let mut stopped = false;
    let bar = if rank == 0 {
        crate::progress::bar((args.max_steps - trainer.step).max(0) as u64, "steps")
    } else {
        indicatif::ProgressBar::hidden()
    };
    while trainer.step < args.max_steps {
        // Rank r takes the r-th contiguous share of the global batch's positions.
        let first = trainer.step as u64 * args.global_batch_size as u64 + (rank * local) as u64;
        let x = batch(
            &mut images,
            first..first + local as u64,
            args.image_size,
            trainer.config.seed,
            device,
        )?;
        let stepped = match &group {
            Some(group) => trainer.train_step_replicated(&x, &crate::train::Ranks::new(group)),
            None => trainer.train_step(&x),
        };
        let mut losses = match stepped {
            Ok(l) => l,
            Err(e) => {
                result = Err(anyhow::Error::from(e));
                break;
            }
        };
        let mut stop_here = stop.requested();
        if let Some(group) = &group {
            // The two logged totals are the global batch's (the terms beside them rank 0's),
            // and a stop asked of any rank stops all of them after the same step.
            match group.sum_f64(&[
                losses.generator,
                losses.discriminator,
                f64::from(u8::from(stop_here)),
            ]) {
                Ok(sums) => {
                    losses.generator = sums[0] / world as f64;
                    losses.discriminator = sums[1] / world as f64;
                    stop_here = sums[2] > 0.0;
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        let done = trainer.step;
        bar.inc(1);
        bar.set_message(format!("loss {:.4}", losses.generator));
        let epoch = trainer.images_seen as f64 / images.total as f64;
        let logging = done % args.log_every.max(1) == 0 || done == args.max_steps;
        let memory_mib =
            match logging.then(|| crate::train::peak_memory_mib(device, group.as_ref())) {
                Some(Err(e)) => {
                    result = Err(e);
                    break;
                }
                read => read.and_then(Result::ok).unwrap_or(f64::NAN),
            };
        if rank == 0 && logging {
            let rate = (done - first_step) as f64 * args.global_batch_size as f64
                / started.elapsed().as_secs_f64();
            crate::progress::println(
                &bar,
                format!(
                    "step {done:>7}  epoch {epoch:>7.3}  loss {:.4} (rec {:.4}, lpips {:.4}, adv {:.4}, vq {:.4}, commit {:.4})  disc {:.4}  usage {:.3}  {rate:.1} images/s  {memory_mib:.0} MiB",
                    losses.generator,
                    losses.reconstruction,
                    losses.perceptual,
                    losses.adversarial,
                    losses.codebook,
                    losses.commit,
                    losses.discriminator,
                    losses.codebook_usage
                ),
            );
            if let Some(record) = &record {
                let mut values = scalars(&losses, epoch);
                values.push(("images_per_s", rate));
                if memory_mib.is_finite() {
                    values.push(("memory_mib", memory_mib));
                }
                record.log(done, &values).await?;
            }
        }
        stopped = stop_here && done < args.max_steps;
        let checkpoint =
            done % args.checkpoint_every.max(1) == 0 || done == args.max_steps || stopped;
        if checkpoint && rank == 0 {
            let path = args.out.join(format!("{done:07}.safetensors"));
            let sha = trainer.save(&path)?;
            let row = CheckpointRow {
                path: &path,
                sha256: &sha,
                step: done,
                epoch,
                seen: trainer.images_seen,
                loss: losses.generator,
            };
            checkpoint_written(record.as_ref(), &bar, &row).await?;
        }
        last = Some(losses);
        if stopped {
            break;
        }
    }
    bar.finish_and_clear();
    if let (Some(group), Ok(())) = (&group, &result) {
        // Nobody leaves before rank 0's last checkpoint is in place.
        result = group.barrier().map_err(anyhow::Error::from);
    }
    end_run(record, &result, stopped, trainer.step).await?;
    result?;
    match &last {
        None => println!("already trained to step {}; nothing to do", trainer.step),
        Some(_) if stopped => {}
        Some(l) => println!(
            "trained to step {} (last loss {:.4})",
            trainer.step, l.generator
        ),
    }
    Ok(TrainVqSummary {
        model: args.model.clone(),
        step: trainer.step,
        stopped,
        last,
        checkpoint: checkpoints(&args.out)?.pop(),
    })
}

/// The logged scalars of a step; the entropy term only when it is on.
fn scalars(l: &VqStepLosses, epoch: f64) -> Vec<(&'static str, f64)> {
    let mut values = vec![
        ("loss", l.generator),
        ("reconstruction_loss", l.reconstruction),
        ("perceptual_loss", l.perceptual),
        ("adversarial_loss", l.adversarial),
        ("codebook_loss", l.codebook),
        ("commit_loss", l.commit),
        ("discriminator_loss", l.discriminator),
        ("logits_real", l.logits_real),
        ("logits_fake", l.logits_fake),
        ("epoch", epoch),
    ];
    if l.entropy != 0.0 {
        values.push(("entropy_loss", l.entropy));
    }
    if l.codebook_usage.is_finite() {
        values.push(("codebook_usage", l.codebook_usage));
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn augmentation_is_a_seeded_crop_and_flip() {
        let bytes = png(60, 40);
        let a = augment(&bytes, 32, 11).unwrap();
        assert_eq!(a.dim(), (32, 32, 3));
        assert_eq!(a, augment(&bytes, 32, 11).unwrap());
        let distinct = (0..16u64)
            .map(|d| augment(&bytes, 32, d).unwrap())
            .collect::<Vec<_>>();
        assert!(distinct.iter().any(|c| *c != a), "every draw gave one crop");
        assert!(augment(b"not an image", 32, 0).is_err());
        assert!(image_dimensions(&png(2, 2)).is_ok());
    }
}
