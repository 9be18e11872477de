//! The `llamagen` binary as a user runs it: help, unbuilt stages, configs, doctor, db and demo,
//! against the private cluster (a fresh data directory) and against `DATABASE_URL`.

use crate::common::{self, repo, text};

use std::path::{Path, PathBuf};
use std::process::Command;

use llamagen_store::testing::TestDatabase;

fn llamagen(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamagen"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn help_lists_every_stage_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = llamagen(dir.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out);
    for cmd in [
        "ingest",
        "filter",
        "caption",
        "encode",
        "train",
        "sample",
        "evaluate",
        "benchmark",
        "run",
        "doctor",
        "schedule",
        "serve",
        "db",
        "config",
        "demo",
    ] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "--help lacks {cmd}:\n{help}"
        );
    }
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

    // `config check` of one config text.
    let check = |text: &str| {
        let path = dir.path().join("check.toml");
        std::fs::write(&path, text).unwrap();
        llamagen(dir.path())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check("[sample]\ntop_p = 2.0\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("sample.top_p"), "{}", text(&out));

    // The metadata filter's own SQL rule is parsed at check time, and a bad one named.
    let out = check(
        "[ingest.metadata_filter]\nwhere = \"LICENSE IS NOT NULL AND WIDTH IN (SELECT 1)\"\n",
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("metadata_filter.where") && text(&out).contains("not supported"),
        "{}",
        text(&out)
    );
    let out = check(
        "[ingest.metadata_filter]\nwhere = \"LICENSE IS NOT NULL AND lower(NSFW) = 'unlikely'\"\n",
    );
    assert!(out.status.success(), "{}", text(&out));

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

/// Every leaf key of the default pipeline config: (`section.key`, `key`).
fn config_keys() -> Vec<(String, String)> {
    fn walk(prefix: &str, table: &toml::Table, keys: &mut Vec<(String, String)>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => walk(&path, t, keys),
                _ => keys.push((path, key.clone())),
            }
        }
    }
    let defaults: toml::Table = toml::from_str(
        &llamagen_pipeline::config::PipelineConfig::default()
            .to_toml()
            .unwrap(),
    )
    .unwrap();
    let mut keys = Vec::new();
    walk("", &defaults, &mut keys);
    keys
}

