//! The pipeline configuration (`PIPELINE.toml`): one section per stage, every field with a
//! default that matches the paper or LlamaGen's code (docs/config.md says which, field by
//! field). Unknown keys are errors, so a misspelt threshold never silently falls back.

use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub pipeline: PipelineSection,
    pub ingest: IngestConfig,
    pub filter: FilterConfig,
    pub caption: CaptionConfig,
    pub encode: EncodeConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub sample: SampleConfig,
    pub evaluate: EvaluateConfig,
}

/// Records a new run of `config` in `pipeline_runs` (with the config, its hash and the git
/// revision); returns its id.
pub async fn record_pipeline_run(
    pool: &sqlx::PgPool,
    config: &PipelineConfig,
    trigger: llamagen_store::runs::Trigger,
    scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<i64, llamagen_store::StoreError> {
    let config_json = config.to_json();
    llamagen_store::runs::create_pipeline_run(
        pool,
        &llamagen_store::runs::NewPipelineRun {
            pipeline: &config.pipeline.name,
            trigger,
            config: &config_json,
            git_revision: crate::provenance::git_revision().as_deref(),
            scheduled_for,
        },
    )
    .await
}

/// A `pipeline.schedule` entry: standard 5-field cron (minute hour day month weekday), or 6
/// fields with seconds first; always in UTC.
pub fn parse_cron(entry: &str) -> anyhow::Result<croner::Cron> {
    let fields = entry.split_whitespace().count();
    ensure!(
        fields == 5 || fields == 6,
        "pipeline.schedule: {entry:?} has {fields} fields; cron needs 5 (or 6 with seconds first)"
    );
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(entry)
        .map_err(|e| anyhow::anyhow!("pipeline.schedule: {entry:?} is not a cron expression: {e}"))
}

/// A pipeline stage; the order of the variants is the pipeline's order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Ingest,
    Filter,
    Caption,
    Encode,
    Train,
    Sample,
    Evaluate,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 7] = [
        Stage::Ingest,
        Stage::Filter,
        Stage::Caption,
        Stage::Encode,
        Stage::Train,
        Stage::Sample,
        Stage::Evaluate,
    ];

    /// The name in configs, the database (`stage_runs.stage`) and the config's section.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Filter => "filter",
            Stage::Caption => "caption",
            Stage::Encode => "encode",
            Stage::Train => "train",
            Stage::Sample => "sample",
            Stage::Evaluate => "evaluate",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where `llamagen run` puts the stages that use a GPU (encode, train, sample, evaluate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// The first CUDA device when there is one, else the CPU (the log says which).
    #[default]
    Auto,
    Cpu,
    /// A GPU or an error: a GPU machine whose driver or libraries are broken fails at once
    /// instead of training on its CPU.
    Cuda,
}

impl DeviceChoice {
    /// The stage commands' `--device` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        }
    }
}

/// What the scheduler does with ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    /// Record the latest missed tick as skipped.
    Skip,
    /// Run once now, however many ticks were missed.
    RunOnce,
}

impl std::fmt::Display for MissedRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MissedRuns::Skip => "skip",
            MissedRuns::RunOnce => "run_once",
        })
    }
}

/// What conditions the GPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Class-conditional: a one-token class prefix (ImageNet).
    C2i,
    /// Text-to-image: a 120-token FLAN-T5 caption prefix.
    T2i,
}

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// LlamaGen's constant rate.
    Constant,
    /// Cosine decay to 0 at the last step.
    Cosine,
}

/// How AdamW's update is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AdamWKernel {
    /// libtorch's fused kernel (`torch.optim.AdamW(fused=True)`, as LlamaGen's train_c2i.py).
    Fused,
    /// The update written out operation by operation (ten kernels per parameter).
    Plain,
}

