//! The downloader and worker against a real HTTP server on loopback: real photos, and every
//! hostile case the server knows. Each ends with a clear status, never a panic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llamagen_ingest::download::{DownloadError, DownloadOptions, Downloader};
use llamagen_ingest::reader::MetaRow;
use llamagen_ingest::resize::{ResizeMode, ResizeOptions};
use llamagen_ingest::testing::LoopbackServer;
use llamagen_ingest::worker::run_shard;
use llamagen_shards::manifest::{self, Status};
use llamagen_shards::{ShardPaths, webdataset};

fn photos() -> HashMap<String, Vec<u8>> {
    llamagen_ingest::testing::bundled_photos()
}

fn options() -> DownloadOptions {
    DownloadOptions {
        timeout: Duration::from_secs(2),
        retries: 2,
        backoff: Duration::from_millis(20),
        max_redirects: 3,
        max_body_bytes: 4 << 20,
        user_agent_token: "llamagen-rs".into(),
        disallowed_header_directives: ["noai", "noimageai", "noindex", "noimageindex"]
            .map(String::from)
            .to_vec(),
        allow_private_addresses: true,
        proxy: None,
        max_in_flight: 0,
    }
}

#[tokio::test]
async fn every_hostile_case_gets_a_clear_error() {
    let server = LoopbackServer::start(photos()).await.unwrap();
    let d = Downloader::new(options()).unwrap();
    let fetch = |path: &str| {
        let url = server.url(path);
        let d = &d;
        async move { d.fetch(&url).await }
    };

    let ok = fetch("/img/chelsea.jpg").await.unwrap();
    assert_eq!(&ok.bytes[..], &photos()["chelsea.jpg"][..]);
    assert_eq!(ok.attempts, 1);

    assert_eq!(
        fetch("/status/404").await.unwrap_err(),
        DownloadError::Status(404)
    );
    let before = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        fetch("/status/500").await.unwrap_err(),
        DownloadError::Status(500)
    );
    let after = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 3, "a 500 is tried 1 + 2 retries times");
    let before = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        fetch("/status/404").await.unwrap_err(),
        DownloadError::Status(404)
    );
    let after = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 1, "a 404 is final");

    let flaky = fetch("/flaky/2/coffee.jpg").await.unwrap();
    assert_eq!(flaky.attempts, 3, "two 503s, then the image");

    let t = Instant::now();
    assert!(matches!(
        fetch("/hang").await.unwrap_err(),
        DownloadError::Timeout(_)
    ));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "3 attempts of 2 s plus backoff"
    );
    assert!(matches!(
        fetch("/drip").await.unwrap_err(),
        DownloadError::Timeout(_)
    ));
    assert!(matches!(
        fetch("/truncated").await.unwrap_err(),
        DownloadError::Truncated(_)
    ));
    assert!(matches!(
        fetch("/html").await.unwrap_err(),
        DownloadError::NotAnImage(_)
    ));
    assert!(matches!(
        fetch("/huge").await.unwrap_err(),
        DownloadError::TooLarge { .. }
    ));
    assert_eq!(
        fetch("/noai/astronaut.png").await.unwrap_err(),
        DownloadError::OptedOut("noai".into())
    );
    let redirect = fetch("/redirect/2/coffee.png").await.unwrap();
    assert!(redirect.final_url.ends_with("/img/coffee.png"));
    let err = fetch("/redirect/5/coffee.png").await.unwrap_err();
    assert!(
        matches!(&err, DownloadError::Redirect(m) if m.contains("more than 3")),
        "{err}"
    );
    let err = fetch("/loop").await.unwrap_err();
    assert!(
        matches!(&err, DownloadError::Redirect(m) if m.contains("loop")),
        "{err}"
    );

    // Refused before any connection: other schemes, and loopback unless allowed.
    assert!(matches!(
        d.fetch("file:///etc/passwd").await.unwrap_err(),
        DownloadError::Refused(_)
    ));
    assert!(matches!(
        d.fetch("not a url").await.unwrap_err(),
        DownloadError::Refused(_)
    ));
    let strict = Downloader::new(DownloadOptions {
        allow_private_addresses: false,
        ..options()
    })
    .unwrap();
    let err = strict
        .fetch(&server.url("/img/coffee.jpg"))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::Refused(_)), "{err}");
    let by_name = format!("http://localhost:{}/img/coffee.jpg", server.addr.port());
    let err = strict.fetch(&by_name).await.unwrap_err();
    assert!(
        matches!(&err, DownloadError::Refused(m) if m.contains("non-public")),
        "a name that resolves to loopback is refused too: {err}"
    );
}

