//! One module per stage that walks shards or trains: the flags and config of each, and the
//! function `llamagen run`, the scheduler and the stage's own command call.

pub mod caption;
pub mod encode;
pub mod filter;
pub mod ingest;
