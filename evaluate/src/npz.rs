//! The ADM evaluator's `.npz` files: a batch of images (`arr_0`: uint8 [N, H, W, 3]) and/or
//! precomputed statistics (`mu`, `sigma` of pool features; `mu_s`, `sigma_s` of spatial
//! features). LlamaGen's sampling scripts write the same layout.

use std::fs::File;
use std::path::Path;

use ndarray::{Array1, Array2, Array4, ArrayView4};
use ndarray_npy::{NpzReader, NpzWriter};

use crate::EvalError;
use crate::frechet::Statistics;

fn file_error(path: &Path, message: impl std::fmt::Display) -> EvalError {
    EvalError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// What a reference batch holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceBatch {
    /// [N, H, W, 3] uint8, when the file has `arr_0`.
    pub images: Option<Array4<u8>>,
    /// FID statistics (`mu`, `sigma`), when present.
    pub pool: Option<Statistics>,
    /// sFID statistics (`mu_s`, `sigma_s`), when present.
    pub spatial: Option<Statistics>,
}

/// Reads an ADM-style npz; a file with neither images nor statistics is an error.
pub fn read_reference(path: &Path) -> Result<ReferenceBatch, EvalError> {
    let file = File::open(path).map_err(|e| file_error(path, e))?;
    let mut npz =
        NpzReader::new(file).map_err(|e| file_error(path, format!("not an npz archive: {e}")))?;
    let names: Vec<String> = npz
        .names()
        .map_err(|e| file_error(path, e))?
        .into_iter()
        .map(|n| n.trim_end_matches(".npy").to_owned())
        .collect();
    let has = |n: &str| names.iter().any(|m| m == n);
    let images = if has("arr_0") {
        let images: Array4<u8> = npz
            .by_name("arr_0")
            .map_err(|e| file_error(path, format!("arr_0 must be uint8 [N, H, W, 3]: {e}")))?;
        if images.dim().3 != 3 {
            return Err(file_error(
                path,
                format!("arr_0 has {} channels, expected 3", images.dim().3),
            ));
        }
        Some(images)
    } else {
        None
    };
    let mut stats = |mu: &str, sigma: &str| -> Result<Option<Statistics>, EvalError> {
        if !has(mu) || !has(sigma) {
            return Ok(None);
        }
        let mu: Array1<f64> = npz
            .by_name(mu)
            .map_err(|e| file_error(path, format!("{mu}: {e}")))?;
        let sigma: Array2<f64> = npz
            .by_name(sigma)
            .map_err(|e| file_error(path, format!("{sigma}: {e}")))?;
        let d = mu.len();
        if sigma.dim() != (d, d) {
            return Err(file_error(
                path,
                format!("sigma is {:?} but mu has {d} entries", sigma.dim()),
            ));
        }
        Ok(Some(Statistics {
            mu,
            sigma,
            low_rank: None,
        }))
    };
    let pool = stats("mu", "sigma")?;
    let spatial = stats("mu_s", "sigma_s")?;
    if images.is_none() && pool.is_none() {
        return Err(file_error(
            path,
            format!("holds neither arr_0 nor mu/sigma (found {names:?})"),
        ));
    }
    Ok(ReferenceBatch {
        images,
        pool,
        spatial,
    })
}

/// Writes images (and optionally statistics) in the same layout, via a temporary file that is
/// renamed into place, so a crash never leaves a truncated npz under the final name.
pub fn write_reference(
    path: &Path,
    images: Option<ArrayView4<'_, u8>>,
    pool: Option<&Statistics>,
    spatial: Option<&Statistics>,
) -> Result<(), EvalError> {
    let tmp = path.with_extension("npz.tmp");
    let file = File::create(&tmp).map_err(|e| file_error(&tmp, e))?;
    let mut npz = NpzWriter::new(file);
    let err = |e: ndarray_npy::WriteNpzError| file_error(&tmp, e);
    if let Some(images) = images {
        npz.add_array("arr_0", &images).map_err(err)?;
    }
    for (stats, mu, sigma) in [(pool, "mu", "sigma"), (spatial, "mu_s", "sigma_s")] {
        if let Some(s) = stats {
            npz.add_array(mu, &s.mu).map_err(err)?;
            npz.add_array(sigma, &s.sigma).map_err(err)?;
        }
    }
    let file = npz.finish().map_err(err)?;
    file.sync_all().map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_images_and_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.npz");
        let images = Array4::from_shape_fn((2, 4, 5, 3), |(n, i, j, c)| {
            (n * 60 + i * 10 + j * 2 + c) as u8
        });
        let stats = Statistics {
            mu: Array1::from(vec![1.0, 2.0]),
            sigma: Array2::eye(2),
            low_rank: None,
        };
        write_reference(&path, Some(images.view()), Some(&stats), None).unwrap();
        let back = read_reference(&path).unwrap();
        assert_eq!(back.images.unwrap(), images);
        assert_eq!(back.pool.unwrap(), stats);
        assert!(back.spatial.is_none());
        assert!(!dir.path().join("ref.npz.tmp").exists());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npz");
        std::fs::write(&path, b"definitely not a zip file").unwrap();
        let err = read_reference(&path).unwrap_err().to_string();
        assert!(err.contains("bad.npz") && err.contains("npz"), "{err}");
        let empty = dir.path().join("empty.npz");
        write_reference(&empty, None, None, None).unwrap();
        assert!(
            read_reference(&empty)
                .unwrap_err()
                .to_string()
                .contains("neither")
        );
    }
}
