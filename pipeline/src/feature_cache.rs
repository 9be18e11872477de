//! Features kept on disk, so that a scheduled or resumed run does not send the same images
//! through its networks again: a reference set's (`reference-features/` under the samples
//! folder; ADM's 10,000-image ImageNet batch is about 12 minutes of CPU through the Inception,
//! COCO val2014's 40,504 images an hour), and each sample folder's (its `features/`, so that a
//! sweep stopped at one guidance scale does not measure the scales before it again).
//!
//! A file's name hashes everything its features depend on (the reference's content, the
//! networks' weights, how images reach them, and the metric code), so a stale file is never
//! read; one that cannot be read is logged and made again, and one that cannot be written is
//! logged and left out. Files are written atomically under a unique temporary name, as
//! evaluators on several hosts may share the folder.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};

/// What [`FeatureCache::read_with`] reads: the feature arrays ([rows, width] each) and the f64
/// arrays, each in the order asked for.
pub type Read<const N: usize, const M: usize> = ([Array2<f32>; N], [Array1<f64>; M]);

/// One cache file: `DIR/KIND-KEY.npz`, arrays of f32 rows, one row per reference image.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    path: PathBuf,
    /// What the log says the file holds.
    what: &'static str,
    /// Whether reads and writes that work are logged at debug level only: a file among many,
    /// whose caller logs a summary.
    quiet: bool,
}

/// 16 hex digits of the sha256 of `parts` (each with its length, so that no two lists of parts
/// hash alike) and [`crate::recording::METRICS_IMPLEMENTATION`]: what names a cache file.
pub fn key(parts: &[&[u8]]) -> String {
    use sha2::Digest as _;
    let mut key = sha2::Sha256::new();
    for part in parts {
        key.update((part.len() as u64).to_le_bytes());
        key.update(part);
    }
    key.update(crate::recording::METRICS_IMPLEMENTATION.as_bytes());
    format!("{:x}", key.finalize())[..16].to_string()
}

impl FeatureCache {
    /// The file in `dir` for features of `kind` (`adm`, `t2i`) that depend on `parts` (hashed
    /// in order, followed by [`crate::recording::METRICS_IMPLEMENTATION`]), logged as a
    /// reference's features.
    pub fn new(dir: &Path, kind: &str, parts: &[&[u8]]) -> Self {
        Self {
            path: dir.join(format!("{kind}-{}.npz", key(parts))),
            what: "reference features",
            quiet: false,
        }
    }

    /// The same file, logged as holding `what` ("sample features") rather than a reference's.
    pub fn describing(self, what: &'static str) -> Self {
        Self { what, ..self }
    }

    /// The same file, whose reads and writes that work are logged at debug level only.
    pub fn quietly(self) -> Self {
        Self {
            quiet: true,
            ..self
        }
    }

