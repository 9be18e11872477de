//! A small HTTP/1.1 server on loopback for the download tests, the demo and the benchmark:
//! real image files under `/img/NAME`, and the hostile cases a crawler meets on the internet.
//! It speaks plain HTTP over a real socket (one request per connection), so every byte the
//! client sees is one a real server could send. It is also a forward proxy that records what it
//! was asked: a request for an absolute URL (`GET http://host/img/NAME`, what a client
//! configured with this server as its proxy sends) is answered from the path below and its URL
//! kept in [`LoopbackServer::proxied`].
//!
//! | path | response |
//! | --- | --- |
//! | `/img/NAME` | the file, `Content-Type` from its extension |
//! | `/status/CODE` | that status, empty body |
//! | `/flaky/N/NAME` | 503 for the first N requests, then the file |
//! | `/hang` | headers never come |
//! | `/drip` | a valid header, then one body byte per second |
//! | `/truncated` | `Content-Length: 100000`, 1,000 bytes, then the connection closes |
//! | `/html` | `text/html` page |
//! | `/corrupt.jpg` | `image/jpeg` that is not a JPEG |
//! | `/bomb.png` | a 100,000 x 100,000 PNG header (a decompression bomb) |
//! | `/loop` | redirects to itself |
//! | `/redirect/N/NAME` | N redirects, then `/img/NAME` |
//! | `/to/HOST:PORT/PATH` | a redirect to `http://HOST:PORT/PATH` |
//! | `/slow/MS/NAME` | the file after MS milliseconds |
//! | `/noai/NAME` | the file with `X-Robots-Tag: noai` |
//! | `/huge` | `Content-Length` of 1 GiB |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The bundled photos (scikit-image's astronaut, chelsea and coffee, 160 x 160, shared with the
/// metric tests), each as `NAME.png` and as `NAME.jpg` (quality 75): the demo's and the tests'
/// real images.
pub fn bundled_photos() -> HashMap<String, Vec<u8>> {
    let pngs: [(&str, &[u8]); 3] = [
        (
            "astronaut",
            include_bytes!("../../evaluate/tests/fixtures/astronaut_original.png"),
        ),
        (
            "chelsea",
            include_bytes!("../../evaluate/tests/fixtures/chelsea_original.png"),
        ),
        (
            "coffee",
            include_bytes!("../../evaluate/tests/fixtures/coffee_original.png"),
        ),
    ];
    let mut files = HashMap::new();
    for (name, png) in pngs {
        if let Ok(img) = image::load_from_memory(png) {
            let mut jpeg = Vec::new();
            if img
                .into_rgb8()
                .write_to(
                    &mut std::io::Cursor::new(&mut jpeg),
                    image::ImageFormat::Jpeg,
                )
                .is_ok()
            {
                files.insert(format!("{name}.jpg"), jpeg);
            }
        }
        files.insert(format!("{name}.png"), png.to_vec());
    }
    files
}

pub struct LoopbackServer {
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
    /// The absolute URLs asked of it as a proxy, in order.
    pub proxied: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Files {
    by_name: HashMap<String, Arc<Vec<u8>>>,
    flaky: std::sync::Mutex<HashMap<String, u32>>,
    proxied: Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoopbackServer {
    /// Serves `files` (name -> bytes) on a free loopback port.
    pub async fn start(files: HashMap<String, Vec<u8>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let proxied = Arc::new(std::sync::Mutex::new(Vec::new()));
        let files = Arc::new(Files {
            by_name: files.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            flaky: Default::default(),
            proxied: proxied.clone(),
        });
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let files = files.clone();
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = serve(stream, &files).await;
                });
            }
        });
        Ok(LoopbackServer {
            addr,
            requests,
            proxied,
            task,
        })
    }

    /// Serves every regular file of `dir` by name.
    pub async fn serve_dir(dir: &Path) -> std::io::Result<Self> {
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.insert(
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read(entry.path())?,
                );
            }
        }
        Self::start(files).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// `200 OK` with a file and its `Content-Type`, plus `extra` headers.
async fn send_file(
    stream: &mut TcpStream,
    name: &str,
    bytes: &[u8],
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let mut headers = vec![("Content-Type", content_type(name).to_string())];
    headers.extend(extra.iter().cloned());
    respond(stream, "200 OK", &headers, bytes).await
}

