//! `llamagen benchmark` end to end on tiny random-weight models, a random-weight FID Inception
//! and a real PostgreSQL (a fresh database from `store::testing`): a guidance sweep records one
//! evaluation per scale with its sampling configuration, a re-run updates instead of
//! duplicating, and the tokenizer mode records rFID, PSNR, SSIM and codebook usage.

use crate::common::{self, repo, text};

use std::path::Path;
use std::process::Command;

use llamagen_models::tiny;
use llamagen_store::testing::TestDatabase;

fn llamagen(data_dir: &Path, db: &TestDatabase) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamagen"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn");
    cmd
}

/// `stdout` without its "recorded as evaluation" lines.
fn without_recorded_lines(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|line| !line.contains("recorded as evaluation"))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[tokio::test]
async fn generator_sweep_and_tokenizer_are_recorded_once() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let models = tiny::write(&dir.path().join("models"), 9).unwrap();
    let inception = dir.path().join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&repo(), &inception, 0, &[]).unwrap();

    // A reference set: 12 samples of the same models with another seed.
    let reference = dir.path().join("reference");
    let out = llamagen(dir.path(), &db)
        .arg("sample")
        .args(common::tiny_model_args(&models, 8))
        .args(["--num-samples", "12", "--seed", "99", "--cfg-scale", "1.0"])
        .arg("--out")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let sweep_command = |extra: &[&str]| {
        let mut cmd = llamagen(dir.path(), &db);
        cmd.args(["benchmark", "generator"])
            .args(common::tiny_model_args(&models, 8))
            .args(["--num-samples", "12", "--cfg-scales", "1.0,3.0"])
            .args([
                "--model",
                "tiny-c2i",
                "--benchmark",
                "tiny32-c2i",
                "--step",
                "7",
            ])
            .arg("--reference")
            .arg(reference.join("samples.npz"))
            .arg("--inception")
            .arg(&inception)
            .arg("--out")
            .arg(dir.path().join("runs"))
            .args(extra)
            // The feature cache says when it is read, kept, or cannot be used.
            .env("RUST_LOG", "warn,llamagen_pipeline::feature_cache=info");
        cmd
    };
    let sweep = |extra: &[&str]| sweep_command(extra).output().unwrap();
    let first = sweep(&[]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(
        text(&first).matches("recorded as evaluation").count(),
        2,
        "{}",
        text(&first)
    );
    assert!(
        text(&first).contains("reference features kept in"),
        "{}",
        text(&first)
    );
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("runs/reference-features"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // A re-run prints the same numbers, saying what became of the kept features.
    let same_numbers_after = |said: &str| {
        let out = sweep(&[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(said), "{said}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&first.stdout)
        );
        out
    };
    // Read back instead of measured again, the reference's and each scale's samples'.
    assert_eq!(
        text(&first).matches("sample features kept in").count(),
        2,
        "{}",
        text(&first)
    );
    let out = same_numbers_after("reference features from");
    assert_eq!(text(&out).matches("sample features from").count(), 2);
    // A damaged file is measured again, and replaced.
    std::fs::write(&cached[0], b"torn").unwrap();
    same_numbers_after("cannot be used");
    assert!(std::fs::metadata(&cached[0]).unwrap().len() > 4);
    // A sample made again (here: lost, and drawn again from its seed) has its scale measured
    // again; the other scale's features are read back.
    let scale_1 = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("reference-features"))
        .flat_map(|p| std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()))
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("cfg1-")
        })
        .unwrap();
    std::fs::remove_file(scale_1.join("000005.png")).unwrap();
    let out = same_numbers_after("sample features kept in");
    assert_eq!(text(&out).matches("sample features kept in").count(), 1);
    assert_eq!(text(&out).matches("sample features from").count(), 1);
    // With the database gone, the sweep still prints what it measured, then fails saying so.
    let out = common::output_without_a_database(&mut sweep_command(&[]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        without_recorded_lines(&first.stdout)
    );
    // A recording refused part way (a trigger refuses the second scale's row) prints the id of
    // the scale recorded before the refusal, then fails saying why.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_scale_3() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.cfg_scale = 3 THEN RAISE EXCEPTION 'scale 3 refused'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_scale_3 BEFORE INSERT OR UPDATE ON evaluations
           FOR EACH ROW EXECUTE FUNCTION refuse_scale_3();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = sweep(&[]);
    assert!(
        !out.status.success()
            && text(&out).contains("measured but not recorded")
            && text(&out).contains("scale 3 refused"),
        "{}",
        text(&out)
    );
    let first_stdout = String::from_utf8_lossy(&first.stdout);
    let second_id = first_stdout
        .lines()
        .rfind(|line| line.contains("recorded as evaluation"))
        .unwrap();
    let mut partly: Vec<&str> = first_stdout.lines().filter(|l| *l != second_id).collect();
    partly.push("");
    assert_eq!(String::from_utf8_lossy(&out.stdout), partly.join("\n"));
    sqlx::raw_sql("DROP TRIGGER refuse_scale_3 ON evaluations; DROP FUNCTION refuse_scale_3();")
        .execute(&db.pool)
        .await
        .unwrap();

    let pool = &db.pool;
    let rows: Vec<(f64, i32, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT e.cfg_scale, e.num_samples,
                (SELECT count(*) FROM metrics m WHERE m.evaluation_id = e.id),
                e.sampling_config -> 'extra'
         FROM evaluations e ORDER BY e.cfg_scale",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "a re-run duplicated evaluations: {rows:?}");
    for (i, (scale, n, metric_count, extra)) in rows.iter().enumerate() {
        assert_eq!(*scale, [1.0, 3.0][i]);
        assert_eq!(*n, 12);
        assert_eq!(
            *metric_count, 7,
            "fid, sfid, inception_score, precision, recall, kid, kid_std"
        );
        assert_eq!(extra["sampling"]["cfg_scale"], *scale);
        assert_eq!(extra["metrics"]["intervals"]["resamples"], 100);
        assert_eq!(extra["metrics"]["kid"]["seed"], 2020);
        assert!(extra["reference"]["sha256"].as_str().unwrap().len() == 64);
    }
    let fids: Vec<f64> = sqlx::query_scalar(
        "SELECT fid FROM leaderboard WHERE model = 'tiny-c2i' ORDER BY cfg_scale",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(fids.len(), 2);
    assert!(fids.iter().all(|f| f.is_finite() && *f >= 0.0), "{fids:?}");
    // FID and KID carry their intervals, around their values.
    let intervals: Vec<(String, f64, f64, f64)> = sqlx::query_as(
        "SELECT name, value, ci_low, ci_high FROM metrics WHERE ci_low IS NOT NULL ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let names: Vec<&str> = intervals.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(names, ["fid", "fid", "kid", "kid"]);
    for (name, value, low, high) in &intervals {
        assert!(
            low < high && (low..=high).contains(&value),
            "{name} {value} [{low}, {high}]"
        );
    }

    // Chunks of 5 images: the 12 reference images are kept in 3 files as they are measured.
    let tokenizer_command = |features: &Path, reconstructions: &Path| {
        let mut cmd = llamagen(dir.path(), &db);
        cmd.args(["benchmark", "tokenizer", "--device", "cpu"])
            .arg("--vq-ckpt")
            .arg(&models.vq_ckpt)
            .arg("--vq-config")
            .arg(&models.vq_config)
            .arg("--reference")
            .arg(reference.join("samples.npz"))
            .arg("--inception")
            .arg(&inception)
            .args(["--model", "tiny-vq", "--benchmark", "tiny32-reconstruction"])
            .arg("--reference-features")
            .arg(features)
            .arg("--reconstruction-features")
            .arg(reconstructions)
            .args(["--chunk-size", "5"])
            .env(
                "RUST_LOG",
                "warn,llamagen_pipeline::feature_cache=info,llamagen_pipeline::tokenizer_benchmark=info",
            );
        cmd
    };
    let tokenizer = |features: &Path, reconstructions: &Path| {
        let out = tokenizer_command(features, reconstructions)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        out
    };
    let kept = |prefix: &str| -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join("reconstructions"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .collect();
        files.sort();
        files
    };
    let reconstructions = dir.path().join("reconstructions");
    // The tokenizer measures the originals and keeps their features in a folder of its own,
    // and each chunk's measurements as it goes; the originals' per chunk only until the whole
    // reference's are kept...
    let own = tokenizer(&dir.path().join("tokenizer-features"), &reconstructions);
    assert!(
        text(&own).contains("reference features kept in"),
        "{}",
        text(&own)
    );
    assert!(!text(&own).contains("read back"), "{}", text(&own));
    assert_eq!(kept("reconstructions-").len(), 3);
    assert_eq!(kept("originals-"), Vec::<std::path::PathBuf>::new());
    // ... and reads the generator's, which are the same reference's, with the same numbers,
    // and its chunks back without measuring any again.
    // A later run's figures are the first's, and its log says each of `said`.
    let same_figures = |out: &std::process::Output, said: &[&str]| {
        for s in said {
            assert!(text(out).contains(s), "{s}: {}", text(out));
        }
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&own.stdout)
        );
    };
    let shared = tokenizer(
        &dir.path().join("runs/reference-features"),
        &reconstructions,
    );
    same_figures(
        &shared,
        &[
            "reference features from",
            "3 of 3 chunks of reference images read back",
        ],
    );
    // A run stopped in its second chunk, before the reference's features were kept: what
    // leaves the reference's folder unwritable (a file in its place) leaves each chunk's
    // originals behind, and a damaged second chunk stands for the one being measured.
    let unwritable = dir.path().join("unwritable");
    std::fs::write(&unwritable, b"").unwrap();
    for file in kept("reconstructions-") {
        std::fs::remove_file(file).unwrap();
    }
    let stopped = tokenizer(&unwritable, &reconstructions);
    assert!(
        text(&stopped).contains("reference features not kept"),
        "{}",
        text(&stopped)
    );
    assert_eq!(kept("originals-").len(), 3);
    // A chunk of 5 (the largest files; the last chunk holds 2).
    let second = kept("reconstructions-")
        .into_iter()
        .max_by_key(|file| std::fs::metadata(file).unwrap().len())
        .unwrap();
    std::fs::write(&second, b"PK\x03\x04 torn").unwrap();
    // Started again, it reads the other two chunks back, measures the damaged one again,
    // keeps the reference's features and drops the per-chunk originals: the same figures.
    let resumed = tokenizer(&dir.path().join("resumed-features"), &reconstructions);
    same_figures(
        &resumed,
        &[
            "cannot be used",
            "2 of 3 chunks of reference images read back",
        ],
    );
    assert_eq!(kept("originals-"), Vec::<std::path::PathBuf>::new());
    // With every chunk kept but not the reference's features (a new folder for them), only
    // the originals go through the Inception again: the same figures.
    let originals_only = tokenizer(&dir.path().join("new-features"), &reconstructions);
    same_figures(
        &originals_only,
        &[
            "3 of 3 chunks of reference images read back",
            "3 chunks read back lacked their originals' features (the reference's were not kept)",
            "reference features kept in",
        ],
    );
    assert_eq!(kept("originals-"), Vec::<std::path::PathBuf>::new());
    // Another batch size keeps chunks of its own and, finished, removes those it did not read.
    let before = kept("reconstructions-");
    let rebatched = tokenizer_command(&dir.path().join("new-features"), &reconstructions)
        .args(["--batch-size", "3"])
        .output()
        .unwrap();
    assert!(
        rebatched.status.success()
            && text(&rebatched).contains("3 files of this tokenizer's reconstructions that another chunk size, batch size or device left removed"),
        "{}",
        text(&rebatched)
    );
    let after = kept("reconstructions-");
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|file| !before.contains(file)), "{after:?}");
    // With the database gone, the numbers are printed all the same, then the run fails.
    let out = common::output_without_a_database(&mut tokenizer_command(
        &dir.path().join("resumed-features"),
        &reconstructions,
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        without_recorded_lines(&own.stdout)
    );
    let metrics: Vec<(String, f64)> = sqlx::query_as(
        "SELECT m.name, m.value FROM metrics m JOIN evaluations e ON e.id = m.evaluation_id
         WHERE e.benchmark = 'tiny32-reconstruction' ORDER BY m.name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let names: Vec<&str> = metrics.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["codebook_usage", "psnr", "rfid", "ssim"]);
    let usage = metrics[0].1;
    assert!(usage > 0.0 && usage <= 1.0, "usage {usage}");
    assert!(metrics.iter().all(|(_, v)| v.is_finite()), "{metrics:?}");
    let with_intervals: Vec<String> = sqlx::query_scalar(
        "SELECT m.name FROM metrics m JOIN evaluations e ON e.id = m.evaluation_id
         WHERE e.benchmark = 'tiny32-reconstruction' AND m.ci_low <= m.value AND m.value <= m.ci_high
           AND m.ci_low < m.ci_high
         ORDER BY m.name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(with_intervals, ["psnr", "rfid", "ssim"]);

    // Both modes filed the reference set they used (one npz, by content) and their protocol:
    // the two cfg scales share the generator's, the tokenizer has its own.
    let sets: Vec<(String, Option<i32>, serde_json::Value)> =
        sqlx::query_as("SELECT sha256, num_images, made FROM reference_sets")
            .fetch_all(pool)
            .await
            .unwrap();
    let npz_sha = {
        use sha2::Digest as _;
        let bytes = std::fs::read(reference.join("samples.npz")).unwrap();
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(
        (sets[0].0.as_str(), sets[0].1),
        (npz_sha.as_str(), Some(12))
    );
    assert_eq!(sets[0].2["format"], "npz");
    let protocols: Vec<(String, i64, i32)> = sqlx::query_as(
        "SELECT p.kind, count(e.id), p.num_samples FROM protocols p
         JOIN evaluations e ON e.protocol_id = p.id AND e.reference_set_id = p.reference_set_id
         GROUP BY p.id ORDER BY p.kind",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        protocols,
        [
            ("generator".to_owned(), 2, 12),
            ("tokenizer".to_owned(), 1, 12)
        ]
    );
    let unfiled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM evaluations WHERE protocol_id IS NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(unfiled, 0);

    // The models carry their parameter counts, as the paper's tables do: every value of the
    // weights file but the tokenizer's codebook-usage window, a buffer.
    let in_file = |path: &Path| -> i64 {
        tch::Tensor::read_safetensors(path)
            .unwrap()
            .iter()
            .filter(|(name, _)| name != "quantize.codebook_used")
            .map(|(_, t)| t.numel() as i64)
            .sum()
    };
    let params: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT name, params FROM models ORDER BY name")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        params,
        [
            ("tiny-c2i".to_owned(), Some(in_file(&models.gpt_ckpt))),
            ("tiny-vq".to_owned(), Some(in_file(&models.vq_ckpt)))
        ]
    );
    // And their architecture, under the keys training records it with.
    let configs: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT config FROM models ORDER BY name")
            .fetch_all(pool)
            .await
            .unwrap();
    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let gpt: llamagen_models::gpt::GptConfig =
        serde_json::from_value(configs[0]["gpt"].clone()).unwrap();
    let vq: llamagen_models::vq::VqConfig =
        serde_json::from_value(configs[1]["vq"].clone()).unwrap();
    assert_eq!(
        gpt,
        serde_json::from_value(read(&models.gpt_config)).unwrap()
    );
    assert_eq!(vq, serde_json::from_value(read(&models.vq_config)).unwrap());

    // Once recorded, a sweep clears its scales' folders to their grid (all 12 samples here,
    // fewer than the grid's 16), and then to nothing.
    let scale_folders = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path().join("runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with("reference-features"))
            .flat_map(|p| std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()))
            .collect()
    };
    assert_eq!(scale_folders().len(), 2);
    let gridded = sweep(&["--keep-samples", "grid"]);
    assert!(gridded.status.success(), "{}", text(&gridded));
    assert_eq!(
        String::from_utf8_lossy(&gridded.stdout),
        String::from_utf8_lossy(&first.stdout)
    );
    for folder in scale_folders() {
        common::assert_only_samples_and_settings(&folder, 12);
    }
    let cleared = sweep(&["--keep-samples", "none"]);
    assert!(cleared.status.success(), "{}", text(&cleared));
    // The sweep's folder went with its scales'; the reference's features stay.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["reference-features"]);
}
