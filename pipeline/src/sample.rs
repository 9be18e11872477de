//! `llamagen sample`: class-conditional images from a GPT checkpoint and a VQ tokenizer, as
//! LlamaGen's `sample_c2i.py` / `sample_c2i_ddp.py` make them, written as `NNNNNN.png` plus an
//! ADM-style `samples.npz` (uint8 `arr_0`, [N, H, W, 3]) that `llamagen evaluate` reads.
//!
//! Sample i uses class `i % num_classes` (or `--classes`) and its own seed derived from
//! `--seed` and i, so a folder can be filled in any order, resumed after a kill (finished PNGs
//! are kept) and split across machines with `--start` / `--num-samples`, always drawing the same
//! tokens (pixels may differ by one level where a different batch shape changes the decoder's
//! float rounding).
//!
//! Under a launcher (torchrun, `srun`, an indexed Job: [`ProcessGroup::from_env`]) the ranks
//! share one output folder, on a file system they all see: rank r makes the samples whose
//! offset from `--start` is r modulo the world (LlamaGen's `sample_c2i_ddp.py` strides the same
//! way), on the GPU of its local rank, and rank 0 writes `samples.npz` once every rank is done.
//!
//! Text-to-image samples (`--prompts`) take prompt `i % prompts` and have it beside them as
//! `NNNNNN.txt` (the caption under each image of the dashboard's grid).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::provenance::file_sha256;
use anyhow::{Context as _, bail};
use llamagen_distributed::ProcessGroup;
use llamagen_models::generate::{Sampling, generate, generate_speculative};
use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::images::to_uint8_nhwc;
use llamagen_models::vq::{VqConfig, VqModel};
use llamagen_models::weights;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn::VarStore};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SampleArgs {
    /// GPT weights (safetensors from scripts/convert_llamagen.py or our trainer).
    #[arg(long)]
    pub gpt_ckpt: PathBuf,
    /// GPT size: B, L, XL, XXL, XXXL, 1B, 3B or 7B, as the config's model.size (LlamaGen's
    /// GPT-B ... spelling works too).
    #[arg(long, default_value = "GPT-B", conflicts_with = "gpt_config")]
    pub gpt_model: String,
    /// A JSON GptConfig instead of a named size (every field of models::gpt::GptConfig).
    #[arg(long)]
    pub gpt_config: Option<PathBuf>,
    #[command(flatten)]
    pub vq: VqArgs,
    /// Image side in pixels (256 or 384 for the released c2i models).
    #[arg(long, default_value_t = 256)]
    pub image_size: i64,
    /// Resize the decoded images to this side (bicubic, as LlamaGen's sample_c2i_ddp.py
    /// `--image-size-eval`; the paper evaluates its 384 px models at 256).
    #[arg(long)]
    pub image_size_eval: Option<i64>,
    /// Classes of a class-conditional GPT (ImageNet: 1000).
    #[arg(long, default_value_t = 1000)]
    pub num_classes: i64,
    /// Class ids to cycle through (comma-separated); default: every class in turn.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<i64>,
    /// Text-to-image: a file of prompts (LlamaGen's coco_captions.csv / PartiPrompts.tsv
    /// layout with a `Prompt` column, or one per line), cycled through like --classes.
    #[arg(long, requires = "t5")]
    pub prompts: Option<PathBuf>,
    /// Text-to-image: the FLAN-T5 export folder (scripts/export_t5.py) that embeds --prompts.
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// Samples to make (the FID protocol uses 50,000).
    #[arg(long, default_value_t = 16)]
    pub num_samples: u64,
    /// First sample index this process makes (to split a run across machines). Spell it
    /// `--first-sample` after `torchrun`, whose parser takes `--start` for its `--start-method`.
    #[arg(long, visible_alias = "first-sample", default_value_t = 0)]
    pub start: u64,
    /// Classifier-free guidance scale s in l_u + s (l_c - l_u); 1.0 disables guidance.
    #[arg(long, default_value_t = 1.5)]
    pub cfg_scale: f64,
    /// Stop guiding after this many tokens; -1 guides every token.
    #[arg(long, default_value_t = -1)]
    pub cfg_interval: i64,
    /// Keep the k most likely tokens; 0 keeps the whole codebook (the paper).
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches p; 1.0 keeps all.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Softmax temperature (the paper: 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Speculative Jacobi decoding (SJD) over this many positions per forward pass (the SJD
    /// paper uses 16; docs/models.md); 0 decodes one token per pass. The same distribution,
    /// other draws: a folder keeps the window it was started with.
    #[arg(long, default_value_t = 0)]
    pub jacobi_window: i64,
    /// Run seed; sample i draws from its own stream derived from the seed and i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Conditions per batch (doubled internally when guidance is on).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// cpu, cuda or auto (cuda when available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// GPT precision: fp32, or bf16 (CUDA only; the tokenizer stays fp32 as in LlamaGen).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Output folder for PNGs, samples.npz and sampling.json.
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// Skip writing samples.npz.
    #[arg(long)]
    pub no_npz: bool,
    /// Set by an evaluator whose claim on the checkpoint was lost: sampling stops after the
    /// batch in hand (the PNGs written so far stay valid for whoever resumes the folder).
    #[arg(skip)]
    #[serde(skip)]
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl SampleArgs {
    /// The sampler of a pipeline config: `[sample]`'s settings, `[evaluate]`'s prompts and
    /// image size, the tokenizer of `[encode]`, the classes of `[model]`; paths resolved under
    /// `data_dir`. The checkpoint is left empty (the evaluator sets it per checkpoint); bf16
    /// falls back to fp32 where `device` is not CUDA.
    pub fn from_config(
        config: &crate::config::PipelineConfig,
        data_dir: &Path,
        device: &str,
    ) -> anyhow::Result<Self> {
        use crate::config::{PipelineConfig, Precision, Task};
        let (ev, s, m) = (&config.evaluate, &config.sample, &config.model);
        let under = |p: &str| PipelineConfig::resolve(data_dir, p);
        let text = m.task == Task::T2i;
        let resolved = self::device(device)?;
        let precision = if s.precision != Precision::Fp32 && !resolved.is_cuda() {
            tracing::info!(
                "sample.precision {} needs CUDA; sampling in fp32 on {resolved:?}",
                s.precision.as_str()
            );
            Precision::Fp32
        } else {
            s.precision
        };
        Ok(SampleArgs {
            gpt_ckpt: PathBuf::new(),
            gpt_model: String::new(),
            gpt_config: None,
            vq: VqArgs::from_config(config, data_dir),
            image_size: i64::from(m.image_size),
            // The text-to-image protocol resizes every image itself (LANCZOS).
            image_size_eval: (!text && ev.eval_image_size != m.image_size)
                .then_some(i64::from(ev.eval_image_size)),
            num_classes: i64::from(m.num_classes),
            classes: Vec::new(),
            prompts: text.then(|| under(&ev.prompts)),
            t5: text.then(|| under(&config.encode.t5)),
            num_samples: u64::from(s.num_samples),
            start: 0,
            cfg_scale: s.cfg_scale,
            cfg_interval: i64::from(s.cfg_interval),
            top_k: i64::from(s.top_k),
            top_p: s.top_p,
            temperature: s.temperature,
            jacobi_window: i64::from(s.jacobi_window),
            seed: s.seed,
            batch_size: s.batch_size as usize,
            device: device.to_string(),
            precision: precision.as_str().to_string(),
            out: under(&ev.samples_output),
            no_npz: false,
            cancel: None,
        })
    }
}

/// The tokenizer: its weights and architecture (shared with `llamagen benchmark tokenizer`).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct VqArgs {
    /// VQ tokenizer weights (safetensors).
    #[arg(long)]
    pub vq_ckpt: PathBuf,
    /// VQ-16 or VQ-8.
    #[arg(long, default_value = "VQ-16", conflicts_with = "vq_config")]
    pub vq_model: String,
    /// A JSON VqConfig instead of a named tokenizer.
    #[arg(long)]
    pub vq_config: Option<PathBuf>,
    /// Codebook entries of the tokenizer (also the GPT vocabulary).
    #[arg(long, default_value_t = 16384)]
    pub codebook_size: i64,
    /// Dimension of each codebook entry (LlamaGen: 8).
    #[arg(long, default_value_t = 8)]
    pub codebook_embed_dim: i64,
}

impl VqArgs {
    /// The tokenizer of a pipeline config's `[encode]` section (the sampler decodes with the
    /// tokenizer the codes were made with); relative paths under `data_dir`.
    pub fn from_config(config: &crate::config::PipelineConfig, data_dir: &Path) -> Self {
        use crate::config::PipelineConfig;
        let e = &config.encode;
        Self {
            vq_ckpt: PipelineConfig::resolve(data_dir, &e.vq_checkpoint),
            vq_model: format!("VQ-{}", e.downsample),
            vq_config: (!e.vq_config.is_empty())
                .then(|| PipelineConfig::resolve(data_dir, &e.vq_config)),
            codebook_size: i64::from(e.codebook_size),
            codebook_embed_dim: i64::from(e.codebook_embed_dim),
        }
    }

    /// The architecture: the JSON file, or the named preset with the given codebook; dropout off.
    pub fn config(&self) -> anyhow::Result<VqConfig> {
        let mut vq = match &self.vq_config {
            Some(path) => read_json(path)?,
            None => {
                let mut c = VqConfig::named(&self.vq_model)?;
                c.codebook_size = self.codebook_size;
                c.codebook_embed_dim = self.codebook_embed_dim;
                c
            }
        };
        vq.dropout_p = 0.0;
        Ok(vq)
    }

    /// The tokenizer on `device` with its weights loaded (the VarStore owns them).
    pub fn load(&self, device: Device) -> anyhow::Result<(VarStore, VqModel)> {
        let vs = VarStore::new(device);
        let vq = VqModel::new(&vs.root(), self.config()?)?;
        weights::load_strict(&vs, &self.vq_ckpt)?;
        Ok((vs, vq))
    }
}

/// Everything that determines the images, stored as `sampling.json` next to them; a folder
/// refuses to be filled with different settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingRecord {
    pub gpt_ckpt_sha256: String,
    pub vq_ckpt_sha256: String,
    pub gpt: GptConfig,
    pub vq: VqConfig,
    pub image_size: i64,
    pub image_size_eval: i64,
    pub classes: Vec<i64>,
    /// The prompts of a text-to-image run, and the sha256 of the T5 encoder that embedded them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t5_sha256: Option<String>,
    pub cfg_scale: f64,
    pub cfg_interval: i64,
    pub top_k: i64,
    pub top_p: f64,
    pub temperature: f64,
    /// 0 (plain decoding) is left out, so folders sampled before SJD existed still match.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jacobi_window: i64,
    pub seed: u64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct SampleReport {
    pub made: u64,
    pub skipped: u64,
    pub gpt_seconds: f64,
    pub decode_seconds: f64,
    /// The GPT's forward passes after the prefill, summed over the images made: block_size - 1
    /// each when decoding one token per pass, fewer under speculative Jacobi decoding.
    pub forward_passes: u64,
    pub npz: Option<PathBuf>,
    /// The GPT's parameters ([`weights::parameter_count`]).
    pub gpt_params: i64,
}

/// The device a `--device` flag names; `auto` says in the log what it chose and why (once per
/// process: a pipeline resolves it for every stage, checkpoint and scale), and `cuda` without a
/// usable GPU is an error that says what is missing.
pub fn device(name: &str) -> anyhow::Result<Device> {
    static CHOICE_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let cuda = llamagen_native::torch::load_cuda();
    let device = match name {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
        "cuda" => bail!("--device cuda: libtorch sees no CUDA device ({cuda})"),
        other => bail!("--device must be cpu, cuda or auto, got {other:?}"),
    };
    if name == "auto" {
        let chosen = match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "the CPU".into(),
        };
        let count = tch::Cuda::device_count();
        let message = format!("--device auto chose {chosen}: {count} CUDA device(s), {cuda}");
        if CHOICE_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!("{message}");
        } else {
            tracing::info!("{message}");
        }
    }
    Ok(device)
}