/// Compute precision on CUDA (the CPU computes in fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Bf16,
    Fp16,
    Fp32,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSection {
    /// Name under which runs are recorded and scheduled.
    pub name: String,
    /// Stages that `llamagen run` executes, in pipeline order.
    pub stages: Vec<Stage>,
    /// Cron entries (5 fields, UTC) for `llamagen schedule`.
    pub schedule: Vec<String>,
    /// What the scheduler does with ticks missed while it was down.
    pub missed_runs: MissedRuns,
    /// The device of the stages that use a GPU.
    pub device: DeviceChoice,
}

impl PipelineSection {
    /// `ingest -> filter -> ...`
    pub fn stages_text(&self) -> String {
        let names: Vec<&str> = self.stages.iter().map(|s| s.as_str()).collect();
        names.join(" -> ")
    }
}

impl Default for PipelineSection {
    fn default() -> Self {
        Self {
            name: "laion-coco-t2i".into(),
            stages: Stage::ALL.to_vec(),
            schedule: Vec::new(),
            missed_runs: MissedRuns::Skip,
            device: DeviceChoice::Auto,
        }
    }
}

pub use llamagen_caption::config::CaptionConfig;
pub use llamagen_encode::config::EncodeConfig;
pub use llamagen_filter::config::FilterConfig;
pub use llamagen_ingest::config::{IngestConfig, MetadataFilter};

/// The GPT (LlamaGen sizes and its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// B, L, XL, XXL, XXXL, 1B, 3B or 7B.
    pub size: String,
    /// A JSON GptConfig for a GPT of another shape (its conditioning must match `task`);
    /// empty: the named `size` with the keys below.
    pub gpt_config: String,
    /// c2i (class prefix, 1 token) or t2i (FLAN-T5 prefix, 120 tokens).
    pub task: Task,
    pub vocab_size: u32,
    pub num_classes: u32,
    pub caption_dim: u32,
    pub image_size: u32,
    pub downsample: u32,
    pub rope_base: f64,
    pub token_dropout: f64,
    pub attn_dropout: f64,
    pub resid_dropout: f64,
    pub ffn_dropout: f64,
    pub drop_path: f64,
    pub class_dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            size: "XL".into(),
            gpt_config: String::new(),
            task: Task::T2i,
            vocab_size: 16384,
            num_classes: 1000,
            caption_dim: 2048,
            image_size: 256,
            downsample: 16,
            rope_base: 10000.0,
            token_dropout: 0.1,
            attn_dropout: 0.0,
            resid_dropout: 0.1,
            ffn_dropout: 0.1,
            drop_path: 0.0,
            class_dropout: 0.1,
        }
    }
}

impl ModelConfig {
    /// Condition prefix length: 1 class token, or 120 T5 tokens.
    pub fn prefix_tokens(&self) -> u32 {
        if self.task == Task::C2i { 1 } else { 120 }
    }

    /// Image tokens per sample (256 for 256 px at downsample 16).
    pub fn image_tokens(&self) -> u32 {
        (self.image_size / self.downsample).pow(2)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub global_batch_size: u32,
    pub gradient_accumulation: u32,
    /// Learning rate per 256 samples of global batch; scaled linearly to the real batch.
    pub lr_per_256: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub epochs: u32,
    pub warmup_steps: u32,
    /// constant (LlamaGen) or cosine.
    pub lr_schedule: LrSchedule,
    /// bf16 or fp32 (fp16 would need a gradient scaler, which the trainer does not have).
    pub precision: Precision,
    pub ema: bool,
    pub ema_decay: f64,
    pub checkpoint_every: u32,
    pub log_every: u32,
    pub seed: u64,
    /// Checkpoint folder (relative paths are under the data folder).
    pub output: String,
    /// Weights a fresh run starts from (a checkpoint of any image size, or converted LlamaGen
    /// weights), with a fresh optimizer; empty for a random initialisation.
    pub init_from: String,
    /// Data-parallel runs: each rank keeps and updates AdamW's state for its share of the
    /// parameters only (ZeRO stage 1).
    pub shard_optimizer: bool,
    /// Data-parallel runs: reduce the gradients after the backward pass, not during it.
    pub reduce_after_backward: bool,
    /// Recompute each block in the backward pass instead of keeping its activations.
    pub activation_checkpointing: bool,
    /// fused (libtorch's fused AdamW kernel) or plain.
    pub adamw: AdamWKernel,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            global_batch_size: 256,
            gradient_accumulation: 1,
            lr_per_256: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.05,
            grad_clip: 1.0,
            epochs: 300,
            warmup_steps: 0,
            lr_schedule: LrSchedule::Constant,
            precision: Precision::Bf16,
            ema: false,
            ema_decay: 0.9999,
            checkpoint_every: 5000,
            log_every: 100,
            seed: 0,
            output: "checkpoints".into(),
            init_from: String::new(),
            shard_optimizer: false,
            reduce_after_backward: false,
            activation_checkpointing: false,
            adamw: AdamWKernel::Fused,
        }
    }
}

