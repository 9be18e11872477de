//! Captioning client overhead, ours against the official Python `openai` client, against one
//! loopback server that answers instantly, in the same run.
//!
//! cargo bench -p llamagen-caption --bench caption_client -- [--requests 2000] [--concurrency 64]
//!
//! Both sides send the bundled photos (JPEG, ~10 KB) as base64 data URLs with the paper's
//! prompt, `--concurrency` requests in flight. Ours is measured twice: the whole shard path
//! (`caption_shard`: reading the tar, journaling every answer, the first-sentence split, the
//! parquet) and the bare client loop. The peer is scripts/bench_caption.py (AsyncOpenAI with a
//! semaphore), run with the project's virtualenv. The server's `/instant` route answers without
//! decoding the image, so the figures are client cost plus loopback HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use llamagen_caption::shard::{ShardOptions, caption_shard};
use llamagen_caption::testing::{CaptionServer, MODEL};
use llamagen_caption::{ChatClient, ClientOptions, PAPER_PROMPT, Prompt};
use llamagen_shards::webdataset::TarWriter;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() {
    let (mut requests, mut concurrency) = (2000usize, 64usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => requests = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000),
            "--concurrency" => concurrency = args.next().and_then(|s| s.parse().ok()).unwrap_or(64),
            _ => {} // cargo bench passes --bench
        }
    }
    let server = CaptionServer::start().expect("loopback server");
    let endpoint = server.endpoint("instant");
    let work = tempfile::tempdir().unwrap();
    let photos = llamagen_ingest::testing::bundled_photos();
    let names = ["astronaut", "chelsea", "coffee"];
    let jpegs: Vec<Vec<u8>> = names
        .iter()
        .map(|n| photos[&format!("{n}.jpg")].clone())
        .collect();
    let image_dir = work.path().join("images");
    std::fs::create_dir_all(&image_dir).unwrap();
    for (n, bytes) in names.iter().zip(&jpegs) {
        std::fs::write(image_dir.join(format!("{n}.jpg")), bytes).unwrap();
    }
    let tar = work.path().join("00000.tar");
    let mut writer = TarWriter::create(&tar).unwrap();
    for i in 0..requests {
        writer
            .append(&format!("{i:07}"), "jpg", &jpegs[i % jpegs.len()])
            .unwrap();
    }
    writer.finish().unwrap();

    let client = ChatClient::new(ClientOptions {
        endpoint: endpoint.clone(),
        timeout: Duration::from_secs(120),
        ..ClientOptions::default()
    })
    .unwrap();
    let prompt = Prompt {
        model: MODEL.into(),
        text: PAPER_PROMPT.into(),
        max_tokens: 512,
        temperature: 0.0,
    };
    // The client runs on one worker thread, the server on its own: one core each.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let started = Instant::now();
    let done = rt.block_on(async {
        futures::stream::iter(0..requests)
            .map(|i| {
                let (client, prompt, jpegs) = (&client, &prompt, &jpegs);
                async move { client.caption(prompt, "jpg", &jpegs[i % jpegs.len()]).await }
            })
            .buffer_unordered(concurrency)
            .filter(|a| std::future::ready(a.result.is_ok()))
            .count()
            .await
    });
    let bare = started.elapsed().as_secs_f64();
    assert_eq!(done, requests);

    let options = ShardOptions {
        concurrency,
        ..ShardOptions::default()
    };
    let started = Instant::now();
    let summary = rt
        .block_on(caption_shard(&client, &prompt, &tar, work.path(), &options))
        .unwrap()
        .unwrap();
    let shard = started.elapsed().as_secs_f64();
    assert_eq!(summary.captioned, requests);

    println!(
        "captioning client overhead: {requests} requests, {concurrency} in flight, loopback server answering instantly"
    );
    println!("{:<48} {:>10}", "", "requests/s");
    println!(
        "{:<48} {:>10.0}",
        "ours, caption_shard (tar, journal, parquet)",
        requests as f64 / shard
    );
    println!(
        "{:<48} {:>10.0}",
        "ours, bare client",
        requests as f64 / bare
    );
    let python = root().join(".venv/bin/python");
    let output = std::process::Command::new(&python)
        .arg(root().join("scripts/bench_caption.py"))
        .args(["--endpoint", &endpoint, "--model", MODEL])
        .arg("--images")
        .arg(&image_dir)
        .args(["--requests", &requests.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
            let rate = v["requests_per_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<48} {:>10.0}",
                "python openai AsyncOpenAI (scripts/bench_caption.py)", rate
            );
            println!(
                "ours (shard path) / python: {:.2}x",
                requests as f64 / shard / rate
            );
        }
        Ok(out) => println!(
            "python peer failed (pip install openai into .venv): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("python peer not run ({}): {e}", python.display()),
    }
}
