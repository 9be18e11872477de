//! Fetches images over http(s) with img2dataset's safeguards, and some of its own:
//!
//! - only `http` and `https` URLs; loopback, private, link-local and other non-public
//!   addresses are refused (for literal IPs, for every name as it resolves, and on every
//!   redirect) unless `allow_private_addresses` is set for tests and local mirrors;
//! - no proxy unless the config names one: `HTTP_PROXY` and friends, usual on cluster nodes,
//!   are ignored, because a proxy resolves and connects on our behalf where the resolver
//!   guard never sees the target. With a configured proxy the guard resolves each target
//!   (and each redirect) itself first and refuses it unless every address is public;
//! - a total deadline per attempt (a slow drip cannot hold a slot), a redirect limit, a body
//!   limit checked against `Content-Length` and again while streaming;
//! - retries with exponential backoff for transient failures only (timeouts, connection
//!   errors, truncated bodies, HTTP 408/429/5xx); a 404 is final;
//! - `X-Robots-Tag` opt-outs honoured as img2dataset does (`noai`, `noimageai`, `noindex`,
//!   `noimageindex`, globally or for our user-agent token);
//! - responses that declare a text type are refused as not an image.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::redirect::Policy;

use crate::config::IngestConfig;

#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub timeout: Duration,
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    pub max_redirects: usize,
    pub max_body_bytes: u64,
    pub user_agent_token: String,
    pub disallowed_header_directives: Vec<String>,
    pub allow_private_addresses: bool,
    /// A forward proxy for every download (`http://host:port`, credentials in the URL); None
    /// goes direct whatever the environment says.
    pub proxy: Option<String>,
    /// Requests in flight at once across everything this downloader fetches (0: no bound). A
    /// download waiting out its backoff between attempts holds no slot.
    pub max_in_flight: usize,
}

