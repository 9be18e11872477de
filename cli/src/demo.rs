//! `llamagen demo`: everything that is built, end to end, against the private database.
//!
//! Today that is the native stack, the private PostgreSQL cluster with its schema, the
//! bookkeeping of a pipeline run of the bundled demo config, and the metrics on the bundled
//! photos (JPEG-degraded copies against their originals); each stage joins this command as its
//! issue lands (the README's demo command stays the same).

use std::path::Path;
use std::process::ExitCode;

use llamagen_store::runs::{self, NewPipelineRun, Outcome, Trigger};
use llamagen_store::{Store, StoreOptions};

use llamagen_cli::config::PipelineConfig;

const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

pub async fn run(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    println!(
        "== llamagen demo (data directory {}) ==",
        data_dir.display()
    );

    println!("\n[1/5] native stack");
    let problems = crate::doctor::check_native();
    anyhow::ensure!(
        problems == 0,
        "the native stack has {problems} problem(s); run scripts/setup.sh"
    );

    println!("\n[2/5] database");
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let result = with_store(&store, data_dir).await;
    store.close().await?;
    let code = result?;
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(code)
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

    println!("\n[3/5] pipeline run of the bundled demo config");
    let config = PipelineConfig::parse(DEMO_CONFIG)?;
    let config_json = config.to_json();
    let revision = llamagen_cli::provenance::git_revision();
    let run_id = runs::create_pipeline_run(
        store.pool(),
        &NewPipelineRun {
            pipeline: &config.pipeline.name,
            trigger: Trigger::Demo,
            config: &config_json,
            git_revision: revision.as_deref(),
            scheduled_for: None,
        },
    )
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

    println!("\n[4/5] metrics on the bundled photos (JPEG quality 25 against the originals)");
    if let Err(e) = crate::demo_metrics::run(data_dir) {
        println!("  metrics skipped: {e:#}");
    }

    println!("\n[5/5] what the database holds now");
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
    println!("  leaderboard: {evaluations} evaluation(s) (filled once the evaluate stage lands)");
    Ok(ExitCode::SUCCESS)
}
