//! Reads LAION-COCO metadata parquet in record batches (bounded memory: one batch of the
//! projected columns at a time), whatever numeric and string types a file uses. A file can be
//! read whole or a few row groups at a time, so that preparation decodes row groups on every
//! core ([`MetadataReader::row_groups`], [`ReadSpec::row_groups`]).
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

/// One record batch's columns as the metadata rules read them. Absent columns are `None`.
#[derive(Debug, Clone)]
pub struct MetaBatch {
    pub urls: Option<StringArray>,
    pub captions: Option<StringArray>,
    /// WIDTH, HEIGHT, similarity, AESTHETIC_SCORE, pwatermark, punsafe.
    pub scores: [Option<Float64Array>; 6],
    /// The further columns asked for ([`ReadSpec::extra_columns`]), as the file stores them.
    pub extra: RecordBatch,
}

impl MetaBatch {
    pub fn len(&self) -> usize {
        self.extra.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Score `column` (an index into [`SCORE_COLUMNS`]) of row `i`; NaN when absent or null.
    pub fn score(&self, column: usize, i: usize) -> f64 {
        match &self.scores[column] {
            Some(col) if !col.is_null(i) => col.value(i),
            _ => f64::NAN,
        }
    }

    pub fn url(&self, i: usize) -> Option<&str> {
        text_at(&self.urls, i)
    }

    /// Row `i` as an owned row.
    pub fn row(&self, i: usize) -> MetaRow {
        let mut scores = [f64::NAN; 6];
        for (c, slot) in scores.iter_mut().enumerate() {
            *slot = self.score(c, i);
        }
        MetaRow {
            url: self.url(i).map(str::to_owned),
            caption: text_at(&self.captions, i).map(str::to_owned),
            scores,
        }
    }

    /// A batch of owned rows (tests and the reference implementation of the rules).
    pub fn from_rows(rows: &[MetaRow]) -> Self {
        let urls: StringArray = rows.iter().map(|r| r.url.as_deref()).collect();
        let captions: StringArray = rows.iter().map(|r| r.caption.as_deref()).collect();
        let scores = std::array::from_fn(|c| {
            Some(
                rows.iter()
                    .map(|r| Some(r.scores[c]))
                    .collect::<Float64Array>(),
            )
        });
        let extra = RecordBatch::try_new_with_options(
            Arc::new(arrow_schema::Schema::empty()),
            vec![],
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )
        .expect("a batch without columns takes any row count");
        MetaBatch {
            urls: Some(urls),
            captions: Some(captions),
            scores,
            extra,
        }
    }
}

fn text_at(column: &Option<StringArray>, i: usize) -> Option<&str> {
    column
        .as_ref()
        .filter(|a| !a.is_null(i))
        .map(|a| a.value(i))
}

/// What to read from a metadata file.
#[derive(Debug, Clone)]
pub struct ReadSpec {
    pub url_column: String,
    pub caption_column: String,
    /// Columns read as they are, for the user's `where` rule; each must exist.
    pub extra_columns: Vec<String>,
    pub batch_rows: usize,
    /// Only these row groups, in this order (None: all).
    pub row_groups: Option<Vec<usize>>,
}

impl ReadSpec {
    pub fn new(url_column: &str, caption_column: &str, batch_rows: usize) -> Self {
        ReadSpec {
            url_column: url_column.to_owned(),
            caption_column: caption_column.to_owned(),
            extra_columns: Vec::new(),
            batch_rows,
            row_groups: None,
        }
    }
}

/// The file's footer read, a decoder panic on a malformed one turned into an error.
fn open_parquet(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, IngestError> {
    let bad = |problem: String| IngestError::Metadata {
        path: path.to_owned(),
        problem,
    };
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    llamagen_shards::table::guarded(|| ParquetRecordBatchReaderBuilder::try_new(file))
        .map_err(bad)?
        .map_err(|e| bad(format!("not a readable parquet file: {e}")))
}

/// One metadata file, read batch by batch.
pub struct MetadataReader {
    path: PathBuf,
    batches: ParquetRecordBatchReader,
    spec: ReadSpec,
    /// Optional columns this file lacks.
    pub missing: Vec<String>,
    /// Row groups in the whole file (whatever [`ReadSpec::row_groups`] selects).
    pub row_groups: usize,
}

impl MetadataReader {
    pub fn open(
        path: &Path,
        url_column: &str,
        caption_column: &str,
        batch_rows: usize,
    ) -> Result<Self, IngestError> {
        Self::open_with(path, &ReadSpec::new(url_column, caption_column, batch_rows))
    }

    pub fn open_with(path: &Path, spec: &ReadSpec) -> Result<Self, IngestError> {
        let bad = |problem: String| IngestError::Metadata {
            path: path.to_owned(),
            problem,
        };
        let builder = open_parquet(path)?;
        let row_groups = builder.metadata().num_row_groups();
        let schema = builder.schema().clone();
        let has = |name: &str| schema.index_of(name).is_ok();
        let names = || {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            names.join(", ")
        };
        if !has(&spec.url_column) {
            return Err(bad(format!(
                "required column {:?} is missing (columns: {})",
                spec.url_column,
                names()
            )));
        }
        if let Some(column) = spec.extra_columns.iter().find(|c| !has(c)) {
            return Err(bad(format!(
                "the metadata filter's `where` rule names column {column:?}, which this file lacks (columns: {})",
                names()
            )));
        }
        let wanted: Vec<&str> = [spec.url_column.as_str(), spec.caption_column.as_str()]
            .into_iter()
            .chain(SCORE_COLUMNS)
            .chain(spec.extra_columns.iter().map(String::as_str))
            .collect();
        let missing = wanted
            .iter()
            .filter(|c| !has(c))
            .map(|c| c.to_string())
            .collect();
        let mut roots: Vec<usize> = wanted
            .iter()
            .filter_map(|c| schema.index_of(c).ok())
            .collect();
        roots.sort_unstable();
        roots.dedup();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let mut builder = builder
            .with_projection(mask)
            .with_batch_size(spec.batch_rows.max(1));
        if let Some(groups) = &spec.row_groups {
            if let Some(g) = groups.iter().find(|&&g| g >= row_groups) {
                return Err(bad(format!(
                    "row group {g} asked for, the file has {row_groups}"
                )));
            }
            builder = builder.with_row_groups(groups.clone());
        }
        let batches = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(MetadataReader {
            path: path.to_owned(),
            batches,
            spec: spec.clone(),
            missing,
            row_groups,
        })
    }

    fn convert(&self, batch: &RecordBatch) -> Result<MetaBatch, IngestError> {
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
        let mut scores: [Option<Float64Array>; 6] = Default::default();
        for (slot, name) in scores.iter_mut().zip(SCORE_COLUMNS) {
            *slot = number(name)?;
        }
        // A projection keeps the row count, also with no columns.
        let extra = batch
            .project(
                &self
                    .spec
                    .extra_columns
                    .iter()
                    .filter_map(|c| batch.schema().index_of(c).ok())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| bad(e.to_string()))?;
        Ok(MetaBatch {
            urls: text(&self.spec.url_column)?,
            captions: text(&self.spec.caption_column)?,
            scores,
            extra,
        })
    }

    /// The next record batch, columnar.
    pub fn next_batch(&mut self) -> Option<Result<MetaBatch, IngestError>> {
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

impl Iterator for MetadataReader {
    type Item = Result<Vec<MetaRow>, IngestError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
            .map(|batch| batch.map(|b| (0..b.len()).map(|i| b.row(i)).collect()))
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
