//! Training samples straight from our shards: a codes folder (`llamagen encode vq`) and, for
//! text-to-image, a caption-embeddings folder (`llamagen encode t5`), joined by sample key.
//!
//! Order: every epoch shuffles the shards, cuts them into blocks of `block_shards`, and
//! shuffles the samples within each block (webdataset's shard shuffle plus a shuffle buffer,
//! made exact): the order is a pure function of (seed, epoch), so a resumed run reads what
//! the uninterrupted one would, and only the shards of one block are held in memory. With
//! `block_shards` at least the number of shards it is a full shuffle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array3};

use crate::EncodeError;
use crate::codes::{self, CodePaths};
use crate::embeddings::{self, ShardEmbeddings};

/// splitmix64: every random choice of the loader depends on the seed and position only.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A permutation of 0..len: Fisher-Yates driven by `key`.
pub fn permutation(len: usize, key: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut state = mix(key);
    for i in (1..order.len()).rev() {
        state = mix(state);
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

/// One training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub key: String,
    pub label: i64,
    /// [T] one view (crop or flip) of the image's codes.
    pub codes: Vec<i64>,
    /// [prefix, D] caption features, valid tokens last, and how many are valid.
    pub caption: Option<(Array2<f32>, usize)>,
}

/// How text samples are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextOptions {
    /// The GPT's caption prefix (LlamaGen: 120).
    pub prefix: usize,
    /// Probability of the short caption's embedding instead of the long one (LlamaGen: 0.3).
    pub short_probability: f64,
}

struct ShardIndex {
    name: String,
    /// Code rows that take part (for text, those with a caption embedding).
    rows: Vec<usize>,
}

struct Loaded {
    codes: Array3<u16>,
    labels: Array1<i64>,
    keys: Vec<String>,
    embeddings: Option<(ShardEmbeddings, HashMap<String, usize>)>,
}

/// The current epoch's blocks: their starting positions and the block in hand.
struct EpochLayout {
    epoch: u64,
    /// Shard indices in this epoch's order.
    shard_order: Vec<usize>,
    /// [blocks + 1] first position of each block.
    starts: Vec<usize>,
    /// (block, its samples as (shard, code row) in shuffled order)
    current: Option<(usize, Vec<(usize, usize)>)>,
}

pub struct Dataset {
    codes_dir: PathBuf,
    t5_dir: Option<PathBuf>,
    shards: Vec<ShardIndex>,
    len: usize,
    tokens: usize,
    block_shards: usize,
    seed: u64,
    layout: Option<EpochLayout>,
    cache: HashMap<usize, Loaded>,
}

fn invalid(message: String) -> EncodeError {
    EncodeError::Input(message)
}

impl Dataset {
    /// Opens the finished shards of `codes` (and the matching shards of `t5`: a sample takes
    /// part only if it has a caption embedding).
    pub fn open(
        codes: &Path,
        t5: Option<&Path>,
        block_shards: usize,
        seed: i64,
    ) -> Result<Self, EncodeError> {
        let names = codes::finished_shards(codes)?;
        let mut shards = Vec::new();
        let mut tokens = 0;
        for name in names {
            let paths = CodePaths::new(codes, &name);
            let summary = paths.summary()?;
            if summary.samples == 0 {
                continue;
            }
            tokens = summary.tokens;
            let rows: Vec<usize> = match t5 {
                None => (0..summary.samples).collect(),
                Some(dir) => {
                    let file = embeddings::path(dir, &name);
                    if !file.is_file() {
                        continue;
                    }
                    let captioned: std::collections::HashSet<String> =
                        embeddings::read_keys(&file)?.into_iter().collect();
                    let keys = std::fs::read_to_string(&paths.keys)
                        .map_err(|e| EncodeError::io(&paths.keys, e))?;
                    keys.lines()
                        .enumerate()
                        .filter(|(_, k)| captioned.contains(*k))
                        .map(|(i, _)| i)
                        .collect()
                }
            };
            if !rows.is_empty() {
                shards.push(ShardIndex { name, rows });
            }
        }
        let len = shards.iter().map(|s| s.rows.len()).sum();
        if len == 0 {
            return Err(invalid(format!(
                "{} holds no finished shards with samples{}",
                codes.display(),
                t5.map(|d| format!(" that have caption embeddings in {}", d.display()))
                    .unwrap_or_default()
            )));
        }
        Ok(Dataset {
            codes_dir: codes.to_owned(),
            t5_dir: t5.map(Path::to_owned),
            shards,
            len,
            tokens,
            block_shards: block_shards.max(1),
            seed: seed as u64,
            layout: None,
            cache: HashMap::new(),
        })
    }