impl DownloadOptions {
    pub fn from_config(c: &IngestConfig) -> Self {
        DownloadOptions {
            timeout: Duration::from_secs_f64(c.timeout_secs),
            retries: c.retries,
            backoff: Duration::from_millis(500),
            max_redirects: c.max_redirects as usize,
            max_body_bytes: c.max_body_bytes,
            user_agent_token: c.user_agent_token.clone(),
            disallowed_header_directives: c
                .disallowed_header_directives
                .iter()
                .map(|d| d.to_lowercase())
                .collect(),
            allow_private_addresses: c.allow_private_addresses,
            proxy: (!c.proxy.is_empty()).then(|| c.proxy.clone()),
            max_in_flight: c.concurrency as usize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DownloadError {
    #[error("refused URL: {0}")]
    Refused(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("timed out after {0:.1} s")]
    Timeout(f64),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("redirect: {0}")]
    Redirect(String),
    #[error("body over {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("body ended early: {0}")]
    Truncated(String),
    #[error("opted out by X-Robots-Tag: {0}")]
    OptedOut(String),
    #[error("not an image: Content-Type {0}")]
    NotAnImage(String),
    #[error("{0}")]
    Other(String),
}

impl DownloadError {
    /// Worth another attempt: the same request may well succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Timeout(_) | DownloadError::Connect(_) | DownloadError::Truncated(_) => {
                true
            }
            DownloadError::Status(code) => matches!(code, 408 | 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// The downloaded bytes and what the attempt cost.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub bytes: Bytes,
    pub final_url: String,
    pub attempts: u32,
}

pub struct Downloader {
    client: reqwest::Client,
    options: DownloadOptions,
    /// `options.max_in_flight` permits, handed out in the order they were asked for (tokio's
    /// semaphore is fair), so that rows of the next shard queue behind the last one's.
    slots: Option<tokio::sync::Semaphore>,
}

/// The honest user agent: who we are, where to read about us, and the token X-Robots-Tag
/// directives can name.
pub fn user_agent(token: &str) -> String {
    format!(
        "{token}/{} (+https://github.com/llamagen-rs/llamagen-rs; image-dataset downloader; honours X-Robots-Tag noai)",
        env!("CARGO_PKG_VERSION")
    )
}

impl Downloader {
    pub fn new(options: DownloadOptions) -> Result<Self, DownloadError> {
        let allow = options.allow_private_addresses;
        // Redirects are followed in `attempt`, where each hop's target can be checked with an
        // async lookup; reqwest's own policy is synchronous.
        let builder = reqwest::Client::builder()
            .user_agent(user_agent(&options.user_agent_token))
            .redirect(Policy::none())
            .connect_timeout(options.timeout)
            .pool_max_idle_per_host(4);
        let builder = match &options.proxy {
            // Connections go to the proxy (usually a private address): the resolver guard
            // cannot apply, so `attempt` checks every target before it is sent.
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy).map_err(|e| {
                // Without the URL: it may hold the proxy's password.
                DownloadError::Other(format!(
                    "ingest.proxy is not a usable proxy URL: {}",
                    e.without_url()
                ))
            })?),
            None => builder
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver { allow })),
        };
        let client = builder
            .build()
            .map_err(|e| DownloadError::Other(format!("building the HTTP client: {e}")))?;
        let slots =
            (options.max_in_flight > 0).then(|| tokio::sync::Semaphore::new(options.max_in_flight));
        Ok(Downloader {
            client,
            options,
            slots,
        })
    }

    /// Scheme and literal addresses always; with a proxy, also the addresses the name
    /// resolves to here (all of them must be public: which one the proxy picks is its choice).
    async fn check_target(&self, url: &url::Url) -> Result<(), DownloadError> {
        let allow = self.options.allow_private_addresses;
        check_url(url, allow)?;
        let (Some(_), false, Some(url::Host::Domain(host))) =
            (&self.options.proxy, allow, url.host())
        else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| {
                DownloadError::Refused(format!(
                    "{host} does not resolve here ({e}), so the guard cannot check it before the proxy fetches it"
                ))
            })?
            .collect();
        match addrs.iter().find(|a| !is_public(a.ip())) {
            Some(private) => Err(DownloadError::Refused(format!(
                "{host} resolves to {}, not a public address (allow_private_addresses is off)",
                private.ip()
            ))),
            None if addrs.is_empty() => Err(DownloadError::Refused(format!(
                "{host} resolves to no address"
            ))),
            None => Ok(()),
        }
    }

    /// Downloads `url`, retrying transient failures with backoff.
    pub async fn fetch(&self, url: &str) -> Result<Downloaded, DownloadError> {
        let parsed = url::Url::parse(url.trim())
            .map_err(|e| DownloadError::Refused(format!("{url:?} is not a URL: {e}")))?;
        self.check_target(&parsed).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = {
                let _slot = match &self.slots {
                    Some(slots) => Some(slots.acquire().await.map_err(|_| {
                        DownloadError::Other("the downloader is shutting down".into())
                    })?),
                    None => None,
                };
                tokio::time::timeout(self.options.timeout, self.attempt(parsed.clone()))
                    .await
                    .unwrap_or(Err(DownloadError::Timeout(
                        self.options.timeout.as_secs_f64(),
                    )))
            };
            match result {
                Ok((bytes, final_url)) => {
                    return Ok(Downloaded {
                        bytes,
                        final_url,
                        attempts: attempt,
                    });
                }
                Err(e) if e.is_transient() && attempt <= self.options.retries => {
                    tokio::time::sleep(backoff(self.options.backoff, attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request and the redirects it leads to (each target checked), then the body.
    async fn attempt(&self, url: url::Url) -> Result<(Bytes, String), DownloadError> {
        let max_redirects = self.options.max_redirects;
        let mut visited = vec![url.clone()];
        let mut url = url;
        let response = loop {
            let response = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(classify)?;
            if !response.status().is_redirection() {
                break response;
            }
            let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
                break response;
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| DownloadError::Redirect(format!("bad Location {location:?}")))?;
            if visited.contains(&next) {
                return Err(DownloadError::Redirect(format!("redirect loop at {next}")));
            }
            if visited.len() > max_redirects {
                return Err(DownloadError::Redirect(format!(
                    "more than {max_redirects} redirects"
                )));
            }
            self.check_target(&next).await?;
            visited.push(next.clone());
            url = next;
        };
        let status = response.status();
        if !status.is_success() {
            return Err(DownloadError::Status(status.as_u16()));
        }
        if let Some(directive) = opted_out(
            response.headers(),
            &self.options.user_agent_token,
            &self.options.disallowed_header_directives,
        ) {
            return Err(DownloadError::OptedOut(directive));
        }
        if let Some(kind) = response.headers().get(CONTENT_TYPE) {
            let kind = kind.to_str().unwrap_or("").to_lowercase();
            if kind.starts_with("text/") || kind.contains("json") || kind.contains("html") {
                return Err(DownloadError::NotAnImage(kind));
            }
        }
        let limit = self.options.max_body_bytes;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(DownloadError::TooLarge { limit });
        }
        let final_url = response.url().to_string();
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| DownloadError::Truncated(chain(&e)))?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(DownloadError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((Bytes::from(body), final_url))
    }
}

/// The wait after failed attempt `attempt` (1-based): `first`, doubled per attempt, at most a
/// minute (no overflow however many retries are configured).
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(Duration::from_secs(60))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s += &format!(": {inner}");
        source = inner.source();
    }
    s
}

