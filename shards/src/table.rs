//! The parquet plumbing every per-shard table shares (the manifest, captions, filter
//! decisions): one record batch written atomically with zstd, read back batch by batch, and
//! columns looked up by name and type with an error that names the file.

use std::fs::File;
use std::path::Path;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{ShardError, atomic};

/// Writes `batch` as a zstd-compressed parquet file, atomically.
pub fn write_batch(path: &Path, batch: &RecordBatch) -> Result<(), ShardError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    atomic::write_with(path, |file| {
        let format = |e: parquet::errors::ParquetError| ShardError::format(path, e);
        let mut writer =
            ArrowWriter::try_new(&mut *file, batch.schema(), Some(props)).map_err(format)?;
        writer.write(batch).map_err(format)?;
        writer.close().map_err(format)?;
        Ok(())
    })
}

/// Every record batch of a parquet file.
pub fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, ShardError> {
    let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| ShardError::format(path, e))?
        .map(|b| b.map_err(|e| ShardError::format(path, e)))
        .collect()
}

/// Column `name` of `batch` as array type `T` (a missing column or another type is an error
/// naming the file, as a malformed or foreign file must be).
pub fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a T, ShardError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            ShardError::format(
                path,
                format!(
                    "no column {name:?} of type {}",
                    std::any::type_name::<T>().rsplit("::").next().unwrap_or("")
                ),
            )
        })
}
