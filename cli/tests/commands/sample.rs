//! `llamagen sample` as a user runs it, on tiny random-weight models written by
//! `llamagen_models::tiny`: PNGs and an ADM npz come out, a re-run keeps finished images, a
//! deleted image comes back identical, and a folder refuses other settings.

use crate::common::text;

use std::path::Path;
use std::process::{Command, Output};

use llamagen_models::tiny;

fn sample(models: &tiny::TinyModels, out: &Path, extra: &[&str]) -> Output {
    sample_with_gpt(&models.gpt_ckpt, models, out, extra)
}

fn sample_with_gpt(gpt: &Path, models: &tiny::TinyModels, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .arg("sample")
        .arg("--gpt-ckpt")
        .arg(gpt)
        .arg("--gpt-config")
        .arg(&models.gpt_config)
        .arg("--vq-ckpt")
        .arg(&models.vq_ckpt)
        .arg("--vq-config")
        .arg(&models.vq_config)
        .args(["--device", "cpu", "--batch-size", "4"])
        .args(if extra.contains(&"--image-size") {
            &[][..]
        } else {
            &["--image-size", "32"][..]
        })
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn samples_resume_and_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny::write(&dir.path().join("models"), 3).unwrap();
    let out = dir.path().join("samples");
    let settings = [
        "--num-samples",
        "6",
        "--cfg-scale",
        "2.0",
        "--top-k",
        "16",
        "--seed",
        "5",
    ];

    let first = sample(&models, &out, &settings);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("made 6 image(s), kept 0"),
        "{}",
        text(&first)
    );
    for i in 0..6 {
        let img = image::open(out.join(format!("{i:06}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
    }
    let npz = std::fs::read(out.join("samples.npz")).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sampling.json")).unwrap()).unwrap();
    assert_eq!(record["cfg_scale"], 2.0);
    assert_eq!(record["gpt"]["block_size"], 64);

    let again = sample(&models, &out, &settings);
    assert!(
        text(&again).contains("made 0 image(s), kept 6"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read(out.join("samples.npz")).unwrap(), npz);

    let lost = out.join("000004.png");
    let before = image::open(&lost).unwrap().into_rgb8();
    std::fs::remove_file(&lost).unwrap();
    let resumed = sample(&models, &out, &settings);
    assert!(
        text(&resumed).contains("made 1 image(s), kept 5"),
        "{}",
        text(&resumed)
    );
    // The tokens are the same (per-sample seeds); the decoder ran on a batch of 1 instead of 4,
    // which may move a float across a rounding boundary, never further.
    let after = image::open(&lost).unwrap().into_rgb8();
    let worst = before
        .as_raw()
        .iter()
        .zip(after.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "a re-made sample differs by up to {worst} levels"
    );

    let resized = dir.path().join("resized");
    let run = sample(
        &models,
        &resized,
        &["--num-samples", "1", "--image-size-eval", "24"],
    );
    assert!(run.status.success(), "{}", text(&run));
    let img = image::open(resized.join("000000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (24, 24));

    let other = sample(&models, &out, &["--num-samples", "6", "--cfg-scale", "3.0"]);
    assert!(!other.status.success());
    assert!(text(&other).contains("other settings"), "{}", text(&other));
}

#[test]
fn speculative_sampling_records_its_window_and_keeps_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny::write(&dir.path().join("models"), 3).unwrap();
    let out = dir.path().join("sjd");
    let settings = ["--num-samples", "5", "--top-k", "1", "--jacobi-window", "8"];
    let run = sample(&models, &out, &settings);
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run).contains("made 5 image(s), kept 0")
            && text(&run).contains("forward passes per image (speculative Jacobi decoding)"),
        "{}",
        text(&run)
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sampling.json")).unwrap()).unwrap();
    assert_eq!(record["jacobi_window"], 8);

    // Greedy: the same images as plain decoding, whose record leaves the window out.
    let plain = dir.path().join("plain");
    let run = sample(&models, &plain, &settings[..4]);
    assert!(run.status.success(), "{}", text(&run));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.join("sampling.json")).unwrap()).unwrap();
    assert!(record.get("jacobi_window").is_none(), "{record}");
    for i in 0..5 {
        let name = format!("{i:06}.png");
        assert_eq!(
            image::open(out.join(&name)).unwrap().into_rgb8(),
            image::open(plain.join(&name)).unwrap().into_rgb8(),
            "{name}"
        );
    }

    let mixed = sample(&models, &out, &settings[..4]);
    assert!(!mixed.status.success());
    assert!(text(&mixed).contains("other settings"), "{}", text(&mixed));
}

#[test]
fn mismatched_models_and_bad_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny::write(&dir.path().join("models"), 4).unwrap();
    let out = dir.path().join("samples");
    let cases: [(&[&str], &str); 5] = [
        (&["--image-size", "48"], "needs 144"),
        (&["--num-samples", "0"], "--num-samples must be positive"),
        (&["--top-p", "0"], "top-p"),
        (&["--classes", "3,12"], "class 12"),
        (&["--precision", "bf16"], "needs CUDA"),
    ];
    for (args, message) in cases {
        let run = sample(&models, &out, args);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(text(&run).contains(message), "{args:?}: {}", text(&run));
    }
    // The tokenizer's weights given as the GPT's: every tensor is named as missing/unexpected.
    let swapped = sample_with_gpt(&models.vq_ckpt, &models, &out, &[]);
    assert!(!swapped.status.success());
    assert!(text(&swapped).contains("missing"), "{}", text(&swapped));
    assert!(text(&swapped).contains("unexpected"), "{}", text(&swapped));
}
