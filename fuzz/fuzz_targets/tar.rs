//! Webdataset shards: any bytes as a tar, grouped into samples, each key checked as a file
//! name. Errors are fine; a panic, an abort (a header's size trusted) or a hang is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamagen_shards::webdataset::{plain_key, read_samples};

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if std::io::Write::write_all(&mut file, data).is_err() {
        return;
    }
    if let Ok(samples) = read_samples(file.path()) {
        for sample in samples {
            let plain = plain_key(&sample.key);
            assert!(!plain || !sample.key.contains('/'));
            let _ = sample.image();
            let _ = sample.text("txt");
        }
    }
});
