//! Captioning real photos through a real HTTP server on loopback that speaks the
//! chat-completions protocol, including its slow, failing and malformed answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use llamagen_caption::output::{
    CaptionRecord, CaptionStatus, captions_path, journal_path, read_captions,
};
use llamagen_caption::shard::{ShardOptions, ShardSummary, caption_shard};
use llamagen_caption::testing::{CaptionServer, MODEL, describe};
use llamagen_caption::{
    CaptionError, CaptionSettings, ChatClient, ClientOptions, PAPER_PROMPT, Prompt,
};
use llamagen_shards::webdataset::TarWriter;

const PHOTOS: [&str; 3] = ["astronaut", "chelsea", "coffee"];

/// A shard with the three bundled photos (JPEG), a sample without an image and one whose JPEG
/// is corrupt; returns its path.
fn shard(dir: &Path) -> PathBuf {
    let photos = llamagen_ingest::testing::bundled_photos();
    let path = dir.join("00000.tar");
    let mut tar = TarWriter::create(&path).unwrap();
    for (i, name) in PHOTOS.iter().enumerate() {
        let key = format!("000000{i}");
        tar.append(&key, "jpg", &photos[&format!("{name}.jpg")])
            .unwrap();
        tar.append(&key, "txt", name.as_bytes()).unwrap();
    }
    tar.append("0000003", "txt", b"caption only").unwrap();
    tar.append("0000004", "jpg", b"\xff\xd8not a jpeg").unwrap();
    tar.finish().unwrap();
    path
}

/// What the server must say about photo `name`: computed here from the same JPEG bytes.
fn expected(name: &str) -> String {
    let photos = llamagen_ingest::testing::bundled_photos();
    let img = image::load_from_memory(&photos[&format!("{name}.jpg")])
        .unwrap()
        .to_rgb8();
    let mut sum = [0u64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += u64::from(p[c]);
        }
    }
    let n = u64::from(img.width() * img.height());
    describe(img.width(), img.height(), sum.map(|s| (s / n) as u8))
}

fn photo_jpeg() -> Vec<u8> {
    llamagen_ingest::testing::bundled_photos()["chelsea.jpg"].clone()
}

fn prompt() -> Prompt {
    Prompt {
        model: MODEL.into(),
        text: PAPER_PROMPT.into(),
        max_tokens: 256,
        temperature: 0.0,
    }
}

fn client(endpoint: String, retries: u32, timeout_ms: u64) -> ChatClient {
    ChatClient::new(ClientOptions {
        endpoint,
        timeout: Duration::from_millis(timeout_ms),
        max_retries: retries,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ClientOptions::default()
    })
    .unwrap()
}

