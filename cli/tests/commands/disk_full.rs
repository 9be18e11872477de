//! The disk filling up under `llamagen ingest`: its output folder is a small tmpfs, so a shard's
//! files stop fitting halfway. The command must fail with the OS's error in its output, leave
//! no half-written file (no temporary, no tar without its stats file), and, once there is
//! room, the same command must finish the run with every row once.
//!
//! Mounting a tmpfs needs root (or CAP_SYS_ADMIN); elsewhere the test says so and skips.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use crate::common::{self, text};
use llamagen_ingest::testing::{LoopbackServer, bundled_photos};
use llamagen_shards::{ShardPaths, manifest};
use llamagen_store::testing::TestDatabase;

const ROWS: usize = 12;
const ROWS_PER_SHARD: u32 = 3;

/// Unmounts the tmpfs however the test ends.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str, remount: bool) -> bool {
    let options = if remount {
        format!("remount,size={size}")
    } else {
        format!("size={size}")
    };
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|out| out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_clearly_leaves_no_half_file_and_resumes() {
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shards");
    std::fs::create_dir_all(&out).unwrap();
    // 256 px crops at q95 are about 30 KB each: the first shard's tar (3 of them) fits in
    // 128 KiB, the whole run (12) does not.
    if !mount_tmpfs(&out, "128k", false) {
        eprintln!("cannot mount a tmpfs here (root or CAP_SYS_ADMIN is needed); skipped");
        return;
    }
    let _mounted = Mounted(&out);
    let names = ["astronaut.png", "chelsea.jpg", "coffee.jpg"];
    let urls: Vec<String> = (0..ROWS)
        .map(|i| server.url(&format!("/img/{}?{i}", names[i % 3])))
        .collect();
    let config = common::scheduled_ingest(dir.path(), "full", "0 0 * * * *", "skip", &urls, 10.0);
    let config_text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "rows_per_shard = 1\n",
            &format!("rows_per_shard = {ROWS_PER_SHARD}\n"),
        )
        .replace("image_size = 32\n", "image_size = 256\njpeg_quality = 95\n");
    std::fs::write(&config, config_text).unwrap();
    let db = TestDatabase::new().await;
    let ingest = || {
        let mut cmd = common::llamagen_on(dir.path(), &db.url());
        cmd.args(["ingest", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out);
        cmd
    };

    let first = ingest().output().unwrap();
    let log = text(&first);
    assert!(!first.status.success(), "the disk was full, yet: {log}");
    assert!(log.contains("No space left on device"), "{log}");
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        common::temporaries(&out).is_empty(),
        "a temporary or staged attempt was left: {files:?}"
    );
    for tar in files.iter().filter(|f| f.ends_with(".tar")) {
        let stats = tar.replace(".tar", "_stats.json");
        assert!(
            files.contains(&stats),
            "{tar} is there without {stats}: {files:?}"
        );
    }
    let finished = files.iter().filter(|f| f.ends_with("_stats.json")).count();
    assert!(finished < ROWS / ROWS_PER_SHARD as usize, "{files:?}");

    // Room again: the same command finishes the run.
    assert!(mount_tmpfs(&out, "16m", true), "remounting larger");
    let second = ingest().output().unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let mut keys = HashSet::new();
    for i in 0..ROWS as u32 / ROWS_PER_SHARD {
        for row in manifest::read(&ShardPaths::new(&out, i).parquet).unwrap() {
            assert_eq!(row.status, manifest::Status::Success, "{row:?}");
            assert!(keys.insert(row.key.clone()), "{} twice", row.key);
        }
    }
    assert_eq!(keys.len(), ROWS);
    let succeeded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM shards WHERE status = 'succeeded'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(succeeded, i64::from(ROWS as u32 / ROWS_PER_SHARD));
    db.drop_database().await;
}