/// [`device`] for one rank of `group`: on CUDA, the GPU of its local rank.
pub fn rank_device(name: &str, group: Option<&ProcessGroup>) -> anyhow::Result<Device> {
    Ok(on_rank(device(name)?, group))
}

/// The group a launcher described in the environment, for ranks that train on the device
/// `name` names, and this rank's device: NCCL on the GPU of its local rank, Gloo on CPUs
/// ([`ProcessGroup::from_env_for`]). `None` and the device itself for a single process.
pub fn join_for_training(name: &str) -> anyhow::Result<(Option<ProcessGroup>, Device)> {
    let device = device(name)?;
    let group = ProcessGroup::from_env_for(device)?;
    let device = on_rank(device, group.as_ref());
    Ok((group, device))
}

fn on_rank(device: Device, group: Option<&ProcessGroup>) -> Device {
    match (device, group) {
        (Device::Cuda(_), Some(g)) => Device::Cuda(g.local_rank()),
        (device, _) => device,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn configs(args: &SampleArgs) -> anyhow::Result<(GptConfig, VqConfig)> {
    let vq = args.vq.config()?;
    let f = vq.downsample();
    if args.image_size <= 0 || args.image_size % f != 0 {
        bail!(
            "--image-size {} is not a multiple of the tokenizer's downsample {f}",
            args.image_size
        );
    }
    let grid = args.image_size / f;
    let gpt = match &args.gpt_config {
        Some(path) => read_json::<GptConfig>(path)?,
        None => {
            let mut c = GptConfig::named(&args.gpt_model, Conditioning::Class, grid)?;
            c.vocab_size = vq.codebook_size;
            c.num_classes = args.num_classes;
            c
        }
    };
    let text = gpt.conditioning == Conditioning::Text;
    if text != args.prompts.is_some() {
        bail!(if text {
            "a text-conditioned GPT samples from --prompts FILE with --t5 EXPORT_FOLDER"
        } else {
            "--prompts needs a text-conditioned GPT (--gpt-config with conditioning t2i)"
        });
    }
    if gpt.block_size != grid * grid {
        bail!(
            "the GPT generates {} tokens per image but {} px at downsample {f} needs {}",
            gpt.block_size,
            args.image_size,
            grid * grid
        );
    }
    if gpt.vocab_size != vq.codebook_size {
        bail!(
            "GPT vocabulary {} differs from the codebook size {}",
            gpt.vocab_size,
            vq.codebook_size
        );
    }
    Ok((gpt, vq))
}

/// FLAN-T5 features of prompts as the GPT's prefix, as LlamaGen's sample_t2i.py makes them
/// (left padding, the padded rows zeroed by the mask), batch by batch: 30,000 COCO prompts
/// embedded at once would be 30 GB of features. Each prompt runs through T5 alone, so its
/// features never depend on which prompts share its batch (a resumed run's batches differ).
struct PromptEncoder {
    encoder: llamagen_encode::t5::T5Encoder,
    prefix: usize,
}

impl PromptEncoder {
    fn open(t5: &Path, gpt: &GptConfig, device: Device) -> anyhow::Result<Self> {
        let prefix = gpt.cls_token_num as usize;
        let encoder = llamagen_encode::t5::T5Encoder::open_on(
            t5,
            prefix,
            0,
            llamagen_native::onnx::OnnxDevice::of(device),
        )?;
        if encoder.spec.d_model as i64 != gpt.caption_dim {
            bail!(
                "the T5 encoder is {} wide but the GPT expects captions {} wide",
                encoder.spec.d_model,
                gpt.caption_dim
            );
        }
        Ok(Self { encoder, prefix })
    }

    /// [B, T, D] f32 with the valid tokens last, and the [B, T] bool mask of valid positions.
    fn embed(&mut self, prompts: &[&str]) -> anyhow::Result<(Tensor, Tensor)> {
        let prefix = self.prefix;
        let embedded = self.encoder.embed(prompts, 1)?;
        let d = self.encoder.spec.d_model;
        let mut features = vec![0f32; prompts.len() * prefix * d];
        let mut mask = vec![false; prompts.len() * prefix];
        for (p, e) in embedded.iter().enumerate() {
            let n = e.nrows().min(prefix);
            let start = (p * prefix + prefix - n) * d;
            for (dst, src) in features[start..start + n * d].iter_mut().zip(e.iter()) {
                *dst = *src;
            }
            for m in &mut mask[p * prefix + prefix - n..(p + 1) * prefix] {
                *m = true;
            }
        }
        let p = prompts.len() as i64;
        Ok((
            Tensor::from_slice(&features).view([p, prefix as i64, d as i64]),
            Tensor::from_slice(&mask).view([p, prefix as i64]),
        ))
    }
}

/// The prompts of a file: LlamaGen's layout (a tab-separated table whose header has a
/// `Prompt` column, as `evaluations/t2i/coco_captions.csv` and `PartiPrompts.tsv`, read as
/// pandas reads them with `delimiter='\t'`), or else one prompt per line. Blank lines are
/// skipped. Sample `i` takes prompt `i % count`.
pub fn read_prompts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    let column = lines
        .peek()
        .and_then(|header| header.split('\t').position(|f| f.trim() == "Prompt"));
    if column.is_some() {
        lines.next();
    }
    let prompts: Vec<String> = lines
        .map(|line| {
            let field = match column {
                Some(c) => line.split('\t').nth(c).unwrap_or(""),
                None => line,
            };
            unquote(field.trim())
        })
        .filter(|p| !p.is_empty())
        .collect();
    if prompts.is_empty() {
        bail!("{} holds no prompt", path.display());
    }
    Ok(prompts)
}

/// A CSV field as pandas reads it: quotes around it removed, doubled quotes inside made single.
fn unquote(field: &str) -> String {
    match field
        .strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .filter(|_| field.len() >= 2)
    {
        Some(inner) => inner.replace("\"\"", "\""),
        None => field.to_string(),
    }
}

/// Seed of sample `index`: the run seed in the high half, the index in the low half, so that no
/// two (seed, index) pairs below 2^32 share a stream.
pub fn sample_seed(seed: u64, index: u64) -> u64 {
    (seed << 32) ^ index
}

/// Samples in this process alone.
pub fn sample(args: &SampleArgs) -> anyhow::Result<SampleReport> {
    sample_on(args, None)
}

/// `llamagen sample`: alone, or as one rank of the group a launcher described in the
/// environment. The report comes back on rank 0 (or the lone process), `None` on the others.
pub fn sample_launched(args: &SampleArgs) -> anyhow::Result<Option<SampleReport>> {
    let group = ProcessGroup::from_env()?;
    let report = sample_on(args, group.as_ref())?;
    Ok(group.is_none_or(|g| g.rank() == 0).then_some(report))
}

/// Samples as one rank of `group` (see the module's documentation), or alone. The report's
/// counts and seconds are summed over the ranks.
pub fn sample_on(args: &SampleArgs, group: Option<&ProcessGroup>) -> anyhow::Result<SampleReport> {
    sample_with(args, group, &mut None)
}

/// The networks of a sampling run, kept for the next run that names the same weights,
/// architectures, device and precision: the scales of a sweep load their checkpoint once.
pub struct LoadedModels {
    /// Everything the networks were loaded from, as text.
    key: String,
    gpt_vs: VarStore,
    gpt: Gpt,
    _vq_vs: VarStore,
    vq: VqModel,
    prompt_encoder: Option<PromptEncoder>,
}

/// [`sample_on`], taking its networks from `models` when they were loaded from the same files
/// and settings, and leaving them there for the next call.
pub fn sample_with(
    args: &SampleArgs,
    group: Option<&ProcessGroup>,
    models: &mut Option<LoadedModels>,
) -> anyhow::Result<SampleReport> {
    let (gpt_config, vq_config) = configs(args)?;
    let sampling = Sampling {
        cfg_scale: args.cfg_scale,
        cfg_interval: args.cfg_interval,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        jacobi_window: args.jacobi_window,
    };
    sampling.validate()?;
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    if args.num_samples == 0 {
        bail!("--num-samples must be positive");
    }
    let classes: Vec<i64> = if args.classes.is_empty() {
        (0..gpt_config.num_classes).collect()
    } else {
        args.classes.clone()
    };
    if let Some(bad) = classes
        .iter()
        .find(|&&c| c < 0 || c >= gpt_config.num_classes)
    {
        bail!("class {bad} is outside 0..{}", gpt_config.num_classes);
    }
    let prompts = match &args.prompts {
        None => Vec::new(),
        Some(path) => read_prompts(path)?,
    };
    let image_size_eval = args.image_size_eval.unwrap_or(args.image_size);
    if image_size_eval <= 0 {
        bail!("--image-size-eval must be positive");
    }
    let device = rank_device(&args.device, group)?;
    let (rank, world) = group.map_or((0, 1), |g| (g.rank() as u64, g.world() as u64));
    let gpt_kind = match args.precision.as_str() {
        "fp32" => Kind::Float,
        "bf16" if device.is_cuda() => Kind::BFloat16,
        "bf16" => bail!("--precision bf16 needs CUDA; use fp32 on the CPU"),
        other => bail!("--precision must be fp32 or bf16, got {other:?}"),
    };

    let record = SamplingRecord {
        gpt_ckpt_sha256: file_sha256(&args.gpt_ckpt)?.0,
        vq_ckpt_sha256: file_sha256(&args.vq.vq_ckpt)?.0,
        gpt: gpt_config.clone(),
        vq: vq_config.clone(),
        image_size: args.image_size,
        image_size_eval,
        classes: if prompts.is_empty() {
            classes.clone()
        } else {
            Vec::new()
        },
        prompts: prompts.clone(),
        // The weights: the external data file of a large export, else the model file.
        t5_sha256: match &args.t5 {
            Some(dir) => {
                use llamagen_encode::t5::{EXTERNAL_DATA, FILES};
                let data = dir.join(EXTERNAL_DATA);
                let weights = if data.is_file() {
                    data
                } else {
                    dir.join(FILES[1])
                };
                Some(file_sha256(&weights)?.0)
            }
            None => None,
        },
        cfg_scale: args.cfg_scale,
        cfg_interval: args.cfg_interval,
        top_k: args.top_k,
        top_p: args.top_p,
        temperature: args.temperature,
        jacobi_window: args.jacobi_window,
        seed: args.seed,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Rank 0 writes the settings; the others check theirs against them.
    if rank == 0 {
        llamagen_shards::settings::pin(&args.out, "sampling.json", &record)?;
    }
    if let Some(g) = group {
        g.barrier()?;
        if rank != 0 {
            llamagen_shards::settings::pin(&args.out, "sampling.json", &record)?;
        }
    }

    let key = format!(
        "{:?}",
        (
            &args.gpt_ckpt,
            &record.gpt_ckpt_sha256,
            &gpt_config,
            &args.vq,
            &record.vq_ckpt_sha256,
            device,
            gpt_kind,
            &args.t5,
            &record.t5_sha256,
            prompts.is_empty(),
        )
    );
    // Networks of other settings are dropped here, before the new ones load, so that two sets
    // never share the device's memory.
    let kept = models.take().filter(|loaded| loaded.key == key);
    let loaded = match kept {
        Some(loaded) => loaded,
        None => {
            let prompt_encoder = match &args.t5 {
                Some(dir) if !prompts.is_empty() => {
                    Some(PromptEncoder::open(dir, &gpt_config, device)?)
                }
                _ => None,
            };
            let mut gpt_vs = VarStore::new(device);
            let gpt = Gpt::new(&gpt_vs.root(), gpt_config)?;
            weights::load_strict(&gpt_vs, &args.gpt_ckpt)?;
            gpt_vs.set_kind(gpt_kind);
            let (vq_vs, vq) = args.vq.load(device)?;
            LoadedModels {
                key,
                gpt_vs,
                gpt,
                _vq_vs: vq_vs,
                vq,
                prompt_encoder,
            }
        }
    };
    let LoadedModels {
        gpt_vs,
        gpt,
        vq,
        prompt_encoder,
        ..
    } = models.insert(loaded);

    let end = args.start + args.num_samples;
    let mine: Vec<u64> = (args.start..end)
        .filter(|&i| (i - args.start) % world == rank)
        .collect();
    let todo: Vec<u64> = mine
        .iter()
        .copied()
        .filter(|&i| !png_path(&args.out, i).is_file())
        .collect();
    let mut report = SampleReport {
        made: 0,
        skipped: (mine.len() - todo.len()) as u64,
        gpt_seconds: 0.0,
        forward_passes: 0,
        decode_seconds: 0.0,
        npz: None,
        gpt_params: weights::parameter_count(gpt_vs),
    };
    let bar = crate::progress::bar(todo.len() as u64, "images");
    for batch in todo.chunks(args.batch_size) {
        if args
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            bail!("sampling into {} was cancelled", args.out.display());
        }
        let labels: Vec<i64> = batch
            .iter()
            .map(|&i| classes[(i % classes.len() as u64) as usize])
            .collect();
        let seeds: Vec<u64> = batch.iter().map(|&i| sample_seed(args.seed, i)).collect();
        let (cond, prefix_mask) = match prompt_encoder {
            None => (Tensor::from_slice(&labels).to_device(device), None),
            Some(encoder) => {
                let batch_prompts: Vec<&str> =
                    batch.iter().map(|&i| nth_prompt(&prompts, i)).collect();
                let (features, mask) = encoder.embed(&batch_prompts)?;
                (
                    features.to_device(device).to_kind(gpt_kind),
                    Some(mask.to_device(device)),
                )
            }
        };
        let t = Instant::now();
        let codes = if sampling.jacobi_window > 0 {
            let (codes, stats) =
                generate_speculative(gpt, &cond, prefix_mask.as_ref(), &sampling, &seeds)?;
            report.forward_passes += stats.passes_per_sample.iter().sum::<i64>() as u64;
            codes
        } else {
            report.forward_passes += batch.len() as u64 * (gpt.config.block_size - 1) as u64;
            generate(gpt, &cond, prefix_mask.as_ref(), &sampling, &seeds)?
        };
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        report.gpt_seconds += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut images = tch::no_grad(|| vq.decode_codes(&codes))?;
        if image_size_eval != args.image_size {
            let side = [image_size_eval, image_size_eval];
            images = images.upsample_bicubic2d(side, false, None, None);
        }
        let pixels = to_uint8_nhwc(&images);
        report.decode_seconds += t.elapsed().as_secs_f64();
        for (row, &index) in batch.iter().enumerate() {
            if !prompts.is_empty() {
                // Before the PNG, which marks the sample finished.
                write_prompt(&args.out, index, nth_prompt(&prompts, index))?;
            }
            write_png(&args.out, index, &pixels.get(row as i64))?;
        }
        report.made += batch.len() as u64;
        bar.inc(batch.len() as u64);
        let status = format!(
            "{} / {} images ({:.2} s GPT, {:.2} s decode so far)",
            report.made + report.skipped,
            args.num_samples,
            report.gpt_seconds,
            report.decode_seconds
        );
        if bar.is_hidden() {
            tracing::info!("{status}");
        }
    }
    bar.finish_and_clear();
    if let Some(g) = group {
        // Waits for every rank's PNGs; a rank that failed has closed its connections and
        // fails this call instead.
        let sums = g.sum_f64(&[
            report.made as f64,
            report.skipped as f64,
            report.gpt_seconds,
            report.decode_seconds,
            report.forward_passes as f64,
        ])?;
        report.made = sums[0] as u64;
        report.skipped = sums[1] as u64;
        report.gpt_seconds = sums[2];
        report.decode_seconds = sums[3];
        report.forward_passes = sums[4] as u64;
    }
    if !args.no_npz {
        let path = args.out.join("samples.npz");
        if rank == 0 {
            write_npz(&args.out, args.start..end, &path).with_context(|| match group {
                Some(_) => "the ranks must share the output folder".to_string(),
                None => format!("writing {}", path.display()),
            })?;
        }
        if let Some(g) = group {
            g.barrier()?;
        }
        report.npz = Some(path);
    }
    Ok(report)
}

/// Where sample `index` of a folder is (`NNNNNN.png`).
pub(crate) fn png_path(out: &Path, index: u64) -> PathBuf {
    out.join(format!("{index:06}.png"))
}

/// pixels: [H, W, 3] uint8. Written under a temporary name and renamed, so a kill never leaves
/// a truncated PNG that a resumed run would take as finished.
fn write_png(out: &Path, index: u64, pixels: &Tensor) -> anyhow::Result<()> {
    let (h, w) = (pixels.size()[0] as u32, pixels.size()[1] as u32);
    let bytes = Vec::<u8>::try_from(&pixels.contiguous().view([-1]))?;
    let image = image::RgbImage::from_raw(w, h, bytes).context("pixel buffer size")?;
    let path = png_path(out, index);
    let tmp = path.with_extension("png.tmp");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The prompt of sample `index`: the prompts in turn. `prompts` is not empty.
fn nth_prompt(prompts: &[String], index: u64) -> &str {
    &prompts[(index % prompts.len() as u64) as usize]
}

/// `NNNNNN.txt`: the prompt of text-to-image sample `index`, renamed into place like the PNG.
fn write_prompt(out: &Path, index: u64, prompt: &str) -> anyhow::Result<()> {
    let path = png_path(out, index).with_extension("txt");
    let tmp = path.with_extension("txt.tmp");
    std::fs::write(&tmp, prompt).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// `samples.npz` from the PNGs `indices`, decoded and written one at a time: at 50,000 samples
/// its `arr_0` is 9.8 GB (256 x 256), which is never in memory.
fn write_npz(out: &Path, indices: std::ops::Range<u64>, path: &Path) -> anyhow::Result<()> {
    let set = sample_set(out, indices);
    let mut writer = None;
    set.visit(0..set.len(), &mut |label, image| {
        let (h, w, _) = image.dim();
        let writer = match &mut writer {
            Some(w) => w,
            None => writer.insert(llamagen_evaluate::npz::NpzWriter::create(
                path,
                Some((set.len(), h, w)),
            )?),
        };
        writer
            .push(image.view())
            .with_context(|| format!("adding {label}"))?;
        Ok(())
    })?;
    writer.context("no samples to write")?.finish(None, None)?;
    Ok(())
}

/// The sample PNGs `indices` of a folder, in sample order, as an image set read on demand.
pub fn sample_set(out: &Path, indices: std::ops::Range<u64>) -> crate::image_sets::ImageSet {
    crate::image_sets::ImageSet::files(indices.map(|i| png_path(out, i)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts_of(text: &str) -> anyhow::Result<Vec<String>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("prompts");
        std::fs::write(&path, text)?;
        read_prompts(&path)
    }

    #[test]
    fn prompts_come_from_llamagens_tables_or_one_per_line() {
        // coco_captions.csv: a lone `Prompt` header.
        assert_eq!(
            prompts_of("Prompt\nA red bus.\n\nTwo cats.\n").unwrap(),
            ["A red bus.", "Two cats."]
        );
        // PartiPrompts.tsv: the column among others, and a quoted field.
        assert_eq!(
            prompts_of("Prompt\tCategory\tChallenge\n\"A \"\"big\"\" dog\"\tAnimals\tBasic\nA tree\tPlants\tBasic\n")
                .unwrap(),
            ["A \"big\" dog", "A tree"]
        );
        // No header: every non-blank line is a prompt.
        assert_eq!(
            prompts_of("a photo of a cat\n  \na bowl of fruit\n").unwrap(),
            ["a photo of a cat", "a bowl of fruit"]
        );
        let err = prompts_of("Prompt\n\n").unwrap_err().to_string();
        assert!(err.contains("holds no prompt"), "{err}");
    }
}
