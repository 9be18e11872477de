//! `llamagen demo`'s steps: `llamagen run configs/demo.toml` on bundled data, plus what only a
//! demo needs.
//!
//! [`Demo::prepare`] makes up what a real deployment has already: LAION-COCO rows pointing at a
//! loopback server of the bundled photos, a loopback server speaking the OpenAI protocol in
//! place of LLaVA, tiny random-weight models, and the test fixtures linked into the data
//! folder. The demo config's seven stages then go through the runner as one recorded run
//! ([`run_pipeline`]), and the same shards once more as a text-to-image pipeline
//! ([`Demo::text_to_image`]). The rest is what a pipeline does not do: the exports to
//! LlamaGen's layouts ([`Demo::export`]), metrics on the bundled photos ([`photo_metrics`]), the
//! untrained tiny models as a leaderboard baseline ([`Demo::baseline`]), and what the database
//! holds at the end ([`summary`]). The binary prints each step.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use llamagen_caption::testing::CaptionServer;
use llamagen_evaluate::frechet::{Statistics, frechet_distance};
use llamagen_evaluate::image_quality::{Convention, reconstruction_quality};
use llamagen_evaluate::inception::{Inception, export_random_weights, stack};
use llamagen_evaluate::inception_score::{ADM_SPLIT_SIZE, inception_score};
use llamagen_evaluate::precision_recall::{ADM_K, precision_recall};
use llamagen_ingest::testing::LoopbackServer;
use llamagen_models::tiny::TinyModels;
use llamagen_store::Store;
use llamagen_store::runs::Trigger;
use ndarray::s;

use crate::benchmark::{EvaluationArgs, GeneratorArgs, KeepSamples};
use crate::config::{LrSchedule, PipelineConfig, Stage, Task, record_pipeline_run};
use crate::runner::{self, RunArgs};
use crate::sample::{SampleArgs, VqArgs};
use crate::stages::encode::{self, EncodeCommand, ExportArgs, ExportT2iArgs};
use crate::tokenizer_benchmark::TokenizerArgs;

/// The demo's pipeline config (`configs/demo.toml`), paths under the data directory.
pub const CONFIG: &str = include_str!("../../configs/demo.toml");

/// The demo's stand-ins for the outside world, alive as long as this value.
pub struct Demo {
    /// The demo config, its caption endpoint on the loopback caption server.
    pub config: PipelineConfig,
    /// The tiny random-weight GPT and VQ, under `<data_dir>/demo/models`.
    pub models: TinyModels,
    /// How many LAION-COCO rows the metadata file holds, and where it is.
    pub metadata_rows: usize,
    pub metadata: PathBuf,
    photos: LoopbackServer,
    /// Held for its lifetime: dropping it stops the server.
    _captioner: CaptionServer,
}

impl Demo {
    /// Starts the loopback servers, writes the metadata and the tiny models, and links the
    /// repository's fixtures (`root`: the checkout, whose test fixtures the demo uses) into
    /// `<data_dir>/demo`.
    pub async fn prepare(data_dir: &Path, root: &Path) -> anyhow::Result<Self> {
        let mut config = PipelineConfig::parse(CONFIG)?;
        let photos = LoopbackServer::start(llamagen_ingest::testing::bundled_photos())
            .await
            .context("starting the photo server")?;
        let metadata_rows = write_metadata(&config, &photos, data_dir)?;
        let captioner = CaptionServer::start().context("starting the caption server")?;
        config.caption.endpoint = captioner.endpoint("ok");
        let demo = data_dir.join("demo");
        let models = llamagen_models::tiny::write(&demo.join("models"), 0)?;
        link(
            &root.join("filter/tests/fixtures/models"),
            &demo.join("filter-models"),
        )?;
        link(
            &root.join("encode/tests/fixtures/t5"),
            &demo.join("t5-model"),
        )?;
        random_inception(data_dir, root)?;
        Ok(Self {
            metadata: PipelineConfig::resolve(data_dir, &config.ingest.input),
            config,
            models,
            metadata_rows,
            photos,
            _captioner: captioner,
        })
    }

