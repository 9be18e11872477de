//! Opening the database (external or private), applying migrations, and describing it.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, Row as _};

use crate::cluster::{ClusterOptions, PrivateCluster};
use crate::{MIGRATOR, StoreError};

/// The database that `llamagen` uses inside its private cluster.
pub const DATABASE: &str = "llamagen";

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Where the private cluster lives (`<data_dir>/postgres`) when no URL is given.
    pub data_dir: PathBuf,
    /// An existing server; `None` starts the private cluster. Usually `DATABASE_URL`.
    pub database_url: Option<String>,
    /// Apply pending migrations on open.
    pub migrate: bool,
    pub max_connections: u32,
    pub cluster: ClusterOptions,
}

impl StoreOptions {
    /// The usual options: `DATABASE_URL` if set, else the private cluster under `data_dir`.
    pub fn from_env(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
            migrate: true,
            max_connections: 8,
            cluster: ClusterOptions::default(),
        }
    }
}

/// An open database: a pool, and the private cluster behind it if there is one.
#[derive(Debug)]
pub struct Store {
    pool: PgPool,
    connect: PgConnectOptions,
    cluster: Option<PrivateCluster>,
    description: String,
}

impl Store {
    pub async fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let (connect, cluster, description) = match &options.database_url {
            Some(url) => {
                let connect = PgConnectOptions::from_str(url)?;
                let description = format!("external server {}", redact(url));
                (connect, None, description)
            }
            None => {
                let data_dir = options.data_dir.clone();
                let cluster_options = options.cluster.clone();
                let cluster = tokio::task::spawn_blocking(move || {
                    PrivateCluster::start(&data_dir, &cluster_options)
                })
                .await
                .map_err(|e| StoreError::Cluster(format!("start task: {e}")))??;
                create_database_if_missing(&cluster.connect_options("postgres"), DATABASE).await?;
                let description = format!("private cluster {}", cluster.pgdata().display());
                (
                    cluster.connect_options(DATABASE),
                    Some(cluster),
                    description,
                )
            }
        };
        // One direct connection first: the pool retries refused connections until its acquire
        // timeout, while a dead or mistyped server should be reported at once.
        let probe = connect
            .connect()
            .await
            .map_err(|source| StoreError::Unreachable {
                target: description.clone(),
                source,
            })?;
        probe.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(
                connect
                    .clone()
                    .log_statements(tracing::log::LevelFilter::Trace),
            )
            .await?;
        if options.migrate {
            migrate(&pool).await?;
        }
        Ok(Self {
            pool,
            connect,
            cluster,
            description,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How the pool connects, for a second pool with other session settings (the dashboard's
    /// read-only one).
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.connect
    }

    /// `private cluster /path/pgdata` or `external server postgresql://user@host/db`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// A URL for `psql` when the store is the private cluster.
    pub fn private_url(&self) -> Option<String> {
        self.cluster.as_ref().map(|c| c.url(DATABASE))
    }

    /// Closes the pool and stops the private cluster if this was its last user.
    pub async fn close(self) -> Result<(), StoreError> {
        self.pool.close().await;
        if let Some(cluster) = self.cluster {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .map_err(|e| StoreError::Cluster(format!("stop task: {e}")))??;
        }
        Ok(())
    }

    /// Server version, migrations and row counts: what `llamagen db status` prints.
    pub async fn status(&self) -> Result<DbStatus, StoreError> {
        let server_version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.pool)
            .await?;
        let applied: Vec<(i64, String, chrono::DateTime<chrono::Utc>, bool)> =
            match sqlx::query_as(
                "SELECT version, description, installed_on, success FROM _sqlx_migrations ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await
            {
                Ok(rows) => rows,
                // No migrations table yet: nothing applied.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
                Err(e) => return Err(e.into()),
            };
        let migrations = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| {
                let row = applied.iter().find(|a| a.0 == m.version);
                MigrationState {
                    version: m.version,
                    description: m.description.to_string(),
                    installed_on: row.map(|r| r.2),
                    success: row.is_some_and(|r| r.3),
                }
            })
            .collect();
        let mut tables = Vec::new();
        for table in COUNTED_TABLES {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(*table)
                .fetch_one(&self.pool)
                .await?;
            let rows = if exists {
                // Table names come from the constant list above, never from input.
                let sql = format!("SELECT count(*) FROM {table}");
                Some(
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .fetch_one(&self.pool)
                        .await?
                        .try_get::<i64, _>(0)?,
                )
            } else {
                None
            };
            tables.push(TableCount {
                table: (*table).to_owned(),
                rows,
            });
        }
        Ok(DbStatus {
            backend: self.description.clone(),
            server_version,
            migrations,
            tables,
        })
    }
}

const COUNTED_TABLES: &[&str] = &[
    "pipeline_runs",
    "stage_runs",
    "shards",
    "filter_funnel",
    "models",
    "training_runs",
    "checkpoints",
    "reference_sets",
    "protocols",
    "evaluations",
    "metrics",
    "schedule_ticks",
    "checkpoint_queue",
];

/// Applies pending migrations; returns the versions applied now.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let before: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    MIGRATOR.run(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !before.contains(&m.version))
        .map(|m| m.version)
        .collect())
}

/// What `llamagen db status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DbStatus {
    pub backend: String,
    pub server_version: String,
    pub migrations: Vec<MigrationState>,
    pub tables: Vec<TableCount>,
}

impl DbStatus {
    pub fn pending(&self) -> usize {
        self.migrations.iter().filter(|m| !m.success).count()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub installed_on: Option<chrono::DateTime<chrono::Utc>>,
    pub success: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCount {
    pub table: String,
    /// `None` when the table does not exist (migrations pending).
    pub rows: Option<i64>,
}

pub(crate) async fn create_database_if_missing(
    admin: &PgConnectOptions,
    name: &str,
) -> Result<(), StoreError> {
    let mut conn = admin.connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// Quotes an SQL identifier (for the few statements that cannot take bound parameters).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Hides the secrets of a connection URL: the password in its user part and in its query
/// (libpq takes `?password=` and `?sslpassword=` too).
fn redact(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "<unparsable URL>".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let secret = matches!(k.as_ref(), "password" | "sslpassword");
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://bob:secret@db.example:5432/x"),
            "postgres://bob:***@db.example:5432/x"
        );
        assert_eq!(redact("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            redact("postgres://db/x?user=bob&password=secret&sslmode=require&sslpassword=k"),
            "postgres://db/x?user=bob&password=***&sslmode=require&sslpassword=***"
        );
        assert_eq!(redact("not a url"), "<unparsable URL>");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("llamagen"), "\"llamagen\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
