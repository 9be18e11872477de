//! The caption embeddings of one shard on disk: `NAME.t5.safetensors`, one file (written
//! atomically, so its presence marks a finished shard).
//!
//! For each embedded field (`caption`, the whole LLaVA answer, and `short_caption`, its first
//! sentence; LlamaGen's `t5_feat_path` and `short_t5_feat_path`):
//!
//! - `FIELD.embeddings`: f16 [sum of lengths, D], the valid tokens of every sample one after
//!   the other (no padding);
//! - `FIELD.lengths`: i32 [N], each sample's valid tokens (0: no text for this field).
//!
//! The metadata holds the N sample keys (JSON), D, and the input's fingerprint.
//!
//! LlamaGen keeps f32 [1, 120, D] per caption in memory, padding on the left (zeros first, the
//! valid tokens last, with a mask); [`FieldEmbeddings::padded`] restores exactly that on read.
//! Stored this way a caption of L tokens takes 2 L D bytes instead of 480 D: 12x smaller at
//! LLaVA's typical 20 tokens for a short caption (docs/BENCHMARKS.md has the measured figure).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::f16;
use ndarray::{Array2, ArrayView2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::EncodeError;
use crate::source::Fingerprint;

/// The file of shard `name` in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.t5.safetensors"))
}

/// One field's embeddings over a shard's samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldEmbeddings {
    pub d_model: usize,
    /// [N] valid tokens per sample.
    pub lengths: Vec<usize>,
    /// [N + 1] row offsets into `values` (in tokens).
    offsets: Vec<usize>,
    /// [sum of lengths * D]
    values: Vec<f16>,
}

impl FieldEmbeddings {
    pub fn new(d_model: usize) -> Self {
        FieldEmbeddings {
            d_model,
            lengths: Vec::new(),
            offsets: vec![0],
            values: Vec::new(),
        }
    }

