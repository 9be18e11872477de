//! Loading and saving model weights as safetensors with the reference's tensor names.
//!
//! Loading is strict: PyTorch's `load_state_dict(strict=False)` (which LlamaGen's text-to-image
//! sampler uses) silently keeps random weights for a tensor the file lacks, and a model that
//! samples noise is much harder to diagnose than an error naming the tensor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::{Tensor, nn::VarStore};

use crate::ModelError;

/// How many names of each kind an error lists before summarising the rest.
const NAMES_SHOWN: usize = 8;

/// Copies every tensor of the safetensors file at `path` into the variables of `vs`, converting
/// dtype and device to the variable's. Fails, changing nothing, when a tensor is missing from
/// the file, the file holds a tensor the model lacks, or a shape differs; the message names them.
///
/// A training checkpoint of [`crate::train::Trainer`] is accepted too: its `model.*` tensors are
/// the weights, so `llamagen sample` and `llamagen benchmark` take checkpoints as they are saved.
pub fn load_strict(vs: &VarStore, path: &Path) -> Result<(), ModelError> {
    let mut file = read(path)?;
    if file.contains_key("trainer.step") {
        file = file
            .into_iter()
            .filter_map(|(name, t)| name.strip_prefix("model.").map(|n| (n.to_owned(), t)))
            .collect();
    }
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();

    let missing: Vec<&String> = variables
        .keys()
        .filter(|name| !file.contains_key(*name))
        .collect();
    let unexpected: Vec<&String> = file
        .keys()
        .filter(|name| !variables.contains_key(*name))
        .collect();
    let misshaped: Vec<String> = variables
        .iter()
        .filter_map(|(name, var)| {
            let found = file.get(name)?;
            (found.size() != var.size())
                .then(|| format!("{name} (file {:?}, model {:?})", found.size(), var.size()))
        })
        .collect();

    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing {}", list(&missing)));
    }
    if !unexpected.is_empty() {
        problems.push(format!("unexpected {}", list(&unexpected)));
    }
    if !misshaped.is_empty() {
        problems.push(format!("misshaped {}", list(&misshaped)));
    }
    if !problems.is_empty() {
        return Err(weights_error(path, problems.join("; ")));
    }

    tch::no_grad(|| -> Result<(), ModelError> {
        for (name, mut var) in variables {
            let source = &file[&name];
            if source.is_floating_point() && source.isfinite().all().int64_value(&[]) == 0 {
                return Err(weights_error(
                    path,
                    format!("{name} holds NaN or infinite values"),
                ));
            }
            var.f_copy_(&source.to_kind(var.kind()).to_device(var.device()))?;
        }
        Ok(())
    })
}

/// Writes every variable of `vs` to `path` as f32 safetensors (names sorted), through a
/// temporary file and a rename so that a crash never leaves a truncated file behind.
pub fn save(vs: &VarStore, path: &Path) -> Result<(), ModelError> {
    let tensors: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                t.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu),
            )
        })
        .collect();
    let named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    let tmp = sibling(path, &format!(".tmp{}", std::process::id()));
    Tensor::write_safetensors(&named, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        error: source,
    })
}

/// The values a model learns: the elements of `vs`'s trainable variables, as PyTorch's
/// `sum(p.numel() for p in model.parameters())` counts them, so buffers (a text-conditional
/// GPT's unconditional caption, a tokenizer's codebook-usage window) are left out. GPT-B counts
/// 111M, as the paper's tables give it.
pub fn parameter_count(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// Every tensor of a safetensors file by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>, ModelError> {
    if !path.is_file() {
        return Err(weights_error(path, "no such file".into()));
    }
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| weights_error(path, format!("not a readable safetensors file: {e}")))?;
    let mut by_name = BTreeMap::new();
    for (name, tensor) in tensors {
        if by_name.insert(name.clone(), tensor).is_some() {
            return Err(weights_error(path, format!("tensor {name} appears twice")));
        }
    }
    Ok(by_name)
}

fn list<T: std::fmt::Display>(names: &[T]) -> String {
    let shown: BTreeSet<String> = names
        .iter()
        .take(NAMES_SHOWN)
        .map(|n| n.to_string())
        .collect();
    let shown = shown.into_iter().collect::<Vec<_>>().join(", ");
    if names.len() > NAMES_SHOWN {
        format!(
            "{} tensors: {shown}, and {} more",
            names.len(),
            names.len() - NAMES_SHOWN
        )
    } else {
        shown
    }
}

fn weights_error(path: &Path, problem: String) -> ModelError {
    ModelError::Weights {
        path: path.to_owned(),
        problem,
    }
}

/// `path` with `suffix` appended to its file name (`w.safetensors` -> `w.safetensors.tmp`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}
