//! `llamagen benchmark`: checkpoints into leaderboard rows.
//!
//! - `generator`: one GPT checkpoint over a guidance sweep (`llamagen_pipeline::benchmark`).
//! - `checkpoints`: the checkpoint evaluator: every checkpoint a pipeline config selects, each
//!   claimed through PostgreSQL so that any number of evaluators share the work
//!   (`llamagen_pipeline::checkpoint_evaluator`); `--follow` keeps waiting for new ones.
//! - `tokenizer`: reconstruct the reference images through a VQ model and record rFID, PSNR,
//!   SSIM (LlamaGen's convention) and codebook usage.
//!
//! Recording the same checkpoint, benchmark and configuration again replaces that evaluation's
//! metrics (`store::results`), so a scheduled re-run never duplicates a row.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use llamagen_pipeline::benchmark::{self, GeneratorArgs};
use llamagen_pipeline::checkpoint_evaluator::{self, EvaluatorOptions};
use llamagen_pipeline::config::PipelineConfig;
use llamagen_store::results::Metric;

pub use llamagen_pipeline::tokenizer_benchmark::TokenizerArgs;

#[derive(Debug, clap::Subcommand)]
pub enum BenchmarkCommand {
    /// Sample a GPT checkpoint at each guidance scale, evaluate against a reference, record.
    Generator(Box<GeneratorArgs>),
    /// Evaluate every checkpoint a pipeline config's [evaluate] section selects that has no
    /// evaluation under its protocol yet, sharing the work with any other evaluator through
    /// PostgreSQL; with --follow, keep waiting for checkpoints as training registers them.
    Checkpoints(Box<CheckpointsArgs>),
    /// Reconstruct reference images through a VQ tokenizer and record rFID, PSNR, SSIM, usage.
    Tokenizer(Box<TokenizerArgs>),
}

#[derive(Debug, clap::Args)]
pub struct CheckpointsArgs {
    /// The pipeline config whose [model], [encode], [sample] and [evaluate] sections define
    /// the checkpoints and the protocol.
    #[arg(long)]
    pub config: PathBuf,
    /// Keep running: look for newly registered checkpoints every --poll-secs.
    #[arg(long)]
    pub follow: bool,
    /// Seconds between looks for new checkpoints with --follow.
    #[arg(long, default_value_t = 30)]
    pub poll_secs: u64,
    /// Seconds a claim lasts without renewal (renewed every third of it).
    #[arg(long, default_value_t = 300)]
    pub lease_secs: u64,
    /// Stop after evaluating this many checkpoints.
    #[arg(long)]
    pub max_checkpoints: Option<u64>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print the summary as JSON (evaluation ids included) instead of a line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: &BenchmarkCommand, data_dir: &Path) -> anyhow::Result<ExitCode> {
    match command {
        BenchmarkCommand::Generator(args) => generator(args, data_dir).await,
        BenchmarkCommand::Tokenizer(args) => tokenizer(args, data_dir).await,
        BenchmarkCommand::Checkpoints(args) => checkpoints(args, data_dir).await,
    }
}

