//! A client for the OpenAI chat-completions protocol, which vLLM, SGLang, llama.cpp's server and
//! ollama all serve under `/v1`: one image (a base64 data URL) and one prompt per request,
//! retried with exponential backoff and jitter on the answers that mean "later" (429, 5xx,
//! timeouts, dropped connections, malformed bodies), honouring `Retry-After`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

/// How a caption request is made and retried.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientOptions {
    /// Base URL of the server's OpenAI API, e.g. `http://127.0.0.1:8000/v1`.
    pub endpoint: String,
    /// Bearer token, if the server wants one (never written to any output).
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Whole-request limit: connecting, generating and reading the answer.
    pub timeout: Duration,
    /// Attempts after the first for answers that mean "later".
    pub max_retries: u32,
    /// First backoff; it doubles per attempt up to `max_backoff`, with full jitter.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A forward proxy for the requests; None goes direct whatever `HTTP_PROXY` says (the
    /// token and the images must not go to a proxy the user did not name, least of all for a
    /// server on loopback). Not written to any output: it may hold a password.
    #[serde(skip)]
    pub proxy: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            endpoint: "http://127.0.0.1:8000/v1".into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            max_retries: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            proxy: None,
        }
    }
}

/// What the model is asked, the same for every image of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prompt {
    /// The served model's name (`--served-model-name` in vLLM, the alias in llama.cpp).
    pub model: String,
    pub text: String,
    pub max_tokens: u32,
    pub temperature: f64,
}

/// The paper's prompt (Section 4 and Appendix: stage II long captions).
pub const PAPER_PROMPT: &str = "Describe this image in as much detail as possible";

/// The largest answer read: a caption of a few hundred tokens is a few kilobytes of JSON; a
/// server (or something posing as one) that sends more is cut off rather than buffered.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The longest `Retry-After` obeyed; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// A finished answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    /// `stop` when the model finished, `length` when `max_tokens` cut it off.
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
}

/// Why a request gave no caption, after its retries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The server refused this image (400, 413, 415, 422) or kept answering nonsense: the
    /// sample is recorded as failed and not asked again.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Still failing after every retry (timeouts, 429, 5xx, refused connections): the sample
    /// stays open and a re-run asks again.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// The request can never succeed with these settings (401, 403, 404: wrong key, endpoint or
    /// model): the run stops.
    #[error("{0}")]
    Fatal(String),
}

/// A caption request's answer with how it was obtained.
#[derive(Debug, Clone)]
pub struct Answer {
    pub result: Result<Completion, RequestError>,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// One attempt's outcome, before the retry decision.
enum Attempt {
    Done(Completion),
    Retry {
        reason: String,
        after: Option<Duration>,
        malformed: bool,
    },
    Rejected(String),
    Fatal(String),
}

#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    options: ClientOptions,
    url: String,
}

/// The image's MIME type from its webdataset extension.
pub fn mime_type(ext: &str) -> &'static str {
    match ext {
        "png" => "image/png",
        "webp" => "image/webp",
        _ => "image/jpeg",
    }
}