    /// Samples per epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Image tokens per sample.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The sample at position `global` of the run (epoch `global / len`).
    pub fn get(&mut self, global: u64, text: Option<TextOptions>) -> Result<Sample, EncodeError> {
        let epoch = global / self.len as u64;
        let position = (global % self.len as u64) as usize;
        if self.layout.as_ref().is_none_or(|l| l.epoch != epoch) {
            self.layout = Some(self.layout_of(epoch));
        }
        let (shard, row) = self.locate(position);
        let choice = mix(self.seed ^ mix(global));
        let loaded = self.load(shard)?;
        let views = loaded.codes.dim().1;
        let view = (choice % views as u64) as usize;
        let codes = loaded
            .codes
            .slice(ndarray::s![row, view, ..])
            .iter()
            .map(|&c| i64::from(c))
            .collect();
        let key = loaded.keys[row].clone();
        let caption = match (text, &loaded.embeddings) {
            (Some(options), Some((shard_embeddings, rows))) => {
                let index = *rows
                    .get(&key)
                    .ok_or_else(|| invalid(format!("sample {key} lost its caption embedding")))?;
                // A uniform draw in [0, 1) from an independent stream of the same position.
                let draw = (mix(choice ^ 0x5eed) >> 11) as f64 / (1u64 << 53) as f64;
                let short = shard_embeddings.fields.get("short_caption");
                let long = shard_embeddings.fields.get("caption");
                let pick = |f: Option<&embeddings::FieldEmbeddings>| {
                    f.and_then(|f| f.padded(index, options.prefix))
                };
                let chosen = if draw < options.short_probability {
                    pick(short).or_else(|| pick(long))
                } else {
                    pick(long).or_else(|| pick(short))
                };
                Some(chosen.ok_or_else(|| {
                    invalid(format!("sample {key} has an empty caption embedding"))
                })?)
            }
            _ => None,
        };
        Ok(Sample {
            label: loaded.labels[row],
            key,
            codes,
            caption,
        })
    }

    fn layout_of(&self, epoch: u64) -> EpochLayout {
        let shard_order = permutation(self.shards.len(), self.seed ^ mix(epoch));
        let mut starts = vec![0];
        for block in shard_order.chunks(self.block_shards) {
            let size: usize = block.iter().map(|&s| self.shards[s].rows.len()).sum();
            starts.push(starts.last().copied().unwrap_or(0) + size);
        }
        EpochLayout {
            epoch,
            shard_order,
            starts,
            current: None,
        }
    }

    /// (shard, code row) at `position` of the current epoch.
    fn locate(&mut self, position: usize) -> (usize, usize) {
        let layout = self.layout.as_mut().expect("layout set by get");
        let block = layout.starts.partition_point(|&s| s <= position) - 1;
        if layout.current.as_ref().is_none_or(|(b, _)| *b != block) {
            let members = &layout.shard_order[block * self.block_shards
                ..((block + 1) * self.block_shards).min(self.shards.len())];
            let mut samples: Vec<(usize, usize)> = members
                .iter()
                .flat_map(|&s| self.shards[s].rows.iter().map(move |&r| (s, r)))
                .collect();
            let order = permutation(
                samples.len(),
                self.seed ^ mix(layout.epoch ^ mix(block as u64 + 1)),
            );
            samples = order.into_iter().map(|i| samples[i]).collect();
            // Keep only this block's shards in memory.
            self.cache.retain(|s, _| members.contains(s));
            layout.current = Some((block, samples));
        }
        let (_, samples) = layout.current.as_ref().expect("set above");
        samples[position - layout.starts[block]]
    }

    fn load(&mut self, shard: usize) -> Result<&Loaded, EncodeError> {
        if !self.cache.contains_key(&shard) {
            let name = &self.shards[shard].name;
            let data = codes::read(&CodePaths::new(&self.codes_dir, name))?;
            let embeddings = match &self.t5_dir {
                None => None,
                Some(dir) => {
                    let e = ShardEmbeddings::read(&embeddings::path(dir, name))?;
                    let rows = e
                        .keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| (k.clone(), i))
                        .collect();
                    Some((e, rows))
                }
            };
            self.cache.insert(
                shard,
                Loaded {
                    codes: data.codes,
                    labels: data.labels,
                    keys: data.keys,
                    embeddings,
                },
            );
        }
        Ok(&self.cache[&shard])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_seeded_and_complete() {
        let a = permutation(100, 7);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, permutation(100, 7));
        assert_ne!(a, permutation(100, 8));
    }
}
