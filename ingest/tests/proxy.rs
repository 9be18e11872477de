//! Downloads and proxies, against real loopback servers (one of them acting as the proxy and
//! recording what it was asked): `HTTP_PROXY` in the environment is ignored, and with a
//! configured proxy every target and every redirect is checked before the proxy sees it.
//! Its own test binary: it sets process environment.

use std::time::Duration;

use llamagen_ingest::download::{DownloadError, DownloadOptions, Downloader};
use llamagen_ingest::testing::{LoopbackServer, bundled_photos};

fn options(allow_private_addresses: bool, proxy: Option<String>) -> DownloadOptions {
    DownloadOptions {
        timeout: Duration::from_secs(5),
        retries: 0,
        backoff: Duration::from_millis(10),
        max_redirects: 3,
        max_body_bytes: 4 << 20,
        user_agent_token: "llamagen-rs".into(),
        disallowed_header_directives: Vec::new(),
        allow_private_addresses,
        proxy,
        max_in_flight: 0,
    }
}

#[tokio::test]
async fn no_target_reaches_a_proxy_unless_configured_and_checked() {
    let recorder = LoopbackServer::start(bundled_photos()).await.unwrap();
    let origin = LoopbackServer::start(bundled_photos()).await.unwrap();
    let proxy_url = format!("http://{}", recorder.addr);
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"] {
        // SAFETY: the only test of this binary sets them before any client is built.
        unsafe { std::env::set_var(var, &proxy_url) };
    }
    let asked = || recorder.proxied.lock().unwrap().clone();

    // No proxy configured: the environment's is not used, and the guard still refuses
    // internal names (they do not resolve here, or resolve to private addresses).
    let direct = Downloader::new(options(true, None)).unwrap();
    let ok = direct.fetch(&origin.url("/img/chelsea.jpg")).await.unwrap();
    assert_eq!(&ok.bytes[..], &bundled_photos()["chelsea.jpg"][..]);
    let strict_direct = Downloader::new(options(false, None)).unwrap();
    for url in [
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://internal-db.corp/dump.png",
    ] {
        assert!(strict_direct.fetch(url).await.is_err(), "{url}");
    }
    assert!(
        asked().is_empty(),
        "the environment's proxy was used: {:?}",
        asked()
    );

    // A configured proxy: targets are checked here first.
    let strict = Downloader::new(options(false, Some(proxy_url.clone()))).unwrap();
    let port = origin.addr.port();
    for url in [
        format!("http://localhost:{port}/img/coffee.jpg"),
        format!("http://127.0.0.1:{port}/img/coffee.jpg"),
        "http://metadata.google.internal/computeMetadata/v1/".into(),
        "http://internal-db.corp/dump.png".into(),
        "http://[64:ff9b::a00:1]/x.png".into(),
    ] {
        let err = strict.fetch(&url).await.unwrap_err();
        assert!(matches!(err, DownloadError::Refused(_)), "{url}: {err}");
    }
    assert!(
        asked().is_empty(),
        "refused targets reached the proxy: {:?}",
        asked()
    );

    // A public literal address passes the check and goes through the proxy (which answers it
    // from its own files).
    let ok = strict.fetch("http://1.1.1.1/img/coffee.jpg").await.unwrap();
    assert_eq!(&ok.bytes[..], &bundled_photos()["coffee.jpg"][..]);
    assert_eq!(asked(), ["http://1.1.1.1/img/coffee.jpg"]);

    // A redirect is checked too: the public URL redirects (through the proxy) to loopback.
    let to_loopback = format!("http://1.1.1.1/to/127.0.0.1:{port}/img/coffee.jpg");
    let err = strict.fetch(&to_loopback).await.unwrap_err();
    assert!(matches!(err, DownloadError::Refused(_)), "{err}");
    assert_eq!(
        asked().len(),
        2,
        "only the public hop was proxied: {:?}",
        asked()
    );
    // Redirects between public addresses are followed through the proxy.
    let hops = strict
        .fetch("http://1.1.1.1/redirect/2/astronaut.png")
        .await
        .unwrap();
    assert_eq!(hops.final_url, "http://1.1.1.1/img/astronaut.png");
    assert_eq!(asked().len(), 5);
}
