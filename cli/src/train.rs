//! `llamagen train`: the flags of `llamagen_pipeline::train`.

use std::path::Path;
use std::process::ExitCode;

pub use llamagen_pipeline::train::TrainArgs;

pub async fn run(args: &TrainArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    llamagen_pipeline::train::run(args, data_dir).await?;
    Ok(ExitCode::SUCCESS)
}
