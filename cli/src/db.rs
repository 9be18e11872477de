//! `llamagen db migrate` and `llamagen db status`.

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
    };
    store.close().await?;
    result
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
