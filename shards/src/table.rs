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
    guarded(|| {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| ShardError::format(path, e))?
            .map(|b| b.map_err(|e| ShardError::format(path, e)))
            .collect()
    })
    .map_err(|problem| ShardError::format(path, problem))?
}

/// Runs a call into the parquet decoder, turning a panic into an error message: the decoder
/// can panic on a malformed file (parquet 57.3: an `unwrap` in its thrift footer decoding,
/// found by the `metadata` fuzz target), and a bad file must fail its own reading, not the
/// worker.
pub fn guarded<T>(call: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("the parquet decoder failed on this file (it panicked: {message})")
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_panics_the_decoder_is_an_error_naming_it() {
        // The metadata fuzz target's finding (ingest/tests/fixtures): the decoder panics on its
        // footer; every table reader gets an error instead.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ingest/tests/fixtures/fuzz_parquet_footer_panic.parquet");
        let err = read_batches(&path).unwrap_err().to_string();
        assert!(err.contains("fuzz_parquet_footer_panic.parquet"), "{err}");
        assert!(err.contains("parquet decoder failed"), "{err}");
    }
}
