//! `llamagen demo`: `llamagen run configs/demo.toml` on bundled data, plus what only a demo needs.
//!
//! The demo prepares what a real deployment has already (LAION-COCO rows pointing at a loopback
//! server of the bundled photos, a loopback server speaking the OpenAI protocol in place of
//! LLaVA, tiny random-weight models, the test fixtures linked into the data folder), then runs
//! the demo config's seven stages through the pipeline runner as one recorded run, and the same
//! shards once more as a text-to-image pipeline. It ends with what a pipeline does not do: the
//! exports to LlamaGen's layouts, metrics on the bundled photos, and the untrained tiny models
//! on the leaderboard as a baseline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use llamagen_pipeline::benchmark::{EvaluationArgs, GeneratorArgs};
use llamagen_pipeline::config::{LrSchedule, PipelineConfig, Stage, Task, record_pipeline_run};
use llamagen_pipeline::runner::{self, RunArgs};
use llamagen_pipeline::sample::{SampleArgs, VqArgs};
use llamagen_store::runs::Trigger;
use llamagen_store::{Store, StoreOptions};

use crate::benchmark::{BenchmarkCommand, TokenizerArgs};

const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

pub async fn run(data_dir: &Path, serve: bool) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    println!(
        "== llamagen demo (data directory {}) ==",
        data_dir.display()
    );

    println!("\n[1/9] native stack");
    let problems = crate::doctor::check_native();
    anyhow::ensure!(
        problems == 0,
        "the native stack has {problems} problem(s); run scripts/setup.sh"
    );

    println!("\n[2/9] database");
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let result = match with_store(&store, data_dir).await {
        Ok(code) => {
            println!(
                "\ndemo finished in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            if serve {
                println!("\n[9/9] the dashboard over these results");
                let args = crate::serve::ServeArgs {
                    listen: "127.0.0.1:8080".parse()?,
                    reader_url: None,
                };
                crate::serve::serve(&store, &args, true, crate::signals::shutdown_signal())
                    .await
                    .map(|()| code)
            } else {
                println!("\n[9/9] dashboard skipped (--no-serve); `llamagen serve` starts it");
                Ok(code)
            }
        }
        Err(e) => Err(e),
    };
    store.close().await?;
    result
}

async fn with_store(store: &Store, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let status = store.status().await?;
    println!(
        "  {}: PostgreSQL {}, schema {} of {} migrations applied",
        status.backend,
        status.server_version,
        status.migrations.len() - status.pending(),
        status.migrations.len()
    );
    let Some(root) = option_env!("LLAMAGEN_ROOT").map(PathBuf::from) else {
        bail!(
            "the demo uses the repository's test fixtures; build it inside the repository (make demo)"
        );
    };

    println!("\n[3/9] what only a demo needs: loopback servers, tiny models, fixtures");
    let mut config = PipelineConfig::parse(DEMO_CONFIG)?;
    let photos =
        llamagen_ingest::testing::LoopbackServer::start(llamagen_ingest::testing::bundled_photos())
            .await?;
    let rows = write_metadata(&config, &photos, data_dir)?;
    println!(
        "  {rows} LAION-COCO rows -> {} (photos on {})",
        data_dir.join(&config.ingest.input).display(),
        photos.url("/")
    );
    let captioner = llamagen_caption::testing::CaptionServer::start()?;
    config.caption.endpoint = captioner.endpoint("ok");
    println!(
        "  caption server (OpenAI protocol) on {}",
        config.caption.endpoint
    );
    let demo = data_dir.join("demo");
    let models = llamagen_models::tiny::write(&demo.join("models"), 0)?;
    println!(
        "  tiny GPT (2 layers, width 64, 8 x 8 tokens, 10 classes) and VQ (downsample 4, 64 codes) in {}",
        demo.join("models").display()
    );
    link(
        &root.join("filter/tests/fixtures/models"),
        &demo.join("filter-models"),
    )?;
    link(
        &root.join("encode/tests/fixtures/t5"),
        &demo.join("t5-model"),
    )?;
    crate::demo_metrics::random_inception(data_dir)?;
    println!("  tiny filter models, tiny FLAN-T5 and a random-weight FID Inception linked in");

    println!("\n[4/9] llamagen run configs/demo.toml: the seven stages as one recorded run");
    run_pipeline(&config, store, data_dir).await?;

    println!(
        "\n[5/9] the same shards as a text-to-image pipeline: FLAN-T5 embeddings of the captions, a tiny text-conditioned GPT, evaluated from prompts"
    );
    let t2i = text_to_image(&config, &models, data_dir)?;
    run_pipeline(&t2i, store, data_dir).await?;

    println!("\n[6/9] exports to LlamaGen's layouts (train_c2i.py and train_t2i.py read them)");
    export_step(&config, &t2i, data_dir).await?;

    println!("\n[7/9] metrics on the bundled photos (JPEG quality 25 against the originals)");
    if let Err(e) = crate::demo_metrics::run(data_dir) {
        println!("  metrics skipped: {e:#}");
    }

    println!(
        "\n[8/9] the untrained tiny models as a baseline: a guidance sweep and the VQ's reconstructions"
    );
    baseline_step(&config, &models, data_dir).await?;

    summary(store, &[&config, &t2i]).await?;
    Ok(ExitCode::SUCCESS)
}

