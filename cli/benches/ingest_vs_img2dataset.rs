//! Ingest wall time, CPU and memory, `llamagen ingest` against img2dataset on the same corpus,
//! in the same run, on this machine: `--urls` LAION-COCO-style rows (default 10,000) pointing at
//! six real photos (scikit-image's, 300 x 451 to 872 x 1000 JPEGs) served from loopback under
//! distinct URLs, both resizing to 256 x 256 center crops re-encoded at JPEG quality 95 into
//! webdataset shards of 1,000. `--hang-percent` of the URLs (default 2, spread evenly) never
//! answer, as dead hosts on the internet do: both sides wait out the same 10 s timeout and 2
//! retries. Both sides keep the same number of downloads in flight (`--in-flight`, default 128:
//! ours `concurrency = 128`; img2dataset one process per core, `128 / cores` threads each).
//!
//! ```text
//! cargo bench -p llamagen-cli --bench ingest_vs_img2dataset -- [--urls N] [--hang-percent P]
//!     [--in-flight N] [--open-shards N] [--img2dataset-venv DIR]
//! ```
//!
//! img2dataset 1.47.0 is installed from PyPI into its own virtualenv by
//! `scripts/bench_ingest.py install` (default `target/img2dataset-venv`). Peak memory is the
//! largest sum of resident memory over the benchmarked process and all its descendants,
//! sampled every 20 ms (img2dataset runs worker processes). CPU time is user + system time of
//! the process and every descendant it waited for (`getrusage(RUSAGE_CHILDREN)`); the loopback
//! server runs in the benchmark process, so neither side is charged for it. Our side's figure
//! is taken from a run that joins a prepared ingest (`--worker`), so the metadata filter and
//! the database start are outside the clock; img2dataset reads its parquet inside it (a few
//! milliseconds here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llamagen_ingest::reader::{MetaRow, write_metadata};
use llamagen_ingest::testing::LoopbackServer;
use llamagen_shards::stats::ShardStats;
use llamagen_store::testing::TestDatabase;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Resident memory (KiB) of `pid` and all its descendants.
fn tree_rss_kib(root: u32) -> u64 {
    let mut parent = BTreeMap::new();
    let mut rss = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("PPid:") {
                parent.insert(pid, v.trim().parse::<u32>().unwrap_or(0));
            } else if let Some(v) = line.strip_prefix("VmRSS:") {
                let kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                rss.insert(pid, kib);
            }
        }
    }
    let in_tree = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parent.get(&pid) {
            Some(&p) if p != 0 => pid = p,
            _ => return false,
        }
    };
    rss.iter()
        .filter(|(pid, _)| in_tree(**pid))
        .map(|(_, k)| k)
        .sum()
}

/// User + system seconds of every child this process has waited for, and their descendants
/// that were waited for in turn.
fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

/// What one measured command took.
struct Measured {
    seconds: f64,
    cpu_seconds: f64,
    peak_mib: f64,
}

