//! `--json` on the stage commands: while the stage runs, the process's stdout is pointed at
//! stderr, so every line the stage prints (its own, a progress bar's, a child's) lands there,
//! and stdout carries only the JSON summary printed once the stage returns.

use std::future::Future;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use anyhow::Context as _;
use llamagen_pipeline::report::StageReport;

/// Runs `stage`, then prints its summary as JSON when `json`; returns its exit status.
pub async fn run(
    json: bool,
    stage: impl Future<Output = anyhow::Result<StageReport>>,
) -> anyhow::Result<ExitCode> {
    if !json {
        return Ok(stage.await?.code);
    }
    let saved = stdout_to_stderr()?;
    let result = stage.await;
    restore_stdout(saved)?;
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report.summary)?);
    Ok(report.code)
}

fn stdout_to_stderr() -> anyhow::Result<OwnedFd> {
    std::io::stdout().flush()?;
    let saved = nix::unistd::dup(std::io::stdout()).context("duplicating stdout")?;
    nix::unistd::dup2_stdout(std::io::stderr()).context("pointing stdout at stderr")?;
    Ok(saved)
}

fn restore_stdout(saved: OwnedFd) -> anyhow::Result<()> {
    std::io::stdout().flush()?;
    nix::unistd::dup2_stdout(&saved).context("restoring stdout")?;
    Ok(())
}
