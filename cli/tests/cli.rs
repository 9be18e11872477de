//! The `llamagen` binary as a user runs it: help, unbuilt stages, configs, doctor, db and demo,
//! against the private cluster (a fresh data directory) and against `DATABASE_URL`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use llamagen_store::testing::TestDatabase;

fn llamagen(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamagen"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn");
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn help_lists_every_stage_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = llamagen(dir.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out);
    for cmd in [
        "ingest", "filter", "caption", "encode", "train", "sample", "evaluate", "run", "doctor",
        "schedule", "serve", "db", "config", "demo",
    ] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "--help lacks {cmd}:\n{help}"
        );
    }
}

#[test]
fn unbuilt_stages_say_so_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        "ingest", "filter", "caption", "encode", "train", "sample", "evaluate", "schedule", "serve",
    ] {
        let out = llamagen(dir.path())
            .args([cmd, "--some-flag", "x"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}: {}", text(&out));
        assert!(
            text(&out).contains("not built yet"),
            "{cmd}: {}",
            text(&out)
        );
    }
    let out = llamagen(dir.path())
        .args(["run"])
        .arg(repo().join("configs/imagenet-c2i.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("encode"), "{}", text(&out));
}

#[test]
fn shipped_configs_validate_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let configs: Vec<PathBuf> = std::fs::read_dir(repo().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(configs.len() >= 3);
    let out = llamagen(dir.path())
        .args(["config", "check"])
        .args(&configs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[sample]\ntop_p = 2.0\n").unwrap();
    let out = llamagen(dir.path())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("sample.top_p"), "{}", text(&out));

    let out = llamagen(dir.path())
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("cfg_scale = 7.5") && shown.contains("lr_per_256 = 0.0001"),
        "{shown}"
    );
}

#[test]
fn every_config_key_is_documented() {
    let docs = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    let defaults: toml::Table = toml::from_str(
        &llamagen_cli::config::PipelineConfig::default()
            .to_toml()
            .unwrap(),
    )
    .unwrap();
    let mut missing = Vec::new();
    fn walk(prefix: &str, table: &toml::Table, docs: &str, missing: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => walk(&path, t, docs, missing),
                _ if !docs.contains(&format!("`{path}`")) => missing.push(path),
                _ => {}
            }
        }
    }
    walk("", &defaults, &docs, &mut missing);
    assert!(
        missing.is_empty(),
        "docs/config.md does not document {missing:?}"
    );
}

#[test]
fn private_cluster_commands_are_idempotent_and_leave_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = llamagen(dir.path())
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("applied migrations"), "{}", text(&out));
    let out = llamagen(dir.path())
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(text(&out).contains("schema up to date"), "{}", text(&out));

    let out = llamagen(dir.path())
        .args(["db", "status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["migrations"][0]["success"], true);
    assert!(
        status["backend"]
            .as_str()
            .unwrap()
            .starts_with("private cluster")
    );

    for round in 1..=2 {
        let out = llamagen(dir.path()).arg("demo").output().unwrap();
        assert!(out.status.success(), "demo round {round}: {}", text(&out));
        let shown = text(&out);
        assert!(shown.contains(&format!("recorded run #{round}")), "{shown}");
        assert!(shown.contains("demo finished"), "{shown}");
    }
    // Every command stopped the server it started.
    assert!(!dir.path().join("postgres/pgdata/postmaster.pid").exists());
}

#[tokio::test]
async fn doctor_and_db_status_use_database_url() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let out = llamagen(dir.path())
        .arg("doctor")
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("external server"), "{report}");
    assert!(report.contains("1 of 1 migrations applied"), "{report}");
    assert!(
        !dir.path().join("postgres").exists(),
        "a private cluster was started despite DATABASE_URL"
    );

    let out = llamagen(dir.path())
        .args(["db", "status"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot reach PostgreSQL"),
        "{}",
        text(&out)
    );
    db.drop_database().await;
}

#[test]
fn doctor_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = llamagen(dir.path())
        .args(["doctor", "--no-db"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .env("LLAMAGEN_PG_BIN", "/nonexistent/bin")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    assert!(
        report.contains("[FAIL] ONNX Runtime") && report.contains("/nonexistent/libonnxruntime.so"),
        "{report}"
    );
    assert!(
        report.contains("[FAIL] PostgreSQL") && report.contains("LLAMAGEN_PG_BIN"),
        "{report}"
    );
    assert!(report.contains("[ ok ] libtorch"), "{report}");
    assert!(report.contains("2 problem(s)"), "{report}");
}