/// Every key of the pipeline config is read by some code besides its own definition: a field
/// that only `config.rs` mentions is a setting that silently does nothing.
#[test]
fn every_config_key_is_read_by_some_code() {
    fn sources(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() && !matches!(name.as_str(), "target" | "tests" | ".venv" | ".git") {
                sources(&path, out);
            } else if name.ends_with(".rs") && name != "config.rs" {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut code = String::new();
    sources(&repo(), &mut code);
    let read = |key: &str| {
        code.match_indices(&format!(".{key}")).any(|(at, m)| {
            code[at + m.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        })
    };
    let unread: Vec<String> = config_keys()
        .into_iter()
        .filter(|(_, key)| !read(key))
        .map(|(path, _)| path)
        .collect();
    assert!(unread.is_empty(), "config keys no code reads: {unread:?}");
}

#[test]
fn every_config_key_is_documented() {
    let docs = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    let missing: Vec<String> = config_keys()
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| !docs.contains(&format!("`{path}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not document {missing:?}"
    );
}

/// The private cluster's commands, then the README's first command as a fresh checkout runs
/// it: `llamagen demo` with a relative data directory, twice (the second run resumes every
/// stage).
#[test]
fn private_cluster_commands_are_idempotent_and_the_demo_runs_twice() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let out = llamagen(&dir).args(["db", "migrate"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("applied migrations"), "{}", text(&out));
    let out = llamagen(&dir).args(["db", "migrate"]).output().unwrap();
    assert!(text(&out).contains("schema up to date"), "{}", text(&out));

    let out = llamagen(&dir)
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

    let mut leaderboards = Vec::new();
    for round in 1..=2 {
        let out = llamagen(Path::new("data"))
            .current_dir(root.path())
            .env("RUST_LOG", "info")
            .args(["demo", "--no-serve"])
            .output()
            .unwrap();
        assert!(out.status.success(), "demo round {round}: {}", text(&out));
        let shown = text(&out);
        assert!(shown.contains("pipeline \"demo\", run #"), "{shown}");
        assert!(shown.contains("pipeline \"demo-t2i\", run #"), "{shown}");
        // Ingest: 28 rows pass the metadata filter; 4 of them are hostile and fail.
        assert!(shown.contains("28 rows kept in 2 shard(s)"), "{shown}");
        assert!(shown.contains("24 images written, 4 failed"), "{shown}");
        // The first demo benchmarks the trained checkpoints (steps 20, 40 and the final 42 of
        // the class-conditional GPT, the final one of the text-conditional GPT); the second
        // finds them trained and evaluated.
        let evaluated = if round == 1 {
            [
                "3 checkpoint(s) evaluated (0 failed), 6 leaderboard row(s)",
                "1 checkpoint(s) evaluated (0 failed), 2 leaderboard row(s)",
            ]
        } else {
            ["0 checkpoint(s) evaluated (0 failed), 0 leaderboard row(s)"; 2]
        };
        for line in evaluated {
            assert!(shown.contains(line), "{line}: {shown}");
        }
        assert!(shown.contains("demo-GPT       step  40  cfg 2"), "{shown}");
        assert!(shown.contains("demo finished"), "{shown}");
        assert!(shown.contains("[9/9] dashboard skipped"), "{shown}");
        // Every stage, checkpoint and scale resolves `--device auto`; the log says once what
        // it chose.
        assert_eq!(
            shown.matches("--device auto chose the CPU").count(),
            1,
            "{shown}"
        );
        leaderboards.push(
            shown
                .lines()
                .find(|l| l.trim_start().starts_with("leaderboard: "))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no leaderboard count: {shown}")),
        );
    }
    // The second run re-ingests the same samples (in whatever order their downloads finish)
    // and measures the baseline again: under the same reference set, so its rows are replaced,
    // not added.
    assert_eq!(leaderboards[0], leaderboards[1]);
    assert!(dir.join("demo/llamagen-codes/demo32_codes").is_dir());
    assert!(dir.join("demo/train-t2i").is_dir());
    // Every command stopped the server it started.
    assert!(!dir.join("postgres/pgdata/postmaster.pid").exists());
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
    let migrations = std::fs::read_dir(repo().join("migrations"))
        .unwrap()
        .count();
    assert!(
        report.contains(&format!("{migrations} of {migrations} migrations applied")),
        "{report}"
    );
    assert!(
        !dir.path().join("postgres").exists(),
        "a private cluster was started despite DATABASE_URL"
    );

    // SQL's doors: the URL in use, and psql on it.
    let out = llamagen(dir.path())
        .args(["db", "url"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        db.url().starts_with(&printed) && !printed.contains("statement-cache"),
        "{printed}"
    );
    let out = llamagen(dir.path())
        .args([
            "db",
            "shell",
            "--",
            "-tAc",
            "SELECT count(*) FROM checkpoint_queue",
        ])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

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

/// With libtorch's CUDA half loaded (forced here, where there is no driver), both faces the
/// binary carries for it load side by side: NCCL for training ranks, CUDA graphs for sampling.
#[test]
fn doctor_loads_the_cuda_faces_beside_libtorch_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let out = llamagen(dir.path())
        .args(["doctor", "--no-db"])
        .env("LLAMAGEN_LOAD_CUDA", "1")
        .output()
        .unwrap();
    let report = text(&out);
    if !(llamagen_distributed::nccl::BUILT && llamagen_models::cuda_graph::BUILT) {
        eprintln!("skipped: this build's libtorch has no CUDA half");
        return;
    }
    assert!(report.contains("[ ok ] NCCL          2.28.9"), "{report}");
    assert!(
        report.contains("[ ok ] CUDA graphs   sampling replays its decode step"),
        "{report}"
    );
    let out = llamagen(dir.path())
        .args(["doctor", "--no-db"])
        .env("LLAMAGEN_CUDA_GRAPHS", "0")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("[info] CUDA graphs   off (LLAMAGEN_CUDA_GRAPHS=0)"),
        "{}",
        text(&out)
    );
}

/// Exports the FID Inception with seeded random weights (the real ones cannot be downloaded
/// here) through the project's own script.
fn random_inception(dir: &Path) -> PathBuf {
    let model = dir.join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&repo(), &model, 1, &[]).unwrap();
    model
}

/// Six 64 x 64 crops of each fixture photo, as an ADM npz.
fn photo_batch(dir: &Path, suffix: &str) -> PathBuf {
    let mut crops = Vec::new();
    for name in ["astronaut", "coffee", "chelsea"] {
        let file = repo().join(format!("evaluate/tests/fixtures/{name}_{suffix}.png"));
        let img = image::open(file).unwrap().to_rgb8();
        for (x, y) in [(0, 0), (64, 64)] {
            let crop = image::imageops::crop_imm(&img, x, y, 64, 64).to_image();
            crops.push(ndarray::Array3::from_shape_vec((64, 64, 3), crop.into_raw()).unwrap());
        }
    }
    let views: Vec<_> = crops
        .iter()
        .map(|c| c.view().insert_axis(ndarray::Axis(0)))
        .collect();
    let batch = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
    let path = dir.join(format!("{suffix}.npz"));
    llamagen_evaluate::npz::write_reference(&path, Some(batch.view()), None, None).unwrap();
    path
}

#[test]
fn evaluate_compares_image_sets_like_the_adm_evaluator() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_inception(dir.path());
    let reference = photo_batch(dir.path(), "original");
    let samples = photo_batch(dir.path(), "restored");
    let stats = dir.path().join("reference_stats.npz");
    let evaluate = |reference: &Path, samples: &Path| {
        let mut cmd = llamagen(dir.path());
        cmd.arg("evaluate")
            .arg(reference)
            .arg(samples)
            .arg("--inception")
            .arg(&model);
        cmd
    };
    let out = evaluate(&reference, &samples)
        .arg("--save-stats")
        .arg(&stats)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let full: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "fid",
        "sfid",
        "inception_score",
        "precision",
        "recall",
        "kid_std",
    ] {
        let v = full[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {full}"));
        assert!(v.is_finite() && v >= 0.0, "{key} = {v}");
    }
    assert!(full["fid"].as_f64().unwrap() > 0.0);

    // Against the saved statistics the FID is the same; precision/recall need reference images.
    let out = evaluate(&stats, &samples).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let from_stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (
        full["fid"].as_f64().unwrap(),
        from_stats["fid"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-9 * a, "{a} vs {b}");
    assert!(from_stats.get("precision").is_none());

    // Recorded three times with the same configuration: one leaderboard row, updated. The
    // third keeps its features, and files the same reference set under the identity it read
    // them by.
    let checkpoint = dir.path().join("c2i_B_256.pt");
    std::fs::write(&checkpoint, b"stand-in checkpoint bytes").unwrap();
    for keep in [None, None, Some(dir.path().join("recorded-features"))] {
        let mut cmd = evaluate(&reference, &samples);
        if let Some(keep) = keep {
            cmd.arg("--keep-features").arg(keep);
        }
        let out = cmd
            .args([
                "--record",
                "--model",
                "LlamaGen-B",
                "--size",
                "B",
                "--step",
                "1000",
                "--cfg-scale",
                "2.0",
                "--top-k",
                "0",
            ])
            .arg("--checkpoint")
            .arg(&checkpoint)
            .arg("--save-stats")
            .arg(dir.path().join("recorded_stats.npz"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("recorded as evaluation #1"),
            "{}",
            text(&out)
        );
    }
    // With the database gone, the metrics are printed all the same, then the run fails.
    let out = common::output_without_a_database(
        evaluate(&reference, &samples)
            .args(["--record", "--model", "LlamaGen-B", "--json"])
            .arg("--checkpoint")
            .arg(&checkpoint),
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["fid"], full["fid"]);
    // Both sides' features kept: the next run reads them back and prints the same numbers.
    let kept = |said: &str| {
        let out = evaluate(&reference, &samples)
            .arg("--json")
            .arg("--keep-features")
            .arg(dir.path().join("kept-features"))
            .env("RUST_LOG", "warn,llamagen_pipeline::feature_cache=info")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        for side in ["reference", "sample"] {
            assert!(
                text(&out).contains(&format!("{side} features {said}")),
                "{side} {said}: {}",
                text(&out)
            );
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(kept("kept in"), full);
    assert_eq!(kept("from"), full);
    let out = llamagen(dir.path())
        .args(["db", "status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = |table: &str| {
        status["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap()["rows"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        (
            rows("models"),
            rows("checkpoints"),
            rows("evaluations"),
            rows("metrics"),
            rows("reference_sets"),
            rows("protocols")
        ),
        (1, 1, 1, 7, 2, 1),
        "fid, sfid, inception_score, precision, recall, kid, kid_std; the reference set, the \
         statistics saved from it and the protocol, each filed once"
    );

    // A folder of photos of mixed sizes: refused as is, accepted with ADM's center crop.
    let folder = dir.path().join("mixed");
    std::fs::create_dir(&folder).unwrap();
    // Six images (precision/recall need more than k = 3), each of its own size.
    for (i, name) in ["astronaut", "coffee", "chelsea"].iter().enumerate() {
        let file = repo().join(format!("evaluate/tests/fixtures/{name}_original.png"));
        let img = image::open(file).unwrap().to_rgb8();
        for j in 0..2u32 {
            let (w, h) = (160 - 20 * i as u32 - 7 * j, 160 - 30 * i as u32 - 11 * j);
            let cut = image::imageops::crop_imm(&img, 0, 0, w, h).to_image();
            cut.save(folder.join(format!("{i}{j}.png"))).unwrap();
        }
    }
    let out = evaluate(&folder, &samples).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("resize the set"), "{}", text(&out));
    let out = evaluate(&folder, &samples)
        .args(["--center-crop", "64", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // A sample set without images, and a missing network, are clear errors.
    let out = evaluate(&reference, &stats).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("must hold images"), "{}", text(&out));
    let out = llamagen(dir.path())
        .arg("evaluate")
        .arg(&reference)
        .arg(&samples)
        .arg("--inception")
        .arg("/nonexistent.onnx")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("scripts/export_inception.py"),
        "{}",
        text(&out)
    );
}
