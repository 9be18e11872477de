//! Reads LAION-COCO metadata parquet in record batches (bounded memory: one batch of the
//! projected columns at a time), whatever numeric and string types a file uses.
//!
//! Columns as LAION-COCO publishes them: the URL and caption columns are configurable
//! (`url_column`, `caption_column`: `TEXT` is the alt text, `top_caption` BLIP's caption);
//! `WIDTH`, `HEIGHT`, `similarity` (CLIP image-text cosine), `AESTHETIC_SCORE`, `pwatermark`
//! and `punsafe` are read when present. The URL column is required; a missing optional column
//! is reported, and the rules that need it are skipped and say so in the funnel.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::IngestError;

/// LAION's fixed metadata column names.
pub const WIDTH: &str = "WIDTH";
pub const HEIGHT: &str = "HEIGHT";
pub const SIMILARITY: &str = "similarity";
pub const AESTHETIC: &str = "AESTHETIC_SCORE";
pub const WATERMARK: &str = "pwatermark";
pub const UNSAFE: &str = "punsafe";

/// The numeric metadata columns, in [`MetaRow::scores`] order.
pub const SCORE_COLUMNS: [&str; 6] = [WIDTH, HEIGHT, SIMILARITY, AESTHETIC, WATERMARK, UNSAFE];

/// One metadata row. Numbers are NaN where the column is missing or the value null.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaRow {
    pub url: Option<String>,
    pub caption: Option<String>,
    /// WIDTH, HEIGHT, similarity, AESTHETIC_SCORE, pwatermark, punsafe.
    pub scores: [f64; 6],
}

impl MetaRow {
    pub fn score(&self, column: &str) -> f64 {
        SCORE_COLUMNS
            .iter()
            .position(|c| *c == column)
            .map_or(f64::NAN, |i| self.scores[i])
    }
}

/// One metadata file, read batch by batch.
pub struct MetadataReader {
    path: PathBuf,
    batches: ParquetRecordBatchReader,
    url_column: String,
    caption_column: String,
    /// Optional columns this file lacks.
    pub missing: Vec<String>,
}

impl MetadataReader {
    pub fn open(
        path: &Path,
        url_column: &str,
        caption_column: &str,
        batch_rows: usize,
    ) -> Result<Self, IngestError> {
        let bad = |problem: String| IngestError::Metadata {
            path: path.to_owned(),
            problem,
        };
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let builder =
            llamagen_shards::table::guarded(|| ParquetRecordBatchReaderBuilder::try_new(file))
                .map_err(bad)?
                .map_err(|e| bad(format!("not a readable parquet file: {e}")))?;
        let schema = builder.schema().clone();
        let has = |name: &str| schema.index_of(name).is_ok();
        if !has(url_column) {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(bad(format!(
                "required column {url_column:?} is missing (columns: {})",
                names.join(", ")
            )));
        }
        let wanted: Vec<&str> = [url_column, caption_column]
            .into_iter()
            .chain(SCORE_COLUMNS)
            .collect();
        let missing = wanted
            .iter()
            .filter(|c| !has(c))
            .map(|c| c.to_string())
            .collect();
        let roots: Vec<usize> = wanted
            .iter()
            .filter_map(|c| schema.index_of(c).ok())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let batches = builder
            .with_projection(mask)
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(MetadataReader {
            path: path.to_owned(),
            batches,
            url_column: url_column.to_owned(),
            caption_column: caption_column.to_owned(),
            missing,
        })
    }

    fn convert(&self, batch: &RecordBatch) -> Result<Vec<MetaRow>, IngestError> {
        let bad = |problem: String| IngestError::Metadata {
            path: self.path.clone(),
            problem,
        };
        let text = |name: &str| -> Result<Option<StringArray>, IngestError> {
            let Some(col) = batch.column_by_name(name) else {
                return Ok(None);
            };
            let cast = arrow_cast::cast(col, &DataType::Utf8)
                .map_err(|e| bad(format!("column {name:?} is not text: {e}")))?;
            Ok(cast.as_any().downcast_ref::<StringArray>().cloned())
        };
        let number = |name: &str| -> Result<Option<Float64Array>, IngestError> {
            let Some(col): Option<&ArrayRef> = batch.column_by_name(name) else {
                return Ok(None);
            };
            let cast = arrow_cast::cast(col, &DataType::Float64)
                .map_err(|e| bad(format!("column {name:?} is not numeric: {e}")))?;
            Ok(cast.as_any().downcast_ref::<Float64Array>().cloned())
        };
        let urls = text(&self.url_column)?;
        let captions = text(&self.caption_column)?;
        let scores: Vec<Option<Float64Array>> = SCORE_COLUMNS
            .iter()
            .map(|c| number(c))
            .collect::<Result<_, _>>()?;
        let get = |a: &Option<StringArray>, i: usize| {
            a.as_ref()
                .filter(|a| !a.is_null(i))
                .map(|a| a.value(i).to_owned())
        };
        Ok((0..batch.num_rows())
            .map(|i| {
                let mut s = [f64::NAN; 6];
                for (slot, col) in s.iter_mut().zip(&scores) {
                    if let Some(col) = col.as_ref().filter(|c| !c.is_null(i)) {
                        *slot = col.value(i);
                    }
                }
                MetaRow {
                    url: get(&urls, i),
                    caption: get(&captions, i),
                    scores: s,
                }
            })
            .collect())
    }
}

impl Iterator for MetadataReader {
    type Item = Result<Vec<MetaRow>, IngestError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match llamagen_shards::table::guarded(|| self.batches.next()) {
            Ok(batch) => batch?,
            Err(problem) => {
                return Some(Err(IngestError::Metadata {
                    path: self.path.clone(),
                    problem,
                }));
            }
        };
        Some(
            batch
                .map_err(|e| IngestError::Metadata {
                    path: self.path.clone(),
                    problem: format!("unreadable record batch: {e}"),
                })
                .and_then(|b| self.convert(&b)),
        )
    }
}

/// Writes rows as a LAION-COCO-style metadata parquet (tests, the demo, benchmarks).
pub fn write_metadata(
    path: &Path,
    url_column: &str,
    caption_column: &str,
    rows: &[MetaRow],
) -> Result<(), IngestError> {
    let bad = |e: &dyn std::fmt::Display| IngestError::Metadata {
        path: path.to_owned(),
        problem: e.to_string(),
    };
    let mut columns: Vec<(String, ArrayRef)> = vec![
        (
            url_column.to_owned(),
            Arc::new(
                rows.iter()
                    .map(|r| r.url.as_deref())
                    .collect::<StringArray>(),
            ),
        ),
        (
            caption_column.to_owned(),
            Arc::new(
                rows.iter()
                    .map(|r| r.caption.as_deref())
                    .collect::<StringArray>(),
            ),
        ),
    ];
    for (i, name) in SCORE_COLUMNS.iter().enumerate() {
        let values: Float64Array = rows.iter().map(|r| Some(r.scores[i])).collect();
        columns.push((name.to_string(), Arc::new(values)));
    }
    let batch = RecordBatch::try_from_iter(columns).map_err(|e| bad(&e))?;
    let file = File::create(path).map_err(|e| bad(&e))?;
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| bad(&e))?;
    writer.write(&batch).map_err(|e| bad(&e))?;
    writer.close().map_err(|e| bad(&e))?;
    Ok(())
}
