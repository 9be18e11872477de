//! `llamagen encode`: VQ codes of a shard folder or an ImageFolder, FLAN-T5 embeddings of
//! its captions (`llamagen-encode`), and their export to LlamaGen's layouts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use llamagen_encode::crops::Augment;
use llamagen_encode::encoder::{EncodeOptions, encode_shard};
use llamagen_encode::{EncodeSettings, source};

use crate::report::StageReport;
use crate::sample::VqArgs;
use crate::shard_worker::WorkerArgs;
use crate::shard_worker::{self, ShardDone, StageTarget};

#[derive(Debug, clap::Subcommand)]
pub enum EncodeCommand {
    /// VQ codes of every image: webdataset shards (`llamagen ingest` output) or an ImageFolder.
    Vq(Box<VqEncodeArgs>),
    /// FLAN-T5 embeddings of every captioned sample (`llamagen caption` output): the whole
    /// caption and its first sentence, f16, valid tokens only.
    T5(T5Args),
    /// Write finished codes in LlamaGen's layout (`<name>_codes/N.npy`, `<name>_labels/N.npy`).
    Export(ExportArgs),
    /// Write a text-to-image set in LlamaGen's layout: the jsonl lists its train_t2i.py reads,
    /// the images they point at, and the codes and T5 features per list line.
    ExportT2i(ExportT2iArgs),
}

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct T5Args {
    /// A pipeline config whose sections give this command's defaults (flags given here
    /// override them; relative paths resolve as `llamagen run` resolves them).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// The folder holding `NNNNN_captions.parquet` (`llamagen caption --out`).
    #[arg(long)]
    pub captions: PathBuf,
    /// The export folder of scripts/export_t5.py (t5_encoder.onnx, tokenizer.json,
    /// t5_encoder.json).
    #[arg(long)]
    pub t5: PathBuf,
    /// Output folder: NNNNN.t5.safetensors per shard and t5.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens kept per caption (LlamaGen: 120).
    #[arg(long, default_value_t = llamagen_encode::t5::MAX_LENGTH)]
    pub max_length: usize,
    /// Captions per encoder run (grouped by length).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// ONNX Runtime threads per run (0: as many as this process may use; docs/deploy.md).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// cpu, cuda or auto: where the encoder runs (a GPU through ONNX Runtime's CUDA execution
    /// provider; without it, the CPU, and the log says why).
    #[arg(long, default_value = "auto")]
    #[serde(skip)]
    pub device: String,
    #[command(flatten)]
    #[serde(skip)]
    pub workers: WorkerArgs,
    /// Print what the command did as JSON on stdout (its progress lines go to stderr).
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportT2iArgs {
    /// The webdataset shards (and their captions) the codes were made from.
    #[arg(long)]
    pub shards: PathBuf,
    /// The output folder of `llamagen encode vq` (center crop: --no-flip).
    #[arg(long)]
    pub codes: PathBuf,
    /// The output folder of `llamagen encode t5`.
    #[arg(long)]
    pub t5: PathBuf,
    /// Where `lists/`, `images/`, `codes/`, `t5/` and `t5_short/` go.
    #[arg(long)]
    pub out: PathBuf,
    /// Print what the command did as JSON on stdout (its progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args, serde::Serialize)]
pub struct VqEncodeArgs {
    /// A pipeline config whose sections give this command's defaults (flags given here
    /// override them; relative paths resolve as `llamagen run` resolves them).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// A folder of webdataset shards (`*.tar`) or an ImageFolder (one subfolder per class).
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: per shard NAME.codes.npy (uint16 [N, views, tokens]), NAME.labels.npy,
    /// NAME.keys.txt, NAME.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub vq: VqArgs,
    /// Side of the views fed to the tokenizer.
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// LlamaGen's --ten-crop: TenCrop of the center crop enlarged by --crop-range.
    #[arg(long)]
    pub ten_crop: bool,
    /// With --ten-crop: the center crop is enlarged by this factor before the ten crops (LlamaGen: 1.1).
    #[arg(long, default_value_t = 1.1)]
    pub crop_range: f64,
    /// The center crop alone (text-to-image data), not the center crop and its mirror image.
    #[arg(long, conflicts_with = "ten_crop")]
    pub no_flip: bool,
    /// Images per tokenizer batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Images per shard for an ImageFolder input.
    #[arg(long, default_value_t = 1000)]
    pub images_per_shard: usize,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    #[serde(skip)]
    pub workers: WorkerArgs,
    /// Print what the command did as JSON on stdout (its progress lines go to stderr).
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The output folder of `llamagen encode vq`.
    #[arg(long)]
    pub codes: PathBuf,
    /// Where `<name>_codes/` and `<name>_labels/` go.
    #[arg(long)]
    pub out: PathBuf,
    /// LlamaGen names them `<dataset><image_size>`, e.g. imagenet256.
    #[arg(long, default_value = "imagenet256")]
    pub name: String,
    /// Print what the command did as JSON on stdout (its progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(
    command: &EncodeCommand,
    data_dir: &std::path::Path,
) -> anyhow::Result<StageReport> {
    match command {
        EncodeCommand::Vq(args) => vq(args, data_dir).await,
        EncodeCommand::T5(args) => t5(args, data_dir).await,
        EncodeCommand::ExportT2i(args) => {
            let n = llamagen_encode::export::export_llamagen_t2i(
                &args.shards,
                &args.codes,
                &args.t5,
                &args.out,
            )?;
            println!(
                "{n} samples written to {}: lists/*.jsonl (image_path, text [laion, llava, llava_first]), images/, codes/, t5/ and t5_short/",
                args.out.display()
            );
            Ok(StageReport::success(
                serde_json::json!({ "samples": n, "out": args.out }),
            ))
        }
        EncodeCommand::Export(args) => {
            let n = llamagen_encode::export::export_llamagen(&args.codes, &args.out, &args.name)?;
            println!(
                "{n} samples written to {}/{}_codes and {}_labels",
                args.out.display(),
                args.name,
                args.name
            );
            Ok(StageReport::success(
                serde_json::json!({ "samples": n, "out": args.out, "name": args.name }),
            ))
        }
    }
}

async fn vq(args: &VqEncodeArgs, data_dir: &std::path::Path) -> anyhow::Result<StageReport> {
    let augment = if args.ten_crop {
        Augment::TenCrop {
            crop_range: args.crop_range,
        }
    } else if args.no_flip {
        Augment::Center
    } else {
        Augment::CenterFlip
    };
    let device = crate::sample::device(&args.device)?;
    let config = args.vq.config()?;
    let (_vs, vq) = args.vq.load(device)?;
    let (sha256, _) = crate::provenance::file_sha256(&args.vq.vq_ckpt)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let settings = EncodeSettings {
        vq_ckpt_sha256: sha256,
        vq: serde_json::to_value(&config)?,
        image_size: args.image_size,
        augment,
    };
    settings.check_or_write(&args.out)?;
    let all = source::shards(&args.input, args.images_per_shard)?;
    let shards = all;
    let options = EncodeOptions {
        image_size: args.image_size,
        augment,
        batch_size: args.batch_size,
        device,
    };
    let started = std::time::Instant::now();
    let mut images = 0;
    let work = |i: usize| -> anyhow::Result<Option<String>> {
        let shard = &shards[i];
        let Some(summary) = encode_shard(&vq, shard, &args.out, &options)
            .with_context(|| format!("shard {}", shard.name()))?
        else {
            return Ok(None);
        };
        images += summary.samples;
        let mut line = format!(
            "shard {}: {} images x {} views x {} tokens in {:.1} s ({} skipped)",
            shard.name(),
            summary.samples,
            summary.views,
            summary.tokens,
            summary.seconds,
            summary.skipped.len()
        );
        for s in summary.skipped.iter().take(3) {
            line.push_str(&format!("\n  skipped {}: {}", s.key, s.error));
        }
        Ok(Some(line))
    };
    let names: Vec<String> = shards.iter().map(|s| s.name().to_string()).collect();
    let walked = walk_shards(
        &names,
        &args.workers,
        data_dir,
        (&args.input, &args.out, &serde_json::to_value(&settings)?),
        work,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} shard(s) encoded ({images} images, {:.1} images/s), {} already done; codes in {}",
        walked.done,
        images as f64 / seconds.max(1e-9),
        walked.kept,
        args.out.display()
    );
    let mut summary = walked.summary();
    summary["images"] = images.into();
    summary["seconds"] = seconds.into();
    summary["out"] = serde_json::json!(args.out);
    Ok(StageReport::new(exit_code(&walked)?, summary))
}

/// The exit status of a walk: stopped by a signal (the run stays open), failed shards, or
/// success.
pub fn exit_code(walked: &shard_worker::Walked) -> anyhow::Result<ExitCode> {
    if walked.stopped {
        println!("stopped by signal; run the command again to resume");
        return Ok(ExitCode::from(crate::signals::EXIT_STOPPED));
    }
    walked.result().map(|()| ExitCode::SUCCESS)
}

/// Runs `work` over the shards under the worker flags; `work(i)` gives `Some(line)` for a
/// shard encoded now, `None` for one finished earlier.
async fn walk_shards(
    names: &[String],
    workers: &WorkerArgs,
    data_dir: &std::path::Path,
    (input, output, settings): (&std::path::Path, &std::path::Path, &serde_json::Value),
    mut work: impl FnMut(usize) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<shard_worker::Walked> {
    let target = StageTarget {
        stage: "encode",
        input,
        output,
        settings,
        run_id: None,
    };
    let stop = crate::signals::StopSignal::listen();
    shard_worker::walk(
        names,
        &workers.sharing(data_dir),
        target,
        Some(&stop),
        |i, _| {
            shard_worker::blocking(|| {
                work(i).map(|line| match line {
                    Some(line) => ShardDone::Worked {
                        line,
                        counts: Default::default(),
                    },
                    None => ShardDone::AlreadyDone,
                })
            })
        },
    )
    .await
}

async fn t5(args: &T5Args, data_dir: &std::path::Path) -> anyhow::Result<StageReport> {
    use llamagen_encode::t5::{T5Encoder, T5Settings};
    use llamagen_encode::t5_shard::embed_shard;

    let device = crate::sample::device(&args.device)?;
    let mut encoder = T5Encoder::open_on(
        &args.t5,
        args.max_length,
        args.threads,
        llamagen_native::onnx::OnnxDevice::of(device),
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let settings = T5Settings {
        files: crate::provenance::files_sha256(&encoder.files())?,
        source: encoder.spec.source.clone(),
        d_model: encoder.spec.d_model,
        max_length: args.max_length,
        cleaning: "LlamaGen T5Embedder.clean_caption x2".into(),
    };
    settings.check_or_write(&args.out)?;
    let mut shards: Vec<(String, PathBuf)> = std::fs::read_dir(&args.captions)
        .with_context(|| format!("reading {}", args.captions.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_suffix("_captions.parquet")?;
            Some((name.to_string(), p.clone()))
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        anyhow::bail!(
            "{} holds no NNNNN_captions.parquet (run llamagen caption first)",
            args.captions.display()
        );
    }
    let started = std::time::Instant::now();
    let (mut samples, mut texts, mut tokens) = (0, 0, 0);
    let (mut stored, mut llamagen) = (0usize, 0usize);
    let batch_size = args.batch_size;
    let work = |i: usize| -> anyhow::Result<Option<String>> {
        let (name, path) = &shards[i];
        let Some(s) = embed_shard(&mut encoder, path, name, &args.out, batch_size)? else {
            return Ok(None);
        };
        samples += s.samples;
        texts += s.texts;
        tokens += s.tokens;
        stored += s.stored_bytes;
        llamagen += s.llamagen_bytes;
        Ok(Some(format!(
            "shard {name}: {} captioned samples, {} texts, {:.1} tokens each, in {:.1} s",
            s.samples,
            s.texts,
            s.tokens as f64 / s.texts.max(1) as f64,
            s.seconds
        )))
    };
    let names: Vec<String> = shards.iter().map(|(n, _)| n.clone()).collect();
    let walked = walk_shards(
        &names,
        &args.workers,
        data_dir,
        (&args.captions, &args.out, &serde_json::to_value(&settings)?),
        work,
    )
    .await?;
    let (done, kept) = (walked.done, walked.kept);
    let seconds = started.elapsed().as_secs_f64();
    let d = encoder.spec.d_model;
    println!(
        "{done} shard(s) embedded ({samples} samples, {texts} texts, {:.1} texts/s), {kept} already done; embeddings in {}",
        texts as f64 / seconds.max(1e-9),
        args.out.display()
    );
    if texts > 0 {
        let padded = texts * args.max_length * d * 4;
        println!(
            "storage: {stored} bytes (f16, valid tokens, {:.1} tokens/text) vs {llamagen} as LlamaGen's f32 npy files ({:.1}x) vs {padded} padded to {} in f32 ({:.1}x)",
            tokens as f64 / texts as f64,
            llamagen as f64 / stored.max(1) as f64,
            args.max_length,
            padded as f64 / stored.max(1) as f64,
        );
    }
    let mut summary = walked.summary();
    summary["samples"] = samples.into();
    summary["texts"] = texts.into();
    summary["tokens"] = tokens.into();
    summary["stored_bytes"] = stored.into();
    summary["seconds"] = seconds.into();
    summary["out"] = serde_json::json!(args.out);
    Ok(StageReport::new(exit_code(&walked)?, summary))
}

/// `llamagen run`'s encode stage: the VQ codes of the ingested shards (ten-crop, or the center
/// crop for text-to-image, else center + flip), then for text-to-image the FLAN-T5 embeddings
/// of their captions, with the `[encode]` section of the pipeline config. Returns the last
/// pass's exit status and each pass's `--json` summary.
pub async fn run_from_config(
    config: &crate::config::PipelineConfig,
    data_dir: &std::path::Path,
) -> anyhow::Result<(ExitCode, Vec<serde_json::Value>)> {
    let text = config.model.task == crate::config::Task::T2i;
    let vq = VqEncodeArgs::from_config(config, data_dir);
    let report = run(&EncodeCommand::Vq(Box::new(vq)), data_dir).await?;
    if report.code != ExitCode::SUCCESS || !text {
        return Ok((report.code, vec![report.summary]));
    }
    let t5 = T5Args::from_config(config, data_dir);
    let t5 = run(&EncodeCommand::T5(t5), data_dir).await?;
    Ok((t5.code, vec![report.summary, t5.summary]))
}

impl VqEncodeArgs {
    /// The `[encode]` section's VQ pass over the ingested shards: ten-crop, or the center crop
    /// for text-to-image, else center + flip; relative paths under `data_dir`.
    pub fn from_config(config: &crate::config::PipelineConfig, data_dir: &std::path::Path) -> Self {
        let e = &config.encode;
        let under = |p: &str| crate::config::PipelineConfig::resolve(data_dir, p);
        let text = config.model.task == crate::config::Task::T2i;
        VqEncodeArgs {
            config: None,
            input: under(&config.ingest.output),
            out: under(&e.codes_output),
            vq: crate::sample::VqArgs::from_config(config, data_dir),
            image_size: e.image_size as usize,
            ten_crop: e.ten_crop,
            crop_range: 1.1,
            no_flip: text && !e.ten_crop,
            batch_size: e.batch_size as usize,
            images_per_shard: 1000,
            device: config.pipeline.device.as_str().into(),
            workers: WorkerArgs::ALL,
            json: false,
        }
    }
}

impl T5Args {
    /// The `[encode]` section's FLAN-T5 pass over the captions next to the ingested shards.
    pub fn from_config(config: &crate::config::PipelineConfig, data_dir: &std::path::Path) -> Self {
        let e = &config.encode;
        let under = |p: &str| crate::config::PipelineConfig::resolve(data_dir, p);
        T5Args {
            config: None,
            captions: under(&config.ingest.output),
            t5: under(&e.t5),
            out: under(&e.t5_output),
            max_length: e.t5_max_length as usize,
            batch_size: e.batch_size as usize,
            threads: 0,
            device: config.pipeline.device.as_str().into(),
            workers: WorkerArgs::ALL,
            json: false,
        }
    }
}

impl EncodeCommand {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            EncodeCommand::Vq(a) => a.json,
            EncodeCommand::T5(a) => a.json,
            EncodeCommand::Export(a) => a.json,
            EncodeCommand::ExportT2i(a) => a.json,
        }
    }
}