/// `max_in_flight` bounds requests, not rows: a dead host's attempt holds its slot until the
/// timeout, and gives it up while it waits to retry.
#[tokio::test]
async fn a_slot_is_held_per_attempt_and_free_during_backoff() {
    let server = LoopbackServer::start(photos()).await.unwrap();
    let timeout = Duration::from_secs(2);
    let d = Arc::new(
        Downloader::new(DownloadOptions {
            timeout,
            retries: 1,
            backoff: Duration::from_millis(300),
            max_in_flight: 1,
            ..options()
        })
        .unwrap(),
    );
    let (done, mut order) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let fetch = |name: &'static str, path: &str| {
        let (d, done, url) = (d.clone(), done.clone(), server.url(path));
        tokio::spawn(async move {
            let result = d.fetch(&url).await;
            done.send((name, started.elapsed())).unwrap();
            result
        })
    };
    let hang = fetch("hang", "/hang");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let photo = fetch("photo", "/img/coffee.jpg");
    let err = hang.await.unwrap().unwrap_err();
    assert!(matches!(err, DownloadError::Timeout(_)), "{err}");
    assert_eq!(photo.await.unwrap().unwrap().bytes, photos()["coffee.jpg"]);
    let (first, photo_at) = order.recv().await.unwrap();
    let (second, _) = order.recv().await.unwrap();
    assert_eq!(
        (first, second),
        ("photo", "hang"),
        "the photo took the slot while the dead host waited to retry"
    );
    assert!(
        photo_at >= timeout,
        "the photo waited for the first attempt's slot ({photo_at:?})"
    );
}

#[tokio::test]
async fn a_shard_of_good_and_bad_rows_writes_img2dataset_files() {
    let server = LoopbackServer::start(photos()).await.unwrap();
    let paths = [
        "/img/astronaut.png",
        "/img/chelsea.jpg",
        "/status/404",
        "/corrupt.jpg",
        "/bomb.png",
        "/html",
        "/img/coffee.jpg",
        "/truncated",
    ];
    let rows: Vec<MetaRow> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| MetaRow {
            url: Some(server.url(p)),
            caption: Some(format!("photo {i} <b>&</b>")),
            scores: [512.0, 512.0, 0.3, 6.0, 0.1, 0.0],
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let resize = ResizeOptions {
        image_size: 64,
        mode: ResizeMode::CenterCrop,
        jpeg_quality: 90,
        max_pixels: 50_000_000,
        max_aspect_ratio: 2.0,
    };
    let stats = run_shard(
        3,
        rows.clone(),
        16,
        dir.path(),
        Arc::new(Downloader::new(options()).unwrap()),
        Arc::new(resize.clone()),
        4,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(stats.count, 8);
    assert_eq!(stats.successes, 3);
    assert_eq!(stats.failed_to_download, 3, "404, html, truncated");
    assert_eq!(stats.failed_to_resize, 2, "corrupt bytes, bomb");

    let shard = ShardPaths::new(dir.path(), 3);
    let manifest = manifest::read(&shard.parquet).unwrap();
    assert_eq!(manifest.len(), 8);
    assert_eq!(manifest[0].key, "0000300");
    let bomb = &manifest[4];
    assert_eq!(bomb.status, Status::FailedToResize);
    let message = bomb.error_message.as_deref().unwrap();
    assert!(message.contains("decompression bomb"), "{message}");
    let astronaut = &manifest[0];
    assert_eq!(astronaut.status, Status::Success);
    assert_eq!((astronaut.width, astronaut.height), (Some(64), Some(64)));
    assert_eq!(
        (astronaut.original_width, astronaut.original_height),
        (Some(160), Some(160))
    );
    assert_eq!(astronaut.sha256.as_deref().unwrap().len(), 64);

    let members = webdataset::read_members(&shard.tar).unwrap();
    assert_eq!(
        members.len(),
        9,
        "jpg, txt and json for each of 3 successes"
    );
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"0000306.jpg"), "{names:?}");
    for (name, bytes) in &members {
        if name.ends_with(".jpg") {
            let img = image::load_from_memory(bytes).unwrap();
            assert_eq!((img.width(), img.height()), (64, 64));
        }
    }

    // A second run finds the stats file and redoes nothing.
    let before = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    let again = run_shard(
        3,
        rows,
        16,
        dir.path(),
        Arc::new(Downloader::new(options()).unwrap()),
        Arc::new(resize),
        4,
        &|_| {},
    )
    .await
    .unwrap();
    // Timings go through JSON, which may move a float by an ulp; the counts must be equal.
    assert_eq!(
        (
            again.count,
            again.successes,
            again.failed_to_download,
            again.failed_to_resize
        ),
        (
            stats.count,
            stats.successes,
            stats.failed_to_download,
            stats.failed_to_resize
        )
    );
    assert_eq!(
        (
            again.status_dict,
            again.bytes_written,
            again.start_time > 0.0
        ),
        (stats.status_dict, stats.bytes_written, true)
    );
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        before
    );
}
