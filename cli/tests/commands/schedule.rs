//! `llamagen schedule` and `llamagen run` end to end on a real PostgreSQL and a loopback HTTP
//! server: two schedulers competing for one fast cron pipeline never run it twice at once,
//! missed ticks follow the stated policy, and SIGTERM releases the shard in hand.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, output_within, scheduled_ingest as pipeline, text};
use llamagen_ingest::reader::{MetaRow, write_metadata};
use llamagen_ingest::testing::{LoopbackServer, bundled_photos};
use llamagen_store::testing::TestDatabase;

fn llamagen(dir: &Path, db: &TestDatabase) -> Command {
    let mut cmd = common::llamagen_on(dir, &db.url());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

async fn poll<T>(limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_shard_in_hand_and_the_run_resumes() {
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Shard 0 hangs for the whole 60 s timeout; shard 1 is a photo.
    let cfg = pipeline(
        dir.path(),
        "sigterm",
        "0 3 * * *",
        "skip",
        &[server.url("/hang?x"), server.url("/img/coffee.jpg")],
        60.0,
    );
    let child = llamagen(dir.path(), &db)
        .args(["run", "--grace-secs", "1"])
        .arg(&cfg)
        .spawn()
        .unwrap();
    poll(Duration::from_secs(60), async || {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM shards WHERE status = 'running'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (running == 1).then_some(())
    })
    .await;
    let sent = Instant::now();
    sigterm(&child);
    let out = output_within(child, Duration::from_secs(30));
    let log = text(&out);
    assert_eq!(out.status.code(), Some(143), "{log}");
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "took {:?}",
        sent.elapsed()
    );
    assert!(log.contains("released unfinished"), "{log}");
    let shard0: (String, i32, i32, Option<String>) = sqlx::query_as(
        "SELECT status, failures, expiries, worker FROM shards WHERE shard_index = 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        shard0,
        ("pending".into(), 0, 0, None),
        "released, counted neither as a failure nor as an expiry"
    );
    let run: (String, String) = sqlx::query_as("SELECT status, trigger FROM pipeline_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        run,
        ("running".into(), "manual".into()),
        "the run stays open to resume"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_never_run_a_pipeline_twice_at_once() {
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Every second; the first run waits 2 s on the hanging URL, so ticks fall while it runs.
    let cfg = pipeline(
        dir.path(),
        "every-second",
        "* * * * * *",
        "skip",
        &[server.url("/hang?y"), server.url("/img/astronaut.png")],
        2.0,
    );
    let spawn = || {
        llamagen(dir.path(), &db)
            .arg("schedule")
            .arg(&cfg)
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    tokio::time::sleep(Duration::from_secs(7)).await;
    sigterm(&a);
    sigterm(&b);
    let (out_a, out_b) = (
        output_within(a, Duration::from_secs(60)),
        output_within(b, Duration::from_secs(60)),
    );
    assert!(out_a.status.success(), "{}", text(&out_a));
    assert!(out_b.status.success(), "{}", text(&out_b));
    let logs = format!("{}\n----\n{}", text(&out_a), text(&out_b));

    let ticks: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT outcome, run_id FROM schedule_ticks ORDER BY scheduled_for")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(ticks.len() >= 5, "{ticks:?}\n{logs}");
    let count = |o: &str| ticks.iter().filter(|t| t.0 == o).count();
    assert!(count("succeeded") >= 1, "{ticks:?}\n{logs}");
    assert!(
        count("skipped_busy") >= 1,
        "a tick fell during the 2 s run: {ticks:?}"
    );
    assert_eq!(
        count("started"),
        0,
        "every started tick was closed: {ticks:?}"
    );
    // Exactly the run ticks carry runs, each run once.
    type Time = chrono::DateTime<chrono::Utc>;
    let runs: Vec<(i64, Time, Option<Time>, String, String)> =
        sqlx::query_as(
            "SELECT id, started_at, finished_at, status, trigger FROM pipeline_runs ORDER BY started_at",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut tick_runs: Vec<i64> = ticks.iter().filter_map(|t| t.1).collect();
    tick_runs.sort();
    let mut run_ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
    run_ids.sort();
    assert_eq!(tick_runs, run_ids, "{ticks:?} {runs:?}");
    for r in &runs {
        assert_eq!(r.4, "schedule");
        assert_ne!(r.3, "running", "run #{} left running", r.0);
    }
    // Never two runs at once.
    for pair in runs.windows(2) {
        let previous_end = pair[0].2.unwrap();
        assert!(
            pair[1].1 >= previous_end,
            "run #{} started at {} before run #{} ended at {previous_end}\n{logs}",
            pair[1].0,
            pair[1].1,
            pair[0].0
        );
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_are_skipped_or_run_once() {
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let urls = [server.url("/img/chelsea.jpg")];
    let hourly = "0 0 * * * *";
    let skip = pipeline(dir.path(), "skips", hourly, "skip", &urls, 5.0);
    let catch_up = pipeline(dir.path(), "catches-up", hourly, "run_once", &urls, 5.0);
    // Both last ran three hours ago: two or three hourly ticks were missed since.
    for name in ["skips", "catches-up"] {
        sqlx::query(
            "INSERT INTO schedule_ticks (pipeline, scheduled_for, outcome)
             VALUES ($1, date_trunc('hour', now()) - interval '3 hours', 'succeeded')",
        )
        .bind(name)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let child = llamagen(dir.path(), &db)
        .arg("schedule")
        .arg(&skip)
        .arg(&catch_up)
        .spawn()
        .unwrap();
    let outcome = poll(Duration::from_secs(60), async || {
        sqlx::query_scalar::<_, String>(
            "SELECT outcome FROM schedule_ticks WHERE pipeline = 'catches-up'
             AND scheduled_for = date_trunc('hour', now()) AND outcome <> 'started'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    })
    .await;
    sigterm(&child);
    let out = output_within(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(outcome, "succeeded", "{}", text(&out));

    let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT pipeline, outcome, run_id FROM schedule_ticks
         WHERE scheduled_for = date_trunc('hour', now()) ORDER BY pipeline",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("skips", "skipped_missed")
    );
    assert!(rows[1].2.is_none());
    let run = rows[0].2.expect("the catch-up tick has its run");
    let (status, scheduled): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, scheduled_for FROM pipeline_runs WHERE id = $1")
            .bind(run)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "succeeded");
    assert!(scheduled.is_some());
    // One catch-up run, not one per missed tick.
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM pipeline_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    db.drop_database().await;
}

/// The shipped nightly text-to-image config, as the scheduler runs it, with `--set` pointing
/// its inputs, servers and models at loopback servers and the project's tiny models: one tick
/// runs all seven stages and ends with the trained checkpoint on the leaderboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_of_the_shipped_text_to_image_config_runs_every_stage() {
    let server = LoopbackServer::start(bundled_photos()).await.unwrap();
    let captioner = llamagen_caption::testing::CaptionServer::start().unwrap();
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = common::repo();
    let metadata = dir.path().join("metadata.parquet");
    let rows: Vec<MetaRow> = (0..4)
        .flat_map(|i| {
            ["astronaut", "chelsea", "coffee"]
                .map(|name| common::metadata_row(server.url(&format!("/img/{name}.jpg?v={i}"))))
        })
        .collect();
    write_metadata(&metadata, "URL", "TEXT", &rows).unwrap();
    let models = llamagen_models::tiny::write(&dir.path().join("models"), 0).unwrap();
    let gpt_config = models.text_gpt_config.clone();
    let inception = dir.path().join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&root, &inception, 0, &[]).unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "A cat on a sofa.\nA cup of coffee.\n").unwrap();
    let path = |p: &Path| p.display().to_string();
    let sets = [
        "pipeline.schedule=[\"*/5 * * * * *\"]".to_string(),
        format!("ingest.input={}", path(&metadata)),
        "ingest.output=shards".into(),
        "ingest.rows_per_shard=6".into(),
        "ingest.allow_private_addresses=true".into(),
        format!(
            "filter.models={}",
            path(&root.join("filter/tests/fixtures/models"))
        ),
        "filter.min_width=128".into(),
        "filter.min_height=128".into(),
        "filter.min_aesthetic=-10".into(),
        "filter.min_clip_similarity=-1".into(),
        "filter.max_watermark=1.0".into(),
        format!("caption.endpoint={}", captioner.endpoint("ok")),
        format!("caption.model={}", llamagen_caption::testing::MODEL),
        format!("encode.vq_checkpoint={}", path(&models.vq_ckpt)),
        format!("encode.vq_config={}", path(&models.vq_config)),
        "encode.codebook_size=64".into(),
        "encode.downsample=4".into(),
        "encode.image_size=32".into(),
        format!("encode.t5={}", path(&root.join("encode/tests/fixtures/t5"))),
        format!("model.gpt_config={}", path(&gpt_config)),
        "model.image_size=32".into(),
        "model.downsample=4".into(),
        "train.global_batch_size=4".into(),
        "train.epochs=1".into(),
        "train.precision=\"fp32\"".into(),
        "sample.num_samples=4".into(),
        "sample.batch_size=4".into(),
        "evaluate.reference=shards".into(),
        format!("evaluate.inception_model={}", path(&inception)),
        "evaluate.eval_image_size=32".into(),
        format!("evaluate.prompts={}", path(&prompts)),
        format!(
            "evaluate.clip_model={}",
            path(&root.join("filter/tests/fixtures/models"))
        ),
        "evaluate.metrics=[\"fid\", \"clip_score\"]".into(),
    ];
    let mut scheduler = llamagen(dir.path(), &db);
    scheduler
        .arg("schedule")
        .arg(root.join("configs/laion-coco-t2i.toml"))
        .env("RUST_LOG", "warn");
    for set in &sets {
        scheduler.args(["--set", set]);
    }
    let scheduler = scheduler.spawn().unwrap();
    let outcome = poll(Duration::from_secs(400), async || {
        sqlx::query_scalar::<_, String>(
            "SELECT outcome FROM schedule_ticks
             WHERE pipeline = 'laion-coco-t2i' AND outcome IN ('succeeded', 'failed')
             ORDER BY scheduled_for LIMIT 1",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    })
    .await;
    sigterm(&scheduler);
    let out = output_within(scheduler, Duration::from_secs(120));
    assert_eq!(outcome, "succeeded", "{}", text(&out));

    let run: i64 = sqlx::query_scalar(
        "SELECT run_id FROM schedule_ticks WHERE outcome = 'succeeded' ORDER BY scheduled_for LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let stages: Vec<(String, String)> =
        sqlx::query_as("SELECT stage, status FROM stage_runs WHERE run_id = $1 ORDER BY id")
            .bind(run)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let names: Vec<&str> = stages.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "ingest", "filter", "caption", "encode", "train", "sample", "evaluate"
        ]
    );
    assert!(stages.iter().all(|(_, st)| st == "succeeded"), "{stages:?}");
    let (trigger, status): (String, String) =
        sqlx::query_as("SELECT trigger, status FROM pipeline_runs WHERE id = $1")
            .bind(run)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (trigger.as_str(), status.as_str()),
        ("schedule", "succeeded")
    );
    let rows: Vec<(String, f64, String)> = sqlx::query_as(
        "SELECT model, cfg_scale, benchmark FROM leaderboard WHERE model = 'laion-coco-t2i-GPT'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [(
            "laion-coco-t2i-GPT".to_string(),
            7.5,
            "coco30k-t2i".to_string()
        )]
    );
}
