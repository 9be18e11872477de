//! `llamagen encode`: VQ codes of a shard folder or an ImageFolder (`llamagen-encode`), and
//! their export to LlamaGen's layout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use llamagen_encode::crops::Augment;
use llamagen_encode::encoder::{EncodeOptions, encode_shard};
use llamagen_encode::{EncodeSettings, source};

use crate::sample::VqArgs;

#[derive(Debug, clap::Subcommand)]
pub enum EncodeCommand {
    /// VQ codes of every image: webdataset shards (`llamagen ingest` output) or an ImageFolder.
    Vq(Box<VqEncodeArgs>),
    /// Write finished codes in LlamaGen's layout (`<name>_codes/N.npy`, `<name>_labels/N.npy`).
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
pub struct VqEncodeArgs {
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
}

pub fn run(command: &EncodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        EncodeCommand::Vq(args) => vq(args),
        EncodeCommand::Export(args) => {
            let n = llamagen_encode::export::export_llamagen(&args.codes, &args.out, &args.name)?;
            println!(
                "{n} samples written to {}/{}_codes and {}_labels",
                args.out.display(),
                args.name,
                args.name
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn vq(args: &VqEncodeArgs) -> anyhow::Result<ExitCode> {
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
    let (sha256, _) = llamagen_cli::provenance::file_sha256(&args.vq.vq_ckpt)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    EncodeSettings {
        vq_ckpt_sha256: sha256,
        vq: serde_json::to_value(&config)?,
        image_size: args.image_size,
        augment,
    }
    .check_or_write(&args.out)?;
    let shards = source::shards(&args.input, args.images_per_shard)?;
    let options = EncodeOptions {
        image_size: args.image_size,
        augment,
        batch_size: args.batch_size,
        device,
    };
    let started = std::time::Instant::now();
    let (mut done, mut kept, mut images, mut skipped) = (0, 0, 0, 0);
    for shard in &shards {
        match encode_shard(&vq, shard, &args.out, &options)
            .with_context(|| format!("shard {}", shard.name()))?
        {
            Some(summary) => {
                done += 1;
                images += summary.samples;
                skipped += summary.skipped.len();
                println!(
                    "shard {}: {} images x {} views x {} tokens in {:.1} s ({} skipped)",
                    shard.name(),
                    summary.samples,
                    summary.views,
                    summary.tokens,
                    summary.seconds,
                    summary.skipped.len()
                );
                for s in summary.skipped.iter().take(3) {
                    println!("  skipped {}: {}", s.key, s.error);
                }
            }
            None => kept += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{done} shard(s) encoded ({images} images, {skipped} skipped, {:.1} images/s), {kept} already done; codes in {}",
        images as f64 / seconds.max(1e-9),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