impl TrainConfig {
    /// The learning rate for the configured global batch (1e-4 per 256, scaled linearly).
    pub fn learning_rate(&self) -> f64 {
        self.lr_per_256 * f64::from(self.global_batch_size) / 256.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// Classifier-free guidance scale; 1.0 is no guidance.
    pub cfg_scale: f64,
    /// Stop guiding after this many tokens; -1 guides every token.
    pub cfg_interval: i32,
    /// 0 keeps the whole vocabulary.
    pub top_k: u32,
    pub top_p: f64,
    pub temperature: f64,
    /// Speculative Jacobi decoding over this many positions per forward pass; 0 is off.
    pub jacobi_window: u32,
    pub num_samples: u32,
    pub batch_size: u32,
    pub seed: u64,
    pub precision: Precision,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            cfg_scale: 7.5,
            cfg_interval: -1,
            top_k: 0,
            top_p: 1.0,
            temperature: 1.0,
            jacobi_window: 0,
            num_samples: 30_000,
            batch_size: 32,
            seed: 0,
            precision: Precision::Bf16,
        }
    }
}

/// The benchmark protocol of the pipeline's checkpoints: which are evaluated, against what, and
/// how their samples are compared (the sampling itself is `[sample]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluateConfig {
    /// Leaderboard benchmark name, e.g. imagenet256-c2i.
    pub benchmark: String,
    /// The reference set: an ADM-style npz (images and/or mu/sigma), or a folder of images or
    /// of webdataset shards (center-cropped to `eval_image_size`). Text-to-image: a folder (COCO
    /// val2014), each image's centre square resized to `eval_image_size`.
    pub reference: String,
    pub inception_model: String,
    /// Text-to-image: the CLIP export (scripts/export_filter_models.py, OpenAI's ViT-B/32) for
    /// CLIP-FID and the CLIP score.
    pub clip_model: String,
    /// Generated images are resized to this before feature extraction (text-to-image: the
    /// protocol's evaluation resolution, LANCZOS).
    pub eval_image_size: u32,
    /// The metrics recorded (FID, sFID, IS, precision, recall, KID for class-conditional
    /// models; FID, KID, CLIP-FID, CLIP score for text-to-image ones).
    pub metrics: Vec<String>,
    /// Guidance scales to sweep; empty evaluates `sample.cfg_scale` only.
    pub cfg_sweep: Vec<f64>,
    /// 0: the final checkpoint of each finished training run; N: also every checkpoint whose
    /// step is a multiple of N, as soon as training registers it.
    pub checkpoint_every: u64,
    /// Models whose checkpoints are evaluated; empty: the model this pipeline trains.
    pub models: Vec<String>,
    /// Text-to-image: the prompts file the checkpoints sample from (LlamaGen's
    /// `coco_captions.csv` layout, a `Prompt` column, or one prompt per line).
    pub prompts: String,
    /// Where the sample folders go (relative paths are under the data folder).
    pub samples_output: String,
    /// What each scale's sample folder keeps once its checkpoint's result is recorded.
    pub keep_samples: crate::benchmark::KeepSamples,
    /// Half-sample resamples behind each 95% confidence interval (FID, KID); 0: none.
    pub interval_resamples: u32,
    /// Blocks of random samples, half of which each resample keeps.
    pub interval_blocks: u32,
    pub interval_seed: u32,
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        Self {
            benchmark: "coco30k-t2i".into(),
            reference: "references/coco/val2014".into(),
            inception_model: "weights/pt_inception-2015-12-05.onnx".into(),
            clip_model: "weights/clip-vit-b-32".into(),
            eval_image_size: 256,
            metrics: GENERATOR_METRICS.map(String::from).to_vec(),
            cfg_sweep: Vec::new(),
            checkpoint_every: 0,
            models: Vec::new(),
            prompts: "references/coco_captions.csv".into(),
            samples_output: "samples".into(),
            keep_samples: crate::benchmark::KeepSamples::All,
            interval_resamples: 100,
            interval_blocks: 64,
            interval_seed: 0,
        }
    }
}

