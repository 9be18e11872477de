//! The ADM evaluator's `.npz` files: a batch of images (`arr_0`: uint8 [N, H, W, 3]) and/or
//! precomputed statistics (`mu`, `sigma` of pool features; `mu_s`, `sigma_s` of spatial
//! features). LlamaGen's sampling scripts write the same layout.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array4, ArrayView3, ArrayView4};
use ndarray_npy::{NpzReader, WriteNpyExt};
use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, HasZipMetadata, ZipArchive, ZipWriter};

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

/// Reads an ADM-style npz whole; a file with neither images nor statistics is an error. Sets of
/// more than a few thousand images are better read a chunk at a time with [`NpzImages`].
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
    let (n, h, w, _) = images.map_or((0, 0, 0, 3), |i| i.dim());
    let mut writer = NpzWriter::create(path, images.map(|_| (n, h, w)))?;
    for image in images.iter().flat_map(|i| i.outer_iter()) {
        writer.push(image)?;
    }
    writer.finish(pool, spatial)
}

/// An ADM-style npz written one image at a time: `arr_0` ([N, H, W, 3] uint8, N and the size
/// given up front), then optional statistics. The file is a temporary until
/// [`NpzWriter::finish`] renames it into place; dropped unfinished, it is removed.
///
/// 50,000 samples at 256 x 256 are a 9.8 GB `arr_0`: it is never held in memory, and it is
/// written with zip64 headers (numpy reads them), since a plain zip entry stops at 4 GiB.
pub struct NpzWriter {
    zip: Option<ZipWriter<BufWriter<File>>>,
    tmp: PathBuf,
    path: PathBuf,
    /// (N, H, W) of `arr_0`, when it has one.
    images: Option<(usize, usize, usize)>,
    written: usize,
}

impl NpzWriter {
    /// Starts `path` (as `path.npz.tmp`), with an `arr_0` of `images` = (N, H, W) if given.
    pub fn create(path: &Path, images: Option<(usize, usize, usize)>) -> Result<Self, EvalError> {
        let tmp = path.with_extension("npz.tmp");
        let file = File::create(&tmp).map_err(|e| file_error(&tmp, e))?;
        let mut writer = NpzWriter {
            zip: Some(ZipWriter::new(BufWriter::with_capacity(1 << 20, file))),
            tmp,
            path: path.to_path_buf(),
            images,
            written: 0,
        };
        if let Some((n, h, w)) = images {
            let options = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Stored)
                .large_file(true);
            let tmp = writer.tmp.clone();
            let zip = writer.zip_mut();
            zip.start_file("arr_0.npy", options)
                .map_err(|e| file_error(&tmp, e))?;
            zip.write_all(&image_header(n, h, w))
                .map_err(|e| file_error(&tmp, e))?;
        }
        Ok(writer)
    }

    fn zip_mut(&mut self) -> &mut ZipWriter<BufWriter<File>> {
        self.zip.as_mut().expect("the writer is open until finish")
    }

    /// Appends the next image of `arr_0`: [H, W, 3] uint8 of the size given to `create`.
    pub fn push(&mut self, image: ArrayView3<'_, u8>) -> Result<(), EvalError> {
        let Some((n, h, w)) = self.images else {
            return Err(EvalError::Invalid(
                "this npz was started without arr_0".into(),
            ));
        };
        if image.dim() != (h, w, 3) {
            return Err(EvalError::Shape {
                what: "npz image",
                expected: format!("[{h}, {w}, 3]"),
                got: format!("{:?}", image.dim()),
            });
        }
        if self.written == n {
            return Err(EvalError::Invalid(format!(
                "arr_0 was started for {n} images; one more was pushed"
            )));
        }
        let tmp = self.tmp.clone();
        let bytes = image.as_standard_layout();
        let bytes = bytes.as_slice().expect("standard layout is contiguous");
        self.zip_mut()
            .write_all(bytes)
            .map_err(|e| file_error(&tmp, e))?;
        self.written += 1;
        Ok(())
    }

    /// Adds the statistics, makes the file durable and renames it into place. Fails when fewer
    /// images were pushed than `create` announced.
    pub fn finish(
        mut self,
        pool: Option<&Statistics>,
        spatial: Option<&Statistics>,
    ) -> Result<(), EvalError> {
        if let Some((n, _, _)) = self.images
            && self.written != n
        {
            return Err(EvalError::Invalid(format!(
                "arr_0 was started for {n} images but {} were pushed",
                self.written
            )));
        }
        let tmp = self.tmp.clone();
        let err = |e: &dyn std::fmt::Display| file_error(&tmp, e);
        let mut zip = self.zip.take().expect("finish runs once");
        for (stats, mu, sigma) in [(pool, "mu", "sigma"), (spatial, "mu_s", "sigma_s")] {
            if let Some(s) = stats {
                let options =
                    SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
                zip.start_file(format!("{mu}.npy"), options)
                    .map_err(|e| err(&e))?;
                s.mu.write_npy(&mut zip).map_err(|e| err(&e))?;
                zip.start_file(format!("{sigma}.npy"), options)
                    .map_err(|e| err(&e))?;
                s.sigma.write_npy(&mut zip).map_err(|e| err(&e))?;
            }
        }
        let file = zip
            .finish()
            .map_err(|e| err(&e))?
            .into_inner()
            .map_err(|e| err(&e.into_error()))?;
        file.sync_all().map_err(|e| err(&e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| file_error(&self.path, e))
    }
}

