//! The caption client and proxies: `HTTP_PROXY` in the environment (usual on cluster nodes)
//! is not used, so the bearer token and the images go to the server named and nowhere else;
//! a proxy named in the options is. Its own test binary: it sets process environment.

use std::time::Duration;

use llamagen_caption::client::{ChatClient, ClientOptions, PAPER_PROMPT, Prompt};
use llamagen_caption::testing::{CaptionServer, MODEL};
use llamagen_ingest::testing::{LoopbackServer, bundled_photos};

#[test]
fn the_environment_s_proxy_is_ignored_and_a_configured_one_is_used() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let recorder = rt
        .block_on(LoopbackServer::start(bundled_photos()))
        .unwrap();
    let proxy_url = format!("http://{}", recorder.addr);
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"] {
        // SAFETY: the only test of this binary sets them before any other thread reads them.
        unsafe { std::env::set_var(var, &proxy_url) };
    }
    let server = CaptionServer::start().unwrap();
    let prompt = Prompt {
        model: MODEL.into(),
        text: PAPER_PROMPT.into(),
        max_tokens: 64,
        temperature: 0.0,
    };
    let image = bundled_photos()["coffee.jpg"].clone();
    let options = ClientOptions {
        endpoint: server.endpoint("ok"),
        api_key: Some("secret-token".into()),
        timeout: Duration::from_secs(10),
        max_retries: 0,
        ..ClientOptions::default()
    };

    let direct = ChatClient::new(options.clone()).unwrap();
    let answer = rt.block_on(direct.caption(&prompt, "jpg", &image));
    assert!(answer.result.is_ok(), "{:?}", answer.result);
    assert_eq!(server.requests(), 1);
    assert!(recorder.proxied.lock().unwrap().is_empty());

    // Named in the options, the proxy gets the request (it answers from its own routes, so
    // this one is a 404: what matters is where the request went).
    let proxied = ChatClient::new(ClientOptions {
        proxy: Some(proxy_url.clone()),
        ..options
    })
    .unwrap();
    let answer = rt.block_on(proxied.caption(&prompt, "jpg", &image));
    assert!(answer.result.is_err());
    assert_eq!(server.requests(), 1, "the server was not reached directly");
    let asked = recorder.proxied.lock().unwrap().clone();
    assert_eq!(
        asked,
        [format!("{}/chat/completions", server.endpoint("ok"))]
    );
}
