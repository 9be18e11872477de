//! `llamagen filter` as a user runs it on a shard folder made elsewhere (img2dataset layout):
//! decisions next to the shards, the funnel in PostgreSQL recounted (never doubled) on a
//! re-run, captions only for the kept samples, and a clear error for a folder of wrong models.

use std::path::{Path, PathBuf};

use crate::common::{self, repo, text};
use llamagen_filter::output::{filter_path, read_filter};
use llamagen_shards::webdataset::TarWriter;
use llamagen_store::testing::TestDatabase;

fn models() -> PathBuf {
    repo().join("filter/tests/fixtures/models")
}

fn shards(dir: &Path) -> PathBuf {
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let fixtures = repo().join("filter/tests/fixtures");
    for shard in 0..2 {
        let mut tar = TarWriter::create(&shards.join(format!("{shard:05}.tar"))).unwrap();
        for (i, name) in ["chelsea", "coffee", "astronaut"].iter().enumerate() {
            let key = format!("{shard:05}{i:04}");
            let png = std::fs::read(fixtures.join(format!("{name}.png"))).unwrap();
            tar.append(&key, "png", &png).unwrap();
            tar.append(&key, "txt", format!("a photo of {name}").as_bytes())
                .unwrap();
        }
        tar.append(&format!("{shard:05}0003"), "jpg", b"not a jpeg")
            .unwrap();
        tar.finish().unwrap();
    }
    shards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_records_its_funnel_once_and_caption_skips_what_it_dropped() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let shards = shards(dir.path());
    let filter = || {
        let mut cmd = common::llamagen_on(dir.path(), &db.url());
        cmd.arg("filter")
            .arg("--input")
            .arg(&shards)
            .arg("--models")
            .arg(models())
            // The astronaut crop (210 x 150) is below 200 in height.
            .args(["--min-width", "200", "--min-height", "200"])
            .args(["--min-aesthetic", "-10", "--min-clip-similarity", "-1"]);
        cmd
    };
    let out = filter().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 shard(s) filtered"), "{}", text(&out));
    let rows = read_filter(&filter_path(&shards, "00000")).unwrap();
    let kept: Vec<bool> = rows.iter().map(|r| r.keep).collect();
    assert_eq!(kept, [true, true, false, false]);
    assert_eq!(rows[2].reason.as_deref(), Some("image size"));
    assert_eq!(rows[3].reason.as_deref(), Some("image decodes"));

    let funnel = || async {
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT f.rule, f.rows_in, f.rows_dropped FROM filter_funnel f
             JOIN stage_runs s ON s.id = f.stage_run_id WHERE s.stage = 'filter' ORDER BY f.step",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let first = funnel().await;
    assert_eq!(first.len(), 6);
    assert_eq!(first[0], ("image decodes".to_string(), 8, 2));
    assert_eq!(first[1], ("image size".to_string(), 6, 2));
    assert_eq!(first[5].1, 4);
    let (status, started): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT status, started_at FROM stage_runs WHERE stage = 'filter'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "succeeded");
    // The stage run is recorded once the work is done, but starts when the work did: before
    // the first decisions file was written (the database and the files share this host's
    // clock).
    let first_written: chrono::DateTime<chrono::Utc> =
        std::fs::metadata(filter_path(&shards, "00000"))
            .unwrap()
            .modified()
            .unwrap()
            .into();
    assert!(
        started < first_written,
        "started {started}, first decisions {first_written}"
    );

    // A re-run decides nothing again and the funnel stays as it was.
    let out = filter().arg("--json").output().unwrap();
    assert!(text(&out).contains("2 already done"), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON summary alone: {e}: {}", text(&out)));
    assert_eq!(report["shards_already_done"], 2, "{report}");
    assert_eq!(report["shards_decided"], 2, "{report}");
    assert_eq!(funnel().await, first);
    // Other thresholds in the same folder are refused.
    let out = filter().args(["--max-watermark", "0.1"]).output().unwrap();
    assert!(
        !out.status.success() && text(&out).contains("other settings"),
        "{}",
        text(&out)
    );

    // Captions: only the kept samples are sent.
    let server = llamagen_caption::testing::CaptionServer::start().unwrap();
    let caption = || {
        common::llamagen_on(dir.path(), &db.url())
            .arg("caption")
            .arg("--input")
            .arg(&shards)
            .args(["--endpoint", &server.endpoint("ok")])
            .args(["--model", llamagen_caption::testing::MODEL])
            .output()
            .unwrap()
    };
    let out = caption();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.requests(), 4);
    assert!(
        text(&out).contains("2 dropped by the filter"),
        "{}",
        text(&out)
    );

    // A folder that does not hold the exported models: a clear error, nothing written.
    let out = common::llamagen_on(dir.path(), &db.url())
        .arg("filter")
        .arg("--input")
        .arg(&shards)
        .arg("--out")
        .arg(dir.path().join("other"))
        .arg("--models")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("filter_models.json"), "{}", text(&out));
    assert!(!dir.path().join("other").exists());

    // A shard that is not a tar: reported by name, the folder's other shards are kept, and
    // the funnel still counts exactly the decided ones.
    std::fs::write(shards.join("00002.tar"), b"this is not a tar archive").unwrap();
    let out = filter().output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("00002.tar") && text(&out).contains("could not be filtered"),
        "{}",
        text(&out)
    );
    assert_eq!(funnel().await, first);
    let out = caption();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("00002.tar") && text(&out).contains("2 already done"),
        "{}",
        text(&out)
    );
    db.drop_database().await;
}