/// Runs `cmd` to completion and measures it.
fn measure(mut cmd: Command, what: &str) -> Measured {
    let cpu_before = children_cpu_seconds();
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut peak = 0;
    loop {
        peak = peak.max(tree_rss_kib(child.id()));
        if let Some(status) = child.try_wait().unwrap() {
            let seconds = t.elapsed().as_secs_f64();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("{what} failed: {err}");
            }
            return Measured {
                seconds,
                cpu_seconds: children_cpu_seconds() - cpu_before,
                peak_mib: peak as f64 / 1024.0,
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_jpgs(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "tar") {
            n += llamagen_shards::webdataset::read_members(&entry.path())
                .unwrap()
                .iter()
                .filter(|(name, _)| name.ends_with(".jpg"))
                .count();
        }
    }
    n
}

#[tokio::main]
async fn main() {
    let mut urls = 10_000usize;
    let mut hang_percent = 2.0f64;
    let mut in_flight = 128usize;
    let mut open_shards = 8usize;
    let mut venv = repo().join("target/img2dataset-venv");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--urls" => urls = args.next().and_then(|s| s.parse().ok()).unwrap_or(urls),
            "--hang-percent" => {
                hang_percent = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(hang_percent)
            }
            "--open-shards" => {
                open_shards = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(open_shards)
            }
            "--in-flight" => {
                in_flight = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(in_flight)
            }
            "--img2dataset-venv" => venv = args.next().map(PathBuf::from).unwrap_or(venv),
            _ => {}
        }
    }
    let python = repo().join(".venv/bin/python");
    let script = repo().join("scripts/bench_ingest.py");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let ok = Command::new(&python)
        .arg(&script)
        .arg("corpus")
        .arg(&corpus)
        .status()
        .unwrap();
    assert!(ok.success(), "writing the corpus");
    let server = LoopbackServer::serve_dir(&corpus).await.unwrap();
    let names: Vec<String> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Every `1 / share`-th row hangs, so that each shard gets its share of dead hosts.
    let hang_every = if hang_percent > 0.0 {
        (100.0 / hang_percent).round().max(1.0) as usize
    } else {
        usize::MAX
    };
    let hangs = |i: usize| i % hang_every == hang_every / 2;
    let hanging = (0..urls).filter(|&i| hangs(i)).count();
    let rows: Vec<MetaRow> = (0..urls)
        .map(|i| MetaRow {
            url: Some(if hangs(i) {
                server.url(&format!("/hang?i={i}"))
            } else {
                server.url(&format!("/img/{}?i={i}", names[i % names.len()]))
            }),
            caption: Some(format!("photo {i}")),
            scores: [640.0, 480.0, 0.33, 6.0, 0.1, 0.01],
        })
        .collect();
    let metadata = dir.path().join("metadata.parquet");
    write_metadata(&metadata, "URL", "TEXT", &rows).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads_per_process = in_flight.div_ceil(cores);

    // Ours: prepare (untimed), then one worker on every core.
    let db = TestDatabase::new().await;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[ingest]\nrows_per_shard = 1000\nconcurrency = {in_flight}\nopen_shards = {open_shards}\n\
             image_size = 256\n\
             resize_mode = \"center_crop\"\njpeg_quality = 95\nallow_private_addresses = true\n\
             timeout_secs = 10.0\nretries = 2\n[ingest.metadata_filter]\ndedup_urls = false\n"
        ),
    )
    .unwrap();
    let ours_out = dir.path().join("ours");
    let llamagen = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamagen"));
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("DATABASE_URL", db.url())
            .args(["ingest", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&metadata)
            .arg("--out")
            .arg(&ours_out)
            .args(extra);
        cmd
    };
    let ok = llamagen(&["--prepare-only"]).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ours = measure(llamagen(&["--worker"]), "llamagen ingest");
    let ours_n = count_jpgs(&ours_out);

    // Where our time went, summed over concurrent tasks.
    let mut phases: BTreeMap<String, f64> = BTreeMap::new();
    for entry in std::fs::read_dir(&ours_out).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with("_stats.json") {
            let stats = ShardStats::read(&entry.path()).unwrap();
            for (k, v) in stats.seconds {
                *phases.entry(k).or_default() += v;
            }
        }
    }

    // img2dataset with the same settings.
    let ok = Command::new(&python)
        .arg(&script)
        .arg("install")
        .arg(&venv)
        .status()
        .unwrap();
    assert!(ok.success(), "installing img2dataset");
    let theirs_out = dir.path().join("img2dataset");
    let mut cmd = Command::new(venv.join("bin/img2dataset"));
    cmd.env("NO_ALBUMENTATIONS_UPDATE", "1")
        .arg("--url_list")
        .arg(&metadata)
        .args([
            "--input_format",
            "parquet",
            "--url_col",
            "URL",
            "--caption_col",
            "TEXT",
        ])
        .args(["--output_format", "webdataset", "--output_folder"])
        .arg(&theirs_out)
        .args([
            "--image_size",
            "256",
            "--resize_mode",
            "center_crop",
            "--encode_quality",
            "95",
        ])
        .args([
            "--number_sample_per_shard",
            "1000",
            "--distributor",
            "multiprocessing",
        ])
        .args([
            "--processes_count",
            &cores.to_string(),
            "--thread_count",
            &threads_per_process.to_string(),
        ])
        .args([
            "--timeout",
            "10",
            "--retries",
            "2",
            "--enable_wandb",
            "False",
        ]);
    let theirs = measure(cmd, "img2dataset");
    let theirs_n = count_jpgs(&theirs_out);

    println!(
        "ingest of {urls} loopback URLs ({hanging} of them never answer; 6 real photos, 300x451 to 872x1000 JPEG) to 256 px center crops, JPEG q95, {in_flight} downloads in flight, ours holding up to {open_shards} shard(s) at once, {cores} cores"
    );
    let line = |who: &str, n: usize, m: &Measured| {
        println!(
            "  {who:<16} {n:>6} images in {:>6.1} s  {:>6.2} ms CPU per image  peak {:>6.0} MiB",
            m.seconds,
            1e3 * m.cpu_seconds / n.max(1) as f64,
            m.peak_mib
        )
    };
    line("llamagen ingest", ours_n, &ours);
    line("img2dataset", theirs_n, &theirs);
    let cpu_per_image = |n: usize, m: &Measured| m.cpu_seconds / n.max(1) as f64;
    println!(
        "  ours / theirs: {:.2}x wall time, {:.2}x CPU per image, {:.2}x memory",
        ours.seconds / theirs.seconds,
        cpu_per_image(ours_n, &ours) / cpu_per_image(theirs_n, &theirs),
        ours.peak_mib / theirs.peak_mib
    );
    let total: f64 = phases.values().sum();
    let shares: Vec<String> = phases
        .iter()
        .map(|(k, v)| format!("{k} {:.0}%", 100.0 * v / total.max(1e-9)))
        .collect();
    println!(
        "  our task time by phase (summed over concurrent tasks): {}",
        shares.join(", ")
    );
    drop(server);
    db.drop_database().await;
}
