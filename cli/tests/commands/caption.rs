//! `llamagen caption` as a process: killed with SIGKILL mid-shard, then run again, it asks the
//! server only for the samples without an answer and finishes the shard.

use std::time::Duration;

use crate::common::{self, text};
use llamagen_caption::output::{CaptionStatus, captions_path, journal_path, read_captions};
use llamagen_caption::testing::{CaptionServer, MODEL};
use llamagen_shards::webdataset::TarWriter;

#[test]
fn a_killed_caption_run_resumes_without_asking_twice() {
    let server = CaptionServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let photos = llamagen_ingest::testing::bundled_photos();
    let names = ["astronaut", "chelsea", "coffee"];
    let mut tar = TarWriter::create(&shards.join("00000.tar")).unwrap();
    for i in 0..12 {
        let jpeg = &photos[&format!("{}.jpg", names[i % 3])];
        tar.append(&format!("{i:07}"), "jpg", jpeg).unwrap();
    }
    tar.finish().unwrap();

    let caption = |scenario: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_llamagen"));
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("caption")
            .arg("--input")
            .arg(&shards)
            .args(["--endpoint", &server.endpoint(scenario), "--model", MODEL])
            .args(["--concurrency", "1", "--retries", "0"])
            .env("RUST_LOG", "warn");
        cmd
    };
    // A model the server does not serve: refused before the folder is pinned to it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("caption")
        .arg("--input")
        .arg(&shards)
        .args([
            "--endpoint",
            &server.endpoint("ok"),
            "--model",
            "llava-wrong",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("does not serve"), "{}", text(&out));
    assert!(!shards.join("captions.json").exists());

    // 12 answers of 300 ms each, one at a time: killed after the journal has some.
    let mut child = caption("slow/300").spawn().unwrap();
    let journal = journal_path(&shards, "00000");
    common::wait_for_lines(&journal, 2, Duration::from_secs(60));
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert!(
        (2..12).contains(&kept),
        "{kept} answers journaled before the kill"
    );
    assert!(!captions_path(&shards, "00000").exists());

    let before = server.requests();
    let out = caption("ok").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let asked = server.requests() - before;
    // The journal may gain one line between the count and the kill.
    assert!(
        asked <= (12 - kept) as u64,
        "asked {asked} with {kept} journaled"
    );
    let rows = read_captions(&captions_path(&shards, "00000")).unwrap();
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r.status == CaptionStatus::Ok));
    assert!(!journal.exists());
    assert!(
        text(&out).contains("1 shard(s) captioned"),
        "{}",
        text(&out)
    );

    // Finished: a third run asks nothing; another prompt in the same folder is refused.
    let before = server.requests();
    let out = caption("ok").output().unwrap();
    assert!(
        out.status.success() && text(&out).contains("1 already done"),
        "{}",
        text(&out)
    );
    assert_eq!(server.requests(), before);
    let out = caption("ok")
        .args(["--prompt", "Describe briefly"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("other settings"), "{}", text(&out));
}
