//! `llamagen serve`: the leaderboard dashboard (`dashboards/`) over the results database.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr as _;

use anyhow::Context as _;
use llamagen_dashboard::{AppState, ReaderLogin};
use llamagen_store::{Store, StoreOptions};
use sqlx::postgres::PgConnectOptions;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. The default stays on loopback; put a reverse proxy with
    /// authentication in front before exposing it.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A read-only login of its own for the dashboard. Without it the dashboard connects like
    /// every command and switches to the `llamagen_reader` role the migrations create.
    #[arg(long, env = "LLAMAGEN_DASHBOARD_DATABASE_URL", hide_env_values = true)]
    pub reader_url: Option<String>,
}

pub async fn run(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let store = Store::open(&StoreOptions::from_env(data_dir)).await?;
    let result = serve(&store, args, false, crate::signals::shutdown_signal()).await;
    store.close().await?;
    result.map(|()| ExitCode::SUCCESS)
}

/// Serves until `shutdown`; used by `llamagen serve` and at the end of `llamagen demo`.
pub async fn serve(
    store: &Store,
    args: &ServeArgs,
    any_port_if_busy: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let login = match &args.reader_url {
        Some(url) => ReaderLogin::Own(
            PgConnectOptions::from_str(url).context("LLAMAGEN_DASHBOARD_DATABASE_URL")?,
        ),
        None => ReaderLogin::SetRole(store.connect_options().clone()),
    };
    let pool = llamagen_dashboard::connect_reader(login, 16)
        .await
        .context("connecting the dashboard's read-only pool (SET ROLE llamagen_reader)")?;
    llamagen_dashboard::verify_read_only(&pool).await?;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        // The demo takes any free port rather than fail on a busy 8080.
        Err(e) if any_port_if_busy && e.kind() == std::io::ErrorKind::AddrInUse => {
            tokio::net::TcpListener::bind((args.listen.ip(), 0)).await?
        }
        Err(e) => return Err(e).with_context(|| format!("listening on {}", args.listen)),
    };
    let address = listener.local_addr()?;
    println!("dashboard: http://{address}/ (read-only; Ctrl-C stops it)");
    llamagen_dashboard::serve(listener, AppState::new(pool), shutdown)
        .await
        .context("serving the dashboard")?;
    Ok(())
}
