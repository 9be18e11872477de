//! `llamagen train` (a GPT, the flags of `llamagen_pipeline::train`) and `llamagen train vq`
//! (a tokenizer, `llamagen_pipeline::train_tokenizer`).

use std::path::Path;
use std::process::ExitCode;

use llamagen_pipeline::report::StageReport;
use llamagen_pipeline::signals::EXIT_STOPPED;
pub use llamagen_pipeline::train::TrainArgs;
use llamagen_pipeline::train_tokenizer::TrainVqArgs;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TrainCommand {
    #[command(subcommand)]
    pub tokenizer: Option<TrainTokenizer>,
    #[command(flatten)]
    pub gpt: Option<TrainArgs>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TrainTokenizer {
    /// Train a VQ tokenizer as LlamaGen's vq_train.py does (reconstruction, LPIPS, PatchGAN,
    /// quantizer losses) and record its checkpoints.
    Vq(Box<TrainVqArgs>),
}

pub async fn run(command: &TrainCommand, data_dir: &Path) -> anyhow::Result<ExitCode> {
    match (&command.tokenizer, &command.gpt) {
        (Some(TrainTokenizer::Vq(args)), _) => {
            crate::json_report::run(args.json, async {
                let summary = llamagen_pipeline::train_tokenizer::run(args, data_dir).await?;
                Ok(report(summary.stopped, serde_json::to_value(summary)?))
            })
            .await
        }
        (None, Some(args)) => {
            crate::json_report::run(args.json, async {
                let summary = llamagen_pipeline::train::run(args, data_dir).await?;
                Ok(report(summary.stopped, serde_json::to_value(summary)?))
            })
            .await
        }
        (None, None) => anyhow::bail!("llamagen train needs a GPT's flags or a subcommand (vq)"),
    }
}

/// Exit 143 for a run a signal stopped (checkpoint written), 0 for one that finished.
fn report(stopped: bool, summary: serde_json::Value) -> StageReport {
    if stopped {
        StageReport::new(ExitCode::from(EXIT_STOPPED), summary)
    } else {
        StageReport::success(summary)
    }
}
