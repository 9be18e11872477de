//! `llamagen ingest` end to end: LAION-COCO-style metadata whose URLs point at a real HTTP
//! server on loopback (real photos and hostile responses), a real PostgreSQL, shards read back
//! by the Python `webdataset` library; then resume, two workers sharing a run, and a worker
//! killed with SIGKILL whose shard another worker redoes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{self, repo, text};
use llamagen_ingest::reader::{MetaRow, write_metadata};
use llamagen_ingest::testing::LoopbackServer;
use llamagen_shards::manifest::{self, Status};
use llamagen_shards::{ShardPaths, webdataset};
use llamagen_store::testing::TestDatabase;

fn photos() -> HashMap<String, Vec<u8>> {
    llamagen_ingest::testing::bundled_photos()
}

// WIDTH, HEIGHT, similarity, AESTHETIC_SCORE, pwatermark, punsafe
const GOOD: [f64; 6] = [640.0, 480.0, 0.33, 6.0, 0.1, 0.01];

fn row(url: String, scores: [f64; 6]) -> MetaRow {
    MetaRow {
        caption: Some(format!("a photo from {url} <script>x</script>")),
        url: Some(url),
        scores,
    }
}

fn config(dir: &Path, rows_per_shard: u32) -> PathBuf {
    let path = dir.join("ingest.toml");
    let toml = format!(
        "[pipeline]\nname = \"ingest-test\"\n\n[ingest]\ninput = \"{}\"\noutput = \"{}\"\n\
         rows_per_shard = {rows_per_shard}\nconcurrency = 4\ntimeout_secs = 2.0\nretries = 1\n\
         image_size = 64\nallow_private_addresses = true\n",
        dir.join("metadata/*.parquet").display(),
        dir.join("shards").display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

fn llamagen(dir: &Path, db: &TestDatabase) -> Command {
    common::llamagen_on(dir, &db.url())
}

/// `DIR/metadata/part-0.parquet`: `hanging` rows on a route that never answers, then `photos`
/// rows of real photos under distinct URLs.
fn write_hanging_metadata(dir: &Path, server: &LoopbackServer, hanging: usize, photos: usize) {
    std::fs::create_dir_all(dir.join("metadata")).unwrap();
    let names = ["astronaut.png", "chelsea.jpg", "coffee.jpg"];
    let rows: Vec<MetaRow> = (0..hanging)
        .map(|i| row(server.url(&format!("/hang?{i}")), GOOD))
        .chain((0..photos).map(|i| {
            row(
                server.url(&format!("/img/{}?{i}", names[i % names.len()])),
                GOOD,
            )
        }))
        .collect();
    write_metadata(&dir.join("metadata/part-0.parquet"), "URL", "TEXT", &rows).unwrap();
}

async fn scalar(db: &TestDatabase, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_filters_downloads_resumes_and_reads_back() {
    let server = LoopbackServer::start(photos()).await.unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("metadata")).unwrap();
    let with = |i: usize, v: f64| {
        let mut s = GOOD;
        s[i] = v;
        s
    };
    let rows = vec![
        row(server.url("/img/astronaut.png"), GOOD),
        row(server.url("/img/chelsea.jpg"), GOOD),
        row(server.url("/redirect/1/coffee.jpg"), GOOD),
        row(server.url("/flaky/1/coffee.png"), GOOD),
        row(server.url("/noai/astronaut.png"), GOOD),
        row(server.url("/status/404"), GOOD),
        row(server.url("/corrupt.jpg"), GOOD),
        row(server.url("/bomb.png"), GOOD),
        // Dropped by the metadata filter:
        row("ftp://example.com/a.jpg".into(), GOOD),
        row(server.url("/img/coffee.jpg"), with(3, 4.0)),
        row(server.url("/img/coffee.jpg?w"), with(4, f64::NAN)),
        row(server.url("/img/coffee.jpg?s"), with(0, 100.0)),
        row(server.url("/img/astronaut.png"), GOOD),
    ];
    let (first, second) = rows.split_at(7);
    write_metadata(
        &dir.path().join("metadata/part-0.parquet"),
        "URL",
        "TEXT",
        first,
    )
    .unwrap();
    write_metadata(
        &dir.path().join("metadata/part-1.parquet"),
        "URL",
        "TEXT",
        second,
    )
    .unwrap();
    let cfg = config(dir.path(), 3);

    let out = llamagen(dir.path(), &db)
        .args(["ingest", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("dedup_url"), "the funnel is printed:\n{log}");
    assert!(log.contains("8 rows kept in 3 shard(s)"), "{log}");

    // The funnel and the shards in PostgreSQL.
    let funnel: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT rule, rows_in, rows_dropped FROM filter_funnel ORDER BY step")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let dropped: HashMap<&str, i64> = funnel.iter().map(|(r, _, d)| (r.as_str(), *d)).collect();
    assert_eq!(funnel[0].1, 13, "rows in");
    assert_eq!(dropped["valid_url"], 1);
    assert_eq!(dropped["min_aesthetic"], 1);
    assert_eq!(dropped["max_watermark"], 1, "NaN watermark fails its rule");
    assert_eq!(dropped["min_size"], 1);
    assert_eq!(dropped["dedup_url"], 1);
    assert_eq!(dropped["where"], 0, "no where rule set: a skipped step");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM shards WHERE status = 'succeeded'"
        )
        .await,
        3
    );
    assert_eq!(
        scalar(&db, "SELECT sum(output_rows)::bigint FROM shards").await,
        4
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pipeline_runs WHERE status = 'succeeded'"
        )
        .await,
        1
    );

    // The files: every input row in a manifest, every success in a tar.
    let shards = dir.path().join("shards");
    let mut manifest_rows = Vec::new();
    for i in 0..3 {
        let paths = ShardPaths::new(&shards, i);
        assert!(paths.is_finished());
        manifest_rows.extend(manifest::read(&paths.parquet).unwrap());
    }
    assert_eq!(manifest_rows.len(), 8);
    let status = |needle: &str| {
        manifest_rows
            .iter()
            .find(|r| r.url.contains(needle))
            .map(|r| (r.status, r.error_message.clone().unwrap_or_default()))
            .unwrap()
    };
    assert_eq!(status("noai").0, Status::FailedToDownload);
    assert!(status("noai").1.contains("X-Robots-Tag"));
    assert!(status("404").1.contains("HTTP 404"));
    assert_eq!(status("bomb").0, Status::FailedToResize);
    assert_eq!(status("corrupt").0, Status::FailedToResize);
    assert_eq!(status("flaky").0, Status::Success, "retried after a 503");
    let tars: Vec<PathBuf> = (0..3).map(|i| ShardPaths::new(&shards, i).tar).collect();
    let members: usize = tars
        .iter()
        .map(|t| webdataset::read_members(t).unwrap().len())
        .sum();
    assert_eq!(members, 12, "jpg + txt + json for 4 successes");

    // The Python webdataset library reads the shards as a user would.
    let script = r#"
import io, json, sys, webdataset as wds
from PIL import Image
n = 0
for sample in wds.WebDataset(sys.argv[1:], shardshuffle=False):
    img = Image.open(io.BytesIO(sample["jpg"]))
    meta = json.loads(sample["json"])
    assert img.size == (64, 64), img.size
    assert meta["key"] == sample["__key__"] and meta["status"] == "success"
    assert sample["txt"].decode().startswith("a photo from")
    n += 1
print("samples", n)
"#;
    let py = Command::new(repo().join(".venv/bin/python"))
        .arg("-c")
        .arg(script)
        .args(&tars)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", text(&py));
    assert!(text(&py).contains("samples 4"), "{}", text(&py));

    // Re-running resumes: nothing is downloaded again, nothing changes.
    let tar_before = std::fs::read(&tars[0]).unwrap();
    let requests = server.requests.load(Ordering::Relaxed);
    let out = llamagen(dir.path(), &db)
        .args(["ingest", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.requests.load(Ordering::Relaxed), requests);
    assert_eq!(std::fs::read(&tars[0]).unwrap(), tar_before);
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM shards").await,
        3,
        "no duplicate shards"
    );

    // A missing URL column is a clear error that names it.
    let bad = dir.path().join("bad.parquet");
    write_metadata(&bad, "link", "TEXT", first).unwrap();
    let out = llamagen(dir.path(), &db)
        .args(["ingest", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("required column \"URL\" is missing"),
        "{}",
        text(&out)
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_run_and_a_killed_worker_s_shard_is_redone() {
    let server = LoopbackServer::start(photos()).await.unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Shard 0 hangs (two /hang rows take the whole timeout); the rest are quick photos.
    write_hanging_metadata(dir.path(), &server, 2, 22);
    let cfg = config(dir.path(), 2);

    let out = llamagen(dir.path(), &db)
        .args(["ingest", "--prepare-only", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("12 shard(s)"), "{}", text(&out));

    // A worker that claims shard 0 and is killed while it waits on the hanging server.
    let mut doomed = llamagen(dir.path(), &db)
        .args([
            "ingest",
            "--worker",
            "--lease-secs",
            "3",
            "--worker-name",
            "doomed",
            "--config",
        ])
        .arg(&cfg)
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let held = scalar(
            &db,
            "SELECT count(*) FROM shards WHERE worker = 'doomed' AND shard_index = 0 AND status = 'running'",
        )
        .await;
        if held == 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the worker never claimed shard 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.kill().unwrap(); // SIGKILL
    doomed.wait().unwrap();

    // Two workers finish the run; shard 0 comes back to one of them when the lease runs out.
    let spawn = |name: &str| {
        llamagen(dir.path(), &db)
            .args([
                "ingest",
                "--worker",
                "--lease-secs",
                "3",
                "--worker-name",
                name,
                "--config",
            ])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("a");
    let b = spawn("b");
    let [a, b]: [_; 2] = common::outputs_within(vec![a, b], Duration::from_secs(600))
        .try_into()
        .unwrap();
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    // Workers stay until the stage is finished, so shard 0 was theirs once the lease ran out:
    // no third worker is needed.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM shards WHERE status = 'succeeded'"
        )
        .await,
        12
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT attempts::bigint FROM shards WHERE shard_index = 0"
        )
        .await,
        2,
        "shard 0 was claimed by the killed worker, then redone once"
    );
    // While shard 0 waited, the doomed worker went on to the next shards: those it finished
    // stay its own and were not redone; none it held when killed is credited to it.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM shards WHERE worker = 'doomed' AND attempts <> 1"
        )
        .await,
        0,
    );
    assert_eq!(
        scalar(&db, "SELECT sum(output_rows)::bigint FROM shards").await,
        22
    );
    // Every row appears once across the manifests; every success once across the tars.
    let shards = dir.path().join("shards");
    let mut keys = Vec::new();
    let mut jpgs = 0;
    for i in 0..12 {
        let paths = ShardPaths::new(&shards, i);
        keys.extend(
            manifest::read(&paths.parquet)
                .unwrap()
                .into_iter()
                .map(|r| r.key),
        );
        jpgs += webdataset::read_members(&paths.tar)
            .unwrap()
            .iter()
            .filter(|(n, _)| n.ends_with(".jpg"))
            .count();
    }
    let unique: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!((keys.len(), unique.len(), jpgs), (24, 24, 22));
    let leftovers = std::fs::read_dir(&shards)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp")
        })
        .count();
    // The killed worker's temporary tar was removed by the attempt that redid its shard.
    assert_eq!(leftovers, 0, "temporary files left");
    let (failures, expiries): (i32, i32) =
        sqlx::query_as("SELECT failures, expiries FROM shards WHERE shard_index = 0")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (failures, expiries),
        (0, 1),
        "the kill is an expired lease, not a failed attempt"
    );
    db.drop_database().await;
}

