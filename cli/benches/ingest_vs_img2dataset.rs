//! Ingest throughput and memory, `llamagen ingest` against img2dataset on the same corpus, in the
//! same run, on this machine: `--urls` LAION-COCO-style rows (default 10,000) pointing at six
//! real photos (scikit-image's, 300 x 451 to 872 x 1000 JPEGs) served from loopback under
//! distinct URLs, both resizing to 256 x 256 center crops re-encoded at JPEG quality 95 into
//! webdataset shards of 1,000.
//!
//! ```text
//! cargo bench -p llamagen-cli --bench ingest_vs_img2dataset -- [--urls N] [--img2dataset-venv DIR]
//! ```
//!
//! img2dataset 1.47.0 is installed from PyPI into its own virtualenv by
//! `scripts/bench_ingest.py install` (default `target/img2dataset-venv`). Peak memory is the
//! largest sum of resident memory over the benchmarked process and all its descendants,
//! sampled every 20 ms (img2dataset runs worker processes). Our side's figure is taken from a
//! run that joins a prepared ingest (`--worker`), so the metadata filter and the database start
//! are outside the clock; img2dataset reads its parquet inside it (a few milliseconds here).

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

/// Runs `cmd` to completion; returns (seconds, peak tree RSS in MiB).
fn measure(mut cmd: Command, what: &str) -> (f64, f64) {
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
            return (seconds, peak as f64 / 1024.0);
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
    let mut venv = repo().join("target/img2dataset-venv");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--urls" => urls = args.next().and_then(|s| s.parse().ok()).unwrap_or(urls),
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
    let rows: Vec<MetaRow> = (0..urls)
        .map(|i| MetaRow {
            url: Some(server.url(&format!("/img/{}?i={i}", names[i % names.len()]))),
            caption: Some(format!("photo {i}")),
            scores: [640.0, 480.0, 0.33, 6.0, 0.1, 0.01],
        })
        .collect();
    let metadata = dir.path().join("metadata.parquet");
    write_metadata(&metadata, "URL", "TEXT", &rows).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Ours: prepare (untimed), then one worker on every core.
    let db = TestDatabase::new().await;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        "[ingest]\nrows_per_shard = 1000\nconcurrency = 64\nimage_size = 256\n\
         resize_mode = \"center_crop\"\njpeg_quality = 95\nallow_private_addresses = true\n\
         [ingest.metadata_filter]\ndedup_urls = false\n",
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
    let (ours_s, ours_mib) = measure(llamagen(&["--worker"]), "llamagen ingest");
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
            "64",
        ])
        .args([
            "--timeout",
            "10",
            "--retries",
            "2",
            "--enable_wandb",
            "False",
        ]);
    let (theirs_s, theirs_mib) = measure(cmd, "img2dataset");
    let theirs_n = count_jpgs(&theirs_out);

    let per_core = |n: usize, s: f64| n as f64 / s / cores as f64;
    println!(
        "ingest of {urls} loopback URLs (6 real photos, 300x451 to 872x1000 JPEG) to 256 px center crops, JPEG q95, {cores} cores"
    );
    println!(
        "  llamagen ingest  {ours_n:>6} images in {ours_s:>6.1} s  {:>7.1} images/s/core  peak {ours_mib:>6.0} MiB",
        per_core(ours_n, ours_s)
    );
    println!(
        "  img2dataset      {theirs_n:>6} images in {theirs_s:>6.1} s  {:>7.1} images/s/core  peak {theirs_mib:>6.0} MiB",
        per_core(theirs_n, theirs_s)
    );
    println!(
        "  ours / theirs: {:.2}x images/s, {:.2}x memory",
        per_core(ours_n, ours_s) / per_core(theirs_n, theirs_s),
        ours_mib / theirs_mib
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
