//! One shard's captions (`NNNNN_captions.parquet`, `llamagen caption`'s output) through
//! FLAN-T5: every captioned sample's `caption` and `short_caption` embedded and written as
//! `NNNNN.t5.safetensors` ([`crate::embeddings`]). A finished shard is skipped unless its
//! captions file changed since (size or modification time), in which case it is redone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use llamagen_shards::captions::{CaptionRecord, CaptionStatus, read_captions};

use crate::EncodeError;
use crate::embeddings::{self, FieldEmbeddings, ShardEmbeddings};
use crate::source::Fingerprint;
use crate::t5::T5Encoder;

/// Where a field's text is in a captions row.
pub type TextOf = fn(&CaptionRecord) -> Option<&str>;

/// The caption fields embedded, as LlamaGen names their feature folders: `caption` is its
/// `t5_feat_path` (the whole LLaVA answer), `short_caption` its `short_t5_feat_path` (the
/// first sentence, drawn 30% of the time in training).
pub const FIELDS: [(&str, TextOf); 2] = [
    ("caption", |r| r.caption.as_deref()),
    ("short_caption", |r| r.short_caption.as_deref()),
];

/// What embedding a shard did.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Summary {
    /// Captioned samples embedded.
    pub samples: usize,
    /// Texts run through the encoder (both fields).
    pub texts: usize,
    /// Valid tokens over all texts.
    pub tokens: usize,
    /// Bytes of the stored embeddings (f16, valid tokens only).
    pub stored_bytes: usize,
    /// What LlamaGen's extraction would write for the same texts: f32 valid tokens, one npy
    /// (128-byte header) per text.
    pub llamagen_bytes: usize,
    pub seconds: f64,
}

fn fingerprint(path: &Path) -> Result<Fingerprint, EncodeError> {
    let meta = std::fs::metadata(path).map_err(|e| EncodeError::io(path, e))?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(Fingerprint {
        files: 1,
        bytes: meta.len(),
        modified_ns,
    })
}

/// Embeds shard `name` from `captions` into `out`; None when it was already done for the
/// captions as they are.
pub fn embed_shard(
    encoder: &mut T5Encoder,
    captions: &Path,
    name: &str,
    out: &Path,
    batch_size: usize,
) -> Result<Option<T5Summary>, EncodeError> {
    let started = Instant::now();
    let target = embeddings::path(out, name);
    let input = fingerprint(captions)?;
    if target.is_file()
        && let Ok(done) = ShardEmbeddings::read(&target)
        && done.input.as_ref() == Some(&input)
    {
        return Ok(None);
    }
    // Only this attempt writes the shard's embeddings now: a temporary of them is a killed
    // attempt's.
    llamagen_shards::atomic::remove_leftovers_for(&[&target])
        .map_err(|e| EncodeError::Output(e.to_string()))?;
    let records = read_captions(captions).map_err(|e| EncodeError::Input(e.to_string()))?;
    let captioned: Vec<_> = records
        .into_iter()
        .filter(|r| r.status == CaptionStatus::Ok && r.caption.is_some())
        .collect();
    let d_model = encoder.spec.d_model;
    let mut fields = BTreeMap::new();
    let (mut texts, mut tokens, mut llamagen_bytes) = (0, 0, 0);
    for (field, text_of) in FIELDS {
        let present: Vec<(usize, &str)> = captioned
            .iter()
            .enumerate()
            .filter_map(|(i, r)| text_of(r).map(|t| (i, t)))
            .collect();
        let strs: Vec<&str> = present.iter().map(|(_, t)| *t).collect();
        let embedded = encoder.embed(&strs, batch_size)?;
        let mut by_sample: Vec<Option<ndarray::Array2<f32>>> = vec![None; captioned.len()];
        for ((i, _), e) in present.iter().zip(embedded) {
            texts += 1;
            tokens += e.nrows();
            llamagen_bytes += 128 + e.len() * 4;
            by_sample[*i] = Some(e);
        }
        let mut stored = FieldEmbeddings::new(d_model);
        for e in &by_sample {
            stored.push(e.as_ref().map(|a| a.view()))?;
        }
        fields.insert(field.to_string(), stored);
    }
    let shard = ShardEmbeddings {
        keys: captioned.iter().map(|r| r.key.clone()).collect(),
        fields,
        input: Some(input),
    };
    shard.write(&target)?;
    Ok(Some(T5Summary {
        samples: shard.keys.len(),
        texts,
        tokens,
        stored_bytes: shard.fields.values().map(|f| f.stored_bytes()).sum(),
        llamagen_bytes,
        seconds: started.elapsed().as_secs_f64(),
    }))
}
