//! `--config` on the stage commands whose settings are plain flags (`encode vq`, `encode t5`,
//! `train`, `sample`, `evaluate`): before the real parse, the config's values become those
//! flags' defaults. A flag given on the command line overrides its key, a flag the config
//! supplies is no longer required, and `--help` after `--config` shows the resolved values.
//! Paths resolve under `--data-dir` as `llamagen run` resolves them, because the values come
//! from the same builders the run's stages use. (`ingest`, `filter` and `caption` read their
//! section themselves.)

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use llamagen_pipeline::checkpoint_evaluator::Protocol;
use llamagen_pipeline::config::PipelineConfig;
use llamagen_pipeline::sample::SampleArgs;
use llamagen_pipeline::stages::encode::{T5Args, VqEncodeArgs};
use serde_json::{Value, json};

/// `command` with the defaults of the `--config` on `argv` when its subcommand takes them
/// here; unchanged otherwise, also when `argv` does not parse (the real parse says why).
pub fn apply(command: Command, argv: &[OsString]) -> anyhow::Result<Command> {
    let Ok(first) = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv)
    else {
        return Ok(command);
    };
    let mut names = Vec::new();
    let mut leaf = &first;
    while let Some((name, sub)) = leaf.subcommand() {
        names.push(name.to_string());
        leaf = sub;
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if !takes_defaults(&names) {
        return Ok(command);
    }
    let Ok(Some(file)) = leaf.try_get_one::<PathBuf>("config") else {
        return Ok(command);
    };
    let data_dir = first
        .get_one::<PathBuf>("data_dir")
        .cloned()
        .unwrap_or_else(|| PathBuf::from("data"));
    let values = defaults(&names, file, &data_dir)
        .with_context(|| format!("--config {}", file.display()))?;
    Ok(with_defaults(command, &names, &values, &explicit(leaf)))
}

fn takes_defaults(names: &[&str]) -> bool {
    matches!(
        names,
        ["train"] | ["sample"] | ["evaluate"] | ["encode", "vq"] | ["encode", "t5"]
    )
}

/// The flag values of the command `names` under `file`, keyed by argument id (the field
/// names of the command's clap struct; objects are flattened groups).
fn defaults(names: &[&str], file: &Path, data_dir: &Path) -> anyhow::Result<Value> {
    let config = PipelineConfig::load(file)?;
    let under = |p: &str| PipelineConfig::resolve(data_dir, p);
    Ok(match names {
        ["train"] => serde_json::to_value(llamagen_pipeline::train::args_from_config(
            &config, data_dir,
        )?)?,
        ["encode", "vq"] => serde_json::to_value(VqEncodeArgs::from_config(&config, data_dir))?,
        ["encode", "t5"] => serde_json::to_value(T5Args::from_config(&config, data_dir))?,
        ["sample"] => {
            let mut values =
                serde_json::to_value(SampleArgs::from_config(&config, data_dir, "auto")?)?;
            let map = values
                .as_object_mut()
                .context("sample settings are an object")?;
            // The checkpoint folder's own architecture (the trainer writes it there), else the
            // config's model; and its newest checkpoint. The output folder stays the flag's:
            // the config's is the evaluator's, which holds one folder per checkpoint.
            let trained = under(&config.train.output);
            let beside = trained.join("gpt_config.json");
            map.remove("gpt_ckpt");
            map.remove("out");
            map.remove("gpt_config");
            map.remove("gpt_model");
            if beside.is_file() {
                map.insert("gpt_config".into(), json!(beside));
            } else if !config.model.gpt_config.is_empty() {
                map.insert("gpt_config".into(), json!(under(&config.model.gpt_config)));
            } else {
                map.insert(
                    "gpt_model".into(),
                    json!(format!("GPT-{}", config.model.size)),
                );
            }
            if let Some(newest) = llamagen_pipeline::train::checkpoints(&trained)?.pop() {
                map.insert("gpt_ckpt".into(), json!(newest));
            }
            values
        }
        ["evaluate"] => {
            let protocol = Protocol::from_config(&config, data_dir, "cpu")?;
            json!({
                "inception": protocol.inception,
                "center_crop": protocol.center_crop,
                "interval_resamples": protocol.intervals.interval_resamples,
                "interval_blocks": protocol.intervals.interval_blocks,
                "interval_seed": protocol.intervals.interval_seed,
            })
        }
        _ => anyhow::bail!("{} takes no config defaults", names.join(" ")),
    })
}