/// A well-formed PNG claiming 100,000 x 100,000 RGB pixels (30 GB decoded) in 65 bytes: an
/// IHDR, an IDAT holding a (short) zlib stream, and an IEND, each with a valid CRC.
pub fn bomb_png() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (&b"IHDR"[..], &ihdr[..]),
        (b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
        (b"IEND", &[]),
    ] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn serve(mut stream: TcpStream, files: &Files) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut target = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    if let Some(rest) = target.strip_prefix("http://") {
        // Asked as a proxy: remember the URL, answer from its path.
        let path = rest.find('/').map_or("/", |i| &rest[i..]).to_owned();
        files
            .proxied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target.clone());
        target = path;
    }
    // The query only makes URLs distinct; the path picks the response.
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let file = |name: &str| files.by_name.get(name).cloned();
    match parts.as_slice() {
        ["img", name] => match file(name) {
            Some(bytes) => send_file(&mut stream, name, &bytes, &[]).await,
            None => respond(&mut stream, "404 Not Found", &[], b"").await,
        },
        ["status", code] => {
            let line = format!("{code} Status");
            respond(&mut stream, &line, &[], b"").await
        }
        ["flaky", n, name] => {
            let failures: u32 = n.parse().unwrap_or(1);
            let seen = {
                let mut flaky = files.flaky.lock().unwrap_or_else(|e| e.into_inner());
                let count = flaky.entry(target.clone()).or_default();
                *count += 1;
                *count
            };
            match file(name) {
                Some(bytes) if seen > failures => send_file(&mut stream, name, &bytes, &[]).await,
                _ => respond(&mut stream, "503 Service Unavailable", &[], b"").await,
            }
        }
        ["hang"] => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        ["drip"] => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
                .await?;
            for _ in 0..100_000 {
                stream.write_all(&[0xff]).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
        }
        ["truncated"] => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
                .await?;
            stream.write_all(&[0xab; 1000]).await?;
            stream.shutdown().await
        }
        ["html"] => {
            respond(
                &mut stream,
                "200 OK",
                &[("Content-Type", "text/html; charset=utf-8".into())],
                b"<html><body>a page</body></html>",
            )
            .await
        }
        ["corrupt.jpg"] => {
            let mut bytes = vec![0xff, 0xd8, 0xff, 0xe0];
            bytes.extend((0..4000u32).map(|i| (i * 7919 % 251) as u8));
            respond(
                &mut stream,
                "200 OK",
                &[("Content-Type", "image/jpeg".into())],
                &bytes,
            )
            .await
        }
        ["bomb.png"] => {
            respond(
                &mut stream,
                "200 OK",
                &[("Content-Type", "image/png".into())],
                &bomb_png(),
            )
            .await
        }
        ["loop"] => {
            respond(
                &mut stream,
                "302 Found",
                &[("Location", "/loop".into())],
                b"",
            )
            .await
        }
        ["redirect", n, name] => {
            let n: u32 = n.parse().unwrap_or(0);
            let next = if n <= 1 {
                format!("/img/{name}")
            } else {
                format!("/redirect/{}/{name}", n - 1)
            };
            respond(&mut stream, "302 Found", &[("Location", next)], b"").await
        }
        ["slow", ms, name] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
            match file(name) {
                Some(bytes) => send_file(&mut stream, name, &bytes, &[]).await,
                None => respond(&mut stream, "404 Not Found", &[], b"").await,
            }
        }
        ["to", rest @ ..] => {
            let location = format!("http://{}", rest.join("/"));
            respond(&mut stream, "302 Found", &[("Location", location)], b"").await
        }
        ["noai", name] => match file(name) {
            Some(bytes) => {
                let robots = [("X-Robots-Tag", "noai".to_string())];
                send_file(&mut stream, name, &bytes, &robots).await
            }
            None => respond(&mut stream, "404 Not Found", &[], b"").await,
        },
        ["huge"] => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1073741824\r\n\r\n")
                .await?;
            stream.write_all(&[0u8; 4096]).await?;
            stream.shutdown().await
        }
        _ => respond(&mut stream, "404 Not Found", &[], b"").await,
    }
}

/// xorshift64*: seeded numbers for generated test and benchmark data, the same on every run
/// and every machine.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