/// One pipeline config through the runner, recorded as a demo run; an error if it failed.
async fn run_pipeline(
    config: &PipelineConfig,
    store: &Store,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let run_id = record_pipeline_run(store.pool(), config, Trigger::Demo, None).await?;
    let args = RunArgs {
        config: PathBuf::from("configs/demo.toml"),
        run_id: Some(run_id),
        grace_secs: 5,
        overrides: Vec::new(),
        only: Vec::new(),
    };
    let code = runner::run_stages(config, &args, store, data_dir).await?;
    anyhow::ensure!(
        code == ExitCode::SUCCESS,
        "pipeline {:?} (run #{run_id}) did not succeed",
        config.pipeline.name
    );
    Ok(())
}

/// `dst` pointing at `src` (a fixture folder), replacing an older link.
fn link(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if dst.is_symlink() {
        std::fs::remove_file(dst)?;
    }
    if !dst.exists() {
        std::os::unix::fs::symlink(src, dst)
            .with_context(|| format!("linking {} to {}", dst.display(), src.display()))?;
    }
    Ok(())
}

/// LAION-COCO metadata pointing at the loopback server: the bundled photos (PNG and JPEG) and
/// rows the pipeline must survive (a 404, a corrupt JPEG, a decompression bomb, an `noai`
/// opt-out, a low aesthetic score, a NaN watermark score, a duplicate URL, an ftp URL). The port
/// changes from run to run, so the shards of an earlier demo are removed.
fn write_metadata(
    config: &PipelineConfig,
    server: &llamagen_ingest::testing::LoopbackServer,
    data_dir: &Path,
) -> anyhow::Result<usize> {
    use llamagen_ingest::reader::MetaRow;
    // WIDTH, HEIGHT, similarity, AESTHETIC_SCORE, pwatermark, punsafe as LAION-COCO has them.
    let good = [640.0, 480.0, 0.31, 5.8, 0.08, 0.01];
    let row = |path: String, scores: [f64; 6]| MetaRow {
        caption: Some(format!("a photo ({path})")),
        url: Some(server.url(&path)),
        scores,
    };
    let mut rows = Vec::new();
    for i in 0..4 {
        for name in ["astronaut", "chelsea", "coffee"] {
            rows.push(row(format!("/img/{name}.png?v={i}"), good));
            rows.push(row(format!("/img/{name}.jpg?v={i}"), good));
        }
    }
    for path in [
        "/status/404",
        "/corrupt.jpg",
        "/bomb.png",
        "/noai/coffee.png",
    ] {
        rows.push(row(path.to_string(), good));
    }
    let mut low = good;
    low[3] = 4.2;
    rows.push(row("/img/coffee.png?low".into(), low));
    let mut nan = good;
    nan[4] = f64::NAN;
    rows.push(row("/img/coffee.png?nan".into(), nan));
    rows.push(row("/img/coffee.png?v=0".into(), good));
    let mut ftp = row(String::new(), good);
    ftp.url = Some("ftp://example.com/photo.jpg".into());
    rows.push(ftp);

    let metadata = PipelineConfig::resolve(data_dir, &config.ingest.input);
    let output = PipelineConfig::resolve(data_dir, &config.ingest.output);
    if output.exists() {
        std::fs::remove_dir_all(&output)?;
    }
    if let Some(parent) = metadata.parent() {
        std::fs::create_dir_all(parent)?;
    }
    llamagen_ingest::reader::write_metadata(
        &metadata,
        &config.ingest.url_column,
        &config.ingest.caption_column,
        &rows,
    )?;
    Ok(rows.len())
}

