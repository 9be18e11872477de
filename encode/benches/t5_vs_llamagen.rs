//! FLAN-T5 caption embedding speed, ours against LlamaGen's extraction loop, same weights,
//! same captions, same run.
//!
//! cargo bench -p llamagen-encode --bench t5_vs_llamagen -- [--llamagen DIR] [--arch flan-t5-base]
//!     [--captions 64] [--batch 32]
//!
//! scripts/export_t5.py exports `--arch` (flan-t5-small, -base or -xl shapes) with seeded
//! random weights (the speed does not depend on their values) as ONNX for us and as a
//! Hugging Face folder for LlamaGen. The captions are LLaVA-style paragraphs (2 to 6
//! sentences). Ours runs `T5Encoder::embed` (caption cleaning, batches grouped by length and
//! padded to their longest caption) and stores f16 valid tokens, with `--batch` and with 1;
//! LlamaGen's side is scripts/bench_t5.py, the loop of language/extract_t5_feature.py
//! (T5Embedder, one caption padded to 120 per call, an f32 npy per caption). `--llamagen`
//! (or `LLAMAGEN_REPO`) names a checkout of FoundationVision/LlamaGen; without one only our
//! figures print.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_encode::embeddings::{FieldEmbeddings, ShardEmbeddings};
use llamagen_encode::t5::{MAX_LENGTH, T5Encoder};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const SENTENCES: [&str; 12] = [
    "The image shows a busy city street at night with cars, buses and bright neon signs.",
    "A woman in a long blue coat is walking her dog along the wet sidewalk.",
    "In the background, tall glass buildings reflect the lights of the shops below.",
    "A plate of pasta with tomato sauce, fresh basil leaves and grated parmesan sits on a white table.",
    "Sunlight comes through a large window on the left, casting soft shadows across the room.",
    "There is a small wooden boat tied to the dock, and the water is calm and clear.",
    "Several people are sitting at a cafe terrace, drinking coffee and talking.",
    "The mountains in the distance are partly covered with snow under a cloudy sky.",
    "A red bicycle leans against a stone wall covered in green ivy.",
    "The overall atmosphere of the scene is peaceful and warm, suggesting a quiet afternoon.",
    "On the right side of the frame, a vintage car with chrome details is parked by the curb.",
    "The photograph has a shallow depth of field, so the foreground is sharp and the background blurred.",
];

fn captions(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let count = 2 + i % 5;
            (0..count)
                .map(|j| SENTENCES[(i * 7 + j * 5) % SENTENCES.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn main() {
    let mut llamagen = std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from);
    let (mut arch, mut n, mut batch) = ("flan-t5-base".to_string(), 64usize, 32usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamagen" => llamagen = args.next().map(PathBuf::from),
            "--arch" => arch = args.next().unwrap_or(arch),
            "--captions" => n = args.next().and_then(|s| s.parse().ok()).unwrap_or(n),
            "--batch" => batch = args.next().and_then(|s| s.parse().ok()).unwrap_or(batch),
            _ => {} // cargo bench passes --bench
        }
    }
    let work = tempfile::tempdir().unwrap();
    let onnx = work.path().join("onnx");
    let hf = work.path().join("hf").join(&arch);
    let python = root().join(".venv/bin/python");
    let status = Command::new(&python)
        .arg(root().join("scripts/export_t5.py"))
        .arg(&onnx)
        .args(["--random-arch", &arch, "--save-pytorch"])
        .arg(&hf)
        .status()
        .expect("running scripts/export_t5.py");
    assert!(status.success(), "export_t5.py failed");
    let texts = captions(n);
    let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut encoder = T5Encoder::open(&onnx, MAX_LENGTH, 0).unwrap();
    let tokens: usize = strs
        .iter()
        .map(|c| encoder.tokenize(c).unwrap().len())
        .sum();
    println!(
        "{arch} (random weights, d_model {}), {n} LLaVA-style captions, {:.1} tokens each, 2 cores",
        encoder.spec.d_model,
        tokens as f64 / n as f64
    );
    // Warm-up: ONNX Runtime plans its kernels on the first runs.
    encoder.embed(&strs[..2.min(n)], batch).unwrap();
    let mut ours = Vec::new();
    for b in [batch, 1] {
        let started = Instant::now();
        let embedded = encoder.embed(&strs, b).unwrap();
        let mut field = FieldEmbeddings::new(encoder.spec.d_model);
        for e in &embedded {
            field.push(Some(e.view())).unwrap();
        }
        let stored = field.stored_bytes();
        ShardEmbeddings {
            keys: (0..n).map(|i| format!("{i:09}")).collect(),
            fields: [("caption".to_string(), field)].into(),
            input: None,
        }
        .write(&work.path().join(format!("ours_{b}.t5.safetensors")))
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        ours.push((b, n as f64 / seconds, stored));
    }
    let peer = llamagen.as_ref().map(|checkout| {
        let list = work.path().join("captions.json");
        std::fs::write(&list, serde_json::to_vec(&texts).unwrap()).unwrap();
        let out = Command::new(&python)
            .arg(root().join("scripts/bench_t5.py"))
            .arg("--llamagen")
            .arg(checkout)
            .arg("--model")
            .arg(&hf)
            .arg("--captions")
            .arg(&list)
            .arg("--out")
            .arg(work.path().join("llamagen"))
            .output()
            .expect("running scripts/bench_t5.py");
        assert!(
            out.status.success(),
            "bench_t5.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let seconds: f64 = text.lines().last().unwrap().trim().parse().unwrap();
        let bytes: u64 = std::fs::read_dir(work.path().join("llamagen"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        (n as f64 / seconds, bytes)
    });
    println!("| | captions/s | vs LlamaGen | bytes stored |");
    println!("| --- | --- | --- | --- |");
    for (b, rate, stored) in &ours {
        let ratio = peer
            .map(|(p, _)| format!("{:.2}x", rate / p))
            .unwrap_or_default();
        println!("| ours, batch {b} | {rate:.1} | {ratio} | {stored} |");
    }
    match peer {
        Some((rate, bytes)) => println!(
            "| LlamaGen extract_t5_feature.py loop (batch 1, fp32) | {rate:.1} | | {bytes} |"
        ),
        None => println!("(no LlamaGen checkout: pass --llamagen DIR for its figure)"),
    }
}
