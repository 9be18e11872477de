//! The parts of the `llamagen` binary that other crates and tests use: the pipeline config
//! and provenance (git revision) of recorded results.

pub mod config;
pub mod provenance;
