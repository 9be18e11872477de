//! LlamaGen's on-disk layouts, so that its own training scripts read our output.
//!
//! Class-conditional ([`export_llamagen`]; `extract_codes_c2i.py` writes it, `train_c2i.py`
//! and `llamagen train` read it): sample i is `<name>_codes/i.npy`, int64 [1, A, T], and
//! `<name>_labels/i.npy`, int64 [1], numbered over the shards in name order.
//!
//! Text-to-image ([`export_llamagen_t2i`]; what `train_t2i.py --data-path lists --t5-feat-path
//! t5 --short-t5-feat-path t5_short` reads, and what `extract_codes_t2i.py` and
//! `extract_t5_feature.py` write): one jsonl list per shard, `lists/NNNNN.jsonl`, whose line i
//! is `{"image_path", "text": [LAION caption, LLaVA caption, its first sentence]}` (the
//! order of its CAPTION_KEY: blip, llava, llava_first); the image itself under
//! `images/NNNNN/`; `codes/NNNNN/i.npy` int64 [1, T]; `t5/NNNNN/i.npy` and
//! `t5_short/NNNNN/i.npy` f32 [1, L, D] (valid tokens only, as extract_t5_feature.py saves).

use std::path::Path;

use ndarray::{Array1, Array3, Axis};
use ndarray_npy::WriteNpyExt as _;

use crate::EncodeError;
use crate::codes::{self, CodePaths};
use crate::embeddings::{self, ShardEmbeddings};

/// Writes every finished shard of `codes_dir` into `out` as `<name>_codes` / `<name>_labels`;
/// returns the number of samples. Files that exist are rewritten (the export is cheap next to
/// the encoding and must follow the codes).
pub fn export_llamagen(codes_dir: &Path, out: &Path, name: &str) -> Result<usize, EncodeError> {
    let code_dir = out.join(format!("{name}_codes"));
    let label_dir = out.join(format!("{name}_labels"));
    for dir in [&code_dir, &label_dir] {
        std::fs::create_dir_all(dir).map_err(|e| EncodeError::io(dir, e))?;
    }
    let shard_names = codes::finished_shards(codes_dir)?;
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

/// Writes the captioned samples of every finished codes shard in LlamaGen's text-to-image
/// layout; returns the number of samples. `shards` holds the tars the codes were made from.
pub fn export_llamagen_t2i(
    shards: &Path,
    codes_dir: &Path,
    t5_dir: &Path,
    out: &Path,
) -> Result<usize, EncodeError> {
    let mut written = 0;
    for shard in codes::finished_shards(codes_dir)? {
        let embeddings_path = embeddings::path(t5_dir, &shard);
        if !embeddings_path.is_file() {
            continue;
        }
        let data = codes::read(&CodePaths::new(codes_dir, &shard))?;
        let text = ShardEmbeddings::read(&embeddings_path)?;
        let tar = shards.join(format!("{shard}.tar"));
        let mut members: std::collections::HashMap<String, _> =
            llamagen_shards::webdataset::read_samples(&tar)
                .map_err(|e| EncodeError::Input(e.to_string()))?
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect();
        let mut captions = captions_by_key(shards, &shard)?;
        let row_of: std::collections::HashMap<&str, usize> = data
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let dirs = ["images", "codes", "t5", "t5_short"].map(|d| out.join(d).join(&shard));
        for dir in dirs.iter().chain([&out.join("lists")]) {
            std::fs::create_dir_all(dir).map_err(|e| EncodeError::io(dir, e))?;
        }
        let mut lines = String::new();
        let mut line = 0usize;
        for (index, key) in text.keys.iter().enumerate() {
            let (Some(&row), Some(sample)) = (row_of.get(key.as_str()), members.remove(key)) else {
                continue;
            };
            let Some((ext, bytes)) = sample.image() else {
                continue;
            };
            if !llamagen_shards::webdataset::plain_key(key)
                || !ext.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(EncodeError::Input(format!(
                    "{}: sample {key:?} ({ext}) cannot be a file name in {}: member names must be plain",
                    tar.display(),
                    dirs[0].display()
                )));
            }
            let image_path = dirs[0].join(format!("{key}.{ext}"));
            std::fs::write(&image_path, bytes).map_err(|e| EncodeError::io(&image_path, e))?;
            // View 0 is the center crop (the only view of a --no-flip folder).
            let tokens = data.codes.slice(ndarray::s![row, 0, ..]).mapv(i64::from);
            let t = tokens.len();
            let tokens = tokens
                .into_shape_with_order((1, t))
                .map_err(|e| EncodeError::Invalid(e.to_string()))?;
            write_npy(&dirs[1].join(format!("{line}.npy")), |b| {
                tokens.write_npy(b)
            })?;
            for (field, dir) in [("caption", &dirs[2]), ("short_caption", &dirs[3])] {
                let Some(f) = text.fields.get(field).filter(|f| f.lengths[index] > 0) else {
                    continue;
                };
                let valid = f.valid(index);
                let (l, d) = valid.dim();
                let valid = valid
                    .into_shape_with_order((1, l, d))
                    .map_err(|e| EncodeError::Invalid(e.to_string()))?;
                write_npy(&dir.join(format!("{line}.npy")), |b| valid.write_npy(b))?;
            }
            let [llava, llava_first] = captions.remove(key).unwrap_or_default();
            let texts = [sample.text("txt").unwrap_or_default(), llava, llava_first];
            let record = serde_json::json!({
                "image_path": image_path.display().to_string(),
                "text": texts,
                "key": key,
            });
            lines.push_str(&record.to_string());
            lines.push('\n');
            line += 1;
        }
        let list = out.join("lists").join(format!("{shard}.jsonl"));
        llamagen_shards::atomic::write_bytes(&list, lines.as_bytes())
            .map_err(|e| EncodeError::Output(e.to_string()))?;
        written += line;
    }
    if written == 0 {
        return Err(EncodeError::Input(format!(
            "no sample of {} has both codes and caption embeddings in {}",
            codes_dir.display(),
            t5_dir.display()
        )));
    }
    Ok(written)
}

/// The LLaVA caption and its first sentence per key, from `NNNNN_captions.parquet` beside
/// the shards (empty strings where there are none).
fn captions_by_key(
    shards: &Path,
    shard: &str,
) -> Result<std::collections::HashMap<String, [String; 2]>, EncodeError> {
    let path = llamagen_shards::captions::captions_path(shards, shard);
    let rows = llamagen_shards::captions::read_captions(&path)
        .map_err(|e| EncodeError::Input(e.to_string()))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let texts = [
                r.caption.unwrap_or_default(),
                r.short_caption.unwrap_or_default(),
            ];
            (r.key, texts)
        })
        .collect())
}

fn write_npy(
    path: &Path,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), ndarray_npy::WriteNpyError>,
) -> Result<(), EncodeError> {
    let mut bytes = Vec::new();
    write(&mut bytes).map_err(|e| EncodeError::Output(format!("{}: {e}", path.display())))?;
    std::fs::write(path, bytes).map_err(|e| EncodeError::io(path, e))
}
