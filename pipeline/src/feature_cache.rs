//! A reference set's features kept on disk (`reference-features/` under the samples folder),
//! so that a scheduled run does not send the same reference through its networks again: ADM's
//! 10,000-image ImageNet batch is about 12 minutes of CPU through the Inception, COCO val2014's
//! 40,504 images an hour.
//!
//! A file's name hashes everything its features depend on (the reference's content, the
//! networks' weights, how images reach them, and the metric code), so a stale file is never
//! read; one that cannot be read is logged and made again, and one that cannot be written is
//! logged and left out. Files are written atomically under a unique temporary name, as
//! evaluators on several hosts may share the folder.

use std::path::{Path, PathBuf};

use ndarray::Array2;

/// One cache file: `DIR/KIND-KEY.npz`, arrays of f32 rows, one row per reference image.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    path: PathBuf,
}

impl FeatureCache {
    /// The file in `dir` for features of `kind` (`adm`, `t2i`) that depend on `parts` (hashed
    /// in order, followed by [`crate::recording::METRICS_IMPLEMENTATION`]).
    pub fn new(dir: &Path, kind: &str, parts: &[&[u8]]) -> Self {
        use sha2::Digest as _;
        let mut key = sha2::Sha256::new();
        for part in parts {
            key.update(part);
        }
        key.update(crate::recording::METRICS_IMPLEMENTATION.as_bytes());
        let key = format!("{:x}", key.finalize());
        Self {
            path: dir.join(format!("{kind}-{}.npz", &key[..16])),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The arrays `names`, in that order, when the file exists and holds them all with one
    /// row count and `widths` columns each; otherwise `None` (a damaged file is logged).
    pub fn read<const N: usize>(
        &self,
        names: [&str; N],
        widths: [usize; N],
    ) -> Option<[Array2<f32>; N]> {
        if !self.path.is_file() {
            return None;
        }
        match self.try_read(names, widths) {
            Ok(arrays) => {
                tracing::info!("reference features from {}", self.path.display());
                Some(arrays)
            }
            Err(e) => {
                tracing::warn!(
                    "{} cannot be used ({e:#}); the reference is measured again",
                    self.path.display()
                );
                None
            }
        }
    }

    fn try_read<const N: usize>(
        &self,
        names: [&str; N],
        widths: [usize; N],
    ) -> anyhow::Result<[Array2<f32>; N]> {
        let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&self.path)?)?;
        let mut arrays = Vec::with_capacity(N);
        for (name, width) in names.into_iter().zip(widths) {
            let array: Array2<f32> = npz.by_name(name)?;
            anyhow::ensure!(
                array.ncols() == width,
                "{name} has {} columns, not {width}",
                array.ncols()
            );
            arrays.push(array);
        }
        let rows = arrays.first().map_or(0, Array2::nrows);
        anyhow::ensure!(
            arrays.iter().all(|a| a.nrows() == rows),
            "its arrays have different row counts"
        );
        Ok(arrays
            .try_into()
            .unwrap_or_else(|_| unreachable!("one array per name")))
    }

    /// Writes `arrays` (name, [N, D]) as the cache file. A file that cannot be written is
    /// logged, not an error: the features in hand are right, and the next run measures again.
    pub fn write(&self, arrays: &[(&str, &Array2<f32>)]) {
        match self.try_write(arrays) {
            Ok(()) => tracing::info!("reference features kept in {}", self.path.display()),
            Err(e) => tracing::warn!(
                "reference features not kept in {}: {e:#}",
                self.path.display()
            ),
        }
    }

    fn try_write(&self, arrays: &[(&str, &Array2<f32>)]) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let path = &self.path;
        let format = |e: &dyn std::fmt::Display| llamagen_shards::ShardError::Format {
            path: path.clone(),
            problem: e.to_string(),
        };
        llamagen_shards::atomic::write_with(path, |file| {
            let mut npz = ndarray_npy::NpzWriter::new(file);
            for (name, array) in arrays {
                npz.add_array(*name, *array).map_err(|e| format(&e))?;
            }
            npz.finish().map_err(|e| format(&e))?;
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, d: usize, offset: f32) -> Array2<f32> {
        Array2::from_shape_fn((n, d), |(i, j)| offset + (i * d + j) as f32)
    }

    #[test]
    fn arrays_come_back_and_a_damaged_or_mismatched_file_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path(), "adm", &[b"reference", b"net"]);
        assert!(cache.read(["pool"], [3]).is_none(), "no file yet");
        let (pool, logits) = (rows(4, 3, 0.5), rows(4, 2, -1.0));
        cache.write(&[("pool", &pool), ("logits", &logits)]);
        let back = cache.read(["pool", "logits"], [3, 2]).unwrap();
        assert_eq!(back, [pool.clone(), logits]);
        assert!(cache.read(["pool"], [4]).is_none(), "other widths");
        assert!(cache.read(["spatial"], [3]).is_none(), "a missing array");
        // Nothing but the file is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        std::fs::write(cache.path(), b"PK\x03\x04 torn").unwrap();
        assert!(cache.read(["pool"], [3]).is_none(), "a torn file");
        cache.write(&[("pool", &pool)]);
        assert_eq!(cache.read(["pool"], [3]).unwrap(), [pool]);
    }

    #[test]
    fn a_cache_that_cannot_be_written_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        // The cache folder's place is taken by a file.
        let blocked = dir.path().join("reference-features");
        std::fs::write(&blocked, b"").unwrap();
        let cache = FeatureCache::new(&blocked, "adm", &[b"reference"]);
        cache.write(&[("pool", &rows(2, 3, 0.0))]);
        assert!(cache.read(["pool"], [3]).is_none());
    }

    #[test]
    fn every_part_of_the_key_names_another_file() {
        let dir = Path::new("/cache");
        let name = |kind, parts: &[&[u8]]| FeatureCache::new(dir, kind, parts).path().to_owned();
        let base = name("adm", &[b"a", b"b"]);
        assert_eq!(base, name("adm", &[b"a", b"b"]));
        assert!(base.starts_with(dir));
        assert_ne!(base, name("adm", &[b"a", b"c"]));
        assert_ne!(base, name("t2i", &[b"a", b"b"]));
    }
}