    /// Appends a sample: its valid tokens [L, D], or None (no text).
    pub fn push(&mut self, tokens: Option<ArrayView2<'_, f32>>) -> Result<(), EncodeError> {
        let len = match tokens {
            None => 0,
            Some(t) => {
                if t.ncols() != self.d_model {
                    return Err(EncodeError::Invalid(format!(
                        "embedding width {} is not d_model {}",
                        t.ncols(),
                        self.d_model
                    )));
                }
                for &x in t.iter() {
                    // f16's largest finite value; T5's outputs are layer-normalised far below it.
                    if !x.is_finite() || x.abs() > 65504.0 {
                        return Err(EncodeError::Model(format!(
                            "embedding value {x} cannot be stored as f16"
                        )));
                    }
                    self.values.push(f16::from_f32(x));
                }
                t.nrows()
            }
        };
        self.lengths.push(len);
        let last = self.offsets.last().copied().unwrap_or(0);
        self.offsets.push(last + len);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Sample `i`'s valid tokens: [L, D] f32.
    pub fn valid(&self, i: usize) -> Array2<f32> {
        let (start, end) = (self.offsets[i], self.offsets[i + 1]);
        let values: Vec<f32> = self.values[start * self.d_model..end * self.d_model]
            .iter()
            .map(|v| v.to_f32())
            .collect();
        Array2::from_shape_vec((end - start, self.d_model), values)
            .expect("offsets and values agree")
    }

    /// Sample `i` as LlamaGen's Text2ImgDataset hands it to the GPT: [max_length, D] with the
    /// valid tokens (at most max_length, the first ones) last and zeros before them, and the
    /// number of valid tokens (the mask is `max_length - n..`). None when the sample has no
    /// text for this field.
    pub fn padded(&self, i: usize, max_length: usize) -> Option<(Array2<f32>, usize)> {
        let len = self.lengths[i];
        if len == 0 {
            return None;
        }
        let n = len.min(max_length);
        let mut out = Array2::<f32>::zeros((max_length, self.d_model));
        let start = self.offsets[i] * self.d_model;
        let src = &self.values[start..start + n * self.d_model];
        let dst = out
            .as_slice_mut()
            .expect("a fresh array is contiguous")
            .get_mut((max_length - n) * self.d_model..)
            .expect("n <= max_length");
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
        Some((out, n))
    }

    /// Bytes this field takes on disk (embeddings and lengths).
    pub fn stored_bytes(&self) -> usize {
        self.values.len() * 2 + self.lengths.len() * 4
    }
}

/// A shard's embeddings: its keys and one [`FieldEmbeddings`] per embedded field.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardEmbeddings {
    pub keys: Vec<String>,
    pub fields: BTreeMap<String, FieldEmbeddings>,
    /// The captions file as it was when embedded.
    pub input: Option<Fingerprint>,
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> EncodeError {
    EncodeError::Input(format!("{}: {message}", path.display()))
}

impl ShardEmbeddings {
    /// Writes the shard atomically.
    pub fn write(&self, path: &Path) -> Result<(), EncodeError> {
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, field) in &self.fields {
            if field.len() != self.keys.len() {
                return Err(EncodeError::Invalid(format!(
                    "{name}: {} samples for {} keys",
                    field.len(),
                    self.keys.len()
                )));
            }
            let rows = field.offsets.last().copied().unwrap_or(0);
            let bytes: Vec<u8> = field.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            buffers.push((
                format!("{name}.embeddings"),
                Dtype::F16,
                vec![rows, field.d_model],
                bytes,
            ));
            let lengths: Vec<u8> = field
                .lengths
                .iter()
                .flat_map(|&l| (l as i32).to_le_bytes())
                .collect();
            buffers.push((
                format!("{name}.lengths"),
                Dtype::I32,
                vec![field.len()],
                lengths,
            ));
        }
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| EncodeError::Output(format!("{name}: {e:?}")))
            })
            .collect::<Result<_, _>>()?;
        let metadata: HashMap<String, String> = [
            ("format", "llamagen-rs caption embeddings v1".to_string()),
            ("keys", json(&self.keys)?),
            ("input", json(&self.input)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::tensor::serialize(views, &Some(metadata))
            .map_err(|e| EncodeError::Output(format!("{}: {e:?}", path.display())))?;
        llamagen_shards::atomic::write_bytes(path, &bytes)
            .map_err(|e| EncodeError::Output(e.to_string()))
    }

    /// Reads a shard written by [`ShardEmbeddings::write`], checking that its parts agree.
    pub fn read(path: &Path) -> Result<Self, EncodeError> {
        let bytes = std::fs::read(path).map_err(|e| EncodeError::io(path, e))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(path, format!("{e:?}")))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| invalid(path, format!("{e:?}")))?;
        let meta = header
            .metadata()
            .as_ref()
            .ok_or_else(|| invalid(path, "no metadata: not a caption embeddings file"))?;
        let keys: Vec<String> = serde_json::from_str(
            meta.get("keys")
                .ok_or_else(|| invalid(path, "metadata has no keys"))?,
        )
        .map_err(|e| invalid(path, format!("keys: {e}")))?;
        let input: Option<Fingerprint> =
            serde_json::from_str(meta.get("input").map_or("null", String::as_str))
                .map_err(|e| invalid(path, format!("input: {e}")))?;
        let mut fields = BTreeMap::new();
        for (name, view) in file.tensors() {
            let Some(field) = name.strip_suffix(".embeddings") else {
                continue;
            };
            let lengths_name = format!("{field}.lengths");
            let lengths_view = file
                .tensor(&lengths_name)
                .map_err(|_| invalid(path, format!("{name} without {lengths_name}")))?;
            let (&[rows, d_model], Dtype::F16) = (view.shape(), view.dtype()) else {
                return Err(invalid(path, format!("{name} is not f16 [rows, D]")));
            };
            if lengths_view.dtype() != Dtype::I32 || lengths_view.shape() != [keys.len()] {
                return Err(invalid(
                    path,
                    format!("{lengths_name} is not i32 [{}]", keys.len()),
                ));
            }
            let lengths: Vec<usize> = lengths_view
                .data()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]).max(0) as usize)
                .collect();
            let mut offsets = Vec::with_capacity(lengths.len() + 1);
            offsets.push(0);
            for &l in &lengths {
                offsets.push(offsets.last().copied().unwrap_or(0) + l);
            }
            if offsets.last() != Some(&rows) {
                return Err(invalid(
                    path,
                    format!("{name} has {rows} rows but its lengths add up to {offsets:?}"),
                ));
            }
            let values = view
                .data()
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect();
            fields.insert(
                field.to_string(),
                FieldEmbeddings {
                    d_model,
                    lengths,
                    offsets,
                    values,
                },
            );
        }
        if fields.is_empty() {
            return Err(invalid(path, "holds no FIELD.embeddings"));
        }
        Ok(ShardEmbeddings {
            keys,
            fields,
            input,
        })
    }
}

