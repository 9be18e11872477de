//! PostgreSQL for llamagen-rs.
//!
//! - [`cluster`]: the embedded default, a private cluster under the data directory, used when
//!   `DATABASE_URL` is unset.
//! - [`Store`]: a connection pool to either, with the migrations in `migrations/` applied.
//! - [`runs`]: pipeline runs, stage runs, and shards that workers claim under a lease.
//! - [`results`]: models, checkpoints, evaluations and metrics (the leaderboard).
//! - [`training`]: training runs and their loss curves.
//! - [`checkpoint_queue`]: checkpoints waiting for an evaluation, claimed by evaluators.
//! - [`lease`]: the claim, renew, fail and release protocol both of those queues share.
//! - [`schedule`]: cron ticks and the per-pipeline lock that `llamagen schedule` shares.
//! - [`testing`]: a fresh database per test, on the private cluster or on `DATABASE_URL`.

pub mod checkpoint_queue;
pub mod cluster;
mod db;
pub mod lease;
pub mod results;
pub mod runs;
pub mod schedule;
pub mod testing;
pub mod training;

pub use db::{DbStatus, MigrationState, Store, StoreOptions, TableCount, migrate};

/// The schema, embedded from `migrations/` at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io {
        path: std::path::PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error("private PostgreSQL cluster: {0}")]
    Cluster(String),
    #[error(
        "cannot reach PostgreSQL ({target}): {source}; is the server running and DATABASE_URL right?"
    )]
    Unreachable { target: String, source: sqlx::Error },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "shard {shard_index}: worker {worker} no longer holds its lease (another worker took it over)"
    )]
    LeaseLost { shard_index: i32, worker: String },
    #[error(
        "checkpoint {checkpoint}: evaluator {worker} no longer holds its lease (another evaluator took it over)"
    )]
    CheckpointLeaseLost { checkpoint: String, worker: String },
}

impl StoreError {
    /// The database is out of reach or restarting (a connection broke, the server is shutting
    /// down or not yet accepting connections): the same call may well succeed later. Any
    /// other error is an answer, and asking again would get the same one.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
            // SQLSTATE class 08: connection exception; 57P01-57P03: admin shutdown, crash
            // shutdown, cannot connect now (starting up).
            StoreError::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
}