    /// The photo server's base URL.
    pub fn photos_url(&self) -> String {
        self.photos.url("/")
    }

    /// The caption server's endpoint, as the config names it.
    pub fn caption_endpoint(&self) -> &str {
        &self.config.caption.endpoint
    }

    /// The demo config as a text-to-image pipeline over the shards the first run captioned:
    /// the center-crop codes, FLAN-T5 embeddings, the tiny GPT with a 120-token caption prefix,
    /// and a text-to-image benchmark (FID, KID, CLIP-FID, CLIP score) that samples from two
    /// prompts, written to `<data_dir>/demo/prompts.csv`.
    pub fn text_to_image(&self, data_dir: &Path) -> anyhow::Result<PipelineConfig> {
        // LlamaGen's layout (evaluations/t2i/coco_captions.csv): a `Prompt` column.
        std::fs::write(
            data_dir.join("demo/prompts.csv"),
            "Prompt\nA 256 by 256 picture with mean colour #9e5d34.\nA photo of a cat on a sofa.\n",
        )
        .context("writing the demo's prompts")?;
        let mut t2i = self.config.clone();
        t2i.pipeline.name = "demo-t2i".into();
        t2i.pipeline.stages = vec![Stage::Encode, Stage::Train, Stage::Sample, Stage::Evaluate];
        t2i.model.task = Task::T2i;
        // Absolute: the stages resolve a relative path under the data directory, which the
        // tiny models' paths already start with.
        t2i.model.gpt_config = std::path::absolute(&self.models.text_gpt_config)?
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
        // The text-to-image protocol: FID and KID on clean-fid's view, CLIP-FID and the CLIP
        // score with the filter's tiny random CLIP (OpenAI's ViT-B/32 in a real run).
        t2i.evaluate.clip_model = "demo/filter-models".into();
        t2i.evaluate.metrics = ["fid", "kid", "clip_fid", "clip_score"]
            .map(String::from)
            .to_vec();
        t2i.validate()?;
        Ok(t2i)
    }

    /// `llamagen encode export` and `export-t2i`: the codes (and embeddings) in the layouts
    /// LlamaGen's own training scripts read, under `<data_dir>/demo/llamagen-codes` and
    /// `llamagen-t2i`.
    pub async fn export(&self, t2i: &PipelineConfig, data_dir: &Path) -> anyhow::Result<()> {
        let under = |p: &str| PipelineConfig::resolve(data_dir, p);
        encode::run(
            &EncodeCommand::Export(ExportArgs {
                codes: under(&self.config.encode.codes_output),
                out: under("demo/llamagen-codes"),
                name: "demo32".into(),
                json: false,
            }),
            data_dir,
        )
        .await?;
        encode::run(
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

    /// The untrained tiny models as a leaderboard baseline beside the trained checkpoints:
    /// the GPT over a guidance sweep (1, 2 and 4) and the VQ's reconstructions of the shards,
    /// as `llamagen benchmark generator` and `tokenizer` would be called.
    pub fn baseline(&self, data_dir: &Path) -> (GeneratorArgs, TokenizerArgs) {
        let (config, models) = (&self.config, &self.models);
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
            keep_samples: KeepSamples::All,
            evaluation: evaluation("demo-tiny-GPT", &config.evaluate.benchmark),
        };
        let tokenizer = TokenizerArgs {
            vq,
            batch_size: 8,
            device: "cpu".into(),
            reference_features: data_dir.join("demo/baseline/reference-features"),
            reconstruction_features: data_dir.join("demo/baseline/reconstruction-features"),
            chunk_size: 256,
            forget_chunks_once_recorded: false,
            evaluation: evaluation("demo-tiny-VQ", "demo-shards-recon"),
        };
        (generator, tokenizer)
    }
}

/// One pipeline config through the runner, recorded as a demo run; its run id, or an error if
/// it did not succeed.
pub async fn run_pipeline(
    config: &PipelineConfig,
    store: &Store,
    data_dir: &Path,
) -> anyhow::Result<i64> {
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
    Ok(run_id)
}

/// `dst` pointing at `src` (a fixture folder), replacing an older link.
fn link(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if dst.is_symlink() {
        std::fs::remove_file(dst).with_context(|| format!("removing {}", dst.display()))?;
    }
    if !dst.exists() {
        std::os::unix::fs::symlink(src, dst)
            .with_context(|| format!("linking {} to {}", dst.display(), src.display()))?;
    }
    Ok(())
}

/// LAION-COCO metadata pointing at the loopback server: the bundled photos (PNG and JPEG) and
/// rows the pipeline must survive (a 404, a corrupt JPEG, a decompression bomb, an `noai`
/// opt-out, a low aesthetic score, a NaN watermark score, a duplicate URL, an ftp URL). The
/// port changes from run to run, so the shards of an earlier demo are removed.
fn write_metadata(
    config: &PipelineConfig,
    server: &LoopbackServer,
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
        std::fs::remove_dir_all(&output)
            .with_context(|| format!("removing the earlier demo's {}", output.display()))?;
    }
    if let Some(parent) = metadata.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    llamagen_ingest::reader::write_metadata(
        &metadata,
        &config.ingest.url_column,
        &config.ingest.caption_column,
        &rows,
    )?;
    Ok(rows.len())
}

