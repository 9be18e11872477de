//! What every recorded result says about where it came from.

use std::process::Command;

/// The git revision of the working tree that runs this binary (`-dirty` when it has
/// uncommitted changes), or `LLAMAGEN_GIT_REVISION` when set (for builds outside a checkout).
///
/// Read once per process: the code that runs does not change while it runs, though the
/// checkout may (a `git pull` beside a scheduler that keeps running); and a sweep records it
/// at every scale, which spawned git twice each time.
pub fn git_revision() -> Option<String> {
    static REVISION: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REVISION.get_or_init(read_git_revision).clone()
}

fn read_git_revision() -> Option<String> {
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
///
/// A guidance sweep names the same checkpoint in every sample folder and every recorded
/// evaluation, and a 3B checkpoint takes half a minute to hash, so each file's digest is
/// remembered for the life of the process under its identity on disk: device, inode, length,
/// and modification and change times. Any write or replacement changes the change time. A file
/// modified within the last two seconds is hashed again every time, because the kernel's file
/// clock ticks coarsely and a write in the same tick as an earlier hash would keep the times
/// ("racily clean", as git calls it).
pub fn file_sha256(path: &std::path::Path) -> anyhow::Result<(String, u64)> {
    use anyhow::Context as _;
    use std::os::unix::fs::MetadataExt as _;
    let started = std::time::SystemTime::now();
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let identity = FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    };
    if let Some(known) = DIGESTS.lock().ok().and_then(|d| d.get(&identity).cloned()) {
        return Ok((known, identity.len));
    }
    let digest = hash_file(path)?;
    let settled = |secs: i64, nsecs: i64| {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32);
        started
            .duration_since(at)
            .is_ok_and(|age| age >= std::time::Duration::from_secs(2))
    };
    if digest.1 == identity.len
        && settled(identity.mtime.0, identity.mtime.1)
        && settled(identity.ctime.0, identity.ctime.1)
        && let Ok(mut digests) = DIGESTS.lock()
    {
        digests.insert(identity, digest.0.clone());
    }
    Ok(digest)
}

/// What names one version of a file on disk ([`file_sha256`]'s memory).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

static DIGESTS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<FileIdentity, String>>,
> = std::sync::LazyLock::new(Default::default);

fn hash_file(path: &std::path::Path) -> anyhow::Result<(String, u64)> {
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

/// This machine's name, the first part of a worker's name (`HOST:PID-TAG`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn set_modified(path: &std::path::Path, at: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    /// A remembered digest is only ever that of the bytes on disk: rewriting a file in place
    /// with the same length and its old modification time still changes the answer.
    #[test]
    fn a_remembered_digest_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.bin");
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        let expected = |bytes: &[u8]| {
            use sha2::Digest as _;
            sha2::Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };

        std::fs::write(&file, b"first version").unwrap();
        set_modified(&file, long_ago);
        // Asked twice: a digest remembered or not, the same answer.
        for _ in 0..2 {
            assert_eq!(
                file_sha256(&file).unwrap(),
                (expected(b"first version"), 13)
            );
        }
        std::fs::write(&file, b"other version").unwrap();
        set_modified(&file, long_ago);
        assert_eq!(
            file_sha256(&file).unwrap(),
            (expected(b"other version"), 13)
        );
        // Replaced by another file under the same name.
        let other = dir.path().join("new.bin");
        std::fs::write(&other, b"third version").unwrap();
        set_modified(&other, long_ago);
        std::fs::rename(&other, &file).unwrap();
        assert_eq!(
            file_sha256(&file).unwrap(),
            (expected(b"third version"), 13)
        );
        assert!(file_sha256(&dir.path().join("missing.bin")).is_err());
    }

    fn remembered(path: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).unwrap();
        DIGESTS
            .lock()
            .unwrap()
            .keys()
            .any(|k| (k.dev, k.ino) == (meta.dev(), meta.ino()))
    }

    /// A file written in the last two seconds is not remembered (a write in the same clock tick
    /// would keep its times); one untouched for longer, as this crate's manifest is by the time
    /// its tests run, is.
    #[test]
    fn only_settled_files_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.bin");
        std::fs::write(&fresh, b"written just now").unwrap();
        file_sha256(&fresh).unwrap();
        assert!(!remembered(&fresh));

        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let first = file_sha256(&manifest).unwrap();
        assert!(remembered(&manifest));
        assert_eq!(file_sha256(&manifest).unwrap(), first);
    }
}