/// The sample keys of a shard file, from its header alone (the embeddings are not read).
pub fn read_keys(path: &Path) -> Result<Vec<String>, EncodeError> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| EncodeError::io(path, e))?;
    let mut size = [0u8; 8];
    file.read_exact(&mut size)
        .map_err(|e| EncodeError::io(path, e))?;
    let size = u64::from_le_bytes(size);
    // safetensors' own limit on a header.
    if size > 100_000_000 {
        return Err(invalid(path, format!("header of {size} bytes")));
    }
    let mut header = vec![0u8; size as usize];
    file.read_exact(&mut header)
        .map_err(|e| EncodeError::io(path, e))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| invalid(path, format!("header: {e}")))?;
    let keys = header["__metadata__"]["keys"]
        .as_str()
        .ok_or_else(|| invalid(path, "metadata has no keys"))?;
    serde_json::from_str(keys).map_err(|e| invalid(path, format!("keys: {e}")))
}

fn json(value: &impl serde::Serialize) -> Result<String, EncodeError> {
    serde_json::to_string(value).map_err(|e| EncodeError::Output(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_left_padding() {
        let dir = tempfile::tempdir().unwrap();
        let mut caption = FieldEmbeddings::new(2);
        let a = Array2::from_shape_vec((3, 2), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        caption.push(Some(a.view())).unwrap();
        caption.push(None).unwrap();
        let shard = ShardEmbeddings {
            keys: vec!["k0".into(), "k1".into()],
            fields: BTreeMap::from([("caption".to_string(), caption)]),
            input: None,
        };
        let file = path(dir.path(), "00000");
        shard.write(&file).unwrap();
        let back = ShardEmbeddings::read(&file).unwrap();
        assert_eq!(back, shard);
        assert_eq!(read_keys(&file).unwrap(), shard.keys);
        let field = &back.fields["caption"];
        assert_eq!(field.valid(0), a);
        let (padded, n) = field.padded(0, 5).unwrap();
        assert_eq!(n, 3);
        assert_eq!(padded.row(0).to_vec(), vec![0.0, 0.0]);
        assert_eq!(padded.row(1).to_vec(), vec![0.0, 0.0]);
        assert_eq!(padded.row(2).to_vec(), vec![1.0, 2.0]);
        assert_eq!(padded.row(4).to_vec(), vec![5.0, 6.0]);
        // Cut to the first two tokens when the prefix is shorter than the caption.
        let (cut, n) = field.padded(0, 2).unwrap();
        assert_eq!((cut.row(1).to_vec(), n), (vec![3.0, 4.0], 2));
        assert!(field.padded(1, 5).is_none());
    }

    #[test]
    fn values_beyond_f16_are_refused() {
        let mut field = FieldEmbeddings::new(1);
        let big = Array2::from_elem((1, 1), 1e6f32);
        assert!(field.push(Some(big.view())).is_err());
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut field = FieldEmbeddings::new(4);
        field
            .push(Some(Array2::from_elem((2, 4), 0.5f32).view()))
            .unwrap();
        let shard = ShardEmbeddings {
            keys: vec!["k".into()],
            fields: BTreeMap::from([("caption".to_string(), field)]),
            input: None,
        };
        let file = path(dir.path(), "00000");
        shard.write(&file).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        assert!(ShardEmbeddings::read(&file).is_err());
    }
}
