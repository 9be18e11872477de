//! Helpers for tests of what is decided once per process (whether libtorch_cuda is loaded, and
//! the shims with it): each case is an ignored test that a wrapper test reruns alone in a fresh
//! process of the same test binary.

use std::process::Command;

/// Runs the ignored test `case` of the current test binary in a fresh process with `vars` set,
/// and returns what it printed; panics, with that output, if it failed.
pub fn run_case_in_fresh_process(case: &str, vars: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([case, "--exact", "--ignored", "--nocapture"])
        .envs(vars.iter().copied())
        .output()
        .expect("rerunning the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{case}:\n{text}");
    text
}
