//! Write to a temporary file in the target's folder, fsync, rename, fsync the folder.
//!
//! A temporary file is named after its target (`.tmp.NAME.XXXXXX`), so the leftovers of a
//! killed attempt at a shard can be found and removed by the next attempt at that shard
//! ([`remove_leftovers_of`]) while other workers write other shards in the same folder.
//! Files are created with the usual permissions (0666 less the umask, 0644 by default), as
//! img2dataset's are, so other users of a shared cluster can read them.

use std::io::Write;
use std::path::Path;

use crate::ShardError;

/// A new temporary file in `dir` for the target file `path`.
pub(crate) fn temporary_for(path: &Path) -> Result<tempfile::NamedTempFile, ShardError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".tmp.{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).rand_bytes(6);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).map_err(|e| ShardError::io(dir, e))
}

/// Writes `path` atomically with whatever `write` puts into the file: readers see the old file
/// or the complete new one, never a part; a crash leaves at most a `.tmp*` file behind.
pub fn write_with<F>(path: &Path, write: F) -> Result<(), ShardError>
where
    F: FnOnce(&mut std::fs::File) -> Result<(), ShardError>,
{
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = temporary_for(path)?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut()
        .sync_all()
        .map_err(|e| ShardError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| ShardError::io(path, e.error))?;
    // The rename itself is durable only once the folder is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// [`write_with`] for bytes already in memory.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), ShardError> {
    write_with(path, |f| {
        f.write_all(bytes).map_err(|e| ShardError::io(path, e))
    })
}

/// Removes the temporary files that writers of `names` (files in `dir`) left behind: called
/// when an attempt at a shard starts, only that attempt writes those files, so any temporary
/// of theirs is a dead attempt's. Returns how many were removed.
pub fn remove_leftovers_of(dir: &Path, names: &[&str]) -> Result<usize, ShardError> {
    let prefixes: Vec<String> = names.iter().map(|n| format!(".tmp.{n}.")).collect();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ShardError::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| ShardError::io(dir, e))?;
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if prefixes.iter().any(|p| file_name.starts_with(p.as_str())) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Its writer finished or removed it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ShardError::io(&entry.path(), e)),
            }
        }
    }
    Ok(removed)
}

/// [`remove_leftovers_of`] for the output files of one shard attempt, wherever they live.
pub fn remove_leftovers_for(targets: &[&Path]) -> Result<usize, ShardError> {
    let mut removed = 0;
    for target in targets {
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            continue;
        };
        removed += remove_leftovers_of(dir, &[&name.to_string_lossy()])?;
    }
    Ok(removed)
}

/// Removes the `.tmp*` files a killed writer left in `dir`.
pub fn remove_leftovers(dir: &Path) -> Result<usize, ShardError> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ShardError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ShardError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(".tmp") {
            std::fs::remove_file(entry.path()).map_err(|e| ShardError::io(&entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_bytes(&path, b"old").unwrap();
        let failed = write_with(&path, |f| {
            f.write_all(b"half").unwrap();
            Err(ShardError::format(&path, "stopped half-way"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        write_bytes(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn a_killed_attempt_s_temporaries_are_removed_by_the_next_attempt_at_that_shard() {
        let dir = tempfile::tempdir().unwrap();
        // A writer that dies holding its temporaries (forgotten: a SIGKILL runs no Drop).
        let tar = crate::webdataset::TarWriter::create(&dir.path().join("00003.tar")).unwrap();
        std::mem::forget(tar);
        std::mem::forget(temporary_for(&dir.path().join("00003.parquet")).unwrap());
        // Another worker's shard in the same folder, still being written.
        let other = temporary_for(&dir.path().join("00004.tar")).unwrap();
        std::fs::write(dir.path().join("00003_stats.json"), b"{}").unwrap();
        let removed = remove_leftovers_of(
            dir.path(),
            &["00003.tar", "00003.parquet", "00003_stats.json"],
        )
        .unwrap();
        assert_eq!(removed, 2);
        assert!(
            other.path().exists(),
            "another shard's writer keeps its file"
        );
        assert!(dir.path().join("00003_stats.json").exists());
    }

    #[cfg(unix)]
    #[test]
    fn written_files_are_readable_by_others_as_img2dataset_s_are() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000_stats.json");
        write_bytes(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // 0666 less the umask (0644 under the usual 022), not tempfile's private 0600.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(mode, 0o666 & !umask, "mode {mode:o}, umask {umask:o}");
    }

    #[test]
    fn leftovers_of_a_killed_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".tmpABC"), b"x").unwrap();
        std::fs::write(dir.path().join("00000.tar"), b"x").unwrap();
        assert_eq!(remove_leftovers(dir.path()).unwrap(), 1);
        assert!(dir.path().join("00000.tar").exists());
    }
}