/// The random-weight FID Inception, exported on first use into `<data_dir>/demo/` by the
/// checkout's `scripts/export_inception.py`.
pub fn random_inception(data_dir: &Path, root: &Path) -> anyhow::Result<PathBuf> {
    let model = data_dir.join("demo/inception-random-seed0.onnx");
    // An export from before the graph took float input cannot serve the text-to-image
    // protocol: made again.
    if model.exists() && Inception::open(&model, 1, 1).is_ok_and(|net| net.takes_float()) {
        return Ok(model);
    }
    std::fs::create_dir_all(model.parent().unwrap_or(data_dir))
        .context("creating the demo folder")?;
    tracing::info!("exporting a random-weight FID Inception with scripts/export_inception.py");
    export_random_weights(root, &model, 0, &[])?;
    Ok(model)
}

/// (name, original PNG, JPEG-degraded PNG), made by scripts/make_metric_fixtures.py from
/// scikit-image's sample photos.
const PHOTOS: [(&str, &[u8], &[u8]); 3] = [
    (
        "astronaut",
        include_bytes!("../../evaluate/tests/fixtures/astronaut_original.png"),
        include_bytes!("../../evaluate/tests/fixtures/astronaut_restored.png"),
    ),
    (
        "coffee",
        include_bytes!("../../evaluate/tests/fixtures/coffee_original.png"),
        include_bytes!("../../evaluate/tests/fixtures/coffee_restored.png"),
    ),
    (
        "chelsea",
        include_bytes!("../../evaluate/tests/fixtures/chelsea_original.png"),
        include_bytes!("../../evaluate/tests/fixtures/chelsea_restored.png"),
    ),
];

/// One bundled photo against its JPEG-degraded copy.
#[derive(Debug, Clone)]
pub struct PhotoQuality {
    pub name: &'static str,
    pub psnr: f64,
    /// SSIM in LlamaGen's convention, and in the textbook one.
    pub ssim: f64,
    pub ssim_standard: f64,
}

/// The bundled photos' figures ([`photo_metrics`]).
#[derive(Debug, Clone)]
pub struct PhotoMetrics {
    pub photos: Vec<PhotoQuality>,
    /// The distribution metrics are over this many crops per side.
    pub crops: usize,
    pub fid: f64,
    pub sfid: f64,
    pub inception_score: f64,
    pub precision: f64,
    pub recall: f64,
}

