//! LlamaGen's on-disk layout for class-conditional training (`extract_codes_c2i.py` writes it,
//! `train_c2i.py` and `llamagen train` read it): sample i is `<name>_codes/i.npy`, int64
//! [1, A, T], and `<name>_labels/i.npy`, int64 [1], numbered over the shards in name order.

use std::path::Path;

use ndarray::{Array1, Array3, Axis};
use ndarray_npy::WriteNpyExt as _;

use crate::EncodeError;
use crate::codes::{self, CodePaths};

/// Writes every finished shard of `codes_dir` into `out` as `<name>_codes` / `<name>_labels`;
/// returns the number of samples. Files that exist are rewritten (the export is cheap next to
/// the encoding and must follow the codes).
pub fn export_llamagen(codes_dir: &Path, out: &Path, name: &str) -> Result<usize, EncodeError> {
    let code_dir = out.join(format!("{name}_codes"));
    let label_dir = out.join(format!("{name}_labels"));
    for dir in [&code_dir, &label_dir] {
        std::fs::create_dir_all(dir).map_err(|e| EncodeError::io(dir, e))?;
    }
    let mut shard_names: Vec<String> = std::fs::read_dir(codes_dir)
        .map_err(|e| EncodeError::io(codes_dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let stem = file.strip_suffix(".json")?.to_string();
            (stem != "encode").then_some(stem)
        })
        .collect();
    shard_names.sort();
    if shard_names.is_empty() {
        return Err(EncodeError::Input(format!(
            "{} holds no finished shards (NAME.json)",
            codes_dir.display()
        )));
    }
    let mut index = 0usize;
    for shard in shard_names {
        let data = codes::read(&CodePaths::new(codes_dir, &shard))?;
        for (row, label) in data.codes.axis_iter(Axis(0)).zip(data.labels.iter()) {
            let (a, t) = row.dim();
            let wide: Array3<i64> = row
                .mapv(i64::from)
                .into_shape_with_order((1, a, t))
                .map_err(|e| EncodeError::Invalid(e.to_string()))?;
            write_npy(&code_dir.join(format!("{index}.npy")), |b| {
                wide.write_npy(b)
            })?;
            let label = Array1::from(vec![*label]);
            write_npy(&label_dir.join(format!("{index}.npy")), |b| {
                label.write_npy(b)
            })?;
            index += 1;
        }
    }
    Ok(index)
}

fn write_npy(
    path: &Path,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), ndarray_npy::WriteNpyError>,
) -> Result<(), EncodeError> {
    let mut bytes = Vec::new();
    write(&mut bytes).map_err(|e| EncodeError::Output(format!("{}: {e}", path.display())))?;
    std::fs::write(path, bytes).map_err(|e| EncodeError::io(path, e))
}
