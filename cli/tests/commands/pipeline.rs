//! `llamagen run` chaining encode, train, sample and evaluate for a text-to-image pipeline, as
//! a user runs it: captioned webdataset shards in, VQ codes and FLAN-T5 embeddings (the tiny
//! models the project makes), a text-conditioned GPT trained on them with checkpoints and its
//! loss curve in PostgreSQL, every checkpoint sampled from the prompts over the guidance sweep
//! and measured against the shards under the text-to-image protocol (FID, KID, CLIP-FID and
//! CLIP score with their intervals), one leaderboard row per checkpoint and scale; a second run
//! redoes nothing; the checkpoint then samples from prompts.

use std::process::Command;

use crate::common::{llamagen_on, repo, text};

use llamagen_caption::output::{CaptionStatus, captions_path, write_captions};
use llamagen_caption::testing::record;
use llamagen_shards::webdataset::TarWriter;
use llamagen_store::testing::TestDatabase;

#[tokio::test]
async fn run_encodes_trains_and_benchmarks_a_text_to_image_gpt() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shards = data.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let photos = llamagen_ingest::testing::bundled_photos();
    let names = ["astronaut", "chelsea", "coffee"];
    let descriptions = [
        "An astronaut in a white suit stands in front of a flag. The background is dark.",
        "A tabby cat looks at the camera with green eyes. Its fur is striped.",
        "A cup of coffee with latte art sits on a saucer. The table is wooden.",
    ];
    for (shard, n) in [(0usize, 8usize), (1, 4)] {
        let name = format!("{shard:05}");
        let mut tar = TarWriter::create(&shards.join(format!("{name}.tar"))).unwrap();
        let mut rows = Vec::new();
        for i in 0..n {
            let key = format!("{shard:02}{i:05}");
            let photo = names[i % 3];
            tar.append(&key, "jpg", &photos[&format!("{photo}.jpg")])
                .unwrap();
            tar.append(&key, "txt", format!("a photo of {photo}").as_bytes())
                .unwrap();
            // Every fourth sample was dropped by the filter: it has no caption.
            let status = if i % 4 == 3 {
                CaptionStatus::Filtered
            } else {
                CaptionStatus::Ok
            };
            let long = descriptions[i % 3];
            let short = long.split_inclusive(". ").next().map(str::trim);
            rows.push(record(&key, status, long, short));
        }
        tar.finish().unwrap();
        write_captions(&captions_path(&shards, &name), &rows).unwrap();
    }
    let models = llamagen_models::tiny::write(&dir.path().join("models"), 0).unwrap();
    let gpt_config = models.text_gpt_config.clone();
    let inception = dir.path().join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&repo(), &inception, 0, &[]).unwrap();
    // LlamaGen's layout (evaluations/t2i/PartiPrompts.tsv): a tab-separated table with a
    // `Prompt` column.
    let prompts = dir.path().join("prompts.tsv");
    std::fs::write(
        &prompts,
        "Prompt\tCategory\nA tabby cat looks at the camera.\tAnimals\n\"A cup of \"\"coffee\"\".\"\tFood\n",
    )
    .unwrap();
    let config = dir.path().join("t2i.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "t2i-test"
stages = ["encode", "train", "sample", "evaluate"]

[ingest]
output = "shards"

[encode]
vq_checkpoint = "{vq}"
vq_config = "{vq_config}"
codebook_size = 64
codebook_embed_dim = 8
downsample = 4
image_size = 32
t5 = "{t5}"
batch_size = 4

[model]
task = "t2i"
gpt_config = "{gpt}"
image_size = 32
downsample = 4

[train]
global_batch_size = 3
epochs = 2
precision = "fp32"
checkpoint_every = 3
log_every = 1
ema = true

[sample]
num_samples = 4
batch_size = 2
precision = "fp32"

[evaluate]
benchmark = "t2i-test"
# The shards' photos, their centre squares resized to 32 px, are the reference set.
reference = "shards"
inception_model = "{inception}"
clip_model = "{clip}"
eval_image_size = 32
metrics = ["fid", "kid", "clip_score", "clip_fid"]
cfg_sweep = [1.5, 3.0]
checkpoint_every = 3
prompts = "{prompts}"
"#,
            vq = models.vq_ckpt.display(),
            vq_config = models.vq_config.display(),
            t5 = repo().join("encode/tests/fixtures/t5").display(),
            gpt = gpt_config.display(),
            inception = inception.display(),
            clip = repo().join("filter/tests/fixtures/models").display(),
            prompts = prompts.display(),
        ),
    )
    .unwrap();

    let run = || {
        llamagen_on(dir.path(), &db.url())
            .env("RUST_LOG", "warn")
            .arg("run")
            .arg(&config)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", text(&first));
    let out = text(&first);
    // 9 of 12 samples are captioned; every image has codes (center crop: one view).
    assert!(out.contains("2 shard(s) encoded (12 images"), "{out}");
    assert!(
        out.contains("2 shard(s) embedded (9 samples, 18 texts"),
        "{out}"
    );
    assert!(out.contains("9 samples in 2 shard(s)"), "{out}");
    // 9 samples in batches of 3 for 2 epochs: 6 steps, checkpoints at 3 and 6.
    assert!(out.contains("trained to step 6"), "{out}");
    for step in ["0000003", "0000006"] {
        assert!(
            data.join(format!("checkpoints/{step}.safetensors"))
                .is_file()
        );
    }
    let encode: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("codes/encode.json")).unwrap()).unwrap();
    assert_eq!(
        encode["augment"]["kind"], "center",
        "text-to-image takes the center crop"
    );

    let pool = &db.pool;
    let status: String = sqlx::query_scalar("SELECT status FROM pipeline_runs")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(status, "succeeded");
    let stages: Vec<(String, String)> =
        sqlx::query_as("SELECT stage, status FROM stage_runs ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let succeeded = |stage: &str| (stage.to_string(), "succeeded".to_string());
    assert_eq!(
        stages,
        ["encode", "train", "sample", "evaluate"].map(succeeded)
    );
    // Each stage run records what it did and where it wrote (the run page shows both).
    let recorded: Vec<(String, serde_json::Value, Option<String>)> =
        sqlx::query_as("SELECT stage, counts, output_path FROM stage_runs ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let counts = |stage: &str| {
        let (_, counts, output) = recorded.iter().find(|(s, ..)| s == stage).unwrap();
        (counts.clone(), output.clone().unwrap())
    };
    let (encoded, codes) = counts("encode");
    assert_eq!(
        (&encoded["images"], &encoded["texts"]),
        (&12.into(), &18.into())
    );
    assert_eq!(codes, data.join("codes").display().to_string());
    let (trained, checkpoints) = counts("train");
    assert_eq!(trained["step"], 6);
    assert!(
        trained["loss"].as_f64().is_some_and(f64::is_finite),
        "{trained}"
    );
    assert_eq!(checkpoints, data.join("checkpoints").display().to_string());
    let (sampled, samples) = counts("sample");
    assert_eq!(
        (&sampled["checkpoints"], &sampled["new_images"]),
        (&2.into(), &16.into())
    );
    let (evaluated, _) = counts("evaluate");
    assert_eq!(
        (&evaluated["checkpoints"], &evaluated["evaluations"]),
        (&2.into(), &4.into())
    );
    assert!(
        samples.starts_with(&data.display().to_string()),
        "{samples}"
    );
    // Both checkpoints at both scales, each one leaderboard row with the text-to-image
    // protocol's metrics and their intervals.
    type Row = (i64, f64, [Option<f64>; 4], [Option<f64>; 6], Option<f64>);
    let rows: Vec<Row> = sqlx::query_as::<
        _,
        (
            i64,
            f64,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
        ),
    >(
        "SELECT step, cfg_scale, fid, kid, clip_fid, clip_score,
                fid_low, fid_high, clip_fid_low, clip_fid_high, clip_score_low, clip_score_high,
                inception_score
         FROM leaderboard
         WHERE model = 't2i-test-GPT' AND benchmark = 't2i-test' ORDER BY step, cfg_scale",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.0,
            r.1,
            [r.2, r.3, r.4, r.5],
            [r.6, r.7, r.8, r.9, r.10, r.11],
            r.12,
        )
    })
    .collect();
    let keys: Vec<(i64, f64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(keys, [(3, 1.5), (3, 3.0), (6, 1.5), (6, 3.0)]);
    for (step, cfg, values, interval, is) in &rows {
        let [fid, kid, clip_fid, clip_score] = values.map(|v| v.expect("recorded"));
        assert!(
            fid.is_finite() && kid.is_finite() && clip_fid.is_finite(),
            "step {step} cfg {cfg}"
        );
        assert!(
            (-1.0..=1.0).contains(&clip_score),
            "step {step} cfg {cfg}: {clip_score}"
        );
        let [fid_low, fid_high, cf_low, cf_high, cs_low, cs_high] =
            interval.map(|v| v.expect("interval recorded"));
        assert!(fid_low <= fid && fid <= fid_high);
        assert!(cf_low <= clip_fid && clip_fid <= cf_high);
        assert!(cs_low <= clip_score && clip_score <= cs_high);
        assert_eq!(
            *is, None,
            "the text-to-image protocol has no Inception Score"
        );
    }
    let protocol: serde_json::Value = sqlx::query_scalar(
        "SELECT p.definition FROM protocols p JOIN evaluations e ON e.protocol_id = p.id LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let definition = protocol.to_string();
    assert!(
        definition.contains("clean-fid") && definition.contains("clip_image.onnx"),
        "{definition}"
    );
    // The reference folder's features are kept for the next run.
    let cached: Vec<_> = std::fs::read_dir(data.join("samples/reference-features"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let task: String = sqlx::query_scalar(
        "SELECT DISTINCT m.task FROM evaluations e JOIN checkpoints c ON c.id = e.checkpoint_id
         JOIN models m ON m.id = c.model_id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(task, "t2i");
    let sampled: serde_json::Value =
        sqlx::query_scalar("SELECT sampling_config FROM evaluations ORDER BY id LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        sampled["extra"]["sampling"]["prompts"][1], "A cup of \"coffee\".",
        "{sampled}"
    );
    let queue: Vec<String> =
        sqlx::query_scalar("SELECT status FROM checkpoint_queue ORDER BY checkpoint_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(queue, ["succeeded", "succeeded"]);
    let (task, name): (String, String) =
        sqlx::query_as("SELECT task, name FROM models WHERE name = 't2i-test-GPT'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(task, "t2i");
    assert_eq!(name, "t2i-test-GPT");
    let steps: Vec<i64> = sqlx::query_scalar("SELECT step FROM checkpoints ORDER BY step")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(steps, [3, 6]);
    let losses: i64 =
        sqlx::query_scalar("SELECT count(*) FROM training_metrics WHERE name = 'loss'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(losses, 6);

    // A second run finds everything done: no shard encoded or embedded again, no new step.
    let second = run();
    assert!(second.status.success(), "{}", text(&second));
    let out = text(&second);
    assert!(
        out.contains("0 shard(s) encoded") && out.contains("2 already done"),
        "{out}"
    );
    assert!(out.contains("0 shard(s) embedded"), "{out}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(out.contains("0 new image(s)"), "{out}");
    assert!(out.contains("0 checkpoint(s) evaluated"), "{out}");
    let evaluations: i64 = sqlx::query_scalar("SELECT count(*) FROM evaluations")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(evaluations, 4, "a second run adds no row");

    // One stage of the config on its own, recorded as a run of that stage only.
    let alone = llamagen_on(dir.path(), &db.url())
        .env("RUST_LOG", "warn")
        .args(["run", "--stage", "evaluate"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(alone.status.success(), "{}", text(&alone));
    assert!(
        text(&alone).contains("run #3: evaluate\n"),
        "{}",
        text(&alone)
    );
    let stages: Vec<String> =
        sqlx::query_scalar("SELECT stage FROM stage_runs WHERE run_id = 3 ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(stages, ["evaluate"]);

    // The trained checkpoint samples from prompts through the same T5.
    let sample = |gpt_ckpt: &std::path::Path, gpt_config: &std::path::Path, out: &str| {
        llamagen_on(dir.path(), &db.url())
            .args([
                "sample",
                "--device",
                "cpu",
                "--image-size",
                "32",
                "--num-samples",
                "4",
            ])
            .args(["--cfg-scale", "2.0", "--batch-size", "2"])
            .arg("--gpt-ckpt")
            .arg(gpt_ckpt)
            .arg("--gpt-config")
            .arg(gpt_config)
            .arg("--vq-ckpt")
            .arg(&models.vq_ckpt)
            .arg("--vq-config")
            .arg(&models.vq_config)
            .arg("--prompts")
            .arg(&prompts)
            .arg("--t5")
            .arg(repo().join("encode/tests/fixtures/t5"))
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap()
    };
    let sampled = sample(
        &data.join("checkpoints/0000006.safetensors"),
        &gpt_config,
        "samples",
    );
    assert!(sampled.status.success(), "{}", text(&sampled));
    // Each sample has its prompt beside it (i modulo the two prompts).
    for (i, prompt) in ["A tabby cat looks at the camera.", "A cup of \"coffee\"."]
        .iter()
        .cycle()
        .take(4)
        .enumerate()
    {
        assert!(dir.path().join(format!("samples/{i:06}.png")).is_file());
        let beside = std::fs::read_to_string(dir.path().join(format!("samples/{i:06}.txt")));
        assert_eq!(beside.unwrap(), *prompt, "sample {i}");
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("samples/sampling.json")).unwrap())
            .unwrap();
    assert_eq!(record["prompts"][1], "A cup of \"coffee\".");

    // `benchmark generator` with prompts prints the text-to-image protocol's metrics; it reads
    // the reference features the run cached under the same samples folder, and reuses the
    // run's samples of this checkpoint at the same settings.
    let benchmark_t2i = |mut cmd: Command, extra: &[&str]| {
        cmd.args([
            "benchmark",
            "generator",
            "--device",
            "cpu",
            "--image-size",
            "32",
        ])
        .args(["--num-samples", "4", "--batch-size", "2", "--no-record"])
        .args([
            "--eval-resolution",
            "32",
            "--model",
            "t2i",
            "--benchmark",
            "t2i-test",
        ])
        .arg("--gpt-ckpt")
        .arg(data.join("checkpoints/0000006.safetensors"))
        .arg("--gpt-config")
        .arg(&gpt_config)
        .arg("--vq-ckpt")
        .arg(&models.vq_ckpt)
        .arg("--vq-config")
        .arg(&models.vq_config)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--t5")
        .arg(repo().join("encode/tests/fixtures/t5"))
        .arg("--reference")
        .arg(data.join("shards"))
        .arg("--inception")
        .arg(&inception)
        .arg("--clip")
        .arg(repo().join("filter/tests/fixtures/models"))
        .arg("--out")
        .arg(data.join("samples"))
        .args(extra)
        .output()
        .unwrap()
    };
    let benchmarked = benchmark_t2i(
        {
            let mut cmd = llamagen_on(dir.path(), &db.url());
            cmd.env("RUST_LOG", "info");
            cmd
        },
        &[],
    );
    let out = text(&benchmarked);
    assert!(benchmarked.status.success(), "{out}");
    assert!(out.contains("CLIP score [95% interval]"), "{out}");
    assert!(
        out.contains("reference features from"),
        "the cache is read: {out}"
    );
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("1.5 "))
        .unwrap_or_else(|| panic!("no row for the default cfg 1.5: {out}"));
    assert_eq!(
        row.matches('[').count(),
        4,
        "four metrics with intervals: {row}"
    );
    // Two ranks measuring the same samples (a share each through Inception and CLIP, the
    // features and CLIP scores gathered) print what one process does.
    let json = |out: std::process::Output| -> serde_json::Value {
        let printed = text(&out);
        assert!(out.status.success(), "{printed}");
        let start = printed.find("[\n").expect("a JSON array");
        let end = printed.rfind("\n]").expect("the array's end") + 2;
        serde_json::from_str(&printed[start..end]).unwrap()
    };
    // Each scale's samples keep their features (Inception, CLIP and the CLIP scores): the
    // next run reads the file rather than making it again.
    let kept_features = || {
        use std::os::unix::fs::MetadataExt as _;
        let mut found = Vec::new();
        let mut dirs = vec![data.join("samples")];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.parent().unwrap().ends_with("features") {
                    found.push((path.clone(), std::fs::metadata(&path).unwrap().ino()));
                }
            }
        }
        found.sort();
        found
    };
    let after_first = kept_features();
    assert!(!after_first.is_empty());
    let alone = json(benchmark_t2i(
        llamagen_on(dir.path(), &db.url()),
        &["--json"],
    ));
    assert_eq!(kept_features(), after_first, "read back, not written again");
    let mut ranks = Command::new(repo().join(".venv/bin/torchrun"));
    ranks
        .args(["--standalone", "--nproc-per-node", "2", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_llamagen"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DATABASE_URL", db.url())
        .env("LLAMAGEN_DIST_TIMEOUT", "120");
    let ranked = json(benchmark_t2i(ranks, &["--json"]));
    // Each rank keeps its own share's.
    assert_eq!(kept_features().len(), after_first.len() + 2);
    let (alone, ranked) = (&alone[0]["metrics"], &ranked[0]["metrics"]);
    for name in ["fid", "kid", "clip_fid", "clip_score"] {
        let (a, r) = (
            alone[name].as_f64().unwrap(),
            ranked[name].as_f64().unwrap(),
        );
        assert!(
            (a - r).abs() <= 1e-4 * a.abs().max(1.0),
            "{name}: {a} alone, {r} on 2 ranks"
        );
    }
    // A class-conditional GPT given prompts is refused.
    let refused = sample(&models.gpt_ckpt, &models.gpt_config, "refused");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("text-conditioned"),
        "{}",
        text(&refused)
    );

    // Stage commands take the same config: its values are their defaults, flags override.
    let run_with_config = |args: &[&str]| {
        let out = llamagen_on(dir.path(), &db.url())
            .env("RUST_LOG", "warn")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        out
    };
    let with_config = |args: &[&str]| text(&run_with_config(args));
    let out = with_config(&["encode", "vq"]);
    assert!(
        out.contains("0 shard(s) encoded") && out.contains("2 already done"),
        "{out}"
    );
    // With --json, stdout is the summary alone (the human lines go to stderr).
    let json_of = |args: &[&str]| {
        let out = run_with_config(&[args, &["--json"]].concat());
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
    };
    let report = json_of(&["encode", "vq"]);
    assert_eq!(
        (&report["shards_done"], &report["shards_already_done"]),
        (&serde_json::json!(0), &serde_json::json!(2)),
        "{report}"
    );
    let report = json_of(&["train", "--no-record"]);
    assert_eq!(report["step"], 6, "{report}");
    assert!(report["last_loss"].is_null(), "no step ran: {report}");
    assert!(
        with_config(&["encode", "t5"]).contains("0 shard(s) embedded"),
        "the config's T5 and output folders"
    );
    assert!(with_config(&["train", "--no-record"]).contains("nothing to do"));
    let out = with_config(&["train", "--no-record", "--max-steps", "7"]);
    assert!(out.contains("trained to step 7"), "{out}");
    // The newest checkpoint (step 7) with the architecture the trainer wrote beside it.
    let config_samples = dir.path().join("config-samples");
    let out = with_config(&[
        "sample",
        "--num-samples",
        "4",
        "--out",
        config_samples.to_str().unwrap(),
    ]);
    assert!(out.contains("made 4 image(s)"), "{out}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_samples.join("sampling.json")).unwrap())
            .unwrap();
    let (sha256, _) =
        llamagen_pipeline::provenance::file_sha256(&data.join("checkpoints/0000007.safetensors"))
            .unwrap();
    assert_eq!(record["gpt_ckpt_sha256"], sha256.as_str());
    assert_eq!(record["prompts"][0], "A tabby cat looks at the camera.");
    // The config's Inception (the built-in default path does not exist here).
    let out = with_config(&[
        "evaluate",
        config_samples.to_str().unwrap(),
        config_samples.to_str().unwrap(),
        "--interval-resamples",
        "0",
    ]);
    assert!(out.lines().any(|l| l.starts_with("fid ")), "{out}");
}
