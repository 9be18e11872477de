//! Latency of the leaderboard under a fixed request rate.
//!
//! `cargo bench -p llamagen-dashboard --bench leaderboard_load [-- --rate 200 --seconds 20]`
//!
//! Seeds 100,000 evaluations (50 models x 100 checkpoints x 20 guidance scales, 500,000 metric
//! rows) into a fresh database, serves the dashboard on loopback through its read-only role,
//! and sends requests open-loop at a fixed rate: each request is timed from when it was due,
//! not from when it was sent, so a stalled server cannot hide its queue (no coordinated
//! omission). First the leaderboard page and its API as first opened (the goal's subject),
//! then a mix of filtered and re-sorted views; after each, the same leaderboard SQL run
//! directly on the pool at the same rate, for reference: the gap is the server's own cost.
//! Then the comparison of six models, beside the page of one model at the same rate. Last, if `wrk` is installed, wrk drives the page closed-loop as an independent load tool.

use std::time::{Duration, Instant};

use llamagen_dashboard::params::LeaderboardQuery;
use llamagen_dashboard::testing::seed;
use llamagen_dashboard::{AppState, ReaderLogin, connect_reader, queries};
use llamagen_store::testing::TestDatabase;

struct Options {
    rate: f64,
    /// Rate of the filtered mix (its hard case costs ~30 ms of database time).
    mix_rate: f64,
    /// Rate of the comparison page and of one model's page beside it.
    compare_rate: f64,
    seconds: f64,
    models: i64,
    checkpoints: i64,
    scales: usize,
    serve_only: bool,
}

