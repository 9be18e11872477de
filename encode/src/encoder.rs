//! One shard through the VQ tokenizer. A reader thread decodes images and cuts their views
//! while the model encodes the previous batch, so the tokenizer does not wait on JPEG
//! decoding; images that cannot be decoded are skipped with their reason.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use llamagen_models::vq::VqModel;
use ndarray::{Array1, Array3, Array4, ArrayView3};
use tch::{Device, Kind, Tensor};

use crate::EncodeError;
use crate::codes::{self, CodePaths, ShardCodes, ShardSummary, Skipped};
use crate::crops::{self, Augment};
use crate::source::Shard;

#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Side of each view fed to the tokenizer (LlamaGen: 256 or 384).
    pub image_size: usize,
    pub augment: Augment,
    /// Images per tokenizer batch (each contributes `augment.views()` views).
    pub batch_size: usize,
    pub device: Device,
}

/// A decoded sample's views, or why it has none.
struct Decoded {
    key: String,
    label: i64,
    views: Result<Vec<Array3<u8>>, String>,
}

fn decode(bytes: &[u8], options: &EncodeOptions) -> Result<Vec<Array3<u8>>, String> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| format!("undecodable image: {e}"))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let array = ArrayView3::from_shape((h as usize, w as usize, 3), img.as_raw())
        .map_err(|e| e.to_string())?;
    crops::views(array, options.image_size, options.augment).map_err(|e| e.to_string())
}

/// views: [B, S, S, 3] uint8 -> codes [B, T] (T = (S / downsample)^2) as int64.
fn encode_batch(vq: &VqModel, views: &Array4<u8>, device: Device) -> Result<Vec<i64>, EncodeError> {
    let (b, h, w, c) = views.dim();
    let data = views
        .as_slice()
        .ok_or_else(|| EncodeError::Invalid("views are not contiguous".into()))?;
    let pixels = Tensor::from_slice(data)
        .view([b as i64, h as i64, w as i64, c as i64])
        .to_device(device);
    let codes = tch::no_grad(|| -> Result<Tensor, EncodeError> {
        let x = llamagen_models::images::from_uint8_nhwc(&pixels);
        let q = vq
            .encode(&x, false)
            .map_err(|e| EncodeError::Model(e.to_string()))?;
        Ok(q.codes
            .view([b as i64, -1])
            .to_device(Device::Cpu)
            .to_kind(Kind::Int64))
    })?;
    Vec::<i64>::try_from(codes.flatten(0, -1)).map_err(|e| EncodeError::Model(e.to_string()))
}

/// Encodes `shard` into `out_dir` unless it is already there from the same input; `None` when
/// it was. A finished shard whose input changed since (its fingerprint differs) is encoded
/// again, its files replaced atomically.
pub fn encode_shard(
    vq: &VqModel,
    shard: &Shard,
    out_dir: &Path,
    options: &EncodeOptions,
) -> Result<Option<ShardSummary>, EncodeError> {
    let paths = CodePaths::new(out_dir, shard.name());
    let input = shard.fingerprint()?;
    if paths.is_finished() {
        let unchanged = paths.summary()?.input.is_none_or(|then| then == input);
        if unchanged {
            return Ok(None);
        }
    }
    // Only this attempt writes the shard's files now: temporaries of them are a killed
    // attempt's.
    llamagen_shards::atomic::remove_leftovers_for(&[
        &paths.codes,
        &paths.labels,
        &paths.keys,
        &paths.summary,
    ])
    .map_err(|e| EncodeError::Output(e.to_string()))?;
    let started = Instant::now();
    let views_per_image = options.augment.views();
    let (tx, rx) = sync_channel::<Decoded>(options.batch_size.max(1) * 2);
    let reader = {
        let shard = shard.clone();
        let options = options.clone();
        std::thread::spawn(move || -> Result<(), EncodeError> {
            for sample in shard.read()? {
                let views = decode(&sample.bytes, &options);
                let sent = tx.send(Decoded {
                    key: sample.key,
                    label: sample.label,
                    views,
                });
                if sent.is_err() {
                    break; // the encoder stopped on an error of its own
                }
            }
            Ok(())
        })
    };

    let mut keys = Vec::new();
    let mut labels = Vec::new();
    let mut all_codes: Vec<u16> = Vec::new();
    let mut skipped = Vec::new();
    let mut tokens = 0usize;
    let mut pending: Vec<Decoded> = Vec::new();
    let mut flush = |pending: &mut Vec<Decoded>| -> Result<(), EncodeError> {
        if pending.is_empty() {
            return Ok(());
        }
        let views: Vec<Array3<u8>> = pending
            .iter_mut()
            .flat_map(|d| d.views.as_mut().map(std::mem::take).unwrap_or_default())
            .collect();
        let batch = crops::stack(&views)?;
        let codes = encode_batch(vq, &batch, options.device)?;
        let per_view = codes.len() / views.len();
        tokens = per_view;
        for code in codes {
            all_codes.push(u16::try_from(code).map_err(|_| {
                EncodeError::Model(format!(
                    "code {code} does not fit uint16 (codebook > 65536?)"
                ))
            })?);
        }
        for d in pending.drain(..) {
            keys.push(d.key);
            labels.push(d.label);
        }
        Ok(())
    };
    for decoded in rx.iter() {
        match &decoded.views {
            Ok(_) => pending.push(decoded),
            Err(e) => skipped.push(Skipped {
                key: decoded.key.clone(),
                error: e.clone(),
            }),
        }
        if pending.len() >= options.batch_size.max(1) {
            flush(&mut pending)?;
        }
    }
    flush(&mut pending)?;
    reader
        .join()
        .map_err(|_| EncodeError::Input(format!("reader of shard {} panicked", shard.name())))??;

    let n = keys.len();
    let codes = Array3::from_shape_vec((n, views_per_image, tokens), all_codes)
        .map_err(|e| EncodeError::Invalid(format!("codes of shard {}: {e}", shard.name())))?;
    let summary = ShardSummary {
        samples: n,
        views: views_per_image,
        tokens,
        skipped,
        seconds: started.elapsed().as_secs_f64(),
        input: Some(input),
    };
    codes::write(
        &paths,
        &ShardCodes {
            codes,
            labels: Array1::from(labels),
            keys,
        },
        &summary,
    )?;
    Ok(Some(summary))
}
