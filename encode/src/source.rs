//! Where the images come from, cut into shards that are encoded (and resumed) one at a time.
//!
//! - A folder of webdataset shards as `llamagen ingest` (or img2dataset) writes them: each
//!   `NNNNN.tar` is one shard; a sample is its image member (`jpg`, `jpeg`, `png`, `webp`),
//!   keyed by the member's base name; its label is the `cls` member if there is one, else 0.
//! - An ImageFolder (ImageNet's train layout): one subfolder per class, classes numbered in
//!   sorted order as torchvision's `ImageFolder` does (LlamaGen's `build_dataset` uses it),
//!   images in sorted order, cut into shards of `images_per_shard`.

use std::path::{Path, PathBuf};

use crate::EncodeError;

use llamagen_shards::webdataset::IMAGE_EXTENSIONS;

/// One image to encode: its key in the output, its class label, and how to get its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub key: String,
    pub label: i64,
    pub bytes: Vec<u8>,
}

/// A unit of work: a name for its output files and where its samples are.
#[derive(Debug, Clone, PartialEq)]
pub enum Shard {
    Tar {
        name: String,
        path: PathBuf,
    },
    Files {
        name: String,
        files: Vec<(String, i64, PathBuf)>,
    },
}

impl Shard {
    pub fn name(&self) -> &str {
        match self {
            Shard::Tar { name, .. } | Shard::Files { name, .. } => name,
        }
    }

    /// Reads the shard's samples in order.
    pub fn read(&self) -> Result<Vec<Sample>, EncodeError> {
        match self {
            Shard::Tar { path, .. } => read_tar(path),
            Shard::Files { files, .. } => files
                .iter()
                .map(|(key, label, path)| {
                    Ok(Sample {
                        key: key.clone(),
                        label: *label,
                        bytes: std::fs::read(path).map_err(|e| EncodeError::io(path, e))?,
                    })
                })
                .collect(),
        }
    }
}

/// The quick check make and rsync use: the input files' count, total size and newest
/// modification time. Rewriting a shard (a re-ingest, a repaired tar) changes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub files: usize,
    pub bytes: u64,
    /// Nanoseconds since the epoch.
    pub modified_ns: u128,
}

impl Shard {
    /// The shard's input fingerprint.
    pub fn fingerprint(&self) -> Result<Fingerprint, EncodeError> {
        let paths: Vec<&Path> = match self {
            Shard::Tar { path, .. } => vec![path.as_path()],
            Shard::Files { files, .. } => files.iter().map(|(_, _, p)| p.as_path()).collect(),
        };
        let mut print = Fingerprint {
            files: paths.len(),
            bytes: 0,
            modified_ns: 0,
        };
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|e| EncodeError::io(path, e))?;
            print.bytes += meta.len();
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            print.modified_ns = print.modified_ns.max(modified);
        }
        Ok(print)
    }
}

fn read_tar(path: &Path) -> Result<Vec<Sample>, EncodeError> {
    let samples = llamagen_shards::webdataset::read_samples(path)
        .map_err(|e| EncodeError::Input(e.to_string()))?;
    let mut out = Vec::with_capacity(samples.len());
    for sample in samples {
        let Some((_, bytes)) = sample.image() else {
            continue;
        };
        let label = match sample.text("cls") {
            None => 0,
            Some(text) => text.trim().parse::<i64>().map_err(|_| {
                EncodeError::Input(format!(
                    "{}: {}.cls holds {text:?}, not a class number",
                    path.display(),
                    sample.key
                ))
            })?,
        };
        out.push(Sample {
            bytes: bytes.to_vec(),
            key: sample.key,
            label,
        });
    }
    Ok(out)
}

/// The shards of `input`: its `*.tar` files if it has any, else its class subfolders.
pub fn shards(input: &Path, images_per_shard: usize) -> Result<Vec<Shard>, EncodeError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
        .map_err(|e| EncodeError::io(input, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let tars: Vec<Shard> = entries
        .iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "tar"))
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            Some(Shard::Tar {
                name,
                path: p.clone(),
            })
        })
        .collect();
    if !tars.is_empty() {
        return Ok(tars);
    }
    let classes: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(EncodeError::Input(format!(
            "{} holds neither webdataset shards (*.tar) nor class folders (ImageFolder)",
            input.display()
        )));
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut images: Vec<PathBuf> = Vec::new();
        collect_images(class, &mut images)?;
        images.sort();
        for image in images {
            let relative = image
                .strip_prefix(input)
                .unwrap_or(&image)
                .to_string_lossy()
                .into_owned();
            files.push((relative, label as i64, image));
        }
    }
    Ok(files
        .chunks(images_per_shard.max(1))
        .enumerate()
        .map(|(i, chunk)| Shard::Files {
            name: llamagen_shards::shard_name(i as u32),
            files: chunk.to_vec(),
        })
        .collect())
}

/// ImageFolder walks class folders recursively.
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EncodeError> {
    for entry in std::fs::read_dir(dir).map_err(|e| EncodeError::io(dir, e))? {
        let path = entry.map_err(|e| EncodeError::io(dir, e))?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}
