//! `llamagen demo`: everything that is built, end to end, against the private database.
//!
//! Today that is the native stack, the private PostgreSQL cluster with its schema, the
//! bookkeeping of a pipeline run of the bundled demo config, the metrics on the bundled photos
//! (JPEG-degraded copies against their originals), and guided sampling from tiny random-weight
//! LlamaGen models; each stage joins this command as its issue lands (the README's demo command
//! stays the same).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use llamagen_store::runs::{self, Outcome, Trigger};
use llamagen_store::{Store, StoreOptions};

use llamagen_cli::config::PipelineConfig;

use crate::caption::WorkerArgs;

const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

pub async fn run(data_dir: &Path, serve: bool) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    println!(
        "== llamagen demo (data directory {}) ==",
        data_dir.display()
    );

    println!("\n[1/12] native stack");
    let problems = crate::doctor::check_native();
    anyhow::ensure!(
        problems == 0,
        "the native stack has {problems} problem(s); run scripts/setup.sh"
    );

    println!("\n[2/12] database");
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let result = with_store(&store, data_dir).await;
    let result = match result {
        Ok(code) => {
            println!(
                "\ndemo finished in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            if serve {
                println!("\n[12/12] the dashboard over these results");
                let args = crate::serve::ServeArgs {
                    listen: "127.0.0.1:8080".parse()?,
                    reader_url: None,
                };
                crate::serve::serve(&store, &args, true, crate::signals::shutdown_signal())
                    .await
                    .map(|()| code)
            } else {
                println!("\n[12/12] dashboard skipped (--no-serve); `llamagen serve` starts it");
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

    println!("\n[3/12] pipeline run of the bundled demo config");
    let config = PipelineConfig::parse(DEMO_CONFIG)?;
    let config_json = config.to_json();
    let revision = llamagen_cli::provenance::git_revision();
    let run_id =
        llamagen_cli::config::record_pipeline_run(store.pool(), &config, Trigger::Demo, None)
            .await?;
    println!(
        "  recorded run #{run_id} of pipeline {:?} (config sha256 {}, git {})",
        config.pipeline.name,
        &runs::config_sha256(&config_json)[..12],
        revision.as_deref().unwrap_or("unknown")
    );
    let mut unbuilt = Vec::new();
    for stage in &config.pipeline.stages {
        match crate::stage_not_built(stage) {
            Some(issue) => {
                println!("  {stage:<9} not built yet: {issue}");
                unbuilt.push(stage.as_str());
            }
            None => println!("  {stage:<9} ready"),
        }
    }
    let outcome = if unbuilt.is_empty() {
        Outcome::Succeeded
    } else {
        Outcome::Cancelled
    };
    let reason =
        (!unbuilt.is_empty()).then(|| format!("stages not built yet: {}", unbuilt.join(", ")));
    runs::finish_pipeline_run(store.pool(), run_id, outcome, reason.as_deref()).await?;
    println!("  run #{run_id} closed as {}", outcome.as_str());

    println!("\n[4/12] ingest: the bundled photos served from loopback, as LAION-COCO rows");
    ingest_step(&config, data_dir).await?;

    println!(
        "\n[5/12] filter: CLIP similarity, aesthetic and watermark scores (tiny random-weight ONNX models)"
    );
    filter_step(&config, store, data_dir).await?;

    println!(
        "\n[6/12] caption: a loopback server speaking the OpenAI protocol stands in for LLaVA"
    );
    caption_step(&config, data_dir).await?;

    println!("\n[7/12] metrics on the bundled photos (JPEG quality 25 against the originals)");
    if let Err(e) = crate::demo_metrics::run(data_dir) {
        println!("  metrics skipped: {e:#}");
    }

    println!("\n[8/12] sampling from tiny random-weight LlamaGen models (noise by design)");
    let sampling = sample_step(data_dir)?;

    println!("\n[9/12] encode the ingested shards with the tiny VQ, export, train the tiny GPT");
    let trained = encode_and_train_step(&config, &sampling, data_dir).await?;

    println!(
        "\n[10/12] text to image: FLAN-T5 embeddings of the captions (tiny T5), a tiny text-conditioned GPT trained on them, LlamaGen's t2i layout"
    );
    text_to_image_step(&config, &sampling, &trained, data_dir).await?;

    println!(
        "\n[11/12] leaderboard: benchmark the tiny models against the ingested shards (random Inception)"
    );
    benchmark_step(&config, &sampling, data_dir).await?;

    println!("\n    what the database holds now");
    let status = store.status().await?;
    for t in &status.tables {
        println!("  {:<16} {:>8} rows", t.table, t.rows.unwrap_or(0));
    }
    let history: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, status, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS'), error
         FROM pipeline_runs WHERE pipeline = $1 ORDER BY id DESC LIMIT 5",
    )
    .bind(&config.pipeline.name)
    .fetch_all(store.pool())
    .await?;
    println!("  latest runs of {:?}:", config.pipeline.name);
    for (id, status, at, error) in history {
        println!(
            "    #{id:<4} {at}  {status:<10} {}",
            error.unwrap_or_default()
        );
    }
    let evaluations: i64 = sqlx::query_scalar("SELECT count(*) FROM leaderboard")
        .fetch_one(store.pool())
        .await?;
    println!("  leaderboard: {evaluations} evaluation(s)");
    Ok(ExitCode::SUCCESS)
}

/// Serves the photos (PNG and JPEG) and the hostile responses on loopback, writes LAION-COCO
/// metadata pointing at them (with rows the metadata filter drops), and ingests it. The port
/// changes from run to run, so each demo ingests afresh.
async fn ingest_step(config: &PipelineConfig, data_dir: &Path) -> anyhow::Result<()> {
    use llamagen_ingest::reader::{MetaRow, write_metadata};
    let photos = llamagen_ingest::testing::bundled_photos();
    let server = llamagen_ingest::testing::LoopbackServer::start(photos).await?;
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

    let metadata = data_dir.join(&config.ingest.input);
    let output = data_dir.join(&config.ingest.output);
    if output.exists() {
        std::fs::remove_dir_all(&output)?;
    }
    if let Some(parent) = metadata.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_metadata(
        &metadata,
        &config.ingest.url_column,
        &config.ingest.caption_column,
        &rows,
    )?;
    println!("  {} metadata rows -> {}", rows.len(), metadata.display());
    let args = crate::ingest::IngestArgs {
        config: None,
        input: Vec::new(),
        output: None,
        worker: false,
        run: None,
        prepare_only: false,
        lease_secs: 60,
        max_shards: None,
        worker_name: Some("demo".into()),
        grace_secs: 5,
        keep_run_open: false,
    };
    let code = crate::ingest::run_with(config, &args, data_dir).await?;
    anyhow::ensure!(code == ExitCode::SUCCESS, "ingest failed");
    println!(
        "  shards in {}: NNNNN.tar (webdataset), NNNNN.parquet, NNNNN_stats.json",
        output.display()
    );
    Ok(())
}

/// Scores the ingested shards with the tiny random-weight models that
/// `scripts/export_filter_models.py --tiny-random` made for the tests, decides each sample, and
/// records the funnel after ingest's metadata funnel.
async fn filter_step(
    config: &PipelineConfig,
    store: &Store,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let Some(root) = option_env!("LLAMAGEN_ROOT").map(PathBuf::from) else {
        println!("  skipped: this binary was built outside the repository (no tiny filter models)");
        return Ok(());
    };
    let mut settings = config.filter.clone();
    settings.models = root
        .join("filter/tests/fixtures/models")
        .display()
        .to_string();
    let shards = data_dir.join(&config.ingest.output);
    let summary =
        crate::filter::filter_folder(&settings, &shards, &shards, 1, WorkerArgs::ALL).await?;
    let run_id = crate::filter::record(store, &settings, &shards, &shards, None, &summary).await?;
    summary.result()?;
    let steps: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT f.rule, f.threshold, f.rows_in, f.rows_dropped FROM filter_funnel f
         JOIN stage_runs s ON s.id = f.stage_run_id
         WHERE s.run_id = $1 ORDER BY s.started_at, s.id, f.step",
    )
    .bind(run_id)
    .fetch_all(store.pool())
    .await?;
    println!("  the funnel, metadata rules then model rules:");
    for (rule, threshold, rows_in, dropped) in steps {
        println!(
            "    {rule:<20} {:<22} {rows_in:>4} in, {dropped:>3} dropped",
            threshold.unwrap_or_default()
        );
    }
    Ok(())
}