impl ChatClient {
    pub fn new(options: ClientOptions) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(1024);
        let http = match &options.proxy {
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy)?),
            None => builder.no_proxy(),
        }
        .build()?;
        let url = format!(
            "{}/chat/completions",
            options.endpoint.trim_end_matches('/')
        );
        Ok(ChatClient { http, options, url })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Checks that the server answers and serves `model` (`GET /models`). Servers without that
    /// route (404) pass; a server that lists models without this one is an error that names
    /// the ones it has.
    pub async fn check_model(&self, model: &str) -> Result<(), RequestError> {
        let url = format!("{}/models", self.options.endpoint.trim_end_matches('/'));
        let response = self
            .authorized(self.http.get(&url))
            .send()
            .await
            .map_err(|e| RequestError::Fatal(format!("cannot reach {url}: {}", chain(&e))))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        if !status.is_success() {
            return Err(RequestError::Fatal(format!("{url} answered {status}")));
        }
        #[derive(Deserialize)]
        struct Models {
            data: Vec<ModelEntry>,
        }
        #[derive(Deserialize)]
        struct ModelEntry {
            id: String,
        }
        let models: Models = response
            .json()
            .await
            .map_err(|e| RequestError::Fatal(format!("{url}: not a model list: {e}")))?;
        if models.data.iter().any(|m| m.id == model) {
            Ok(())
        } else {
            let served: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
            Err(RequestError::Fatal(format!(
                "{url} does not serve model {model:?}; it serves {served:?}"
            )))
        }
    }

    /// Captions one image, retrying as [`ClientOptions`] says.
    pub async fn caption(&self, prompt: &Prompt, image_ext: &str, image: &[u8]) -> Answer {
        let started = Instant::now();
        let data_url = format!(
            "data:{};base64,{}",
            mime_type(image_ext),
            base64::engine::general_purpose::STANDARD.encode(image)
        );
        let body = json!({
            "model": prompt.model,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt.text},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }],
            "max_tokens": prompt.max_tokens,
            "temperature": prompt.temperature,
        });
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (reason, after, malformed) = match self.attempt(&body).await {
                Attempt::Done(c) => return self.answer(Ok(c), attempts, started),
                Attempt::Rejected(m) => {
                    return self.answer(Err(RequestError::Rejected(m)), attempts, started);
                }
                Attempt::Fatal(m) => {
                    return self.answer(Err(RequestError::Fatal(m)), attempts, started);
                }
                Attempt::Retry {
                    reason,
                    after,
                    malformed,
                } => (reason, after, malformed),
            };
            if attempts > self.options.max_retries {
                // A server that answers every time, but never with a caption, will not
                // change its mind on a re-run: that sample is rejected, not left open.
                let error = if malformed {
                    RequestError::Rejected(reason)
                } else {
                    RequestError::Unavailable {
                        attempts,
                        last: reason,
                    }
                };
                return self.answer(Err(error), attempts, started);
            }
            tokio::time::sleep(self.backoff(attempts, after)).await;
        }
    }

    fn answer(
        &self,
        result: Result<Completion, RequestError>,
        attempts: u32,
        started: Instant,
    ) -> Answer {
        Answer {
            result,
            attempts,
            elapsed: started.elapsed(),
        }
    }

    /// Full jitter (a uniform draw below the exponential bound) spreads the retries of many
    /// concurrent requests; a server's `Retry-After` is a floor (up to [`MAX_RETRY_AFTER`]), as
    /// the server knows better than our exponent when it will take work again.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self
            .options
            .base_backoff
            .saturating_mul(1 << attempt.min(20).saturating_sub(1))
            .min(self.options.max_backoff);
        let jittered = cap.mul_f64(fastrand::f64());
        match retry_after {
            Some(after) => after.min(MAX_RETRY_AFTER).max(jittered),
            None => jittered,
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.options.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn attempt(&self, body: &serde_json::Value) -> Attempt {
        let response = match self
            .authorized(self.http.post(&self.url))
            .json(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: chain(&e),
                    after: None,
                    malformed: false,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match read_limited(response, MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Attempt::Retry {
                    reason: format!("{status}, answer over {MAX_ANSWER_BYTES} bytes"),
                    after: None,
                    malformed: true,
                };
            }
            Err(BodyError::Cut(e)) => {
                return Attempt::Retry {
                    reason: format!("{status}, body cut off: {}", chain(&e)),
                    after: retry_after,
                    malformed: false,
                };
            }
        };
        let message = || {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().take(300).collect();
            format!("{status}: {text}")
        };
        match status.as_u16() {
            200..=299 => match parse_completion(&bytes) {
                Ok(c) => Attempt::Done(c),
                Err(problem) => Attempt::Retry {
                    reason: format!("malformed answer: {problem}"),
                    after: None,
                    malformed: true,
                },
            },
            401 | 403 | 404 => Attempt::Fatal(format!("{} answered {}", self.url, message())),
            408 | 409 | 425 | 429 | 500..=599 => Attempt::Retry {
                reason: message(),
                after: retry_after,
                malformed: false,
            },
            _ => Attempt::Rejected(message()),
        }
    }
}

enum BodyError {
    TooLarge,
    Cut(reqwest::Error),
}

/// The response body, refused as soon as it passes `limit` bytes (declared or streamed).
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Cut)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error and its sources on one line (reqwest hides the cause: "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The caption out of a chat-completions body: the first choice's message content, which must
/// be non-empty text.
pub fn parse_completion(body: &[u8]) -> Result<Completion, String> {
    #[derive(Deserialize)]
    struct Body {
        choices: Vec<Choice>,
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Choice {
        message: Message,
        finish_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct Message {
        content: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Usage {
        prompt_tokens: Option<u32>,
        completion_tokens: Option<u32>,
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let choice = body.choices.into_iter().next().ok_or("no choices")?;
    // Content is a string, or (some servers) a list of text parts.
    let text = match choice.message.content {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => return Err("no message content".into()),
    };
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err("empty caption".into());
    }
    Ok(Completion {
        text,
        finish_reason: choice.finish_reason,
        prompt_tokens: body.usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: body.usage.as_ref().and_then(|u| u.completion_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_read_from_the_protocols_shapes() {
        let c = parse_completion(
            br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":" A cat. "},"finish_reason":"stop"}],"usage":{"prompt_tokens":600,"completion_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(c.text, "A cat.");
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!((c.prompt_tokens, c.completion_tokens), (Some(600), Some(3)));
        let parts = parse_completion(
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"A "},{"type":"text","text":"dog."}]},"finish_reason":"length"}]}"#,
        )
        .unwrap();
        assert_eq!(parts.text, "A dog.");
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#,
            br#"{"choices":[{"message":{"content":"   "},"finish_reason":"stop"}]}"#,
        ] {
            assert!(
                parse_completion(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_respects_retry_after() {
        let client = ChatClient::new(ClientOptions {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..ClientOptions::default()
        })
        .unwrap();
        for attempt in 1..30 {
            let d = client.backoff(attempt, None);
            let bound = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)));
            assert!(d <= bound.min(Duration::from_secs(2)), "{attempt}: {d:?}");
        }
        let d = client.backoff(1, Some(Duration::from_secs(1)));
        assert!(d >= Duration::from_secs(1));
        let d = client.backoff(1, Some(Duration::from_secs(3600)));
        assert_eq!(d, MAX_RETRY_AFTER);
    }
}