/// The ids of the arguments given on the command line (or through their environment variable).
fn explicit(matches: &ArgMatches) -> Vec<String> {
    matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.to_string())
        .collect()
}

fn with_defaults(command: Command, names: &[&str], values: &Value, explicit: &[String]) -> Command {
    match names.split_first() {
        Some((name, rest)) => {
            command.mut_subcommand(*name, |sub| with_defaults(sub, rest, values, explicit))
        }
        None => {
            let blocked = conflicting(&command, explicit);
            set_defaults(command, values, &blocked)
        }
    }
}

/// Arguments in conflict with one given on the command line: they keep no default, so that
/// e.g. `--gpt-model B` replaces the config's GPT file rather than clashing with it.
fn conflicting(command: &Command, explicit: &[String]) -> Vec<String> {
    let given = |id: &str| explicit.iter().any(|e| e == id);
    let mut blocked = Vec::new();
    for arg in command.get_arguments() {
        let conflicts = command.get_arg_conflicts_with(arg);
        if given(arg.get_id().as_str()) {
            blocked.extend(conflicts.iter().map(|c| c.get_id().to_string()));
        } else if conflicts.iter().any(|c| given(c.get_id().as_str())) {
            blocked.push(arg.get_id().to_string());
        }
    }
    blocked
}

fn set_defaults(mut command: Command, values: &Value, blocked: &[String]) -> Command {
    let Value::Object(map) = values else {
        return command;
    };
    for (id, value) in map {
        if value.is_object() {
            command = set_defaults(command, value, blocked);
            continue;
        }
        // Positionals keep their order: a default on the first would take the second's value.
        let known = command
            .get_arguments()
            .any(|a| a.get_id() == id.as_str() && !a.is_positional());
        if !known || blocked.contains(id) {
            continue;
        }
        let texts: Vec<String> = match value {
            Value::Null | Value::Bool(false) => continue,
            Value::Array(items) => items.iter().map(text).collect(),
            other => vec![text(other)],
        };
        command = command.mut_arg(id, |arg| arg.required(false).default_values(texts));
    }
    command
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches as _};

    #[derive(Debug, Args)]
    struct Flags {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        codes: PathBuf,
        #[arg(long, default_value_t = 256)]
        size: i64,
        #[arg(long, default_value_t = 1e-4)]
        lr: f64,
        #[arg(long)]
        flip: bool,
        #[arg(long, value_delimiter = ',')]
        classes: Vec<i64>,
        #[arg(long, default_value = "GPT-B", conflicts_with = "gpt_config")]
        gpt_model: String,
        #[arg(long)]
        gpt_config: Option<PathBuf>,
    }

    fn parse(values: Value, line: &[&str]) -> Result<Flags, clap::Error> {
        let command = Flags::augment_args(Command::new("train"));
        let argv: Vec<OsString> = line.iter().map(OsString::from).collect();
        let first = command.clone().ignore_errors(true).get_matches_from(&argv);
        let command = set_defaults(
            command.clone(),
            &values,
            &conflicting(&command, &explicit(&first)),
        );
        Flags::from_arg_matches(&command.try_get_matches_from(&argv)?)
    }

    fn config_values() -> Value {
        json!({
            "codes": "/data/codes", "size": 384, "lr": 0.0003, "flip": true,
            "classes": [1, 2], "gpt_model": "", "gpt_config": "/data/gpt.json",
            "nested": {"unknown": 1}, "absent": null,
        })
    }

    #[test]
    fn config_values_become_defaults_and_flags_win() {
        let f = parse(config_values(), &["train", "--config", "c.toml"]).unwrap();
        assert_eq!(f.codes, PathBuf::from("/data/codes"));
        assert_eq!((f.size, f.lr, f.flip), (384, 0.0003, true));
        assert_eq!(f.classes, vec![1, 2]);
        assert_eq!(f.gpt_config, Some(PathBuf::from("/data/gpt.json")));

        let f = parse(config_values(), &["train", "--size", "256", "--codes", "x"]).unwrap();
        assert_eq!((f.size, f.codes), (256, PathBuf::from("x")));
    }

    #[test]
    fn a_flag_given_drops_the_defaults_it_conflicts_with() {
        let f = parse(config_values(), &["train", "--gpt-model", "GPT-L"]).unwrap();
        assert_eq!((f.gpt_model.as_str(), f.gpt_config), ("GPT-L", None));
    }

    #[test]
    fn a_required_flag_the_config_lacks_stays_required() {
        let err = parse(json!({"size": 384}), &["train"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