/// Captions the kept samples through `caption::testing`'s server (it describes each image's
/// size and colour), then shows a long caption and its first-sentence short caption.
async fn caption_step(config: &PipelineConfig, data_dir: &Path) -> anyhow::Result<()> {
    use llamagen_caption::output::{CaptionStatus, captions_path, read_captions};
    let server = llamagen_caption::testing::CaptionServer::start()?;
    let mut settings = config.caption.clone();
    settings.endpoint = server.endpoint("ok");
    settings.model = llamagen_caption::testing::MODEL.into();
    let shards = data_dir.join(&config.ingest.output);
    crate::caption::caption_folder(&settings, &shards, &shards, WorkerArgs::ALL).await?;
    let first = WorkerArgs::ALL.tar_files(&shards)?;
    if let Some(name) = first
        .first()
        .and_then(|t| llamagen_shards::shard_name_of(t).ok())
    {
        let rows = read_captions(&captions_path(&shards, name))?;
        if let Some(r) = rows.iter().find(|r| r.status == CaptionStatus::Ok) {
            println!("  {} long:  {}", r.key, r.caption.as_deref().unwrap_or(""));
            println!(
                "  {} short: {}",
                r.key,
                r.short_caption.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Writes a tiny VQ + GPT pair (seeded, so a second demo finds the same weights and keeps the
/// images it made) and samples eight 32 px images with guidance through `llamagen sample`'s code.
fn sample_step(data_dir: &Path) -> anyhow::Result<crate::sample::SampleArgs> {
    let dir = data_dir.join("demo");
    let models = llamagen_models::tiny::write(&dir.join("models"), 0)?;
    let args = crate::sample::SampleArgs {
        gpt_ckpt: models.gpt_ckpt.clone(),
        gpt_model: String::new(),
        gpt_config: Some(models.gpt_config.clone()),
        vq: crate::sample::VqArgs {
            vq_ckpt: models.vq_ckpt.clone(),
            vq_model: String::new(),
            vq_config: Some(models.vq_config.clone()),
            codebook_size: 0,
            codebook_embed_dim: 0,
        },
        image_size: models.image_size,
        image_size_eval: None,
        num_classes: models.num_classes,
        classes: Vec::new(),
        prompts: None,
        t5: None,
        num_samples: 8,
        start: 0,
        cfg_scale: 4.0,
        cfg_interval: -1,
        top_k: 0,
        top_p: 1.0,
        temperature: 1.0,
        seed: 0,
        batch_size: 8,
        device: "cpu".into(),
        precision: "fp32".into(),
        out: dir.join("samples"),
        no_npz: false,
    };
    let report = crate::sample::sample(&args)?;
    println!(
        "  GPT: 2 layers, width 64, 8 x 8 tokens, 10 classes; VQ: downsample 4, 64 codes ({})",
        models.gpt_ckpt.display()
    );
    println!(
        "  {} image(s) made, {} kept from an earlier run; guidance 4.0, top-k 0, top-p 1: \
         GPT {:.2} s, VQ decode {:.2} s",
        report.made, report.skipped, report.gpt_seconds, report.decode_seconds
    );
    println!(
        "  written to {}/000000.png ... 000007.png and samples.npz",
        args.out.display()
    );
    Ok(args)
}

/// The shards through `llamagen encode vq` (center + flip, 32 px) and `encode export`, then a
/// short `llamagen train` of the tiny GPT on them: the loss curve the dashboard draws.
async fn encode_and_train_step(
    config: &PipelineConfig,
    sampling: &crate::sample::SampleArgs,
    data_dir: &Path,
) -> anyhow::Result<crate::train::TrainArgs> {
    use crate::encode::{EncodeCommand, ExportArgs, VqEncodeArgs};

    let dir = data_dir.join("demo");
    let codes = dir.join("codes");
    let encode = VqEncodeArgs {
        input: data_dir.join(&config.ingest.output),
        out: codes.clone(),
        vq: sampling.vq.clone(),
        image_size: sampling.image_size as usize,
        ten_crop: false,
        crop_range: 1.1,
        no_flip: false,
        batch_size: 16,
        images_per_shard: 1000,
        device: "cpu".into(),
        workers: WorkerArgs::ALL,
        leases: crate::encode::LeaseArgs::OFF,
    };
    crate::encode::run(&EncodeCommand::Vq(Box::new(encode)), data_dir).await?;
    let exported = dir.join("llamagen-codes");
    crate::encode::run(
        &EncodeCommand::Export(ExportArgs {
            codes,
            out: exported.clone(),
            name: "demo32".into(),
        }),
        data_dir,
    )
    .await?;
    let vocab = crate::sample::VqArgs::config(&sampling.vq)?.codebook_size;
    let train = crate::train::TrainArgs {
        codes: exported,
        gpt_model: String::new(),
        gpt_config: sampling.gpt_config.clone(),
        image_size: sampling.image_size,
        downsample: sampling.image_size / 8,
        vocab_size: vocab,
        num_classes: sampling.num_classes,
        global_batch_size: 8,
        gradient_accumulation: 1,
        lr_per_256: 0.05,
        weight_decay: 0.05,
        grad_clip: 1.0,
        warmup_steps: 0,
        lr_schedule: "constant".into(),
        max_steps: 40,
        checkpoint_every: 20,
        log_every: 5,
        seed: 0,
        device: "cpu".into(),
        mixed_precision: llamagen_models::train::MixedPrecision::None,
        out: dir.join("train"),
        model: "demo-tiny-GPT-trained".into(),
        no_record: false,
        t5: None,
        block_shards: 16,
        short_caption_probability: 0.3,
        ema_decay: 0.0,
    };
    crate::train::run(&train, data_dir).await?;
    Ok(train)
}

/// The captions through FLAN-T5 (`llamagen encode t5` with the tiny random T5 that
/// scripts/export_t5.py made for the tests), a tiny text-conditioned GPT trained on the codes
/// and embeddings shards as they are, and the export to LlamaGen's text-to-image layout.
async fn text_to_image_step(
    config: &PipelineConfig,
    sampling: &crate::sample::SampleArgs,
    c2i: &crate::train::TrainArgs,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use crate::encode::{EncodeCommand, ExportT2iArgs, T5Args};

    let Some(root) = option_env!("LLAMAGEN_ROOT").map(PathBuf::from) else {
        println!("  skipped: this binary was built outside the repository (no tiny T5)");
        return Ok(());
    };
    let dir = data_dir.join("demo");
    let shards = data_dir.join(&config.ingest.output);
    let t5 = dir.join("t5");
    crate::encode::run(
        &EncodeCommand::T5(T5Args {
            captions: shards.clone(),
            t5: root.join("encode/tests/fixtures/t5"),
            out: t5.clone(),
            max_length: llamagen_encode::t5::MAX_LENGTH,
            batch_size: 16,
            threads: 1,
            workers: WorkerArgs::ALL,
            leases: crate::encode::LeaseArgs::OFF,
        }),
        data_dir,
    )
    .await?;
    crate::encode::run(
        &EncodeCommand::ExportT2i(ExportT2iArgs {
            shards,
            codes: dir.join("codes"),
            t5: t5.clone(),
            out: dir.join("llamagen-t2i"),
        }),
        data_dir,
    )
    .await?;
    // The sampling step's tiny GPT, with a 120-token caption prefix instead of a class.
    let gpt_path = sampling
        .gpt_config
        .clone()
        .context("the tiny GPT's config")?;
    let mut gpt: llamagen_models::gpt::GptConfig =
        serde_json::from_slice(&std::fs::read(&gpt_path)?)?;
    gpt.conditioning = llamagen_models::gpt::Conditioning::Text;
    gpt.cls_token_num = 120;
    gpt.caption_dim = 32;
    let t2i_config = dir.join("models/gpt_t2i.json");
    std::fs::write(&t2i_config, serde_json::to_vec_pretty(&gpt)?)?;
    // The class-conditional run's settings, on our shards with captions and a cosine schedule.
    let train = crate::train::TrainArgs {
        codes: dir.join("codes"),
        t5: Some(t5),
        gpt_config: Some(t2i_config),
        warmup_steps: 2,
        lr_schedule: "cosine".into(),
        max_steps: 20,
        out: dir.join("train-t2i"),
        model: "demo-tiny-GPT-t2i".into(),
        ema_decay: 0.999,
        ..c2i.clone()
    };
    crate::train::run(&train, data_dir).await?;
    // The trained checkpoint draws from prompts through the same T5.
    let prompts = dir.join("prompts.txt");
    std::fs::write(
        &prompts,
        "A 256 by 256 picture with mean colour #9e5d34.\nA photo of a cat on a sofa.\n",
    )?;
    let mut sample = sampling.clone();
    sample.gpt_ckpt = train
        .out
        .join(format!("{:07}.safetensors", train.max_steps));
    sample.gpt_config = train.gpt_config.clone();
    sample.prompts = Some(prompts);
    sample.t5 = Some(root.join("encode/tests/fixtures/t5"));
    sample.num_samples = 4;
    sample.out = dir.join("samples-t2i");
    let report = crate::sample::sample(&sample)?;
    println!(
        "  {} image(s) from 2 prompts ({} kept from an earlier run) in {}",
        report.made,
        report.skipped,
        sample.out.display()
    );
    Ok(())
}

/// Records the tiny GPT over a guidance sweep and the tiny VQ's reconstructions, with the
/// ingested shards as the reference set: the leaderboard and model pages the dashboard shows.
async fn benchmark_step(
    config: &PipelineConfig,
    sampling: &crate::sample::SampleArgs,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use crate::benchmark::{BenchmarkCommand, EvaluationArgs, GeneratorArgs, TokenizerArgs};

    let evaluation = |model: &str, benchmark: &str| -> anyhow::Result<EvaluationArgs> {
        Ok(EvaluationArgs {
            reference: data_dir.join(&config.ingest.output),
            inception: crate::demo_metrics::random_inception(data_dir)?,
            model: model.into(),
            step: 0,
            benchmark: benchmark.into(),
            center_crop: None,
            eval_batch_size: 32,
            threads: 0,
            no_record: false,
        })
    };
    let mut sample = sampling.clone();
    sample.num_samples = 16;
    sample.batch_size = 16;
    sample.out = data_dir.join("demo/benchmark");
    let generator = GeneratorArgs {
        sample,
        cfg_scales: vec![1.0, 2.0, 4.0],
        evaluation: evaluation("demo-tiny-GPT", "demo-shards-c2i")?,
    };
    crate::benchmark::run(&BenchmarkCommand::Generator(Box::new(generator)), data_dir).await?;
    let tokenizer = TokenizerArgs {
        vq: sampling.vq.clone(),
        batch_size: 8,
        device: "cpu".into(),
        evaluation: evaluation("demo-tiny-VQ", "demo-shards-recon")?,
    };
    crate::benchmark::run(&BenchmarkCommand::Tokenizer(Box::new(tokenizer)), data_dir).await?;
    Ok(())
}
