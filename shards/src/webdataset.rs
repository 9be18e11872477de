//! webdataset tar shards: members `KEY.EXT`, grouped by key, in the order they were added.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::ShardError;

/// Streams members into a temporary file; [`TarWriter::finish`] makes it the shard.
pub struct TarWriter {
    path: PathBuf,
    builder: tar::Builder<BufWriter<tempfile::NamedTempFile>>,
    bytes: u64,
}

impl TarWriter {
    pub fn create(path: &Path) -> Result<Self, ShardError> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| ShardError::io(dir, e))?;
        Ok(TarWriter {
            path: path.to_owned(),
            builder: tar::Builder::new(BufWriter::new(tmp)),
            bytes: 0,
        })
    }

    /// Adds `KEY.EXT`. Times are zero and modes 0644, so the same samples give the same bytes.
    pub fn append(&mut self, key: &str, ext: &str, data: &[u8]) -> Result<(), ShardError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        self.builder
            .append_data(&mut header, format!("{key}.{ext}"), data)
            .map_err(|e| ShardError::io(&self.path, e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Payload bytes added so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends the archive, fsyncs it and renames it into place.
    pub fn finish(self) -> Result<u64, ShardError> {
        let path = self.path;
        let writer = self
            .builder
            .into_inner()
            .map_err(|e| ShardError::io(&path, e))?;
        let tmp = writer
            .into_inner()
            .map_err(|e| ShardError::io(&path, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ShardError::io(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| ShardError::io(&path, e.error))?;
        Ok(self.bytes)
    }
}

/// Every member of a tar shard as (name, bytes), in archive order.
pub fn read_members(path: &Path) -> Result<Vec<(String, Vec<u8>)>, ShardError> {
    let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let mut archive = tar::Archive::new(file);
    let mut members = Vec::new();
    for entry in archive.entries().map_err(|e| ShardError::io(path, e))? {
        let mut entry = entry.map_err(|e| ShardError::io(path, e))?;
        let name = entry
            .path()
            .map_err(|e| ShardError::io(path, e))?
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::with_capacity(entry.size() as usize);
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| ShardError::io(path, e))?;
        members.push((name, data));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_read_back_in_order_and_the_tar_appears_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000.tar");
        let mut w = TarWriter::create(&path).unwrap();
        w.append("0000000", "jpg", &[1, 2, 3]).unwrap();
        w.append("0000000", "txt", b"a cat").unwrap();
        assert!(!path.exists(), "no shard before finish");
        assert_eq!(w.finish().unwrap(), 8);
        let members = read_members(&path).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0], ("0000000.jpg".to_string(), vec![1, 2, 3]));
        assert_eq!(members[1].1, b"a cat");
    }

    #[test]
    fn a_dropped_writer_leaves_nothing_that_looks_like_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00001.tar");
        let mut w = TarWriter::create(&path).unwrap();
        w.append("k", "jpg", &[0; 100]).unwrap();
        drop(w);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
