//! `scripts/convert_llamagen.py` on checkpoints shaped like LlamaGen's saves (a "model" entry
//! with torch.compile prefixes and run-time buffers, optimizer state, steps, args): the output
//! loads strictly into our GPT and gives the fixture's logits; an unsafe pickle is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_close, expected, fixture, gpt_config};
use llamagen_models::gpt::Gpt;
use llamagen_models::weights;
use tch::{Device, nn::VarStore};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python(code: &str, args: &[&Path]) -> Output {
    Command::new(repo().join(".venv/bin/python"))
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("the project's virtualenv (scripts/setup.sh)")
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("scripts/convert_llamagen.py"))
        .arg(input)
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a LlamaGen-style training checkpoint holding the fixture's weights.
const MAKE_CHECKPOINT: &str = r#"
import sys, torch
from safetensors.torch import load_file
weights, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
sd = {"_orig_mod." + k: v.float() for k, v in load_file(weights).items()}
sd["_orig_mod.layers.0.attention.kv_cache.k_cache"] = torch.zeros(2, 4, 24, 16)
sd["_orig_mod.layers.0.attention.kv_cache.v_cache"] = torch.zeros(2, 4, 24, 16)
sd["_orig_mod.freqs_cis"] = torch.zeros(17, 8, 2)
ckpt = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "steps": 1234, "args": None}
if kind == "namespace":
    import argparse
    ckpt["args"] = argparse.Namespace(gpt_model="GPT-B")
torch.save(ckpt, out)
"#;

#[test]
fn converted_training_checkpoint_loads_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("0001234.pt");
    let made = python(
        MAKE_CHECKPOINT,
        &[&fixture("gpt_c2i.safetensors"), &pt, Path::new("plain")],
    );
    assert!(made.status.success(), "{}", text(&made));
    let out = dir.path().join("gpt.safetensors");
    let converted = convert(&pt, &out, &[]);
    assert!(converted.status.success(), "{}", text(&converted));
    let report: serde_json::Value = serde_json::from_slice(&converted.stdout).unwrap();
    assert_eq!(report["state_dict"], "model");
    assert_eq!(report["dropped"].as_array().unwrap().len(), 3, "{report}");

    let vs = VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), gpt_config("gpt_c2i")).unwrap();
    weights::load_strict(&vs, &out).unwrap();
    let e = expected("gpt_c2i");
    let tokens = &e["tokens"];
    let logits = tch::no_grad(|| {
        model
            .forward(
                &e["cond"],
                &tokens.narrow(1, 0, tokens.size()[1] - 1),
                None,
                false,
            )
            .unwrap()
    });
    assert_close("logits after conversion", &logits, &e["eval_logits"], 1e-5);
}

#[test]
fn pickled_objects_need_explicit_trust() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("with_args.pt");
    let made = python(
        MAKE_CHECKPOINT,
        &[&fixture("gpt_c2i.safetensors"), &pt, Path::new("namespace")],
    );
    assert!(made.status.success(), "{}", text(&made));
    let out = dir.path().join("gpt.safetensors");
    let refused = convert(&pt, &out, &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("--trust-pickle"),
        "{}",
        text(&refused)
    );
    assert!(!out.exists());
    let trusted = convert(&pt, &out, &["--trust-pickle"]);
    assert!(trusted.status.success(), "{}", text(&trusted));
    let missing = convert(&pt, &out, &["--trust-pickle", "--weights", "ema"]);
    assert!(
        text(&missing).contains("no 'ema' entry"),
        "{}",
        text(&missing)
    );
}
