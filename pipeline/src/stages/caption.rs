//! `llamagen caption`: LLaVA captions for every shard of a folder through an OpenAI-compatible
//! server (`llamagen-caption`), written next to the shards as `NNNNN_captions.parquet`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{CaptionConfig, PipelineConfig};
use crate::report::StageReport;
use crate::shard_worker::{self, Fatal, ShardDone, Sharing, StageTarget};
use crate::signals::StopSignal;
use anyhow::Context as _;
use llamagen_caption::shard::{ShardOptions, caption_shard};
use llamagen_caption::{CaptionSettings, ChatClient, ClientOptions, Prompt};
use llamagen_store::runs::ShardCounts;

use crate::shard_worker::WorkerArgs;

#[derive(Debug, clap::Args)]
pub struct CaptionArgs {
    /// The folder of webdataset shards (`llamagen ingest` or img2dataset output).
    #[arg(long)]
    pub input: PathBuf,
    /// Where `NNNNN_captions.parquet` go; the shard folder itself by default.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A pipeline config whose `[caption]` section gives the settings (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base URL of the server's OpenAI API, e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The served model's name.
    #[arg(long)]
    pub model: Option<String>,
    /// Default: the paper's "Describe this image in as much detail as possible".
    #[arg(long)]
    pub prompt: Option<String>,
    /// Longest answer, in tokens.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature of the captioning model (0: greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Whole-request limit in seconds.
    #[arg(long)]
    pub timeout_secs: Option<f64>,
    /// Retries per request on 429, 5xx, timeouts and malformed answers.
    #[arg(long)]
    pub retries: Option<u32>,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Print what the command did as JSON on stdout (its progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
}

impl CaptionArgs {
    /// The settings: the config's `[caption]` (or the defaults), then the flags.
    fn settings(&self) -> anyhow::Result<CaptionConfig> {
        let mut c = match &self.config {
            Some(path) => PipelineConfig::load(path)?.caption,
            None => CaptionConfig::default(),
        };
        if let Some(v) = &self.endpoint {
            c.endpoint = v.clone();
        }
        if let Some(v) = &self.model {
            c.model = v.clone();
        }
        if let Some(v) = &self.prompt {
            c.prompt = v.clone();
        }
        c.max_tokens = self.max_tokens.unwrap_or(c.max_tokens);
        c.temperature = self.temperature.unwrap_or(c.temperature);
        c.concurrency = self.concurrency.unwrap_or(c.concurrency);
        c.timeout_secs = self.timeout_secs.unwrap_or(c.timeout_secs);
        c.retries = self.retries.unwrap_or(c.retries);
        anyhow::ensure!(c.concurrency > 0, "--concurrency must be positive");
        anyhow::ensure!(
            c.timeout_secs.is_finite() && c.timeout_secs > 0.0,
            "--timeout-secs must be positive"
        );
        Ok(c)
    }
}

pub async fn run(args: &CaptionArgs, data_dir: &Path) -> anyhow::Result<StageReport> {
    let settings = args.settings()?;
    let out = args.out.clone().unwrap_or_else(|| args.input.clone());
    let summary = caption_folder(
        &settings,
        &args.input,
        &out,
        &args.workers.sharing(data_dir),
    )
    .await?;
    let mut report = serde_json::to_value(&summary)?;
    report["out"] = serde_json::json!(out);
    if summary.stopped {
        println!("stopped by signal; run the command again to resume");
        return Ok(StageReport::new(
            ExitCode::from(crate::signals::EXIT_STOPPED),
            report,
        ));
    }
    Ok(StageReport::success(report))
}

/// What a folder's captioning did, for the caller's report.
#[derive(Debug, Default, serde::Serialize)]
pub struct FolderSummary {
    pub shards_done: usize,
    pub shards_skipped: usize,
    pub captioned: usize,
    pub failed: usize,
    pub no_image: usize,
    /// Shards left unfinished (unreadable, or samples still without an answer), with why.
    pub unfinished: Vec<String>,
    /// A stop (SIGTERM, Ctrl-C) ended the walk early.
    pub stopped: bool,
}

/// Captions every shard of `input` this worker owns into `out`.
pub async fn caption_folder(
    settings: &CaptionConfig,
    input: &Path,
    out: &Path,
    sharing: &Sharing,
) -> anyhow::Result<FolderSummary> {
    let api_key = std::env::var("LLAMAGEN_CAPTION_API_KEY")
        .or_else(|_| std::env::var("OPENAI_API_KEY"))
        .ok()
        .filter(|k| !k.is_empty());
    let client = ChatClient::new(ClientOptions {
        endpoint: settings.endpoint.clone(),
        api_key,
        timeout: Duration::from_secs_f64(settings.timeout_secs),
        max_retries: settings.retries,
        proxy: (!settings.proxy.is_empty()).then(|| settings.proxy.clone()),
        ..ClientOptions::default()
    })?;
    let prompt = Prompt {
        model: settings.model.clone(),
        text: settings.prompt.clone(),
        max_tokens: settings.max_tokens,
        temperature: settings.temperature,
    };
    // Before the folder is pinned to this model: a wrong name must not be written down.
    client.check_model(&prompt.model).await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    CaptionSettings {
        prompt: prompt.clone(),
    }
    .check_or_write(out)?;
    let base = ShardOptions {
        concurrency: settings.concurrency as usize,
        ..ShardOptions::default()
    };
    let (all, names) = shard_worker::tar_shards(input)?;
    let totals = std::sync::Mutex::new(FolderSummary::default());
    let started = std::time::Instant::now();
    let settings_json = serde_json::to_value(settings)?;
    let target = StageTarget {
        stage: "caption",
        input,
        output: out,
        settings: &settings_json,
        run_id: None,
    };
    let stop = StopSignal::listen();
    let (client, prompt, base, totals_ref, all_ref) = (&client, &prompt, &base, &totals, &all);
    let walked = shard_worker::walk(&names, sharing, target, Some(&stop), move |i, _| async move {
        let tar = &all_ref[i];
        let options = ShardOptions {
            only: kept_by_filter(tar)?,
            ..base.clone()
        };
        match caption_shard(client, prompt, tar, out, &options).await {
            // The server cannot serve this run: every further shard would fail the same way.
            Err(e @ llamagen_caption::CaptionError::Server(_)) => Err(anyhow::Error::new(Fatal(
                anyhow::Error::new(e).context(format!("captioning {}", tar.display())),
            ))),
            // A bad shard, or one with samples still open, is reported; the others go on.
            Err(e) => Err(anyhow::anyhow!("{} not finished: {e}", tar.display())),
            Ok(None) => Ok(ShardDone::AlreadyDone),
            Ok(Some(s)) => {
                if let Ok(mut t) = totals_ref.lock() {
                    t.captioned += s.captioned;
                    t.failed += s.failed;
                    t.no_image += s.no_image;
                }
                Ok(ShardDone::Worked {
                    line: format!(
                        "shard {}: {} captioned, {} failed, {} without image, {} dropped by the filter, {} without a short caption ({} resumed) in {:.1} s",
                        s.name,
                        s.captioned,
                        s.failed,
                        s.no_image,
                        s.filtered,
                        s.without_short,
                        s.resumed,
                        s.seconds
                    ),
                    counts: ShardCounts {
                        input_rows: (s.captioned + s.failed + s.no_image + s.filtered) as i64,
                        output_rows: s.captioned as i64,
                        failed_rows: (s.failed + s.no_image) as i64,
                        ..ShardCounts::default()
                    },
                })
            }
        }
    })
    .await?;
    let mut summary = totals.into_inner().unwrap_or_default();
    summary.shards_done = walked.done;
    summary.shards_skipped = walked.kept;
    summary.unfinished = walked.failed.clone();
    summary.stopped = walked.stopped;
    println!(
        "{} shard(s) captioned ({} images, {} failed, {:.2} images/s), {} already done; captions in {}",
        summary.shards_done,
        summary.captioned,
        summary.failed,
        summary.captioned as f64 / started.elapsed().as_secs_f64().max(1e-9),
        summary.shards_skipped,
        out.display()
    );
    anyhow::ensure!(
        summary.unfinished.is_empty(),
        "{} shard(s) not finished (run again to resume them): {}",
        summary.unfinished.len(),
        summary.unfinished.join("; ")
    );
    walked.result()?;
    Ok(summary)
}

/// The keys the post-download filter kept, if it ran on this shard (`NNNNN_filter.parquet`
/// beside it): only those are worth a caption.
fn kept_by_filter(tar: &Path) -> anyhow::Result<Option<std::collections::HashSet<String>>> {
    let (Some(dir), Ok(name)) = (tar.parent(), llamagen_shards::shard_name_of(tar)) else {
        return Ok(None);
    };
    let path = llamagen_filter::output::filter_path(dir, name);
    if !path.exists() {
        return Ok(None);
    }
    let rows = llamagen_filter::output::read_filter(&path)?;
    Ok(Some(
        rows.into_iter().filter(|r| r.keep).map(|r| r.key).collect(),
    ))
}
