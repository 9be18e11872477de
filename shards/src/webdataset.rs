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
        let tmp = crate::atomic::temporary_for(path)?;
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
///
/// Sizes come from the headers, which a damaged or hostile tar can inflate (2^50 bytes): no
/// buffer is sized beyond what the file holds, and a member cut short is an error. Names are
/// returned as written; code that turns one into a path checks it with [`plain_key`].
pub fn read_members(path: &Path) -> Result<Vec<(String, Vec<u8>)>, ShardError> {
    let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ShardError::io(path, e))?.len();
    let mut archive = tar::Archive::new(file);
    let mut members = Vec::new();
    for entry in archive.entries().map_err(|e| ShardError::io(path, e))? {
        let mut entry = entry.map_err(|e| ShardError::io(path, e))?;
        let name = entry
            .path()
            .map_err(|e| ShardError::io(path, e))?
            .to_string_lossy()
            .into_owned();
        let size = entry.size();
        if size > file_len {
            return Err(ShardError::format(
                path,
                format!("member {name:?} claims {size} bytes, more than the whole file holds"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| ShardError::io(path, e))?;
        if data.len() as u64 != size {
            return Err(ShardError::format(
                path,
                format!(
                    "member {name:?} is cut short: {} of {size} bytes",
                    data.len()
                ),
            ));
        }
        members.push((name, data));
    }
    Ok(members)
}

/// The member names of a tar shard, in archive order, read from the headers alone (the data
/// between them is skipped, not read).
pub fn member_names(path: &Path) -> Result<Vec<String>, ShardError> {
    let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let mut archive = tar::Archive::new(file);
    let mut names = Vec::new();
    for entry in archive
        .entries_with_seek()
        .map_err(|e| ShardError::io(path, e))?
    {
        let entry = entry.map_err(|e| ShardError::io(path, e))?;
        let name = entry.path().map_err(|e| ShardError::io(path, e))?;
        names.push(name.to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Whether a sample key can name a file inside an output folder as it is: one path component,
/// not `.` or `..`, no separator, no NUL. Keys come from the tar's member names, which are data
/// (`../../x` or `/abs/x` would otherwise write outside the folder).
pub fn plain_key(key: &str) -> bool {
    !key.is_empty() && key != "." && key != ".." && !key.contains(['/', '\\', '\0'])
}

/// The image extensions a sample's picture may have, as img2dataset and webdataset name them.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// One sample of a shard: the members that share a key (`KEY.jpg`, `KEY.txt`, `KEY.json`, ...).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WdsSample {
    pub key: String,
    /// (extension in lower case, bytes), in archive order.
    pub members: Vec<(String, Vec<u8>)>,
}

impl WdsSample {
    /// The picture: its extension and bytes.
    pub fn image(&self) -> Option<(&str, &[u8])> {
        self.members
            .iter()
            .find(|(ext, _)| IMAGE_EXTENSIONS.contains(&ext.as_str()))
            .map(|(ext, data)| (ext.as_str(), data.as_slice()))
    }

    /// A text member (`txt`, `cls`, `json`) as UTF-8, lossily.
    pub fn text(&self, ext: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
    }
}

/// The shard's samples in archive order, members grouped by key (the name up to its last
/// dot, as webdataset does for flat keys). Members without an extension are ignored.
pub fn read_samples(path: &Path) -> Result<Vec<WdsSample>, ShardError> {
    let mut samples: Vec<WdsSample> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (name, data) in read_members(path)? {
        let Some((key, ext)) = name.rsplit_once('.') else {
            continue;
        };
        let at = *index.entry(key.to_owned()).or_insert_with(|| {
            samples.push(WdsSample {
                key: key.to_owned(),
                members: Vec::new(),
            });
            samples.len() - 1
        });
        samples[at].members.push((ext.to_ascii_lowercase(), data));
    }
    Ok(samples)
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
        assert_eq!(member_names(&path).unwrap(), ["0000000.jpg", "0000000.txt"]);
    }

    #[test]
    fn samples_group_members_by_key_in_archive_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000.tar");
        let mut w = TarWriter::create(&path).unwrap();
        w.append("0000001", "JPG", &[1]).unwrap();
        w.append("0000001", "txt", b"a cat").unwrap();
        w.append("0000000", "png", &[2]).unwrap();
        w.append("0000000", "cls", b"3").unwrap();
        w.finish().unwrap();
        let samples = read_samples(&path).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].key, "0000001");
        assert_eq!(samples[0].image(), Some(("jpg", &[1u8][..])));
        assert_eq!(samples[0].text("txt").as_deref(), Some("a cat"));
        assert_eq!(samples[1].image(), Some(("png", &[2u8][..])));
        assert_eq!(samples[1].text("cls").as_deref(), Some("3"));
        assert_eq!(samples[1].text("txt"), None);
    }

    /// A tar with one member written with a raw header: any name, any claimed size.
    fn raw_tar(path: &Path, name: &[u8], claimed: u64, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_size(claimed);
        header.set_mode(0o644);
        header.set_cksum();
        let mut b = tar::Builder::new(File::create(path).unwrap());
        b.append(&header, data).unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn inflated_and_short_members_are_errors_not_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000.tar");
        raw_tar(&path, b"0000000.jpg", 1 << 50, &[7; 600]);
        let err = read_members(&path).unwrap_err().to_string();
        assert!(err.contains("more than the whole file holds"), "{err}");
        // 2,560 bytes of file, 2,048 after the header: a claim of 2,300 runs past the end.
        raw_tar(&path, b"0000000.jpg", 2300, &[7; 600]);
        let err = read_members(&path).unwrap_err().to_string();
        assert!(err.contains("cut short"), "{err}");
    }

    #[test]
    fn keys_that_would_leave_the_folder_are_not_plain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000.tar");
        raw_tar(&path, b"../../x.png", 3, &[1, 2, 3]);
        let samples = read_samples(&path).unwrap();
        assert_eq!(samples[0].key, "../../x");
        for bad in ["../../x", "/abs/x", "a/b", "..", ".", "", "a\\b", "nul\0"] {
            assert!(!plain_key(bad), "{bad:?}");
        }
        for good in ["0000000", "abc.def", "x..y", "-1"] {
            assert!(plain_key(good), "{good:?}");
        }
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
