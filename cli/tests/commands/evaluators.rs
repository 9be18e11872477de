//! Checkpoints benchmarked as they land: a training run and two `llamagen benchmark
//! checkpoints --follow` evaluators running together, one of them SIGKILLed while it holds a
//! checkpoint; every checkpoint ends with exactly one evaluation, the killed evaluator's taken
//! over by the other once its lease ran out.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, llamagen_on, repo, text};
use llamagen_shards::webdataset::TarWriter;
use llamagen_store::testing::TestDatabase;

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `query` (a count) to reach `n`, at most `limit`.
async fn wait_for(db: &TestDatabase, query: &str, n: i64, limit: Duration) -> i64 {
    let started = Instant::now();
    loop {
        let got: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if got >= n || started.elapsed() > limit {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_evaluators_benchmark_each_checkpoint_of_a_training_run_once() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shards = data.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let photos = llamagen_ingest::testing::bundled_photos();
    for shard in 0..2 {
        let mut tar = TarWriter::create(&shards.join(format!("{shard:05}.tar"))).unwrap();
        for (i, name) in ["astronaut", "chelsea", "coffee", "chelsea"]
            .iter()
            .enumerate()
        {
            tar.append(
                &format!("{shard:05}{i:04}"),
                "jpg",
                &photos[&format!("{name}.jpg")],
            )
            .unwrap();
        }
        tar.finish().unwrap();
    }
    let models = llamagen_models::tiny::write(&dir.path().join("models"), 0).unwrap();
    let inception = dir.path().join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&repo(), &inception, 0, &[]).unwrap();
    let config = dir.path().join("c2i.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "evaluators"
stages = ["encode", "train"]

[ingest]
output = "shards"

[encode]
vq_checkpoint = "{vq}"
vq_config = "{vq_config}"
codebook_size = 64
downsample = 4
image_size = 32

[model]
task = "c2i"
gpt_config = "{gpt}"
image_size = 32
downsample = 4
num_classes = 10

[train]
global_batch_size = 4
epochs = 3
precision = "fp32"
checkpoint_every = 2

[sample]
num_samples = 8
batch_size = 8
precision = "fp32"

[evaluate]
benchmark = "evaluators-c2i"
reference = "shards"
inception_model = "{inception}"
eval_image_size = 32
metrics = ["fid", "inception_score"]
cfg_sweep = [2.0]
checkpoint_every = 2
keep_samples = "grid"
"#,
            vq = models.vq_ckpt.display(),
            vq_config = models.vq_config.display(),
            gpt = models.gpt_config.display(),
            inception = inception.display(),
        ),
    )
    .unwrap();
    let evaluator = || {
        let mut cmd = llamagen_on(dir.path(), &db.url());
        cmd.args(["benchmark", "checkpoints", "--follow", "--poll-secs", "1"])
            .args(["--lease-secs", "3", "--device", "cpu", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn");
        cmd
    };

    // The first evaluator waits for checkpoints; training starts and registers them.
    let mut killed = spawn(evaluator());
    let mut trainer = llamagen_on(dir.path(), &db.url());
    trainer.arg("run").arg(&config).env("RUST_LOG", "warn");
    let trainer = spawn(trainer);
    let claimed_by_first = format!(
        "SELECT count(*) FROM checkpoint_queue WHERE status = 'running' AND worker LIKE '%:{}-%'",
        killed.id()
    );
    let held = wait_for(&db, &claimed_by_first, 1, Duration::from_secs(120)).await;
    assert_eq!(held, 1, "the first evaluator never claimed a checkpoint");
    // SIGKILL while it holds the claim (it is loading the reference or sampling).
    killed.kill().unwrap();
    killed.wait().unwrap();
    let survivor = spawn(evaluator());
    let survivor_id = survivor.id();

    let trained = common::output_within(trainer, Duration::from_secs(600));
    assert!(trained.status.success(), "{}", text(&trained));
    assert!(
        text(&trained).contains("trained to step 6"),
        "{}",
        text(&trained)
    );
    // Steps 2, 4 and 6, each evaluated once: the killed claim is taken over after 3 s.
    let done = wait_for(
        &db,
        "SELECT count(*) FROM checkpoint_queue WHERE status = 'succeeded'",
        3,
        Duration::from_secs(240),
    )
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(survivor.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let survived = common::output_within(survivor, Duration::from_secs(300));
    assert_eq!(done, 3, "{}", text(&survived));

    let rows: Vec<(i64, i32, String, i64)> = sqlx::query_as(
        "SELECT c.step, q.attempts, q.worker, cardinality(q.evaluation_ids)::bigint
         FROM checkpoint_queue q JOIN checkpoints c ON c.id = q.checkpoint_id ORDER BY c.step",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let steps: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(steps, [2, 4, 6]);
    assert!(rows.iter().all(|r| r.3 == 1), "{rows:?}");
    let survivor_name = format!(":{survivor_id}-");
    assert!(
        rows.iter().all(|r| r.2.contains(&survivor_name)),
        "every checkpoint ends with the surviving evaluator: {rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.1 == 2).count(),
        1,
        "exactly the killed evaluator's checkpoint took a second attempt: {rows:?}"
    );
    let evaluations: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT step, count(*) FROM leaderboard WHERE model = 'evaluators-GPT'
         GROUP BY step ORDER BY step",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(evaluations, [(2, 1), (4, 1), (6, 1)]);
    // Each checkpoint's sample folder, once recorded, keeps its grid (all 8 samples, fewer
    // than the grid's 16) and sampling.json: no samples.npz, no features.
    let mut folders = Vec::new();
    let mut dirs = vec![dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.ends_with("sampling.json") {
                folders.push(d.clone());
            }
        }
    }
    assert_eq!(folders.len(), 3, "{folders:?}");
    for folder in folders {
        common::assert_only_samples_and_settings(&folder, 8);
    }
}
