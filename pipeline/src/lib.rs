//! The pipeline layer of llamagen-rs, between the `llamagen` binary and the stage crates
//! (docs/architecture.md draws the floors):
//!
//! - [`config`]: the pipeline config (`PIPELINE.toml`), one section per stage, validated.
//! - [`sample`]: images from a GPT checkpoint and a VQ tokenizer, resumable per folder.
//! - [`image_sets`]: image sets through the FID Inception, and the generation metrics.
//! - [`feature_cache`]: a reference set's features kept on disk for later runs.
//! - [`text_to_image`]: the text-to-image protocol's features and metrics (FID, KID, CLIP-FID,
//!   CLIP score) of generated images against a reference folder.
//! - [`recording`]: results onto the leaderboard.
//! - [`benchmark`]: one checkpoint over a guidance sweep: sample, measure, record.
//! - [`tokenizer_benchmark`]: a VQ tokenizer's reconstructions measured and recorded.
//! - [`checkpoint_evaluator`]: every checkpoint a protocol selects benchmarked once, shared by
//!   any number of evaluators through PostgreSQL claims.
//! - [`shard_worker`]: the one shard-worker loop (a fixed split, or claims with leases).
//! - [`outage`]: the loop's bookkeeping asked again through a database outage.
//! - [`train`]: the training loop: data from our shards or LlamaGen's layout, exactly
//!   resumable checkpoints, runs and loss curves in PostgreSQL.
//! - [`train_tokenizer`]: the tokenizer's training loop on images (LlamaGen's augmentation),
//!   the same checkpoints and records.
//! - [`training_record`]: a training run, its scalars and checkpoints in PostgreSQL.
//! - [`stages`]: ingest, filter, caption and encode over shard folders, on [`shard_worker`].
//! - [`runner`]: a pipeline config's stages in order, as one recorded run (`llamagen run`,
//!   the scheduler, the demo).
//! - [`demo`]: what `llamagen demo` runs: loopback stand-ins for the outside world, tiny
//!   models, the demo config through the runner, the exports, a baseline, a summary.
//! - [`scheduler`]: pipelines on their cron entries, one run per pipeline at a time across
//!   machines (`llamagen schedule`).
//! - [`report`]: what a stage command did, for `--json`.
//! - [`signals`]: SIGTERM and Ctrl-C for the long-running loops.
//! - [`progress`]: progress bars on the long stages.
//! - [`provenance`]: the git revision, file hashes and host name that results carry.

pub mod benchmark;
pub mod checkpoint_evaluator;
pub mod config;
pub mod demo;
pub mod feature_cache;
pub mod image_sets;
pub mod outage;
pub mod progress;
pub mod provenance;
pub mod recording;
pub mod report;
pub mod runner;
pub mod sample;
pub mod scheduler;
pub mod shard_worker;
pub mod signals;
pub mod stages;
pub mod text_to_image;
pub mod tokenizer_benchmark;
pub mod train;
pub mod train_tokenizer;
pub mod training_record;
