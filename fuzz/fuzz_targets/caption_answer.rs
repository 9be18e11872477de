//! A caption server's answer body (untrusted: any server, or something posing as one), parsed
//! as the client parses it, and the short caption taken from whatever text it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(completion) = llamagen_caption::client::parse_completion(data) {
        let _ = llamagen_caption::sentence::first_sentence(&completion.text);
    }
});