impl Drop for NpzWriter {
    fn drop(&mut self) {
        if self.zip.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The `.npy` header (format 1.0) of a C-order uint8 [n, h, w, 3] array, padded as numpy pads
/// it, so that the data starts at a multiple of 64 bytes.
fn image_header(n: usize, h: usize, w: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {h}, {w}, 3), }}");
    let unpadded = NPY_MAGIC.len() + 2 + 2 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = (dict.len() + padding + 1) as u16;
    let mut out = NPY_MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// The `arr_0` of an npz, read a chunk of images at a time: ADM's 10,000-image reference and a
/// 50,000-sample batch are 2 and 9.8 GB at 256 x 256, more than the features they give.
///
/// Only the header is read by [`NpzImages::open`]; the entry must be stored (`np.savez`, as
/// ADM and LlamaGen write them), which lets a rank seek straight to its share.
#[derive(Debug, Clone)]
pub struct NpzImages {
    path: PathBuf,
    /// Where the image bytes start, within the entry.
    data_offset: u64,
    /// (N, H, W).
    dim: (usize, usize, usize),
}

impl NpzImages {
    /// `arr_0`'s shape from its header, or `None` when the file has no `arr_0`. The header must
    /// describe uint8 [N, H, W, 3] in C order, and account for the entry's size exactly.
    pub fn open(path: &Path) -> Result<Option<Self>, EvalError> {
        let file = File::open(path).map_err(|e| file_error(path, e))?;
        let mut zip = ZipArchive::new(file)
            .map_err(|e| file_error(path, format!("not an npz archive: {e}")))?;
        let mut entry = match zip.by_name_seek("arr_0.npy") {
            Ok(entry) => entry,
            Err(ZipError::FileNotFound) => return Ok(None),
            Err(ZipError::UnsupportedArchive(_)) => {
                return Err(file_error(
                    path,
                    "arr_0 is compressed (np.savez_compressed); write the batch with np.savez",
                ));
            }
            Err(e) => return Err(file_error(path, format!("arr_0: {e}"))),
        };
        let size = entry.get_metadata().uncompressed_size;
        let (dim, data_offset) =
            read_image_header(&mut entry).map_err(|m| file_error(path, format!("arr_0: {m}")))?;
        let (n, h, w) = dim;
        // Each image's size on its own too: with no images, any height and width would do.
        let image_bytes = [h, w, 3].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = image_bytes.and_then(|b| (b as u64).checked_mul(n as u64));
        if bytes.and_then(|b| b.checked_add(data_offset)) != Some(size) {
            return Err(file_error(
                path,
                format!(
                    "arr_0 claims {n} images of {w}x{h}, but its entry holds {size} bytes: the file is truncated or damaged"
                ),
            ));
        }
        Ok(Some(NpzImages {
            path: path.to_path_buf(),
            data_offset,
            dim,
        }))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.dim.0
    }

    pub fn is_empty(&self) -> bool {
        self.dim.0 == 0
    }

    /// (H, W) of every image.
    pub fn image_size(&self) -> (usize, usize) {
        (self.dim.1, self.dim.2)
    }

