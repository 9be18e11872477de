//! Scoring speed, ours against the Python reference pipeline on the same ONNX models, same run.
//!
//! cargo bench -p llamagen-filter --bench scorers_vs_python -- [--arch ViT-B-32] [--count 64]
//!     [--batch 32] [--tiny]
//!
//! The models are full-size architectures with random weights (the speed does not depend on
//! the values), exported once by `scripts/export_filter_models.py --random-arch ARCH` into
//! `target/filter-bench-ARCH/`: the open_clip CLIP ARCH image and text towers, the aesthetic MLP
//! on its embedding, and efficientnet_b3a with LAION's watermark head. `--tiny` uses the test
//! fixtures' tiny models instead (preprocessing cost alone). Both sides decode the three PNG
//! fixtures (451 x 300, 300 x 200, 210 x 150) repeated to `--count`, preprocess for both image
//! models, tokenize a caption per image and run the four models in batches of `--batch`. The
//! peer is scripts/bench_filter.py (Pillow, open_clip's transforms and tokenizer, onnxruntime).

use std::path::{Path, PathBuf};
use std::time::Instant;

use llamagen_filter::preprocess::decode_rgb;
use llamagen_filter::scorers::Scorers;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() {
    let (mut arch, mut count, mut batch, mut tiny) =
        ("ViT-B-32".to_string(), 64usize, 32usize, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--arch" => arch = args.next().unwrap_or(arch),
            "--count" => count = args.next().and_then(|s| s.parse().ok()).unwrap_or(64),
            "--batch" => batch = args.next().and_then(|s| s.parse().ok()).unwrap_or(32),
            "--tiny" => tiny = true,
            _ => {} // cargo bench passes --bench
        }
    }
    let python = root().join(".venv/bin/python");
    let fixtures = root().join("filter/tests/fixtures");
    let models = if tiny {
        fixtures.join("models")
    } else {
        let dir = root().join(format!("target/filter-bench-{arch}"));
        if !dir.join("filter_models.json").exists() {
            println!(
                "exporting {arch} and efficientnet_b3a with random weights into {}",
                dir.display()
            );
            let status = std::process::Command::new(&python)
                .arg(root().join("scripts/export_filter_models.py"))
                .arg(&dir)
                .args(["--random-arch", &arch])
                .status()
                .expect("running the export script");
            assert!(status.success(), "export failed");
        }
        dir
    };
    let names = ["chelsea", "coffee", "astronaut"];
    let pngs: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(fixtures.join(format!("{n}.png"))).unwrap())
        .collect();
    let captions: Vec<String> = (0..count)
        .map(|i| format!("a photo number {i} of {}", names[i % names.len()]))
        .collect();

    let mut scorers = Scorers::open(&models, 0).unwrap();
    // One warm-up batch on each side, as ONNX Runtime plans its first run.
    let warm = decode_rgb(&pngs[0], 1 << 26).unwrap();
    scorers.score(&[warm.view()], &[Some("warm up")]).unwrap();
    let started = Instant::now();
    let mut done = 0;
    for lo in (0..count).step_by(batch.max(1)) {
        let idx: Vec<usize> = (lo..(lo + batch).min(count)).collect();
        let images: Vec<_> = idx
            .iter()
            .map(|&i| decode_rgb(&pngs[i % pngs.len()], 1 << 26).unwrap())
            .collect();
        let views: Vec<_> = images.iter().map(|i| i.view()).collect();
        let texts: Vec<Option<&str>> = idx.iter().map(|&i| Some(captions[i].as_str())).collect();
        let scores = scorers.score(&views, &texts).unwrap();
        done += scores.len();
    }
    let ours = done as f64 / started.elapsed().as_secs_f64();

    let images_dir = tempfile::tempdir().unwrap();
    for (n, png) in names.iter().zip(&pngs) {
        std::fs::write(images_dir.path().join(format!("{n}.png")), png).unwrap();
    }
    println!(
        "filter scoring: {count} images, batch {batch}, models {} ({})",
        models.display(),
        scorers.spec.clip.source
    );
    println!("{:<56} {:>9}", "", "images/s");
    println!(
        "{:<56} {:>9.1}",
        "ours (image crate, Pillow's resampler, tokenizers, ort)", ours
    );
    let out = std::process::Command::new(&python)
        .arg(root().join("scripts/bench_filter.py"))
        .arg("--models")
        .arg(&models)
        .arg("--images")
        .arg(images_dir.path())
        .args(["--count", &count.to_string(), "--batch", &batch.to_string()])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let v: serde_json::Value =
                serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
                    .unwrap_or_default();
            let theirs = v["images_per_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<56} {:>9.1}",
                "python (Pillow, open_clip transforms, onnxruntime)", theirs
            );
            println!("ours / python: {:.2}x", ours / theirs);
        }
        Ok(out) => println!(
            "python peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("python peer not run: {e}"),
    }
}