fn classify(e: reqwest::Error) -> DownloadError {
    let text = chain(&e);
    if text.contains(REFUSED_MARK) {
        let reason = text
            .split(REFUSED_MARK)
            .nth(1)
            .unwrap_or_default()
            .trim_start_matches(": ")
            .to_owned();
        return DownloadError::Refused(reason);
    }
    if e.is_redirect() {
        DownloadError::Redirect(text)
    } else if e.is_timeout() {
        DownloadError::Timeout(0.0)
    } else if e.is_connect() || e.is_request() {
        DownloadError::Connect(text)
    } else if e.is_body() || e.is_decode() {
        DownloadError::Truncated(text)
    } else {
        DownloadError::Other(text)
    }
}

const REFUSED_MARK: &str = "[address refused]";

/// Scheme and literal-address checks; names are checked as they resolve.
pub fn check_url(url: &url::Url, allow_private: bool) -> Result<(), DownloadError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DownloadError::Refused(format!(
            "scheme {:?} (only http and https)",
            url.scheme()
        )));
    }
    let ip = match url.host() {
        None => return Err(DownloadError::Refused(format!("{url} has no host"))),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(_)) => return Ok(()),
    };
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(DownloadError::Refused(format!(
            "{ip} is not a public address (allow_private_addresses is off)"
        )))
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast, unspecified or reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // Addresses that embed an IPv4 one reach it through a translator or a tunnel:
            // they are as public as the address they carry (NAT64 64:ff9b::/96, 6to4
            // 2002::/16, IPv4-compatible ::a.b.c.d); Teredo (2001::/32) hides its client's
            // address, so it is refused.
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0; 6] && s[6] != 0 {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0)
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1))
        }
    }
}

/// Resolves names with the system resolver and keeps public addresses only (unless allowed),
/// so a public name that points at 127.0.0.1 or 10.x is refused too.
struct GuardedResolver {
    allow: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allow || is_public(a.ip()))
                .collect();
            if usable.is_empty() {
                let listed: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                let err = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{REFUSED_MARK}: {host} resolves to non-public addresses only ({}); allow_private_addresses is off",
                        listed.join(", ")
                    ),
                );
                return Err(Box::new(err) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

/// The directive that opts this response out, if any: `X-Robots-Tag: noai` applies to every
/// crawler, `X-Robots-Tag: TOKEN: noai` to the one whose token it names (img2dataset's rule).
pub fn opted_out(headers: &HeaderMap, token: &str, disallowed: &[String]) -> Option<String> {
    for value in headers.get_all("x-robots-tag") {
        let Ok(value) = value.to_str() else { continue };
        let (agent, directives) = match value.split_once(':') {
            Some((agent, rest)) => (Some(agent.trim().to_lowercase()), rest),
            None => (None, value),
        };
        if agent.as_deref().is_some_and(|a| a != token.to_lowercase()) {
            continue;
        }
        for directive in directives.split(',') {
            let d = directive.trim().to_lowercase();
            if disallowed.contains(&d) {
                return Some(d);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn only_public_addresses_pass() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "192.0.0.8",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a00:1::5",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "::127.0.0.1",
            "::10.1.2.3",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_without_overflow() {
        let first = Duration::from_millis(500);
        assert_eq!(backoff(first, 1), first);
        assert_eq!(backoff(first, 3), Duration::from_secs(2));
        for attempt in [8, 33, 64, u32::MAX] {
            assert_eq!(
                backoff(first, attempt),
                Duration::from_secs(60),
                "{attempt}"
            );
        }
    }

    #[test]
    fn schemes_and_literal_private_hosts_are_refused() {
        let check = |u: &str, allow| check_url(&url::Url::parse(u).unwrap(), allow);
        assert!(matches!(
            check("file:///etc/passwd", true),
            Err(DownloadError::Refused(_))
        ));
        assert!(matches!(
            check("ftp://example.com/a.jpg", false),
            Err(DownloadError::Refused(_))
        ));
        assert!(matches!(
            check("http://127.0.0.1/a.jpg", false),
            Err(DownloadError::Refused(_))
        ));
        assert!(matches!(
            check("http://[::1]/a.jpg", false),
            Err(DownloadError::Refused(_))
        ));
        assert!(check("http://127.0.0.1/a.jpg", true).is_ok());
        assert!(check("https://example.com/a.jpg", false).is_ok());
    }

    #[test]
    fn robots_tags_follow_img2dataset() {
        let disallowed: Vec<String> = ["noai", "noimageai", "noindex", "noimageindex"]
            .map(String::from)
            .to_vec();
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-robots-tag", HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let check = |v: &[&str]| opted_out(&headers(v), "llamagen-rs", &disallowed);
        assert_eq!(check(&["noai"]), Some("noai".into()));
        assert_eq!(check(&["nofollow, NoImageAI"]), Some("noimageai".into()));
        assert_eq!(check(&["llamagen-rs: noindex"]), Some("noindex".into()));
        assert_eq!(check(&["otherbot: noai"]), None);
        assert_eq!(check(&["nofollow"]), None);
        assert_eq!(check(&[]), None);
    }
}
