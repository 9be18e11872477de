//! LAION-COCO metadata: any bytes as a parquet file, read to the end. Errors are fine; a panic,
//! an abort or a hang is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamagen_ingest::reader::MetadataReader;

fuzz_target!(|data: &[u8]| {
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
