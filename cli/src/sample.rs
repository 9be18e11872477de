//! `llamagen sample`: images from a GPT checkpoint and a VQ tokenizer
//! (`llamagen_pipeline::sample` does the work; this prints what it did).

use std::path::PathBuf;
use std::process::ExitCode;

pub use llamagen_pipeline::sample::SampleArgs;

#[derive(Debug, clap::Args)]
pub struct SampleCommand {
    /// A pipeline config whose sections give the sampler's defaults and the newest checkpoint
    /// of `train.output` (flags given here override them; relative paths resolve as `llamagen run` resolves them).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Print the report (images made and kept, seconds, the npz) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: &SampleCommand) -> anyhow::Result<ExitCode> {
    // Under a launcher, rank 0 alone reports.
    let Some(report) = llamagen_pipeline::sample::sample_launched(&command.sample)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if command.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let passes = if command.sample.jacobi_window > 0 && report.made > 0 {
        format!(
            "; {:.1} forward passes per image (speculative Jacobi decoding)",
            report.forward_passes as f64 / report.made as f64
        )
    } else {
        String::new()
    };
    println!(
        "made {} image(s), kept {} finished one(s); GPT {:.2} s, VQ decode {:.2} s{passes}{}",
        report.made,
        report.skipped,
        report.gpt_seconds,
        report.decode_seconds,
        report
            .npz
            .as_ref()
            .map(|p| format!("; {}", p.display()))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
