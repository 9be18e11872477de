//! `NNNNN_filter.parquet`, next to the shard: one row per sample in shard order with its
//! sizes, its three scores, whether it is kept and, if not, the rule that dropped it. Written
//! atomically; its presence marks the shard done.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int32Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};

use crate::FilterError;

/// One sample's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRecord {
    pub key: String,
    pub keep: bool,
    /// The rule that dropped it (one of `rules::RULES`), None if kept.
    pub reason: Option<String>,
    /// Why the image did not decode.
    pub error: Option<String>,
    /// Decoded size.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Size as downloaded, from the sample's json (ingest and img2dataset record it).
    pub original_width: Option<i32>,
    pub original_height: Option<i32>,
    pub watermark: Option<f32>,
    pub aesthetic: Option<f32>,
    pub clip_similarity: Option<f32>,
}

pub fn filter_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}_filter.parquet"))
}

fn schema() -> Arc<Schema> {
    let int = |n: &str| Field::new(n, DataType::Int32, true);
    let float = |n: &str| Field::new(n, DataType::Float32, true);
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("keep", DataType::Boolean, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        int("width"),
        int("height"),
        int("original_width"),
        int("original_height"),
        float("watermark"),
        float("aesthetic"),
        float("clip_similarity"),
    ]))
}

pub fn write_filter(path: &Path, rows: &[FilterRecord]) -> Result<(), FilterError> {
    let text = |f: &dyn Fn(&FilterRecord) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&FilterRecord) -> Option<i32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int32Array>())
    };
    let floats = |f: &dyn Fn(&FilterRecord) -> Option<f32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float32Array>())
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            text(&|r| Some(&r.key)),
            Arc::new(rows.iter().map(|r| Some(r.keep)).collect::<BooleanArray>()),
            text(&|r| r.reason.as_deref()),
            text(&|r| r.error.as_deref()),
            ints(&|r| r.width),
            ints(&|r| r.height),
            ints(&|r| r.original_width),
            ints(&|r| r.original_height),
            floats(&|r| r.watermark),
            floats(&|r| r.aesthetic),
            floats(&|r| r.clip_similarity),
        ],
    )
    .map_err(|e| FilterError::Output(format!("{}: {e}", path.display())))?;
    llamagen_shards::table::write_batch(path, &batch)
        .map_err(|e| FilterError::Output(e.to_string()))
}

pub fn read_filter(path: &Path) -> Result<Vec<FilterRecord>, FilterError> {
    use llamagen_shards::table::{column, read_batches};
    let bad = |e: llamagen_shards::ShardError| FilterError::Input(e.to_string());
    let mut rows = Vec::new();
    for batch in read_batches(path).map_err(bad)? {
        let t = |n| column::<StringArray>(&batch, n, path).map_err(bad);
        let i = |n| column::<Int32Array>(&batch, n, path).map_err(bad);
        let f = |n| column::<Float32Array>(&batch, n, path).map_err(bad);
        let keep = column::<BooleanArray>(&batch, "keep", path).map_err(bad)?;
        let (key, reason, error) = (t("key")?, t("reason")?, t("error")?);
        let (w, h) = (i("width")?, i("height")?);
        let (ow, oh) = (i("original_width")?, i("original_height")?);
        let (wm, ae, cs) = (f("watermark")?, f("aesthetic")?, f("clip_similarity")?);
        let s = |a: &StringArray, r: usize| (!a.is_null(r)).then(|| a.value(r).to_owned());
        let n = |a: &Int32Array, r: usize| (!a.is_null(r)).then(|| a.value(r));
        let x = |a: &Float32Array, r: usize| (!a.is_null(r)).then(|| a.value(r));
        for r in 0..batch.num_rows() {
            rows.push(FilterRecord {
                key: key.value(r).to_owned(),
                keep: keep.value(r),
                reason: s(reason, r),
                error: s(error, r),
                width: n(w, r),
                height: n(h, r),
                original_width: n(ow, r),
                original_height: n(oh, r),
                watermark: x(wm, r),
                aesthetic: x(ae, r),
                clip_similarity: x(cs, r),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip_with_their_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = filter_path(dir.path(), "00003");
        let rows = vec![
            FilterRecord {
                key: "a".into(),
                keep: true,
                reason: None,
                error: None,
                width: Some(256),
                height: Some(256),
                original_width: Some(640),
                original_height: Some(480),
                watermark: Some(0.1),
                aesthetic: Some(5.5),
                clip_similarity: Some(0.31),
            },
            FilterRecord {
                key: "b".into(),
                keep: false,
                reason: Some("image decodes".into()),
                error: Some("bad jpeg".into()),
                width: None,
                height: None,
                original_width: None,
                original_height: None,
                watermark: None,
                aesthetic: None,
                clip_similarity: Some(f32::NAN),
            },
        ];
        write_filter(&path, &rows).unwrap();
        let back = read_filter(&path).unwrap();
        assert_eq!(back[0], rows[0]);
        assert_eq!(back[1].reason, rows[1].reason);
        assert!(back[1].clip_similarity.unwrap().is_nan());
    }
}