    /// Calls `visit(first, images)` for the images `rows`, in order, `chunk` at a time
    /// (`images`: [k, H, W, 3] uint8, k <= chunk; `first`: the row of its first image).
    pub fn read_chunks<E: From<EvalError>>(
        &self,
        rows: Range<usize>,
        chunk: usize,
        visit: &mut dyn FnMut(usize, Array4<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let (n, h, w) = self.dim;
        if rows.start > rows.end || rows.end > n || chunk == 0 {
            return Err(EvalError::Invalid(format!(
                "rows {rows:?} in chunks of {chunk} of {n} images"
            ))
            .into());
        }
        let path = &self.path;
        let file = File::open(path).map_err(|e| file_error(path, e))?;
        let mut zip = ZipArchive::new(file).map_err(|e| file_error(path, e))?;
        let mut entry = zip
            .by_name_seek("arr_0.npy")
            .map_err(|e| file_error(path, format!("arr_0: {e}")))?;
        let row_bytes = h * w * 3;
        entry
            .seek(SeekFrom::Start(
                self.data_offset + (rows.start * row_bytes) as u64,
            ))
            .map_err(|e| file_error(path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, entry);
        for first in rows.clone().step_by(chunk) {
            let k = chunk.min(rows.end - first);
            let mut bytes = vec![0u8; k * row_bytes];
            reader.read_exact(&mut bytes).map_err(|e| {
                file_error(path, format!("arr_0 images {first}..{}: {e}", first + k))
            })?;
            let images = Array4::from_shape_vec((k, h, w, 3), bytes)
                .map_err(|e| EvalError::Invalid(e.to_string()))?;
            visit(first, images)?;
        }
        Ok(())
    }
}

/// Parses an `.npy` header of uint8 [N, H, W, 3] in C order: ((N, H, W), header length).
fn read_image_header(r: &mut impl Read) -> Result<((usize, usize, usize), u64), String> {
    let mut preamble = [0u8; 8];
    r.read_exact(&mut preamble).map_err(|e| e.to_string())?;
    if &preamble[..6] != NPY_MAGIC {
        return Err("not an .npy array".into());
    }
    let (len, fixed) = match preamble[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => return Err(format!(".npy format version {v} is unknown")),
    };
    if len > 1 << 16 {
        return Err(format!("a header of {len} bytes is not an image batch's"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&text).replace('"', "'");
    let after = |key: &str| -> Result<&str, String> {
        let at = text
            .find(&format!("'{key}':"))
            .ok_or_else(|| format!("the header has no {key}"))?;
        Ok(text[at + key.len() + 3..].trim_start())
    };
    let descr = after("descr")?;
    if !["'|u1'", "'<u1'", "'>u1'", "'u1'"]
        .iter()
        .any(|d| descr.starts_with(d))
    {
        return Err(format!(
            "must be uint8 [N, H, W, 3], found dtype {}",
            descr.split(',').next().unwrap_or_default()
        ));
    }
    if !after("fortran_order")?.starts_with("False") {
        return Err("must be in C order, found Fortran order".into());
    }
    let shape = after("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("the header's shape is not a tuple")?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| format!("shape ({shape})")))
        .collect::<Result<_, _>>()?;
    match dims[..] {
        [n, h, w, 3] if h > 0 && w > 0 => Ok(((n, h, w), (fixed + len) as u64)),
        _ => Err(format!("must be uint8 [N, H, W, 3], found shape ({shape})")),
    }
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

    fn batch(n: usize, h: usize, w: usize) -> Array4<u8> {
        Array4::from_shape_fn((n, h, w, 3), |(i, y, x, c)| {
            (i * 31 + y * 7 + x * 3 + c) as u8
        })
    }

    #[test]
    fn images_are_read_back_in_chunks_of_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.npz");
        let images = batch(7, 3, 5);
        let stats = Statistics {
            mu: Array1::from(vec![0.5]),
            sigma: Array2::eye(1),
            low_rank: None,
        };
        let mut writer = NpzWriter::create(&path, Some((7, 3, 5))).unwrap();
        for image in images.outer_iter() {
            writer.push(image).unwrap();
        }
        writer.finish(Some(&stats), None).unwrap();

        let npz = NpzImages::open(&path).unwrap().unwrap();
        assert_eq!((npz.len(), npz.image_size()), (7, (3, 5)));
        for (rows, chunk) in [(0..7, 7), (0..7, 3), (2..6, 3), (5..7, 1), (4..4, 2)] {
            let mut seen = Vec::new();
            npz.read_chunks::<EvalError>(rows.clone(), chunk, &mut |first, got| {
                assert!(got.dim().0 <= chunk);
                let expected = images.slice(ndarray::s![first..first + got.dim().0, .., .., ..]);
                assert_eq!(got, expected);
                seen.extend(first..first + got.dim().0);
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, rows.collect::<Vec<_>>());
        }
        let whole = read_reference(&path).unwrap();
        assert_eq!(whole.images.unwrap(), images);
        assert_eq!(whole.pool.unwrap(), stats);
        assert!(
            npz.read_chunks::<EvalError>(5..8, 2, &mut |_, _| Ok(()))
                .is_err()
        );
    }

    #[test]
    fn a_writer_checks_its_count_and_leaves_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.npz");
        let tmp = dir.path().join("samples.npz.tmp");
        let images = batch(2, 2, 2);
        let mut writer = NpzWriter::create(&path, Some((3, 2, 2))).unwrap();
        writer.push(images.index_axis(ndarray::Axis(0), 0)).unwrap();
        let wrong = writer.push(batch(1, 2, 3).index_axis(ndarray::Axis(0), 0));
        assert!(wrong.unwrap_err().to_string().contains("[2, 2, 3]"));
        let short = writer.finish(None, None).unwrap_err().to_string();
        assert!(short.contains("3 images but 1 were pushed"), "{short}");
        assert!(!path.exists() && !tmp.exists());

        let mut writer = NpzWriter::create(&path, Some((1, 2, 2))).unwrap();
        writer.push(images.index_axis(ndarray::Axis(0), 0)).unwrap();
        assert!(writer.push(images.index_axis(ndarray::Axis(0), 1)).is_err());
        assert!(tmp.exists());
        drop(writer);
        assert!(!path.exists() && !tmp.exists());
    }

    /// An npz whose arr_0 entry holds `header` then `data`.
    fn raw_npz(path: &Path, header: &[u8], data: &[u8]) {
        let mut zip = ZipWriter::new(File::create(path).unwrap());
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zip.start_file("arr_0.npy", options).unwrap();
        zip.write_all(header).unwrap();
        zip.write_all(data).unwrap();
        zip.finish().unwrap();
    }

    #[test]
    fn a_header_that_does_not_match_its_entry_is_refused_before_any_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npz");
        let error = |header: &[u8], data: &[u8]| {
            raw_npz(&path, header, data);
            NpzImages::open(&path).unwrap_err().to_string()
        };
        // Five images announced, two present: a truncated batch.
        let err = error(&image_header(5, 2, 2), &[7; 24]);
        assert!(
            err.contains("claims 5 images of 2x2") && err.contains("truncated"),
            "{err}"
        );
        // A hostile shape whose byte count overflows.
        let huge = image_header(1 << 40, 1 << 20, 1 << 20);
        assert!(error(&huge, &[]).contains("claims"));
        // The same header with one field changed (to text of the same length).
        let edited = |from: &str, to: &str| {
            let mut header = image_header(1, 2, 2);
            let dict = String::from_utf8(header.split_off(10)).unwrap();
            header.extend(dict.replace(from, to).bytes());
            header
        };
        assert!(error(&edited("|u1", "<f4"), &[0; 48]).contains("dtype '<f4'"));
        assert!(error(&edited(", 3)", ", 1)"), &[0; 4]).contains("shape (1, 2, 2, 1)"));
        assert!(error(&edited("False", "True "), &[0; 12]).contains("Fortran"));
        assert!(error(b"\x93NUMPY\x09\x00", &[]).contains("version 9"));
        assert!(error(b"PK not npy", &[]).contains("not an .npy"));

        raw_npz(&path, &image_header(2, 2, 2), &[1; 24]);
        let npz = NpzImages::open(&path).unwrap().unwrap();
        assert_eq!(npz.len(), 2);
        let statistics_only = dir.path().join("stats.npz");
        let stats = Statistics {
            mu: Array1::from(vec![0.0]),
            sigma: Array2::eye(1),
            low_rank: None,
        };
        write_reference(&statistics_only, None, Some(&stats), None).unwrap();
        assert!(NpzImages::open(&statistics_only).unwrap().is_none());
    }

    #[test]
    fn no_damage_to_a_file_panics() {
        // A small batch with statistics, then every byte of it changed in turn and every
        // truncation: each reader returns an error or images, and never panics or allocates
        // what a header claims before checking it.
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.npz");
        let stats = Statistics {
            mu: Array1::from(vec![1.0, 2.0]),
            sigma: Array2::eye(2),
            low_rank: None,
        };
        write_reference(&good, Some(batch(2, 2, 3).view()), Some(&stats), None).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let path = dir.path().join("damaged.npz");
        let try_all = |damaged: &[u8]| {
            std::fs::write(&path, damaged).unwrap();
            let _ = read_reference(&path);
            if let Ok(Some(images)) = NpzImages::open(&path) {
                let _ = images.read_chunks::<EvalError>(0..images.len(), 1, &mut |_, _| Ok(()));
            }
        };
        for at in 0..bytes.len() {
            for value in [0u8, 0x7f, 0xff, bytes[at] ^ 1, b'9', b','] {
                let mut damaged = bytes.clone();
                damaged[at] = value;
                try_all(&damaged);
            }
            try_all(&bytes[..at]);
        }
        // No images but a height and width whose product overflows.
        raw_npz(&path, &image_header(0, 1 << 40, 1 << 40), &[]);
        let err = NpzImages::open(&path).unwrap_err().to_string();
        assert!(err.contains("claims 0 images"), "{err}");
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
