//! `llamagen db migrate`, `status`, `url` and `shell`.

use std::path::Path;
use std::process::ExitCode;

use llamagen_store::{DbStatus, Store, StoreOptions};

use crate::DbCommand;

pub async fn run(data_dir: &Path, command: DbCommand) -> anyhow::Result<ExitCode> {
    let mut options = StoreOptions::from_env(data_dir);
    options.migrate = false;
    let store = Store::open(&options).await?;
    let result = match command {
        DbCommand::Migrate => {
            let applied = llamagen_store::migrate(store.pool()).await?;
            if applied.is_empty() {
                println!("{}: schema up to date", store.description());
            } else {
                println!("{}: applied migrations {applied:?}", store.description());
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Status { json } => {
            let status = store.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render_status(&status));
                if let Some(url) = store.private_url() {
                    println!(
                        "psql:     psql '{url}'  (while a llamagen process keeps the cluster up)"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Url { hold } => {
            println!("{}", url(&store)?);
            if hold && store.private_url().is_some() {
                eprintln!("holding the private cluster up; Ctrl-C or SIGTERM stops it");
                crate::signals::shutdown_signal().await;
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Shell { psql_args } => {
            let psql = psql_binary();
            let status = tokio::process::Command::new(&psql)
                .arg(url(&store)?)
                .args(&psql_args)
                .status()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "starting {}: {e} (Debian's postgresql-client provides psql)",
                        psql.display()
                    )
                })?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
    };
    store.close().await?;
    result
}

/// The private cluster's URL, or `DATABASE_URL`, as libpq (psql) reads it.
fn url(store: &Store) -> anyhow::Result<String> {
    match store.private_url() {
        Some(url) => Ok(url),
        None => std::env::var("DATABASE_URL")
            .map(|url| libpq_url(&url))
            .map_err(|_| anyhow::anyhow!("no private cluster and no DATABASE_URL")),
    }
}

/// `url` without the query parameters only sqlx knows (`statement-cache-capacity`, ...):
/// libpq refuses unknown ones, and none of its own has a hyphen in its name.
fn libpq_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.split('=').next().unwrap_or_default().contains('-'))
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// psql beside the server binaries the private cluster uses, else the one on the PATH.
fn psql_binary() -> std::path::PathBuf {
    llamagen_store::cluster::find_bin_dir()
        .map(|dir| dir.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into())
}

pub fn render_status(status: &DbStatus) -> String {
    let mut out = format!(
        "database: {}\nserver:   PostgreSQL {}\nschema:   {} of {} migrations applied\n",
        status.backend,
        status.server_version,
        status.migrations.len() - status.pending(),
        status.migrations.len()
    );
    for m in &status.migrations {
        let state = match m.installed_on {
            Some(at) if m.success => format!("applied {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
            Some(_) => "FAILED".to_owned(),
            None => "pending".to_owned(),
        };
        out.push_str(&format!("  {} {:<32} {state}\n", m.version, m.description));
    }
    out.push_str("rows:\n");
    for t in &status.tables {
        let rows = t.rows.map_or("-".to_owned(), |n| n.to_string());
        out.push_str(&format!("  {:<16} {rows:>10}\n", t.table));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_keep_only_what_libpq_reads() {
        use super::libpq_url;
        assert_eq!(
            libpq_url("postgres://u@h/db?sslmode=prefer&statement-cache-capacity=100"),
            "postgres://u@h/db?sslmode=prefer"
        );
        assert_eq!(
            libpq_url("postgres://u@h/db?statement-cache-capacity=1"),
            "postgres://u@h/db"
        );
        assert_eq!(libpq_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
