//! A chat-completions server on loopback that speaks the OpenAI protocol as vLLM and
//! llama.cpp do, for the tests, the demo and the client benchmark. It decodes the image it is
//! sent and describes it (size and mean colour), so a caption can be traced to its image; the
//! path prefix before `/v1` picks how it misbehaves:
//!
//! | endpoint | answers |
//! | --- | --- |
//! | `/ok/v1` | a three-sentence description |
//! | `/instant/v1` | a fixed caption without decoding the image (client overhead only) |
//! | `/slow/MS/v1` | the description after MS milliseconds |
//! | `/flaky/N/v1` | 503 for the first N requests of each image, then the description |
//! | `/rate-limited/v1` | 429 with `Retry-After: 1` for each image's first request |
//! | `/malformed/v1` | 200 with a body that is not JSON, always |
//! | `/malformed-once/v1` | `{"choices": []}` for each image's first request |
//! | `/truncated/v1` | a reply cut off mid-sentence, `finish_reason: "length"` |
//! | `/down/v1` | 503, always |
//! | `/hang/v1` | never answers |
//! | `/huge/v1` | 200 with a 6 MB answer (over the client's limit) |
//!
//! Every endpoint serves `GET .../v1/models` listing [`MODEL`], answers 404 for other models and
//! 400 for an image that does not decode, as real servers do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

/// The one model the server has.
pub const MODEL: &str = "llava-test";

/// A captions row as `llamagen caption` writes it, for tests of the stages that read captions:
/// `caption` and `short_caption` only where the status is `ok`.
pub fn record(
    key: &str,
    status: crate::output::CaptionStatus,
    caption: &str,
    short_caption: Option<&str>,
) -> crate::output::CaptionRecord {
    let ok = status == crate::output::CaptionStatus::Ok;
    crate::output::CaptionRecord {
        key: key.into(),
        status,
        caption: ok.then(|| caption.to_string()),
        short_caption: short_caption.filter(|_| ok).map(str::to_string),
        model: MODEL.into(),
        prompt: "Describe this image in as much detail as possible".into(),
        finish_reason: ok.then(|| "stop".into()),
        error: None,
        prompt_tokens: None,
        completion_tokens: None,
        attempts: 1,
        latency_ms: 1,
    }
}

#[derive(Default)]
struct State {
    requests: AtomicU64,
    /// Requests seen per (scenario, image), for the "first N requests fail" endpoints.
    seen: Mutex<HashMap<(String, u64), u32>>,
}

/// A running server; it stops when dropped.
pub struct CaptionServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaptionServer {
    /// Starts on a free loopback port, on its own thread and runtime (one worker), so it runs
    /// the same under a synchronous caller, a test runtime or a benchmark.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = axum::Router::new().fallback(move |method, uri, body| {
                    let state = served.clone();
                    async move { handle(state, method, uri, body).await }
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
            // Hanging requests would keep a graceful runtime waiting forever.
            runtime.shutdown_background();
        });
        Ok(CaptionServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The base URL of one scenario, e.g. `endpoint("flaky/2")`.
    pub fn endpoint(&self, scenario: &str) -> String {
        format!("http://{}/{scenario}/v1", self.addr)
    }

    /// Chat-completion requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for CaptionServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

fn completion(text: &str, finish_reason: &str) -> Response {
    axum::Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
        }],
        "usage": {"prompt_tokens": 600, "completion_tokens": text.split_whitespace().count()},
    }))
    .into_response()
}

/// What the server says about an image: its size and mean colour, in sentences that exercise
/// the short-caption split (an abbreviation and a decimal before the first full stop).
pub fn describe(width: u32, height: u32, mean: [u8; 3]) -> String {
    format!(
        "A {width} by {height} picture, approx. {:.1} megapixels, with mean colour #{:02x}{:02x}{:02x}. \
         The test server describes every image this way. No. 3 is the number of sentences.",
        f64::from(width * height) / 1e6,
        mean[0],
        mean[1],
        mean[2]
    )
}

/// The image of a request body, decoded.
fn request_image(body: &serde_json::Value) -> Result<image::RgbImage, String> {
    let content = body["messages"][0]["content"]
        .as_array()
        .ok_or("messages[0].content is not a list of parts")?;
    let url = content
        .iter()
        .find_map(|part| part["image_url"]["url"].as_str())
        .ok_or("no image_url part")?;
    if !content.iter().any(|part| part["type"] == "text") {
        return Err("no text part".into());
    }
    let data = url
        .split_once(";base64,")
        .filter(|(head, _)| head.starts_with("data:image/"))
        .map(|(_, data)| data)
        .ok_or("image_url is not a base64 data URL")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("bad base64: {e}"))?;
    image::load_from_memory(&bytes)
        .map(|i| i.to_rgb8())
        .map_err(|e| format!("cannot identify image file: {e}"))
}

async fn handle(state: Arc<State>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().trim_start_matches('/');
    let Some((scenario, route)) = path.split_once("/v1/") else {
        return error(StatusCode::NOT_FOUND, "not an OpenAI route");
    };
    let scenario = scenario.to_owned();
    match (method, route) {
        (Method::GET, "models") => {
            return axum::Json(
                json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]}),
            )
            .into_response();
        }
        (Method::POST, "chat/completions") => {}
        _ => return error(StatusCode::NOT_FOUND, "unknown route"),
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    if request["model"] != MODEL {
        return error(
            StatusCode::NOT_FOUND,
            &format!("model {} does not exist", request["model"]),
        );
    }
    if scenario == "instant" {
        return completion("A photo. Served instantly.", "stop");
    }
    // The n-th request (from 1) for this image in this scenario.
    let nth = {
        let hash = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            h.finish()
        };
        let mut seen = state.seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry((scenario.clone(), hash)).or_insert(0);
        *n += 1;
        *n
    };
    let parts: Vec<&str> = scenario.split('/').collect();
    match parts.as_slice() {
        ["slow", ms] => {
            let ms = ms.parse().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        ["flaky", n] if nth <= n.parse().unwrap_or(1) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "engine overloaded");
        }
        ["rate-limited"] if nth == 1 => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        ["malformed"] => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"choices\": [{\"mess",
            )
                .into_response();
        }
        ["malformed-once"] if nth == 1 => {
            return axum::Json(json!({"choices": []})).into_response();
        }
        ["down"] => return error(StatusCode::SERVICE_UNAVAILABLE, "no engine"),
        ["huge"] => return completion(&"a ".repeat(3 << 20), "stop"),
        ["hang"] => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    let image = match request_image(&request) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mut sum = [0u64; 3];
    for p in image.pixels() {
        for c in 0..3 {
            sum[c] += u64::from(p[c]);
        }
    }
    let n = u64::from(image.width() * image.height()).max(1);
    let mean = sum.map(|s| (s / n) as u8);
    let text = describe(image.width(), image.height(), mean);
    if scenario == "truncated" {
        let cut: String = text
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        return completion(&cut, "length");
    }
    completion(&text, "stop")
}
