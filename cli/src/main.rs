//! `llamagen`: the command line of llamagen-rs. Each subcommand is one stage of the pipeline
//! (docs/architecture.md) or a service around it; this file only parses arguments and
//! dispatches.

mod benchmark;
mod config_defaults;
mod db;
mod demo;
mod doctor;
mod evaluate;
mod json_report;
mod sample;
mod serve;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use llamagen_pipeline::config::PipelineConfig;
use llamagen_pipeline::runner as run;
use llamagen_pipeline::scheduler as schedule;
use llamagen_pipeline::signals;
use llamagen_pipeline::stages::{caption, encode, filter, ingest};

#[derive(Debug, Parser)]
#[command(
    name = "llamagen",
    version,
    about = "Data pipeline and evaluation service for LlamaGen-style autoregressive image generators"
)]
struct Cli {
    /// Where shards, checkpoints and the private PostgreSQL cluster live.
    #[arg(long, global = true, env = "LLAMAGEN_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read LAION-COCO parquet, filter metadata, download and resize images into shards.
    Ingest(Box<ingest::IngestArgs>),
    /// Score downloaded images (CLIP similarity, aesthetic, watermark, size) and keep the good ones.
    Filter(Box<filter::FilterArgs>),
    /// Caption images with LLaVA through an OpenAI-compatible server.
    Caption(Box<caption::CaptionArgs>),
    /// Precompute VQ image codes and FLAN-T5 caption embeddings, and export them to
    /// LlamaGen's layouts.
    #[command(subcommand)]
    Encode(encode::EncodeCommand),
    /// Train a LlamaGen generator (or, with `train vq`, a VQ tokenizer) and record its
    /// checkpoints.
    Train(Box<train::TrainCommand>),
    /// Generate images from a checkpoint (KV cache, classifier-free guidance).
    Sample(Box<sample::SampleCommand>),
    /// Compare generated images with a reference set: FID, sFID, IS, precision, recall.
    Evaluate(Box<evaluate::EvaluateArgs>),
    /// Evaluate a checkpoint end to end and record it: sample + metrics per guidance scale
    /// (generator), or reconstructions (tokenizer).
    #[command(subcommand)]
    Benchmark(benchmark::BenchmarkCommand),
    /// Run every stage listed in a pipeline config, in order, as one recorded pipeline run.
    Run(run::RunArgs),
    /// Check the native stack (libtorch, ONNX Runtime, PostgreSQL) and the database.
    Doctor {
        /// Skip the database check.
        #[arg(long)]
        no_db: bool,
    },
    /// Run pipelines on their cron schedules, one run per pipeline at a time (across machines).
    Schedule(schedule::ScheduleArgs),
    /// Serve the leaderboard dashboard (read-only) with its JSON API and Prometheus metrics.
    Serve(serve::ServeArgs),
    /// Database maintenance.
    #[command(subcommand)]
    Db(DbCommand),
    /// Pipeline configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the whole pipeline on the bundled small data set, then serve the dashboard over it.
    Demo {
        /// Stop after printing the results instead of serving the dashboard.
        #[arg(long)]
        no_serve: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations.
    Migrate,
    /// Server, migrations and row counts.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the URL of the database in use (for psql, notebooks, BI tools).
    Url {
        /// With the private cluster: keep it running until Ctrl-C or SIGTERM, so that other
        /// clients can connect to the URL meanwhile.
        #[arg(long)]
        hold: bool,
    },
    /// Open psql on the database in use (the private cluster stays up while it runs).
    Shell {
        /// Arguments passed on to psql, after `--` (e.g. `-- -c 'SELECT * FROM leaderboard'`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        psql_args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a config with every default filled in (the built-in defaults without a file).
    Show {
        /// The config to resolve; without it, the built-in defaults.
        config: Option<PathBuf>,
        /// Override a key, e.g. `--set train.epochs=1` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
        overrides: Vec<String>,
    },
    /// Validate config files.
    Check {
        /// Pipeline configs (TOML) to validate.
        #[arg(required = true)]
        configs: Vec<PathBuf>,
        /// Override a key of every config, as `llamagen run --set` does (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match config_defaults::apply(Cli::command(), &argv) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match command
        .try_get_matches_from(&argv)
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor { no_db } => doctor::run(&cli.data_dir, !no_db).await,
        Command::Db(cmd) => db::run(&cli.data_dir, cmd).await,
        Command::Config(ConfigCommand::Show { config, overrides }) => {
            let config = match config {
                Some(path) => PipelineConfig::load_with(&path, &overrides)?,
                None => PipelineConfig::default(),
            };
            print!("{}", config.to_toml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { configs, overrides }) => {
            for path in configs {
                let config = PipelineConfig::load_with(&path, &overrides)?;
                println!(
                    "{}: ok (pipeline {:?}, stages {})",
                    path.display(),
                    config.pipeline.name,
                    config.pipeline.stages_text()
                );
                for (key, resolved) in config.paths(&cli.data_dir) {
                    let state = if resolved.exists() {
                        ""
                    } else {
                        "  (not there yet)"
                    };
                    println!("  {key:<26} {}{state}", resolved.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run::run(&args, &cli.data_dir).await,
        Command::Encode(cmd) => {
            json_report::run(cmd.json(), encode::run(&cmd, &cli.data_dir)).await
        }
        Command::Caption(args) => {
            json_report::run(args.json, caption::run(&args, &cli.data_dir)).await
        }
        Command::Filter(args) => {
            json_report::run(args.json, filter::run(&args, &cli.data_dir)).await
        }
        Command::Schedule(args) => schedule::run(&args, &cli.data_dir).await,
        Command::Evaluate(args) => evaluate::run(&args, &cli.data_dir).await,
        Command::Sample(args) => sample::run(&args),
        Command::Train(args) => train::run(&args, &cli.data_dir).await,
        Command::Benchmark(cmd) => benchmark::run(&cmd, &cli.data_dir).await,
        Command::Ingest(args) => {
            json_report::run(args.json, ingest::run(&args, &cli.data_dir)).await
        }
        Command::Demo { no_serve } => demo::run(&cli.data_dir, !no_serve).await,
        Command::Serve(args) => serve::run(&args, &cli.data_dir).await,
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info,sqlx=warn,ort=warn",
        1 => "debug,sqlx=info,ort=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory as _;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "llamagen", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
