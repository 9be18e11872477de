//! A fresh, migrated database for each test: our equivalent of `#[sqlx::test]` that also works
//! without `DATABASE_URL`.
//!
//! With `DATABASE_URL` set, each test gets a new database on that server, dropped when the test
//! passes. Without it, the test process starts one private cluster in a temporary folder (fsync
//! off: it is thrown away), creates a database per test in it, and stops and deletes the cluster
//! when the process exits.
//!
//! ```no_run
//! # async fn f() {
//! llamagen_store::testing::with_database(|pool| async move {
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM models").fetch_one(&pool).await.unwrap();
//!     assert_eq!(n, 0);
//! })
//! .await;
//! # }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};

use crate::cluster::{ClusterOptions, PrivateCluster};
use crate::db::{create_database_if_missing, quote_ident};
use crate::migrate;

struct TestCluster {
    cluster: PrivateCluster,
    dir: PathBuf,
}

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_test_cluster() {
    if let Some(Ok(test)) = CLUSTER.get() {
        test.cluster.stop_now();
        let _ = std::fs::remove_dir_all(&test.dir);
    }
}

fn private_cluster() -> &'static TestCluster {
    let started = CLUSTER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("llamagen-test-")
            .tempdir()
            .map_err(|e| format!("creating a temporary folder: {e}"))?
            .keep();
        let cluster = PrivateCluster::start(&dir, &ClusterOptions { durable: false })
            .map_err(|e| e.to_string())?;
        // SAFETY: registering a plain extern "C" function; it runs once at process exit.
        unsafe { libc::atexit(stop_test_cluster) };
        Ok(TestCluster { cluster, dir })
    });
    match started {
        Ok(test) => test,
        Err(e) => panic!("cannot start the test PostgreSQL cluster: {e}"),
    }
}

/// An outage of the test server: stopped at once (every connection breaks), down for `pause`,
/// then started again. False with `DATABASE_URL`, whose server is not ours to stop.
pub fn restart_server(pause: std::time::Duration) -> bool {
    if std::env::var("DATABASE_URL").is_ok_and(|s| !s.is_empty()) {
        return false;
    }
    private_cluster()
        .cluster
        .restart_after(pause)
        .unwrap_or_else(|e| panic!("restarting the test cluster: {e}"));
    true
}

/// Options for the server's maintenance database: `DATABASE_URL`, or the private test cluster.
pub fn admin_options() -> PgConnectOptions {
    match std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()) {
        Some(url) => PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("DATABASE_URL is not a valid PostgreSQL URL: {e}")),
        None => private_cluster().cluster.connect_options("postgres"),
    }
}

/// A migrated database of its own for one test.
pub struct TestDatabase {
    pub pool: PgPool,
    pub name: String,
    pub options: PgConnectOptions,
    admin: PgConnectOptions,
}

impl TestDatabase {
    pub async fn new() -> Self {
        let admin = admin_options();
        let name = format!(
            "llamagen_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        create_database_if_missing(&admin, &name)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let options = admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| panic!("connecting to test database {name}: {e}"));
        migrate(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrating test database {name}: {e}"));
        Self {
            pool,
            name,
            options,
            admin,
        }
    }

    /// A `postgresql://` URL for this database (for child processes such as the CLI).
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let mut conn = self
            .admin
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to drop {}: {e}", self.name));
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.name)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("dropping {}: {e}", self.name));
        let _ = conn.close().await;
    }
}

/// Runs `test` against a fresh migrated database and drops the database afterwards. A test that
/// panics keeps its database (on `DATABASE_URL`) for inspection, as `#[sqlx::test]` does.
pub async fn with_database<F, Fut, T>(test: F) -> T
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = T>,
{
    let db = TestDatabase::new().await;
    let result = test(db.pool.clone()).await;
    db.drop_database().await;
    result
}
