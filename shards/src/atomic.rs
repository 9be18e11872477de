//! Write to a temporary file in the target's folder, fsync, rename, fsync the folder.

use std::io::Write;
use std::path::Path;

use crate::ShardError;

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
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| ShardError::io(dir, e))?;
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
    fn leftovers_of_a_killed_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".tmpABC"), b"x").unwrap();
        std::fs::write(dir.path().join("00000.tar"), b"x").unwrap();
        assert_eq!(remove_leftovers(dir.path()).unwrap(), 1);
        assert!(dir.path().join("00000.tar").exists());
    }
}
