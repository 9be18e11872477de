//! The `llamagen` commands end to end: each module drives the built binary on real files, a
//! loopback HTTP server and a real PostgreSQL (one private test server per process, a fresh
//! database per test).
//!
//! They are one test binary rather than one per file: every binary links the whole workspace
//! and libtorch (60-90 MB each in a debug build), so one binary saves the test build about a
//! gigabyte of disk and a link per file. Run one module with a filter, for example
//! `cargo test -p llamagen-cli --test commands fault_matrix::`. The database outage tests stay
//! binaries of their own (`tests/ingest_outage.rs`, `tests/schedule_outage.rs`): they restart
//! their process's test server, which would break every test running beside them here.

#[path = "../common/mod.rs"]
mod common;

mod benchmark;
mod caption;
mod cli;
mod data_parallel;
mod disk_full;
mod encode_leases;
mod evaluators;
mod fault_matrix;
mod filter;
mod ingest;
mod lease_workers;
mod package;
mod pipeline;
mod sample;
mod schedule;
mod train;
mod train_vq;
