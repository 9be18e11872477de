//! The metadata funnel, ours against polars' lazy query, on the same LAION-COCO-shaped parquet
//! in the same run: `--rows` rows (default 5,000,000) in `--files` files (default 5), with
//! LAION-COCO's columns (SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, similarity,
//! pwatermark, punsafe, AESTHETIC_SCORE, top_caption), 2 % repeated URLs and 1 % bad ones.
//!
//! ```text
//! cargo bench -p llamagen-ingest --bench funnel_vs_polars -- [--rows N] [--files N]
//!     [--polars-venv DIR]
//! ```
//!
//! Both sides apply the default rules, keep each URL's first row in input order and write the
//! kept rows to parquet: ours is `prepare` (the shard inputs, as `llamagen ingest` runs it,
//! the database aside), polars 2.1.0's is `scripts/bench_funnel.py` (its streaming engine),
//! installed from PyPI into its own virtualenv (default `target/polars-venv`). Each side runs
//! as a child process and reports its own CPU time (user + system, `getrusage`) and peak
//! resident memory (`VmHWM`); wall time is measured around it. The funnel counts of both are printed and
//! compared. The corpus is written once under `target/bench-funnel/` and reused.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use llamagen_ingest::config::IngestConfig;
use llamagen_ingest::prepare::prepare;
use llamagen_ingest::testing::XorShift as Rng;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const WORDS: [&str; 16] = [
    "a", "photo", "of", "the", "red", "house", "with", "blue", "sky", "and", "green", "trees",
    "near", "river", "at", "sunset",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[(rng.next_u64() % 16) as usize]);
    }
    s
}

/// One file of LAION-COCO-shaped rows, rows `first..first + n` of the corpus.
fn write_file(path: &Path, first: usize, n: usize, rng: &mut Rng) {
    let mut urls = Vec::with_capacity(n);
    let (mut texts, mut tops) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut widths, mut heights) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut scores: [Vec<f64>; 4] = Default::default();
    for i in first..first + n {
        let r = rng.next_u64() % 100;
        urls.push(match r {
            0 => None,
            1 => Some("ftp://files.example.org/x.jpg".to_owned()),
            2 | 3 => Some(format!(
                "https://cdn.example.com/popular/{}.jpg",
                rng.next_u64() % 5_000
            )),
            _ => Some(format!(
                "https://img{}.example{}.com/images/{:x}/{i}.jpg",
                rng.next_u64() % 100,
                rng.next_u64() % 1_000,
                rng.next_u64() % (1 << 20)
            )),
        });
        let words = 6 + (rng.next_u64() % 14) as usize;
        texts.push(sentence(rng, words));
        tops.push(sentence(rng, 8));
        let size = |rng: &mut Rng| {
            (!rng.next_u64().is_multiple_of(40)).then(|| 100 + (rng.next_u64() % 1_900) as i64)
        };
        widths.push(size(rng));
        heights.push(size(rng));
        scores[0].push(rng.uniform(0.2, 0.4));
        scores[1].push(rng.uniform(0.0, 1.0));
        scores[2].push(rng.uniform(0.0, 0.6));
        scores[3].push(if rng.next_u64().is_multiple_of(200) {
            f64::NAN
        } else {
            rng.uniform(3.5, 7.0)
        });
    }
    let f64s = |v: &Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v.clone())) };
    let batch = RecordBatch::try_from_iter([
        (
            "SAMPLE_ID",
            Arc::new(Int64Array::from_iter_values(
                (first as i64)..(first + n) as i64,
            )) as ArrayRef,
        ),
        ("URL", Arc::new(StringArray::from(urls))),
        ("TEXT", Arc::new(StringArray::from(texts))),
        ("HEIGHT", Arc::new(Int64Array::from(heights))),
        ("WIDTH", Arc::new(Int64Array::from(widths))),
        ("LICENSE", Arc::new(StringArray::from(vec!["?"; n]))),
        ("NSFW", Arc::new(StringArray::from(vec!["UNLIKELY"; n]))),
        ("similarity", f64s(&scores[0])),
        ("pwatermark", f64s(&scores[1])),
        ("punsafe", f64s(&scores[2])),
        ("AESTHETIC_SCORE", f64s(&scores[3])),
        ("top_caption", Arc::new(StringArray::from(tops))),
    ])
    .expect("batch");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let tmp = path.with_extension("tmp");
    let mut writer = ArrowWriter::try_new(
        File::create(&tmp).expect("create"),
        batch.schema(),
        Some(props),
    )
    .expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    std::fs::rename(&tmp, path).expect("rename");
}

