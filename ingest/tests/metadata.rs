//! Malformed metadata files found by the `metadata` fuzz target (fuzz/): each is an error that
//! names the file, never a panic that takes the worker down.

use std::path::Path;

use llamagen_ingest::IngestError;
use llamagen_ingest::reader::MetadataReader;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Everything read from the file, or the first error.
fn read_all(path: &Path) -> Result<usize, IngestError> {
    let mut rows = 0;
    for batch in MetadataReader::open(path, "URL", "TEXT", 64)? {
        rows += batch?.len();
    }
    Ok(rows)
}

#[test]
fn a_footer_that_panics_the_parquet_decoder_is_an_error() {
    // A pyarrow-written file with its thrift footer mutated: parquet 57.3 unwraps a None in
    // its footer decoding.
    let path = fixture("fuzz_parquet_footer_panic.parquet");
    let err = read_all(&path).unwrap_err().to_string();
    assert!(err.contains("fuzz_parquet_footer_panic.parquet"), "{err}");
    assert!(err.contains("parquet"), "{err}");
}