/// The demo config as a text-to-image pipeline over the shards the first run captioned: the
/// center-crop codes, FLAN-T5 embeddings, the tiny GPT with a 120-token caption prefix, and a
/// text-to-image benchmark (FID, KID, CLIP-FID, CLIP score) that samples from two prompts.
fn text_to_image(
    config: &PipelineConfig,
    models: &llamagen_models::tiny::TinyModels,
    data_dir: &Path,
) -> anyhow::Result<PipelineConfig> {
    let demo = data_dir.join("demo");
    // LlamaGen's layout (evaluations/t2i/coco_captions.csv): a `Prompt` column.
    std::fs::write(
        demo.join("prompts.csv"),
        "Prompt\nA 256 by 256 picture with mean colour #9e5d34.\nA photo of a cat on a sofa.\n",
    )?;
    let mut t2i = config.clone();
    t2i.pipeline.name = "demo-t2i".into();
    t2i.pipeline.stages = vec![Stage::Encode, Stage::Train, Stage::Sample, Stage::Evaluate];
    t2i.model.task = Task::T2i;
    // Absolute: the stages resolve a relative path under the data directory, which the
    // tiny models' paths already start with.
    t2i.model.gpt_config = std::path::absolute(&models.text_gpt_config)?
        .display()
        .to_string();
    t2i.encode.codes_output = "demo/codes-t2i".into();
    t2i.train.output = "demo/train-t2i".into();
    t2i.train.epochs = 7;
    t2i.train.warmup_steps = 2;
    t2i.train.lr_schedule = LrSchedule::Cosine;
    t2i.train.ema = true;
    t2i.train.ema_decay = 0.999;
    t2i.evaluate.benchmark = "demo-shards-t2i".into();
    t2i.evaluate.prompts = "demo/prompts.csv".into();
    // The text-to-image protocol: FID and KID on clean-fid's view, CLIP-FID and the CLIP score
    // with the filter's tiny random CLIP (OpenAI's ViT-B/32 in a real run).
    t2i.evaluate.clip_model = "demo/filter-models".into();
    t2i.evaluate.metrics = ["fid", "kid", "clip_fid", "clip_score"]
        .map(String::from)
        .to_vec();
    t2i.validate()?;
    Ok(t2i)
}

/// `llamagen encode export` and `export-t2i`: the codes (and embeddings) in the layouts
/// LlamaGen's own training scripts read.
async fn export_step(
    c2i: &PipelineConfig,
    t2i: &PipelineConfig,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use crate::encode::{EncodeCommand, ExportArgs, ExportT2iArgs};
    let under = |p: &str| PipelineConfig::resolve(data_dir, p);
    crate::encode::run(
        &EncodeCommand::Export(ExportArgs {
            codes: under(&c2i.encode.codes_output),
            out: under("demo/llamagen-codes"),
            name: "demo32".into(),
            json: false,
        }),
        data_dir,
    )
    .await?;
    crate::encode::run(
        &EncodeCommand::ExportT2i(ExportT2iArgs {
            shards: under(&t2i.ingest.output),
            codes: under(&t2i.encode.codes_output),
            t5: under(&t2i.encode.t5_output),
            out: under("demo/llamagen-t2i"),
            json: false,
        }),
        data_dir,
    )
    .await?;
    Ok(())
}