async fn checkpoints(args: &CheckpointsArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let config = PipelineConfig::load(&args.config)?;
    let options = EvaluatorOptions {
        follow: args.follow,
        poll: std::time::Duration::from_secs(args.poll_secs.max(1)),
        lease: std::time::Duration::from_secs(args.lease_secs.max(3)),
        max_checkpoints: args.max_checkpoints,
        device: args.device.clone(),
        stop: Some(crate::signals::StopSignal::listen()),
    };
    let summary = checkpoint_evaluator::run(&config, data_dir, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn generator(args: &GeneratorArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let mut measurer = benchmark::Measurer::open_launched(
        &args.evaluation,
        args.sample.prompts.is_some(),
        &args.sample.out,
        &args.sample.device,
    )?;
    let results = benchmark::measure(args, &mut measurer)?;
    // Under a launcher every rank has the metrics; rank 0 alone records and prints them.
    if !measurer.leads() {
        return Ok(ExitCode::SUCCESS);
    }
    let reference_set = measurer.reference_set;
    let recorded = match args.evaluation.no_record {
        true => benchmark::SweepRecorded {
            ids: Vec::new(),
            outcome: Ok(()),
        },
        false => benchmark::record(args, &results, &reference_set, data_dir).await,
    };
    print_sweep(args, &results, &recorded.per_scale(results.len()))?;
    recorded.outcome.context(NOT_RECORDED)?;
    benchmark::clear_samples(&results, args.keep_samples);
    Ok(ExitCode::SUCCESS)
}

/// What a failed recording says after the metrics were printed.
const NOT_RECORDED: &str = "the metrics printed were measured but not recorded; the same command again reads the kept features back and records them";

/// The sweep's metrics on stdout, a row per scale (JSON with `--json`), with each scale's
/// evaluation id where it was recorded.
fn print_sweep(
    args: &GeneratorArgs,
    results: &[benchmark::ScaleResult],
    ids: &[Option<i64>],
) -> anyhow::Result<()> {
    if args.evaluation.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .zip(ids)
            .map(|(r, id)| {
                serde_json::json!({
                    "cfg_scale": r.cfg_scale,
                    "metrics": metrics_json(&r.metrics),
                    "folder": r.folder,
                    "evaluation_id": id,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    // A text-to-image run has its protocol's metrics; a class-conditional one the ADM
    // evaluator's.
    let text = args.sample.prompts.is_some();
    if text {
        println!(
            "{:>6} {:>24} {:>26} {:>24} {:>26}  folder",
            "cfg",
            "FID [95% interval]",
            "KID [95% interval]",
            "CLIP-FID [95% interval]",
            "CLIP score [95% interval]"
        );
    } else {
        println!(
            "{:>6} {:>24} {:>10} {:>10} {:>10} {:>10} {:>26}  folder",
            "cfg", "FID [95% interval]", "sFID", "IS", "precision", "recall", "KID [95% interval]"
        );
    }
    for (r, id) in results.iter().zip(ids) {
        let with_interval = |name: &str, digits: usize| {
            r.metrics
                .iter()
                .find(|m| m.name == name)
                .map_or_else(|| "-".to_string(), |m| fmt_metric(m, digits))
        };
        if text {
            println!(
                "{:>6} {:>24} {:>26} {:>24} {:>26}  {}",
                r.cfg_scale,
                with_interval("fid", 3),
                with_interval("kid", 5),
                with_interval("clip_fid", 3),
                with_interval("clip_score", 4),
                r.folder.display()
            );
        } else {
            println!(
                "{:>6} {:>24} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>26}  {}",
                r.cfg_scale,
                with_interval("fid", 3),
                r.value("sfid"),
                r.value("inception_score"),
                r.value("precision"),
                r.value("recall"),
                with_interval("kid", 5),
                r.folder.display()
            );
        }
        if let Some(id) = id {
            println!("       recorded as evaluation #{id}");
        }
    }
    Ok(())
}

async fn tokenizer(args: &TokenizerArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let result = llamagen_pipeline::tokenizer_benchmark::run_launched(args, data_dir).await?;
    // Under a launcher every rank has the metrics; rank 0 alone recorded and prints them.
    if !result.leads {
        return Ok(ExitCode::SUCCESS);
    }
    let id = result.recorded.as_ref().ok().copied().flatten();
    if args.evaluation.json {
        let out = serde_json::json!({
            "metrics": metrics_json(&result.metrics),
            "evaluation_id": id,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_metrics(&result.metrics);
        if let Some(id) = id {
            println!("recorded as evaluation #{id}");
        }
    }
    result.recorded.context(NOT_RECORDED)?;
    Ok(ExitCode::SUCCESS)
}

/// A metric as `value [low, high]`.
pub(crate) fn fmt_metric(m: &Metric, digits: usize) -> String {
    match m.interval {
        Some((low, high)) => format!("{:.digits$} [{low:.digits$}, {high:.digits$}]", m.value),
        None => format!("{:.digits$}", m.value),
    }
}

/// One line per metric, its interval beside it.
pub(crate) fn print_metrics(metrics: &[Metric]) {
    for m in metrics {
        println!("{:<16} {}", m.name, fmt_metric(m, 6));
    }
}

/// Metrics as a JSON object by name; a metric's interval is `NAME_interval: [low, high]`.
pub(crate) fn metrics_json(metrics: &[Metric]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for m in metrics {
        map.insert(m.name.clone(), serde_json::json!(m.value));
        if let Some((low, high)) = m.interval {
            map.insert(
                format!("{}_interval", m.name),
                serde_json::json!([low, high]),
            );
        }
    }
    map.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kept_grid_is_what_the_dashboard_shows() {
        assert_eq!(
            llamagen_pipeline::benchmark::GRID_SAMPLES,
            llamagen_dashboard::samples::GRID
        );
    }
}