/// What a generator evaluation can record (sFID, IS, precision and recall under the ADM
/// protocol, CLIP-FID and CLIP score under the text-to-image one). KID brings its standard
/// deviation over subsets (`kid_std`) with it.
pub const GENERATOR_METRICS: [&str; 8] = [
    "fid",
    "sfid",
    "inception_score",
    "precision",
    "recall",
    "kid",
    "clip_fid",
    "clip_score",
];

impl PipelineConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading pipeline config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in pipeline config {}", path.display()))
    }

    /// Reads a config file with `KEY=VALUE` overrides applied (`--set train.epochs=1`,
    /// `--set 'evaluate.cfg_sweep=[1.5, 2.0]'`): dotted keys, the value read as TOML, or as a
    /// string when it is not TOML. An override of an unknown key is refused like a misspelt
    /// key in the file.
    pub fn load_with(path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        if overrides.is_empty() {
            return Self::load(path);
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading pipeline config {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("in pipeline config {}", path.display()))?;
        for o in overrides {
            set(&mut table, o)?;
        }
        let config: Self = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("in pipeline config {} with --set", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML, every field written out.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The leaderboard name of the model the train stage trains: `<pipeline>-GPT-<size>`, or
    /// `<pipeline>-GPT` for a `model.gpt_config` architecture.
    pub fn trained_model_name(&self) -> String {
        if self.model.gpt_config.is_empty() {
            format!("{}-GPT-{}", self.pipeline.name, self.model.size)
        } else {
            format!("{}-GPT", self.pipeline.name)
        }
    }

    /// A path of the config, relative ones under the data folder: the one rule every stage
    /// (and `config check`) resolves paths by.
    pub fn resolve(data_dir: &Path, path: &str) -> std::path::PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            data_dir.join(path)
        }
    }

    /// The paths the config's stages read or write, by key, as they resolve them (what
    /// `config check` shows).
    pub fn paths(&self, data_dir: &Path) -> Vec<(&'static str, std::path::PathBuf)> {
        let (i, e, ev) = (&self.ingest, &self.encode, &self.evaluate);
        let has = |stages: &[Stage]| stages.iter().any(|s| self.pipeline.stages.contains(s));
        let text = self.model.task == Task::T2i;
        let benchmarks = has(&[Stage::Sample, Stage::Evaluate]);
        let mut paths = Vec::new();
        let mut add = |used: bool, key: &'static str, path: &str| {
            if used && !path.is_empty() {
                paths.push((key, Self::resolve(data_dir, path)));
            }
        };
        add(has(&[Stage::Ingest]), "ingest.input", &i.input);
        let shards = has(&[Stage::Ingest, Stage::Filter, Stage::Caption, Stage::Encode]);
        add(shards, "ingest.output", &i.output);
        add(has(&[Stage::Filter]), "filter.models", &self.filter.models);
        let tokenizer = has(&[Stage::Encode]) || benchmarks;
        add(tokenizer, "encode.vq_checkpoint", &e.vq_checkpoint);
        add(tokenizer, "encode.vq_config", &e.vq_config);
        add(text && tokenizer, "encode.t5", &e.t5);
        let codes = has(&[Stage::Encode, Stage::Train]);
        add(codes, "encode.codes_output", &e.codes_output);
        add(text && codes, "encode.t5_output", &e.t5_output);
        add(
            has(&[Stage::Train]),
            "model.gpt_config",
            &self.model.gpt_config,
        );
        add(has(&[Stage::Train]), "train.output", &self.train.output);
        add(benchmarks, "evaluate.reference", &ev.reference);
        add(benchmarks, "evaluate.inception_model", &ev.inception_model);
        add(text && benchmarks, "evaluate.prompts", &ev.prompts);
        add(text && benchmarks, "evaluate.clip_model", &ev.clip_model);
        add(benchmarks, "evaluate.samples_output", &ev.samples_output);
        paths
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.pipeline;
        ensure!(!p.name.trim().is_empty(), "pipeline.name is empty");
        ensure!(
            p.stages.windows(2).all(|w| w[0] < w[1]),
            "pipeline.stages must be in pipeline order without repeats ({})",
            Stage::ALL.map(Stage::as_str).join(", ")
        );
        for entry in &p.schedule {
            parse_cron(entry)?;
        }

        let i = &self.ingest;
        ensure!(
            i.rows_per_shard > 0,
            "ingest.rows_per_shard must be positive"
        );
        ensure!(i.concurrency > 0, "ingest.concurrency must be positive");
        ensure!(
            (1..=64).contains(&i.open_shards),
            "ingest.open_shards must be in 1..=64"
        );
        ensure!(
            i.timeout_secs.is_finite() && i.timeout_secs > 0.0,
            "ingest.timeout_secs must be positive"
        );
        ensure!(i.image_size > 0, "ingest.image_size must be positive");
        ensure!(
            (1..=100).contains(&i.jpeg_quality),
            "ingest.jpeg_quality must be in 1..=100"
        );
        one_of(
            "ingest.resize_mode",
            &i.resize_mode,
            &["no", "keep_ratio", "center_crop", "border"],
        )?;
        let m = &i.metadata_filter;
        probability("ingest.metadata_filter.max_watermark", m.max_watermark)?;
        probability("ingest.metadata_filter.max_unsafe", m.max_unsafe)?;
        ensure!(
            (-1.0..=1.0).contains(&m.min_clip_similarity),
            "ingest.metadata_filter.min_clip_similarity must be a cosine in [-1, 1]"
        );
        ensure!(
            (0.0..=10.0).contains(&m.min_aesthetic),
            "ingest.metadata_filter.min_aesthetic must be in [0, 10]"
        );
        ensure!(
            m.max_aspect_ratio >= 1.0,
            "ingest.metadata_filter.max_aspect_ratio must be >= 1"
        );
        if let Some(rule) = m.r#where.as_deref().filter(|w| !w.trim().is_empty()) {
            llamagen_ingest::sql_rule::SqlRule::parse(rule)?;
        }
        ensure!(
            i.proxy.is_empty() || i.proxy.starts_with("http://") || i.proxy.starts_with("https://"),
            "ingest.proxy must be empty or an http(s) URL"
        );

        self.filter.validate().map_err(anyhow::Error::msg)?;
        self.caption.validate().map_err(anyhow::Error::msg)?;
        self.encode.validate().map_err(anyhow::Error::msg)?;

        let md = &self.model;
        let sizes = llamagen_models::gpt::SIZES.map(|s| s.0.trim_start_matches("GPT-"));
        ensure!(
            sizes.contains(&md.size.as_str()),
            "model.size {:?} is not one of {}",
            md.size,
            sizes.join(", ")
        );
        ensure!(
            md.downsample > 0 && md.image_size.is_multiple_of(md.downsample),
            "model.image_size must be a multiple of model.downsample"
        );
        for (name, v) in [
            ("token_dropout", md.token_dropout),
            ("attn_dropout", md.attn_dropout),
            ("resid_dropout", md.resid_dropout),
            ("ffn_dropout", md.ffn_dropout),
            ("drop_path", md.drop_path),
            ("class_dropout", md.class_dropout),
        ] {
            ensure!((0.0..1.0).contains(&v), "model.{name} must be in [0, 1)");
        }

        let t = &self.train;
        ensure!(
            t.global_batch_size > 0,
            "train.global_batch_size must be positive"
        );
        ensure!(
            t.gradient_accumulation > 0
                && t.global_batch_size.is_multiple_of(t.gradient_accumulation),
            "train.global_batch_size must be a multiple of train.gradient_accumulation"
        );
        ensure!(
            t.lr_per_256.is_finite() && t.lr_per_256 > 0.0,
            "train.lr_per_256 must be positive"
        );
        ensure!(
            (0.0..1.0).contains(&t.beta1) && (0.0..1.0).contains(&t.beta2),
            "train.beta1 and train.beta2 must be in [0, 1)"
        );
        ensure!(
            t.weight_decay >= 0.0 && t.grad_clip >= 0.0,
            "train.weight_decay and train.grad_clip must be >= 0"
        );
        // fp16 needs a gradient scaler, which the trainer does not have; bf16 does not.
        ensure!(
            t.precision != Precision::Fp16,
            "train.precision = fp16 is not supported (no gradient scaler): use bf16 or fp32"
        );
        ensure!(
            (0.0..1.0).contains(&t.ema_decay),
            "train.ema_decay must be in [0, 1)"
        );
        ensure!(
            t.checkpoint_every > 0,
            "train.checkpoint_every must be positive"
        );

        let s = &self.sample;
        ensure!(
            s.cfg_scale.is_finite() && s.cfg_scale >= 1.0,
            "sample.cfg_scale must be >= 1 (1 disables guidance)"
        );
        ensure!(
            s.top_p > 0.0 && s.top_p <= 1.0,
            "sample.top_p must be in (0, 1]"
        );
        ensure!(
            s.temperature.is_finite() && s.temperature > 0.0,
            "sample.temperature must be positive"
        );
        ensure!(
            s.top_k <= md.vocab_size,
            "sample.top_k must not exceed model.vocab_size"
        );
        ensure!(
            s.num_samples > 0 && s.batch_size > 0,
            "sample.num_samples and sample.batch_size must be positive"
        );

        let ev = &self.evaluate;
        for metric in &ev.metrics {
            ensure!(
                GENERATOR_METRICS.contains(&metric.as_str()),
                "evaluate.metrics: unknown metric {metric:?} (a generator benchmark records {})",
                GENERATOR_METRICS.join(", ")
            );
        }
        ensure!(!ev.metrics.is_empty(), "evaluate.metrics is empty");
        ensure!(
            ev.interval_resamples == 0 || (ev.interval_resamples >= 10 && ev.interval_blocks >= 2),
            "evaluate.interval_resamples must be 0 (no intervals) or at least 10, with interval_blocks at least 2"
        );
        ensure!(
            ev.eval_image_size > 0,
            "evaluate.eval_image_size must be positive"
        );
        ensure!(
            !ev.benchmark.trim().is_empty(),
            "evaluate.benchmark is empty"
        );
        for cfg in &ev.cfg_sweep {
            ensure!(
                cfg.is_finite() && *cfg >= 1.0,
                "evaluate.cfg_sweep: {cfg} must be >= 1"
            );
        }
        Ok(())
    }
}