fn options() -> Options {
    let mut o = Options {
        rate: 200.0,
        mix_rate: 50.0,
        compare_rate: 2.0,
        seconds: 20.0,
        models: 49,
        checkpoints: 100,
        scales: 20,
        serve_only: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--rate" => o.rate = value().parse().expect("--rate N"),
            "--mix-rate" => o.mix_rate = value().parse().expect("--mix-rate N"),
            "--compare-rate" => o.compare_rate = value().parse().expect("--compare-rate N"),
            "--seconds" => o.seconds = value().parse().expect("--seconds N"),
            "--checkpoints" => o.checkpoints = value().parse().expect("--checkpoints N"),
            // Seed, print the URL and serve until killed (to look at the pages).
            "--serve-only" => {
                o.serve_only = true;
                i += 1;
                continue;
            }
            // cargo bench passes --bench; anything else unknown is ignored likewise.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
    errors: usize,
    sent: usize,
}

fn summarise(mut latencies: Vec<f64>, errors: usize) -> Summary {
    latencies.sort_by(f64::total_cmp);
    Summary {
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or(f64::NAN),
        errors,
        sent: latencies.len() + errors,
    }
}

/// Calls `request(i)` at `rate` per second for `seconds`, each on its own task; returns the
/// latencies in milliseconds (from the due time) of the successes and the failure count.
async fn open_loop<F, Fut>(rate: f64, seconds: f64, request: F) -> (Vec<f64>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let total = (rate * seconds) as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let work = request(i);
        tasks.push(tokio::spawn(async move {
            let ok = work.await;
            (ok, due.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((true, ms)) => latencies.push(ms),
            _ => errors += 1,
        }
    }
    (latencies, errors)
}

/// The goal's subject: the leaderboard page and its API as a visitor first sees them.
const DEFAULT_PATHS: [&str; 2] = ["/", "/api/leaderboard"];

/// Filtered and re-sorted views. The first is the hard case: it filters on FID and sorts by
/// IS, which run against each other (high guidance raises IS and FID together), so the index
/// walk in IS order discards ~30,000 rows before it fills a page.
const FILTERED_PATHS: [&str; 4] = [
    "/?benchmark=imagenet256-c2i&kind=generator&metric=fid&max=12&sort=inception_score",
    "/api/leaderboard?model=XL&sort=step&page=3",
    "/?sort=cfg&order=asc&page=20",
    "/api/leaderboard?kind=tokenizer&sort=rfid",
];

/// An independent load tool as a cross-check: wrk, closed loop (8 connections as fast as the
/// server answers), so it reports the page's maximum throughput and the latency at it.
fn wrk(base: &str, seconds: f64) -> Option<String> {
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            "-c8",
            &format!("-d{}s", seconds.ceil() as u64),
            "--latency",
        ])
        .arg(format!("{base}/"))
        .output()
        .ok()?;
    if !out.status.success() {
        return Some(format!(
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let pick = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    Some(format!(
        "wrk 4 (1 thread, 8 connections, closed loop) on /: {} requests/s, p50 {}, p99 {}, {} non-2xx",
        pick("Requests/sec:"),
        pick("50%"),
        pick("99%"),
        text.lines()
            .find(|l| l.contains("Non-2xx"))
            .and_then(|l| l.split(':').nth(1))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| "0".into())
    ))
}

#[tokio::main]
async fn main() {
    let o = options();
    let db = TestDatabase::new().await;
    let scales: Vec<f64> = (0..o.scales).map(|i| 1.0 + 0.25 * i as f64).collect();
    let t = Instant::now();
    let seeded = seed(&db.pool, o.models, o.checkpoints, &scales, None)
        .await
        .expect("seeding");
    // What autovacuum would have done by the time anyone looks: the seeding rewrote every row
    // once through the triggers.
    sqlx::query("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .expect("VACUUM ANALYZE");
    println!(
        "seeded {} evaluations ({} models) in {:.1} s",
        seeded.evaluations,
        seeded.models.len(),
        t.elapsed().as_secs_f64()
    );
    let pool = connect_reader(ReaderLogin::SetRole(db.options.clone()), 16)
        .await
        .expect("reader pool");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(llamagen_dashboard::serve(
        listener,
        AppState::new(pool.clone()),
        std::future::pending(),
    ));
    if o.serve_only {
        println!("serving {base}/ (Ctrl-C stops); database {}", db.url());
        std::future::pending::<()>().await;
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // Warm the server's connections and PostgreSQL's caches.
    for path in DEFAULT_PATHS.iter().chain(&FILTERED_PATHS) {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.bytes().await.unwrap();
    }
    println!(
        "\nopen loop, {} s per row; server, PostgreSQL and load share this machine's cores",
        o.seconds
    );
    let http = |paths: &'static [&'static str], rate: f64| {
        let client = client.clone();
        let base = base.clone();
        open_loop(rate, o.seconds, move |i| {
            let url = format!("{base}{}", paths[i % paths.len()]);
            let client = client.clone();
            async move {
                match client.get(url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        })
    };
    let sql = |paths: &'static [&'static str], rate: f64| {
        let parsed: Vec<LeaderboardQuery> = paths
            .iter()
            .map(|p| {
                let uri: axum::http::Uri = format!("http://x{p}").parse().unwrap();
                axum::extract::Query::<LeaderboardQuery>::try_from_uri(&uri)
                    .unwrap()
                    .0
            })
            .collect();
        let pool = pool.clone();
        open_loop(rate, o.seconds, move |i| {
            let pool = pool.clone();
            let q = parsed[i % parsed.len()].clone();
            async move { queries::leaderboard(&pool, &q).await.is_ok() }
        })
    };
    // Six models side by side against the page of one of them, at the same rate.
    let ids: Vec<String> = seeded.models[..6]
        .iter()
        .map(|(id, _)| format!("model={id}"))
        .collect();
    let compare: &'static [&'static str] = Box::leak(Box::new([&*Box::leak(
        format!("/compare?{}", ids.join("&")).into_boxed_str(),
    )]));
    let one_model: &'static [&'static str] = Box::leak(Box::new([&*Box::leak(
        format!("/models/{}", seeded.models[0].0).into_boxed_str(),
    )]));
    for path in compare.iter().chain(one_model) {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let mut rows = Vec::new();
    let (l, e) = http(&DEFAULT_PATHS, o.rate).await;
    rows.push((
        format!("page + API at {}/s (HTTP)", o.rate),
        summarise(l, e),
    ));
    let (l, e) = sql(&DEFAULT_PATHS, o.rate).await;
    rows.push(("  their SQL alone".into(), summarise(l, e)));
    let (l, e) = http(&FILTERED_PATHS, o.mix_rate).await;
    rows.push((
        format!("filtered mix at {}/s (HTTP)", o.mix_rate),
        summarise(l, e),
    ));
    let (l, e) = sql(&FILTERED_PATHS, o.mix_rate).await;
    rows.push(("  its SQL alone".into(), summarise(l, e)));
    let (l, e) = http(compare, o.compare_rate).await;
    rows.push((
        format!("compare 6 models at {}/s (HTTP)", o.compare_rate),
        summarise(l, e),
    ));
    let (l, e) = http(one_model, o.compare_rate).await;
    rows.push(("  one model's page, same rate".into(), summarise(l, e)));

    println!(
        "\n{:<34} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "", "p50 ms", "p99 ms", "max ms", "sent", "errors"
    );
    for (name, s) in &rows {
        println!(
            "{name:<34} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>7}",
            s.p50, s.p99, s.max, s.sent, s.errors
        );
    }
    match wrk(&base, o.seconds) {
        Some(report) => println!("\n{report}"),
        None => {
            println!("\n(wrk not installed: `apt-get install wrk` adds a closed-loop cross-check)")
        }
    }
    let goal = &rows[0].1;
    println!(
        "\ngoal: p99 < 50 ms at 200 requests/s for the leaderboard and its API: {}",
        if goal.p99 < 50.0 && goal.errors == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    pool.close().await;
    db.drop_database().await;
}
