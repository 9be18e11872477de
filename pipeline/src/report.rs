//! What a stage command did: its exit status, and the summary `--json` prints (the binary sends
//! the stage's human lines to stderr meanwhile, so stdout carries the summary alone).

use std::process::ExitCode;

#[derive(Debug)]
pub struct StageReport {
    pub code: ExitCode,
    pub summary: serde_json::Value,
}

impl StageReport {
    pub fn new(code: ExitCode, summary: serde_json::Value) -> Self {
        Self { code, summary }
    }

    pub fn success(summary: serde_json::Value) -> Self {
        Self::new(ExitCode::SUCCESS, summary)
    }
}