/// The untrained tiny GPT over a guidance sweep and the tiny VQ's reconstructions of the
/// shards, on the leaderboard beside the trained checkpoints.
async fn baseline_step(
    config: &PipelineConfig,
    models: &llamagen_models::tiny::TinyModels,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let vq = VqArgs {
        vq_ckpt: models.vq_ckpt.clone(),
        vq_model: String::new(),
        vq_config: Some(models.vq_config.clone()),
        codebook_size: 0,
        codebook_embed_dim: 0,
    };
    let evaluation = |model: &str, benchmark: &str| EvaluationArgs {
        reference: PipelineConfig::resolve(data_dir, &config.evaluate.reference),
        inception: PipelineConfig::resolve(data_dir, &config.evaluate.inception_model),
        model: model.into(),
        step: 0,
        benchmark: benchmark.into(),
        center_crop: Some(models.image_size as usize),
        eval_batch_size: 32,
        threads: 0,
        no_record: false,
        json: false,
        intervals: Default::default(),
        text_to_image: Default::default(),
    };
    let sample = SampleArgs {
        gpt_ckpt: models.gpt_ckpt.clone(),
        gpt_model: String::new(),
        gpt_config: Some(models.gpt_config.clone()),
        vq: vq.clone(),
        image_size: models.image_size,
        image_size_eval: None,
        num_classes: models.num_classes,
        classes: Vec::new(),
        prompts: None,
        t5: None,
        num_samples: 16,
        start: 0,
        cfg_scale: 1.0,
        cfg_interval: -1,
        top_k: 0,
        top_p: 1.0,
        temperature: 1.0,
        jacobi_window: 0,
        seed: 0,
        batch_size: 16,
        device: "cpu".into(),
        precision: "fp32".into(),
        out: data_dir.join("demo/baseline"),
        no_npz: false,
        cancel: None,
    };
    let generator = GeneratorArgs {
        sample,
        cfg_scales: vec![1.0, 2.0, 4.0],
        evaluation: evaluation("demo-tiny-GPT", &config.evaluate.benchmark),
    };
    crate::benchmark::run(&BenchmarkCommand::Generator(Box::new(generator)), data_dir).await?;
    let tokenizer = TokenizerArgs {
        vq,
        batch_size: 8,
        device: "cpu".into(),
        reference_features: data_dir.join("demo/baseline/reference-features"),
        evaluation: evaluation("demo-tiny-VQ", "demo-shards-recon"),
    };
    crate::benchmark::run(&BenchmarkCommand::Tokenizer(Box::new(tokenizer)), data_dir).await?;
    Ok(())
}

/// What the database holds now: row counts, the demo's runs, and the trained checkpoints'
/// leaderboard rows (FID against step, per guidance scale).
async fn summary(store: &Store, configs: &[&PipelineConfig]) -> anyhow::Result<()> {
    println!("\n    what the database holds now");
    let status = store.status().await?;
    for t in &status.tables {
        println!("  {:<16} {:>8} rows", t.table, t.rows.unwrap_or(0));
    }
    let names: Vec<String> = configs.iter().map(|c| c.pipeline.name.clone()).collect();
    let history: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, pipeline, status, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS')
         FROM pipeline_runs WHERE pipeline = ANY($1) ORDER BY id DESC LIMIT 4",
    )
    .bind(&names)
    .fetch_all(store.pool())
    .await?;
    println!("  latest demo runs:");
    for (id, pipeline, status, at) in history {
        let stages: Vec<(String, String)> =
            sqlx::query_as("SELECT stage, status FROM stage_runs WHERE run_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(store.pool())
                .await?;
        let stages: Vec<String> = stages.iter().map(|(s, st)| format!("{s} {st}")).collect();
        println!(
            "    #{id:<4} {at}  {pipeline:<9} {status:<10} {}",
            stages.join(", ")
        );
    }
    let models: Vec<String> = configs.iter().map(|c| c.trained_model_name()).collect();
    let rows: Vec<(String, i64, f64, f64)> = sqlx::query_as(
        "SELECT model, step, cfg_scale, fid FROM leaderboard
         WHERE model = ANY($1) ORDER BY model, step, cfg_scale",
    )
    .bind(&models)
    .fetch_all(store.pool())
    .await?;
    println!(
        "  trained checkpoints on the leaderboard (random Inception: compare with each other only):"
    );
    for (model, step, cfg, fid) in rows {
        println!("    {model:<14} step {step:>3}  cfg {cfg:<4} FID {fid:>10.3}");
    }
    let evaluations: i64 = sqlx::query_scalar("SELECT count(*) FROM leaderboard")
        .fetch_one(store.pool())
        .await?;
    println!("  leaderboard: {evaluations} evaluation(s)");
    Ok(())
}