    fn done(&self, how: &str) {
        if self.quiet {
            tracing::debug!("{} {how} {}", self.what, self.path.display());
        } else {
            tracing::info!("{} {how} {}", self.what, self.path.display());
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
        self.read_with(names, widths, [], |_, _| Ok(()))
            .map(|(arrays, [])| arrays)
    }

    /// The arrays `names` (as [`FeatureCache::read`] checks them) and the f64 arrays `values`
    /// of [`FeatureCache::write_with`], read in one pass over the file, when it exists, holds
    /// them all and passes `check` (what the caller knows of their lengths); otherwise `None`
    /// (a damaged file, or one that fails the check, is logged).
    pub fn read_with<const N: usize, const M: usize>(
        &self,
        names: [&str; N],
        widths: [usize; N],
        values: [&str; M],
        check: impl FnOnce(&[Array2<f32>; N], &[Array1<f64>; M]) -> anyhow::Result<()>,
    ) -> Option<Read<N, M>> {
        if !self.path.is_file() {
            return None;
        }
        let read = self
            .try_read(names, widths, values)
            .and_then(|(arrays, values)| {
                check(&arrays, &values)?;
                Ok((arrays, values))
            });
        match read {
            Ok(read) => {
                self.done("from");
                Some(read)
            }
            Err(e) => {
                self.unusable(&e);
                None
            }
        }
    }

    fn try_read<const N: usize, const M: usize>(
        &self,
        names: [&str; N],
        widths: [usize; N],
        values: [&str; M],
    ) -> anyhow::Result<Read<N, M>> {
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
        let mut read_values = Vec::with_capacity(M);
        for name in values {
            let array: Array1<f64> = npz.by_name(name)?;
            read_values.push(array);
        }
        let arrays = arrays
            .try_into()
            .unwrap_or_else(|_| unreachable!("one array per name"));
        let values = read_values
            .try_into()
            .unwrap_or_else(|_| unreachable!("one array per value name"));
        Ok((arrays, values))
    }

    /// Logs a file that exists but cannot serve (damaged, or holding other arrays).
    fn unusable(&self, e: &anyhow::Error) {
        tracing::warn!(
            "{} cannot be used ({e:#}); the images are measured again",
            self.path.display()
        );
    }

    /// Writes `arrays` (name, [N, D]) as the cache file; whether it was written. A file that
    /// cannot be written is logged, not an error: the features in hand are right, and the next
    /// run measures again.
    pub fn write(&self, arrays: &[(&str, &Array2<f32>)]) -> bool {
        self.write_with(arrays, &[])
    }

    /// [`FeatureCache::write`] with per-image f64 values beside the features (name, [N]), kept
    /// to the bit.
    pub fn write_with(
        &self,
        arrays: &[(&str, &Array2<f32>)],
        values: &[(&str, &Array1<f64>)],
    ) -> bool {
        match self.try_write(arrays, values) {
            Ok(()) => {
                self.done("kept in");
                true
            }
            Err(e) => {
                tracing::warn!("{} not kept in {}: {e:#}", self.what, self.path.display());
                false
            }
        }
    }

    /// Deletes the file, if there is one: what it held is kept elsewhere now. A file that
    /// cannot be deleted is logged and left.
    pub fn remove(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!("removed {}", self.path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("{} not removed: {e}", self.path.display()),
        }
    }

    fn try_write(
        &self,
        arrays: &[(&str, &Array2<f32>)],
        values: &[(&str, &Array1<f64>)],
    ) -> anyhow::Result<()> {
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
            for (name, array) in values {
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
        assert!(cache.write(&[("pool", &pool), ("logits", &logits)]));
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
        cache.remove();
        assert!(!cache.path().exists());
        assert!(cache.read(["pool"], [3]).is_none());
    }

    #[test]
    fn a_cache_that_cannot_be_written_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        // The cache folder's place is taken by a file.
        let blocked = dir.path().join("reference-features");
        std::fs::write(&blocked, b"").unwrap();
        let cache = FeatureCache::new(&blocked, "adm", &[b"reference"]);
        assert!(!cache.write(&[("pool", &rows(2, 3, 0.0))]));
        assert!(cache.read(["pool"], [3]).is_none());
        cache.remove();
        assert!(blocked.is_file(), "a file that is not there is no error");
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
        assert_ne!(name("adm", &[b"a", b"bc"]), name("adm", &[b"ab", b"c"]));
    }

    #[test]
    fn values_beside_the_features_come_back_to_the_bit() {
        let dir = tempfile::tempdir().unwrap();
        let cache =
            FeatureCache::new(dir.path(), "t2i", &[b"samples"]).describing("sample features");
        let scores = Array1::from(vec![0.1 + 0.2, 1.0 / 3.0, -2.5e-300]);
        let clip = rows(3, 2, 0.0);
        cache.write_with(&[("clip", &clip)], &[("clip_score", &scores)]);
        assert_eq!(
            cache.read(["clip"], [2]).unwrap(),
            std::slice::from_ref(&clip)
        );
        let counted = |n: usize| {
            move |_: &[Array2<f32>; 1], [scores]: &[Array1<f64>; 1]| {
                anyhow::ensure!(scores.len() == n, "{} scores", scores.len());
                Ok(())
            }
        };
        let ([features], [back]) = cache
            .read_with(["clip"], [2], ["clip_score"], counted(3))
            .unwrap();
        assert_eq!(features, clip);
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            scores.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(
            cache
                .read_with(["clip"], [2], ["clip_score"], counted(4))
                .is_none(),
            "failing the caller's check"
        );
        assert!(
            cache
                .read_with(["clip"], [2], ["other"], |_, _| Ok(()))
                .is_none(),
            "a missing array"
        );
    }
}
