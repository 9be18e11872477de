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

/// sha256 of each of `files` by file name: what a stage's settings pin of the models it ran.
pub fn files_sha256(
    files: &[std::path::PathBuf],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    files
        .iter()
        .map(|file| {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, file_sha256(file)?.0))
        })
        .collect()
}

/// sha256 (lowercase hex) and length of a file, streamed; identifies checkpoints and weights.
pub fn file_sha256(path: &std::path::Path) -> anyhow::Result<(String, u64)> {
    use anyhow::Context as _;
    use sha2::Digest as _;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("hashing {}", path.display()))?;
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, bytes))
}

/// sha256 of a reference folder's content, in the order [`crate::image_sets::read_folder`]
/// reads it: each image file as name, length and bytes, and each webdataset tar as its name
/// followed by its images the same way, in key order ([`crate::image_sets::tar_images`]). The
/// same images under another path are the same reference, and so are the same samples
/// ingested again (their archive order follows the downloads, and captions and metadata are
/// not the reference); a renamed, added or changed image is not.
pub fn folder_sha256(dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let entry = |hasher: &mut sha2::Sha256, name: &str, length: u64| {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(length.to_le_bytes());
    };
    for file in crate::image_sets::folder_files(dir)? {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if crate::image_sets::is_shard(&file) {
            let images = crate::image_sets::tar_images(&file)?;
            entry(&mut hasher, &name, images.len() as u64);
            for (member, bytes) in images {
                entry(&mut hasher, &member, bytes.len() as u64);
                hasher.update(&bytes);
            }
            continue;
        }
        let length = std::fs::metadata(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        entry(&mut hasher, &name, length);
        let mut f =
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        std::io::copy(&mut f, &mut hasher)
            .with_context(|| format!("hashing {}", file.display()))?;
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// This machine's name, as workers and evaluators name themselves (`HOST:PID`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
