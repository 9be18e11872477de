//! Config sections as TOML text (a config file is input too): the ingest and caption sections
//! parsed and validated. Errors are fine; a panic is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ingest) = toml::from_str::<llamagen_ingest::config::IngestConfig>(text) {
        let _ = ingest
            .resize_mode
            .parse::<llamagen_ingest::resize::ResizeMode>();
        let _ = llamagen_ingest::download::DownloadOptions::from_config(&ingest);
    }
    if let Ok(caption) = toml::from_str::<llamagen_caption::config::CaptionConfig>(text) {
        let _ = caption.validate();
    }
});