/// A new shard captioned through `scenario` with default options: its summary and rows.
fn caption_new_shard(
    rt: &tokio::runtime::Runtime,
    client: &ChatClient,
) -> (ShardSummary, Vec<CaptionRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let tar = shard(dir.path());
    let summary = rt
        .block_on(caption_shard(
            client,
            &prompt(),
            &tar,
            dir.path(),
            &ShardOptions::default(),
        ))
        .unwrap()
        .expect("a new shard is captioned");
    let rows = read_captions(&captions_path(dir.path(), "00000")).unwrap();
    (summary, rows)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_sample_gets_its_own_caption_and_a_rerun_asks_nothing() {
    let server = CaptionServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = shard(dir.path());
    let rt = runtime();
    let client = client(server.endpoint("ok"), 2, 10_000);
    rt.block_on(client.check_model(MODEL)).unwrap();
    // A killed attempt's temporaries: of the captions, and of a journal rewrite.
    let dead = [
        dir.path().join(".tmp.00000_captions.parquet.z9Y8x7"),
        dir.path().join(".tmp.00000_captions.partial.jsonl.ihqbkX"),
    ];
    for file in &dead {
        std::fs::write(file, b"half").unwrap();
    }
    let summary = rt
        .block_on(caption_shard(
            &client,
            &prompt(),
            &tar,
            dir.path(),
            &ShardOptions::default(),
        ))
        .unwrap()
        .expect("a new shard is captioned");
    assert_eq!(
        (
            summary.samples,
            summary.captioned,
            summary.failed,
            summary.no_image
        ),
        (5, 3, 1, 1)
    );
    let rows = read_captions(&captions_path(dir.path(), "00000")).unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        ["0000000", "0000001", "0000002", "0000003", "0000004"],
        "shard order"
    );
    for (i, name) in PHOTOS.iter().enumerate() {
        let r = &rows[i];
        assert_eq!(r.status, CaptionStatus::Ok);
        let want = expected(name);
        assert_eq!(r.caption.as_deref(), Some(want.as_str()), "{name}");
        // "approx. 0.0 megapixels" holds an abbreviation and a decimal before the first stop.
        let first = format!("{}.", want.split(". The test server").next().unwrap());
        assert_eq!(r.short_caption.as_deref(), Some(first.as_str()), "{name}");
        assert!(first.contains("approx. 0.0 megapixels"));
        assert_eq!((r.model.as_str(), r.prompt.as_str()), (MODEL, PAPER_PROMPT));
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.attempts, 1);
    }
    assert_eq!(rows[3].status, CaptionStatus::NoImage);
    assert_eq!(rows[4].status, CaptionStatus::Failed);
    let error = rows[4].error.as_deref().unwrap();
    assert!(
        error.contains("400") && error.contains("cannot identify image"),
        "{error}"
    );
    assert!(
        !journal_path(dir.path(), "00000").exists(),
        "the journal goes once finished"
    );
    for file in &dead {
        assert!(
            !file.exists(),
            "a killed attempt's temporary is removed: {file:?}"
        );
    }

    let asked = server.requests();
    assert_eq!(asked, 4);
    let again = rt
        .block_on(caption_shard(
            &client,
            &prompt(),
            &tar,
            dir.path(),
            &ShardOptions::default(),
        ))
        .unwrap();
    assert!(again.is_none());
    assert_eq!(server.requests(), asked, "finished work is not redone");
}

#[test]
fn retries_recover_from_503_429_and_one_malformed_answer() {
    let server = CaptionServer::start().unwrap();
    let rt = runtime();
    for (scenario, attempts) in [("flaky/2", 3), ("rate-limited", 2), ("malformed-once", 2)] {
        let (summary, rows) = caption_new_shard(&rt, &client(server.endpoint(scenario), 3, 10_000));
        assert_eq!(summary.captioned, 3, "{scenario}");
        for r in &rows[..3] {
            assert_eq!(r.attempts, attempts, "{scenario} {}", r.key);
            assert!(
                r.caption
                    .as_deref()
                    .unwrap()
                    .starts_with("A 160 by 160 picture")
            );
            if scenario == "rate-limited" {
                // Retry-After: 1 is a floor under the backoff (10-50 ms here).
                assert!(r.latency_ms >= 1000, "{}", r.latency_ms);
            }
        }
    }
}

