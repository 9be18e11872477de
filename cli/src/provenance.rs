//! What every recorded result says about where it came from.

use std::process::Command;

/// The git revision of the working tree that runs this binary (`-dirty` when it has
/// uncommitted changes), or `LLAMAGEN_GIT_REVISION` when set (for builds outside a checkout).
pub fn git_revision() -> Option<String> {
    if let Ok(rev) = std::env::var("LLAMAGEN_GIT_REVISION") {
        return Some(rev);
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}