/// The bundled photos against JPEG-degraded copies (quality 25). PSNR and SSIM are real
/// figures. FID, sFID, IS and precision/recall go through the random-weight Inception
/// ([`random_inception`]), because the real weights cannot be downloaded here: they show the
/// machinery, not image quality.
pub fn photo_metrics(inception: &Path) -> anyhow::Result<PhotoMetrics> {
    let decode = |bytes: &[u8]| {
        crate::image_sets::rgb_array(image::load_from_memory(bytes).context("a bundled photo")?)
    };
    let mut photos = Vec::new();
    let mut originals = Vec::new();
    let mut degraded = Vec::new();
    for (name, original, restored) in PHOTOS {
        let (a, b) = (decode(original)?, decode(restored)?);
        let (psnr, ssim) = reconstruction_quality(a.view(), b.view(), Convention::LlamaGen)?;
        let (_, ssim_standard) = reconstruction_quality(a.view(), b.view(), Convention::Standard)?;
        photos.push(PhotoQuality {
            name,
            psnr,
            ssim,
            ssim_standard,
        });
        // Four 80 x 80 quarters per photo, so each set has enough images for k-NN
        // precision/recall.
        for (y, x) in [(0, 0), (0, 80), (80, 0), (80, 80)] {
            originals.push(a.slice(s![y..y + 80, x..x + 80, ..]).to_owned());
            degraded.push(b.slice(s![y..y + 80, x..x + 80, ..]).to_owned());
        }
    }
    let mut net = Inception::open(inception, 0, 16)?;
    let real = net.features(stack(&originals)?.view())?;
    let fake = net.features(stack(&degraded)?.view())?;
    let fid = frechet_distance(
        &Statistics::from_features(real.pool.view())?,
        &Statistics::from_features(fake.pool.view())?,
    )?;
    let sfid = frechet_distance(
        &Statistics::from_features(real.spatial.view())?,
        &Statistics::from_features(fake.spatial.view())?,
    )?;
    let is = inception_score(fake.logits.view(), ADM_SPLIT_SIZE)?;
    let pr = precision_recall(real.pool.view(), fake.pool.view(), ADM_K)?;
    Ok(PhotoMetrics {
        photos,
        crops: originals.len(),
        fid,
        sfid,
        inception_score: is.mean,
        precision: pr.precision,
        recall: pr.recall,
    })
}

/// What the database holds at the end of a demo ([`summary`]).
#[derive(Debug, Clone)]
pub struct Summary {
    /// (table, rows).
    pub tables: Vec<(String, i64)>,
    /// The latest demo runs, newest first.
    pub runs: Vec<RunSummary>,
    /// The trained checkpoints' leaderboard rows: (model, step, guidance scale, FID).
    pub trained: Vec<(String, i64, f64, f64)>,
    /// Evaluations on the whole leaderboard.
    pub evaluations: i64,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub id: i64,
    pub pipeline: String,
    pub status: String,
    pub started_at: String,
    /// (stage, status) in the order they ran.
    pub stages: Vec<(String, String)>,
}

/// Row counts, the last four runs of `configs`' pipelines, and their trained models' rows on
/// the leaderboard (FID against step, per guidance scale).
pub async fn summary(store: &Store, configs: &[&PipelineConfig]) -> anyhow::Result<Summary> {
    let status = store.status().await?;
    let tables = status
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.rows.unwrap_or(0)))
        .collect();
    let names: Vec<String> = configs.iter().map(|c| c.pipeline.name.clone()).collect();
    let history: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, pipeline, status, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS')
         FROM pipeline_runs WHERE pipeline = ANY($1) ORDER BY id DESC LIMIT 4",
    )
    .bind(&names)
    .fetch_all(store.pool())
    .await?;
    let mut runs = Vec::new();
    for (id, pipeline, status, started_at) in history {
        let stages =
            sqlx::query_as("SELECT stage, status FROM stage_runs WHERE run_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(store.pool())
                .await?;
        runs.push(RunSummary {
            id,
            pipeline,
            status,
            started_at,
            stages,
        });
    }
    let models: Vec<String> = configs.iter().map(|c| c.trained_model_name()).collect();
    let trained = sqlx::query_as(
        "SELECT model, step, cfg_scale, fid FROM leaderboard
         WHERE model = ANY($1) ORDER BY model, step, cfg_scale",
    )
    .bind(&models)
    .fetch_all(store.pool())
    .await?;
    let evaluations = sqlx::query_scalar("SELECT count(*) FROM leaderboard")
        .fetch_one(store.pool())
        .await?;
    Ok(Summary {
        tables,
        runs,
        trained,
        evaluations,
    })
}