/// Applies one `a.b.c=VALUE` override to a config table.
fn set(table: &mut toml::Table, assignment: &str) -> anyhow::Result<()> {
    let Some((key, value)) = assignment.split_once('=') else {
        bail!("--set {assignment:?}: expected KEY=VALUE, e.g. train.epochs=1");
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, sections) = parts.split_last().context("--set: empty key")?;
    let mut at = table;
    for section in sections {
        at = at
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {key}: {section} is not a section"))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> anyhow::Result<()> {
    ensure!(
        allowed.contains(&value),
        "{key} = {value:?} is not one of {}",
        allowed.join(", ")
    );
    Ok(())
}

fn probability(key: &str, value: f64) -> anyhow::Result<()> {
    ensure!(
        (0.0..=1.0).contains(&value),
        "{key} must be a probability in [0, 1]"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_stages_device_is_a_closed_choice_passed_to_their_flags() {
        assert_eq!(
            PipelineConfig::default().pipeline.device,
            DeviceChoice::Auto
        );
        let cuda = PipelineConfig::parse("[pipeline]\ndevice = \"cuda\"\n").unwrap();
        assert_eq!(cuda.pipeline.device.as_str(), "cuda");
        let err = PipelineConfig::parse("[pipeline]\ndevice = \"gpu\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("gpu"), "{err:#}");
        let encode = crate::stages::encode::VqEncodeArgs::from_config(&cuda, Path::new("/data"));
        assert_eq!(encode.device, "cuda");
    }

    /// A config file is input too: the shipped configs with a value swapped for an extreme
    /// one, a line dropped or a line doubled are refused or accepted, never a panic, and what
    /// is accepted builds every stage's settings.
    #[test]
    fn mutated_configs_are_refused_or_accepted_never_a_panic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let extremes = [
            "-1",
            "0",
            "1e308",
            "-1e308",
            "nan",
            "inf",
            "-inf",
            "\"\"",
            "[]",
            "{}",
            "18446744073709551615",
            "-9223372036854775808",
            "4294967296",
            "true",
            "\"../../x\"",
            "[1e308, -1]",
        ];
        // xorshift64: a fixed sequence, so a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let mut files: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{files:?}");
        let mut accepted = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for _ in 0..400 {
                let mut mutated: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                let i = next() % mutated.len();
                match next() % 3 {
                    0 => {
                        if let Some((key, _)) = mutated[i].split_once('=') {
                            mutated[i] = format!("{key}= {}", extremes[next() % extremes.len()]);
                        }
                    }
                    1 => {
                        mutated.remove(i);
                    }
                    _ => mutated.insert(i, mutated[i].clone()),
                }
                let text = mutated.join("\n");
                let outcome = std::panic::catch_unwind(|| {
                    let Ok(c) = PipelineConfig::parse(&text) else {
                        return false;
                    };
                    let data = Path::new("data");
                    let _ = (
                        c.to_toml(),
                        c.paths(data),
                        c.trained_model_name(),
                        c.to_json(),
                    );
                    let _ = crate::sample::SampleArgs::from_config(&c, data, "cpu");
                    let _ = crate::stages::encode::VqEncodeArgs::from_config(&c, data);
                    let _ = crate::stages::encode::T5Args::from_config(&c, data);
                    true
                });
                match outcome {
                    Ok(ok) => accepted += usize::from(ok),
                    Err(_) => panic!("{}: panicked on\n{text}", file.display()),
                }
            }
        }
        assert!(accepted > 0, "some mutations are harmless and accepted");
    }

    #[test]
    fn defaults_follow_the_paper() {
        let c = PipelineConfig::default();
        c.validate().unwrap();
        assert_eq!(c.train.learning_rate(), 1e-4);
        assert_eq!(
            (
                c.train.beta1,
                c.train.beta2,
                c.train.weight_decay,
                c.train.grad_clip
            ),
            (0.9, 0.95, 0.05, 1.0)
        );
        assert_eq!(
            (
                c.model.token_dropout,
                c.model.resid_dropout,
                c.model.ffn_dropout,
                c.model.class_dropout
            ),
            (0.1, 0.1, 0.1, 0.1)
        );
        assert_eq!(
            (c.sample.top_k, c.sample.top_p, c.sample.temperature),
            (0, 1.0, 1.0)
        );
        assert_eq!(
            (
                c.encode.codebook_size,
                c.encode.codebook_embed_dim,
                c.encode.downsample
            ),
            (16384, 8, 16)
        );
        assert_eq!(c.encode.t5_max_length, 120);
        assert_eq!(
            c.caption.prompt,
            "Describe this image in as much detail as possible"
        );
        assert_eq!(
            (c.model.prefix_tokens(), c.model.image_tokens()),
            (120, 256)
        );
    }

    #[test]
    fn learning_rate_scales_with_the_global_batch() {
        let t = TrainConfig {
            global_batch_size: 1024,
            ..Default::default()
        };
        assert!((t.learning_rate() - 4e-4).abs() < 1e-12);
    }

    #[test]
    fn round_trips_through_toml() {
        let c = PipelineConfig::default();
        assert_eq!(PipelineConfig::parse(&c.to_toml().unwrap()).unwrap(), c);
    }

    #[test]
    fn partial_files_keep_defaults_for_the_rest() {
        let c = PipelineConfig::parse(
            "[sample]\ncfg_scale = 2.0\n[model]\ntask = \"c2i\"\nsize = \"B\"\n",
        )
        .unwrap();
        assert_eq!(c.sample.cfg_scale, 2.0);
        assert_eq!(c.model.prefix_tokens(), 1);
        assert_eq!(c.train, TrainConfig::default());
    }

    #[test]
    fn overrides_set_keys_as_toml_or_as_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[pipeline]\nname = \"p\"\n[train]\nepochs = 3\n").unwrap();
        let sets = [
            "train.epochs=1",
            "ingest.input=demo/*.parquet",
            "evaluate.cfg_sweep=[1.5, 2.0]",
            "ingest.metadata_filter.min_aesthetic=4.5",
        ]
        .map(String::from);
        let c = PipelineConfig::load_with(&path, &sets).unwrap();
        assert_eq!(c.train.epochs, 1);
        assert_eq!(c.ingest.input, "demo/*.parquet");
        assert_eq!(c.evaluate.cfg_sweep, [1.5, 2.0]);
        assert_eq!(c.ingest.metadata_filter.min_aesthetic, 4.5);
        for (bad, needle) in [
            ("train.epoch=1", "epoch"),
            ("train.epochs", "KEY=VALUE"),
            ("sample.top_p=2", "sample.top_p"),
            ("pipeline.name.x=1", "not a section"),
        ] {
            let err = PipelineConfig::load_with(&path, &[bad.to_string()]).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{bad}: {err:#}");
        }
    }

    #[test]
    fn rejects_mistakes_with_the_key_named() {
        let cases = [
            ("[sample]\ntop_p = 1.5", "sample.top_p"),
            ("[sample]\ncfg_scale = 0.5", "sample.cfg_scale"),
            ("[model]\nsize = \"M\"", "model.size"),
            (
                "[ingest.metadata_filter]\nmax_watermark = 2.0",
                "max_watermark",
            ),
            ("[ingest]\nresize_mode = \"stretch\"", "ingest.resize_mode"),
            (
                "[pipeline]\nstages = [\"train\", \"ingest\"]",
                "pipeline order",
            ),
            ("[pipeline]\nschedule = [\"every day\"]", "cron"),
            ("[evaluate]\nmetrics = [\"fid\", \"vibes\"]", "vibes"),
            ("[sample]\ncfg = 2.0", "unknown field"),
            (
                "[train]\nglobal_batch_size = 100\ngradient_accumulation = 3",
                "gradient_accumulation",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", PipelineConfig::parse(text).unwrap_err());
            assert!(
                err.contains(needle),
                "{text:?}: error {err:?} does not mention {needle:?}"
            );
        }
    }
}