fn corpus(rows: usize, files: usize) -> Vec<PathBuf> {
    let dir = repo().join(format!("target/bench-funnel/{rows}x{files}"));
    std::fs::create_dir_all(&dir).expect("corpus folder");
    let mut rng = Rng(0x5eed_1a10_c0c0);
    let per = rows.div_ceil(files);
    (0..files)
        .map(|f| {
            let path = dir.join(format!("part-{f:05}.parquet"));
            let first = f * per;
            let n = per.min(rows - first);
            // Each file has its own generator state, so a file is the same whether or not
            // the ones before it were written in this run.
            let mut file_rng = Rng(rng.next_u64() | 1);
            if !path.exists() {
                eprintln!("writing {} ({n} rows)", path.display());
                write_file(&path, first, n, &mut file_rng);
            }
            path
        })
        .collect()
}

/// This process's own CPU seconds and peak resident MiB (VmHWM: `ru_maxrss` would carry the
/// forking parent's peak across exec).
fn own_usage() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

/// The child side: our funnel over `files` into `out`, its counts and usage as JSON.
fn ours(out: &Path, files: &[PathBuf]) {
    let config = IngestConfig::default();
    let prepared = prepare(files, &config, out).expect("prepare");
    let mut dropped = serde_json::Map::new();
    for (rule, _, _, n) in prepared.funnel.steps() {
        if n > 0 {
            dropped.insert(rule.name().to_owned(), json!(n));
        }
    }
    let (cpu, peak) = own_usage();
    println!(
        "{}",
        json!({"rows_in": prepared.funnel.rows_in, "kept": prepared.funnel.kept,
               "dropped": dropped, "cpu": cpu, "peak_mib": peak})
    );
}

fn run(mut cmd: Command, what: &str) -> (Value, f64) {
    let t = Instant::now();
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let seconds = t.elapsed().as_secs_f64();
    if !output.status.success() {
        panic!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} printed {line:?}: {e}"));
    (value, seconds)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut rows, mut files) = (5_000_000usize, 5usize);
    let mut venv = repo().join("target/polars-venv");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ours" => {
                let out = PathBuf::from(args.next().expect("--ours OUT FILE..."));
                let inputs: Vec<PathBuf> = args.map(PathBuf::from).collect();
                return ours(&out, &inputs);
            }
            "--rows" => rows = args.next().and_then(|s| s.parse().ok()).unwrap_or(rows),
            "--files" => files = args.next().and_then(|s| s.parse().ok()).unwrap_or(files),
            "--polars-venv" => venv = args.next().map(PathBuf::from).unwrap_or(venv),
            _ => {} // cargo bench passes --bench
        }
    }
    let inputs = corpus(rows, files.max(1));
    let status = Command::new("python3")
        .arg(repo().join("scripts/bench_funnel.py"))
        .arg("install")
        .arg(&venv)
        .status()
        .expect("python3");
    assert!(
        status.success(),
        "installing polars into {}",
        venv.display()
    );

    let scratch = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("--ours")
        .arg(scratch.path().join("ours"))
        .args(&inputs);
    let (ours, ours_wall) = run(cmd, "our funnel");

    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(repo().join("scripts/bench_funnel.py"))
        .arg("run")
        .arg(scratch.path().join("polars.parquet"))
        .args(&inputs);
    let (theirs, theirs_wall) = run(cmd, "polars");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "metadata funnel over {rows} LAION-COCO-shaped rows in {files} parquet files, default rules, kept rows written to parquet, {cores} cores"
    );
    for (name, r, wall) in [
        ("ours (prepare)", &ours, ours_wall),
        ("polars 2.1 lazy", &theirs, theirs_wall),
    ] {
        println!(
            "  {name:<16} {:>9} kept  {wall:>6.2} s wall  {:>6.2} s CPU  peak {:>5.0} MiB",
            r["kept"],
            r["cpu"].as_f64().unwrap_or(f64::NAN),
            r["peak_mib"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let ratio =
        |k: &str| ours[k].as_f64().unwrap_or(f64::NAN) / theirs[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  ours / polars: {:.2}x wall time, {:.2}x CPU, {:.2}x memory",
        ours_wall / theirs_wall,
        ratio("cpu"),
        ratio("peak_mib")
    );
    let same = ours["kept"] == theirs["kept"]
        && ours["rows_in"] == theirs["rows_in"]
        && ours["dropped"] == theirs["dropped"];
    println!(
        "  funnel counts {}: ours {} / polars {}",
        if same { "agree" } else { "DIFFER" },
        ours["dropped"],
        theirs["dropped"]
    );
}