/// A shard whose last rows wait on a dead host no longer holds the worker: the next shards are
/// claimed and finished while its timeout runs out (with `open_shards = 1`, one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_does_not_hold_back_the_next_shards() {
    let server = LoopbackServer::start(photos()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_hanging_metadata(dir.path(), &server, 1, 11);
    let cfg = config(dir.path(), 4);
    let base = std::fs::read_to_string(&cfg).unwrap();
    for open_shards in [4, 1] {
        let db = TestDatabase::new().await;
        let shards = dir.path().join(format!("shards-{open_shards}"));
        std::fs::write(&cfg, format!("{base}open_shards = {open_shards}\n")).unwrap();
        let out = llamagen(dir.path(), &db)
            .args(["ingest", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&shards)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stats: Vec<_> = (0..3)
            .map(|i| {
                llamagen_shards::stats::ShardStats::read(&ShardPaths::new(&shards, i).stats)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            stats.iter().map(|s| s.successes).collect::<Vec<_>>(),
            [3, 4, 4]
        );
        assert!(
            stats[0].status_dict.keys().any(|k| k.contains("timed out")),
            "{:?}",
            stats[0].status_dict
        );
        let later_shards_first =
            stats[1].end_time < stats[0].end_time && stats[2].end_time < stats[0].end_time;
        assert_eq!(
            later_shards_first,
            open_shards > 1,
            "open_shards = {open_shards}: shard end times {:?}",
            stats.iter().map(|s| s.end_time).collect::<Vec<_>>()
        );
        assert_eq!(
            scalar(
                &db,
                "SELECT count(*) FROM shards WHERE status = 'succeeded' AND attempts = 1"
            )
            .await,
            3
        );
        db.drop_database().await;
    }
}
