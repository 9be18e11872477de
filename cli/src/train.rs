//! `llamagen train`: the flags of `llamagen_pipeline::train`.

use std::path::Path;
use std::process::ExitCode;

use llamagen_pipeline::report::StageReport;
pub use llamagen_pipeline::train::TrainArgs;

pub async fn run(args: &TrainArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    crate::json_report::run(args.json, async {
        let summary = llamagen_pipeline::train::run(args, data_dir).await?;
        Ok(StageReport::success(serde_json::to_value(summary)?))
    })
    .await
}
