//! Training checkpoints as one safetensors file with `NAME.sha256` beside it: written durably
//! before they become visible, and checked against their hash before a resume, so that a
//! corrupted or truncated file is refused rather than trained on.

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use crate::ModelError;
use crate::weights::{self, sibling};

/// Writes `tensors` (sorted by name) to `path` through a temporary file and its `.sha256`
/// beside it; returns the sha256.
pub(crate) fn write(path: &Path, mut tensors: Vec<(String, Tensor)>) -> Result<String, ModelError> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = sibling(path, ".tmp");
    Tensor::write_safetensors(&tensors, &tmp)?;
    let sha = sha256_file(&tmp)?;
    let sha_path = sibling(path, ".sha256");
    let sha_tmp = sibling(path, ".sha256.tmp");
    std::fs::write(&sha_tmp, format!("{sha}\n")).map_err(|e| io(&sha_path, e))?;
    // Durable before visible: without the syncs a power cut can leave the renamed names
    // pointing at empty files, and the newest checkpoint would be lost with the old ones
    // already superseded.
    for written in [&tmp, &sha_tmp] {
        std::fs::File::open(written)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(written, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    std::fs::rename(&sha_tmp, &sha_path).map_err(|e| io(&sha_path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
    }
    Ok(sha)
}

/// Every tensor of the checkpoint at `path`, after checking it against its `.sha256`.
pub(crate) fn read_verified(path: &Path) -> Result<BTreeMap<String, Tensor>, ModelError> {
    let sha_path = sibling(path, ".sha256");
    let expected = std::fs::read_to_string(&sha_path).map_err(|e| io(&sha_path, e))?;
    let actual = sha256_file(path)?;
    if expected.trim() != actual {
        return Err(ModelError::Weights {
            path: path.to_owned(),
            problem: format!(
                "checksum mismatch: {} expects {}, the file hashes to {actual}; it is corrupted or was changed",
                sha_path.display(),
                expected.trim()
            ),
        });
    }
    weights::read(path)
}

/// Removes and returns tensor `name`, or says the checkpoint lacks it.
pub(crate) fn take(
    tensors: &mut BTreeMap<String, Tensor>,
    path: &Path,
    name: &str,
) -> Result<Tensor, ModelError> {
    tensors.remove(name).ok_or_else(|| ModelError::Weights {
        path: path.to_owned(),
        problem: format!("not a training checkpoint: {name} is missing"),
    })
}

/// Copies `{prefix}{name}` of the checkpoint into each of `into`, removing what it used.
pub(crate) fn restore<'a>(
    tensors: &mut BTreeMap<String, Tensor>,
    path: &Path,
    prefix: &str,
    into: impl IntoIterator<Item = (&'a String, &'a mut Tensor)>,
) -> Result<(), ModelError> {
    tch::no_grad(|| {
        for (name, t) in into {
            t.f_copy_(&take(tensors, path, &format!("{prefix}{name}"))?)?;
        }
        Ok(())
    })
}

/// Fails when the checkpoint holds a tensor nothing read.
pub(crate) fn nothing_left(
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<(), ModelError> {
    match tensors.keys().next() {
        Some(extra) => Err(ModelError::Weights {
            path: path.to_owned(),
            problem: format!("unexpected tensor {extra}"),
        }),
        None => Ok(()),
    }
}

/// `(prefix + name, tensor on the CPU)` for each tensor of `set`.
pub(crate) fn entries<'a>(
    prefix: &'a str,
    set: impl IntoIterator<Item = (&'a String, &'a Tensor)> + 'a,
) -> impl Iterator<Item = (String, Tensor)> + 'a {
    set.into_iter()
        .map(move |(name, t)| (format!("{prefix}{name}"), t.to_device(tch::Device::Cpu)))
}

fn io(path: &Path, error: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The sha256 of a file, in hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ModelError> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| io(path, e))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
