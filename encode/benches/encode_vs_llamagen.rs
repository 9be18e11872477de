//! VQ encoding speed, ours against LlamaGen's extraction loop, same weights, same run.
//!
//! cargo bench -p llamagen-encode --bench encode_vs_llamagen -- [--llamagen DIR] [--images 8]
//!     [--ten-crop] [--batch 8]
//!
//! A VQ-16 with seeded random weights (the speed does not depend on their values) encodes an
//! ImageFolder of the bundled photos, repeated to `--images`, at 256 px: two views per image
//! (center + flip), or ten with `--ten-crop`. Ours runs `encode_shard` (decoding on a reader
//! thread, `--batch` images per forward pass) and with batch 1; LlamaGen's side is
//! scripts/bench_encode.py, the loop of extract_codes_c2i.py on the CPU (its batch size is 1).
//! `--llamagen` (or `LLAMAGEN_REPO`) names a checkout of FoundationVision/LlamaGen; without one
//! only our figures print.

use std::path::{Path, PathBuf};
use std::time::Instant;

use llamagen_encode::crops::Augment;
use llamagen_encode::encoder::{EncodeOptions, encode_shard};
use llamagen_encode::source;
use llamagen_models::vq::{VqConfig, VqModel};
use tch::Device;
use tch::nn::VarStore;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() {
    let mut llamagen = std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from);
    let (mut images, mut ten_crop, mut batch) = (8usize, false, 8usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamagen" => llamagen = args.next().map(PathBuf::from),
            "--images" => images = args.next().and_then(|s| s.parse().ok()).unwrap_or(8),
            "--batch" => batch = args.next().and_then(|s| s.parse().ok()).unwrap_or(8),
            "--ten-crop" => ten_crop = true,
            _ => {} // cargo bench passes --bench
        }
    }
    let work = tempfile::tempdir().unwrap();
    let class = work.path().join("input/n00");
    std::fs::create_dir_all(&class).unwrap();
    let photos = ["astronaut", "chelsea", "coffee"];
    for i in 0..images {
        let name = photos[i % photos.len()];
        std::fs::copy(
            root().join(format!("evaluate/tests/fixtures/{name}_original.png")),
            class.join(format!("{i:04}_{name}.png")),
        )
        .unwrap();
    }

    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let mut config = VqConfig::vq16();
    config.dropout_p = 0.0;
    let vq = VqModel::new(&vs.root(), config).unwrap();
    let weights = work.path().join("vq16.safetensors");
    llamagen_models::weights::save(&vs, &weights).unwrap();

    let augment = if ten_crop {
        Augment::TenCrop { crop_range: 1.1 }
    } else {
        Augment::CenterFlip
    };
    let shards = source::shards(&work.path().join("input"), 100_000).unwrap();
    println!(
        "VQ-16 (random weights), {images} images of the bundled photos, 256 px, {} views each, CPU threads {}",
        augment.views(),
        tch::get_num_threads()
    );
    let ours = |batch_size: usize| {
        let out = tempfile::tempdir().unwrap();
        let options = EncodeOptions {
            image_size: 256,
            augment,
            batch_size,
            device: Device::Cpu,
        };
        let start = Instant::now();
        encode_shard(&vq, &shards[0], out.path(), &options).unwrap();
        images as f64 / start.elapsed().as_secs_f64()
    };
    let ours_batched = ours(batch);
    let ours_single = ours(1);
    let peer = llamagen.as_deref().map(|repo| {
        let python = std::env::var_os("LLAMAGEN_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".venv/bin/python"));
        let mut cmd = std::process::Command::new(python);
        cmd.arg(root().join("scripts/bench_encode.py"))
            .arg("--llamagen")
            .arg(repo)
            .arg("--weights")
            .arg(&weights)
            .arg("--input")
            .arg(work.path().join("input"))
            .arg("--out")
            .arg(work.path().join("peer"));
        if ten_crop {
            cmd.arg("--ten-crop");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "bench_encode.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        images as f64 / seconds
    });
    println!("  ours, batch {batch:<3}        {ours_batched:8.2} images/s");
    println!("  ours, batch 1            {ours_single:8.2} images/s");
    match peer {
        Some(p) => println!(
            "  LlamaGen extract_codes   {p:8.2} images/s (batch 1, as its script)   ours/LlamaGen: {:.2}x batched, {:.2}x at batch 1",
            ours_batched / p,
            ours_single / p
        ),
        None => println!("  LlamaGen: no checkout given (--llamagen DIR or LLAMAGEN_REPO)"),
    }
}