#[test]
fn answers_that_never_parse_are_recorded_and_cut_off_replies_get_no_short_caption() {
    let server = CaptionServer::start().unwrap();
    let rt = runtime();
    let (summary, rows) = caption_new_shard(&rt, &client(server.endpoint("malformed"), 2, 10_000));
    assert_eq!((summary.captioned, summary.failed), (0, 4));
    for r in &rows[..3] {
        assert_eq!(r.status, CaptionStatus::Failed);
        let error = r.error.as_deref().unwrap();
        assert!(error.contains("malformed answer"), "{error}");
        assert_eq!(r.attempts, 3);
    }

    // An answer too large to be a caption is cut off at the limit, never buffered whole.
    let answer = rt.block_on(client(server.endpoint("huge"), 1, 10_000).caption(
        &prompt(),
        "jpg",
        &photo_jpeg(),
    ));
    let error = answer.result.unwrap_err().to_string();
    assert!(error.contains("answer over 4194304 bytes"), "{error}");
    assert_eq!(answer.attempts, 2);

    let (summary, rows) = caption_new_shard(&rt, &client(server.endpoint("truncated"), 2, 10_000));
    assert_eq!((summary.captioned, summary.without_short), (3, 3));
    assert_eq!(rows[0].caption.as_deref(), Some("A 160 by 160"));
    assert_eq!(rows[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(
        rows[0].short_caption, None,
        "no trailing fragment as a short caption"
    );
}

#[test]
fn a_dead_or_hanging_server_leaves_the_shard_open_and_loses_nothing() {
    let server = CaptionServer::start().unwrap();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let tar = shard(dir.path());

    // Interrupted after some answers (as a killed process would be): they are journaled.
    let slow = client(server.endpoint("slow/200"), 0, 10_000);
    let options = ShardOptions {
        concurrency: 1,
        ..ShardOptions::default()
    };
    let interrupted = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(500),
            caption_shard(&slow, &prompt(), &tar, dir.path(), &options),
        )
        .await
    });
    assert!(interrupted.is_err(), "the slow run was cut off");
    assert!(!captions_path(dir.path(), "00000").exists());

    // A hanging server: every request times out, the shard stays open.
    let hang = client(server.endpoint("hang"), 1, 300);
    let err = rt
        .block_on(caption_shard(&hang, &prompt(), &tar, dir.path(), &options))
        .unwrap_err();
    assert!(matches!(err, CaptionError::Unfinished { .. }), "{err}");
    assert!(
        err.to_string().contains("timed out") || err.to_string().contains("timeout"),
        "{err}"
    );

    // A server that is down everywhere: the run stops after a few requests in a row.
    let down = client(server.endpoint("down"), 0, 10_000);
    let give_up = ShardOptions {
        concurrency: 1,
        give_up_after: 1,
        ..ShardOptions::default()
    };
    let err = rt
        .block_on(caption_shard(&down, &prompt(), &tar, dir.path(), &give_up))
        .unwrap_err();
    assert!(matches!(err, CaptionError::Server(_)), "{err}");
    assert!(!captions_path(dir.path(), "00000").exists());

    // The server is back: only the samples without an answer are asked.
    let before = server.requests();
    let ok = client(server.endpoint("ok"), 0, 10_000);
    let summary = rt
        .block_on(caption_shard(&ok, &prompt(), &tar, dir.path(), &options))
        .unwrap()
        .unwrap();
    assert!(
        summary.resumed >= 2,
        "the no-image sample and at least one slow answer: {summary:?}"
    );
    assert_eq!(summary.requested + summary.resumed, 5);
    assert_eq!(server.requests() - before, summary.requested as u64);
    let rows = read_captions(&captions_path(dir.path(), "00000")).unwrap();
    assert_eq!(
        rows.iter()
            .filter(|r| r.status == CaptionStatus::Ok)
            .count(),
        3
    );
}

#[test]
fn a_wrong_model_stops_the_run_and_another_prompt_is_refused_in_the_same_folder() {
    let server = CaptionServer::start().unwrap();
    let rt = runtime();
    let client = client(server.endpoint("ok"), 2, 10_000);
    let err = rt.block_on(client.check_model("llava-v1.6")).unwrap_err();
    assert!(
        err.to_string().contains(MODEL),
        "names the served models: {err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let tar = shard(dir.path());
    let mut wrong = prompt();
    wrong.model = "llava-v1.6".into();
    let err = rt
        .block_on(caption_shard(
            &client,
            &wrong,
            &tar,
            dir.path(),
            &ShardOptions::default(),
        ))
        .unwrap_err();
    assert!(
        matches!(err, CaptionError::Server(_)) && err.to_string().contains("404"),
        "{err}"
    );

    CaptionSettings { prompt: prompt() }
        .check_or_write(dir.path())
        .unwrap();
    let mut other = prompt();
    other.text = "Describe this image briefly".into();
    let err = CaptionSettings { prompt: other }
        .check_or_write(dir.path())
        .unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
}

#[test]
fn samples_the_filter_dropped_are_recorded_and_never_sent() {
    let server = CaptionServer::start().unwrap();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let tar = shard(dir.path());
    let options = ShardOptions {
        only: Some(["0000001".to_string()].into_iter().collect()),
        ..ShardOptions::default()
    };
    let client = client(server.endpoint("ok"), 0, 10_000);
    let summary = rt
        .block_on(caption_shard(
            &client,
            &prompt(),
            &tar,
            dir.path(),
            &options,
        ))
        .unwrap()
        .unwrap();
    assert_eq!((summary.captioned, summary.filtered), (1, 4));
    assert_eq!(server.requests(), 1);
    let rows = read_captions(&captions_path(dir.path(), "00000")).unwrap();
    assert_eq!(rows[1].status, CaptionStatus::Ok);
    assert_eq!(rows[0].status, CaptionStatus::Filtered);
    assert_eq!(rows[0].caption, None);
}
