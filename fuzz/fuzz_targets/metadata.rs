//! LAION-COCO metadata: any bytes as a parquet file, read to the end. Errors are fine; a panic
//! that reaches the target, an abort or a hang is a finding.
//!
//! The parquet decoder itself can panic on a malformed footer (parquet 57.3), which our readers
//! catch and turn into an error (`llamagen_shards::table::guarded`). libFuzzer's panic hook would
//! abort on that caught panic too, so this target replaces it with a silent one: a panic our
//! code does not catch still unwinds to libfuzzer-sys, which aborts, and is reported.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamagen_ingest::reader::MetadataReader;

fuzz_target!(init: std::panic::set_hook(Box::new(|_| {})), |data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if std::io::Write::write_all(&mut file, data).is_err() {
        return;
    }
    if let Ok(reader) = MetadataReader::open(file.path(), "URL", "TEXT", 64) {
        for batch in reader {
            if batch.is_err() {
                break;
            }
        }
    }
});
