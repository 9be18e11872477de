//! `llamagen demo`: `llamagen run configs/demo.toml` on bundled data, plus what only a demo
//! needs, one numbered step at a time (`llamagen_pipeline::demo` has the steps; this prints
//! them, checks the native stack first and serves the dashboard last).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use llamagen_pipeline::demo::{self, Demo};
use llamagen_store::{Store, StoreOptions};

use crate::benchmark::BenchmarkCommand;

pub async fn run(data_dir: &Path, serve: bool) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    println!(
        "== llamagen demo (data directory {}) ==",
        data_dir.display()
    );

    println!("\n[1/9] native stack");
    let problems = crate::doctor::check_native();
    anyhow::ensure!(
        problems == 0,
        "the native stack has {problems} problem(s); run scripts/setup.sh"
    );

    println!("\n[2/9] database");
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let result = match with_store(&store, data_dir).await {
        Ok(code) => {
            println!(
                "\ndemo finished in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            if serve {
                println!("\n[9/9] the dashboard over these results");
                let args = crate::serve::ServeArgs {
                    listen: "127.0.0.1:8080".parse()?,
                    reader_url: None,
                };
                crate::serve::serve(&store, &args, true, crate::signals::shutdown_signal())
                    .await
                    .map(|()| code)
            } else {
                println!("\n[9/9] dashboard skipped (--no-serve); `llamagen serve` starts it");
                Ok(code)
            }
        }
        Err(e) => Err(e),
    };
    store.close().await?;
    result
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
    let Some(root) = option_env!("LLAMAGEN_ROOT").map(PathBuf::from) else {
        bail!(
            "the demo uses the repository's test fixtures; build it inside the repository (make demo)"
        );
    };

    println!("\n[3/9] what only a demo needs: loopback servers, tiny models, fixtures");
    let demo = Demo::prepare(data_dir, &root).await?;
    println!(
        "  {} LAION-COCO rows -> {} (photos on {})",
        demo.metadata_rows,
        demo.metadata.display(),
        demo.photos_url()
    );
    println!(
        "  caption server (OpenAI protocol) on {}",
        demo.caption_endpoint()
    );
    println!(
        "  tiny GPT (2 layers, width 64, 8 x 8 tokens, 10 classes) and VQ (downsample 4, 64 codes) in {}",
        data_dir.join("demo/models").display()
    );
    println!("  tiny filter models, tiny FLAN-T5 and a random-weight FID Inception linked in");

    println!("\n[4/9] llamagen run configs/demo.toml: the seven stages as one recorded run");
    demo::run_pipeline(&demo.config, store, data_dir).await?;

    println!(
        "\n[5/9] the same shards as a text-to-image pipeline: FLAN-T5 embeddings of the captions, a tiny text-conditioned GPT, evaluated from prompts"
    );
    let t2i = demo.text_to_image(data_dir)?;
    demo::run_pipeline(&t2i, store, data_dir).await?;

    println!("\n[6/9] exports to LlamaGen's layouts (train_c2i.py and train_t2i.py read them)");
    demo.export(&t2i, data_dir).await?;

    println!("\n[7/9] metrics on the bundled photos (JPEG quality 25 against the originals)");
    match demo::random_inception(data_dir, &root).and_then(|net| demo::photo_metrics(&net)) {
        Ok(m) => print_photo_metrics(&m),
        Err(e) => println!("  metrics skipped: {e:#}"),
    }

    println!(
        "\n[8/9] the untrained tiny models as a baseline: a guidance sweep and the VQ's reconstructions"
    );
    let (generator, tokenizer) = demo.baseline(data_dir);
    crate::benchmark::run(&BenchmarkCommand::Generator(Box::new(generator)), data_dir).await?;
    crate::benchmark::run(&BenchmarkCommand::Tokenizer(Box::new(tokenizer)), data_dir).await?;

    print_summary(&demo::summary(store, &[&demo.config, &t2i]).await?);
    Ok(ExitCode::SUCCESS)
}

fn print_photo_metrics(m: &demo::PhotoMetrics) {
    for p in &m.photos {
        println!(
            "  {:<10} PSNR {:6.2} dB   SSIM {:.4} (LlamaGen's convention; textbook {:.4})",
            p.name, p.psnr, p.ssim, p.ssim_standard
        );
    }
    println!(
        "  {} crops, random-weight Inception: FID {:.4}  sFID {:.4}  IS {:.4}  precision {:.3}  recall {:.3}",
        m.crops, m.fid, m.sfid, m.inception_score, m.precision, m.recall
    );
    println!(
        "  (random Inception weights show the machinery, not quality; real ones: scripts/export_inception.py --weights)"
    );
}

fn print_summary(s: &demo::Summary) {
    println!("\n    what the database holds now");
    for (table, rows) in &s.tables {
        println!("  {table:<16} {rows:>8} rows");
    }
    println!("  latest demo runs:");
    for r in &s.runs {
        let stages: Vec<String> = r.stages.iter().map(|(s, st)| format!("{s} {st}")).collect();
        println!(
            "    #{:<4} {}  {:<9} {:<10} {}",
            r.id,
            r.started_at,
            r.pipeline,
            r.status,
            stages.join(", ")
        );
    }
    println!(
        "  trained checkpoints on the leaderboard (random Inception: compare with each other only):"
    );
    for (model, step, cfg, fid) in &s.trained {
        println!("    {model:<14} step {step:>3}  cfg {cfg:<4} FID {fid:>10.3}");
    }
    println!("  leaderboard: {} evaluation(s)", s.evaluations);
}
