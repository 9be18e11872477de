//! The leaderboard web app behind `llamagen serve`.
//!
//! - [`pages`]: server-rendered HTML (askama templates, escaped by default): the leaderboard,
//!   a page per model (FID against step, FID/IS against guidance scale, loss, sample grid),
//!   models side by side, and the pipeline runs (stages, shard progress, filter funnel, scheduler decisions).
//! - [`api`]: the same data as JSON under `/api/`.
//! - [`metrics`]: Prometheus text at `/metrics` (requests, latencies, row counts).
//! - [`params`]: query parameters parsed into closed types; anything unknown is a 400.
//! - [`queries`]: every SQL statement, all reads with bound parameters.
//! - [`charts`]: SVG line charts drawn with plotters.
//!
//! The server only ever reads: it connects, then `SET ROLE llamagen_reader` (SELECT-only, made
//! by the migrations) with read-only transactions, and [`verify_read_only`] refuses to start
//! when the role could write anyway.

pub mod api;
pub mod charts;
pub mod export;
pub mod metrics;
pub mod pages;
pub mod params;
pub mod queries;
pub mod samples;
pub mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::Executor as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The role the migrations create for the dashboard.
pub const READER_ROLE: &str = "llamagen_reader";

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl DashboardError {
    pub fn status(&self) -> StatusCode {
        match self {
            DashboardError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DashboardError::NotFound(_) => StatusCode::NOT_FOUND,
            DashboardError::Database(_) | DashboardError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// What a visitor is told: the request's own problem, or a generic line for ours (the
    /// details go to the log, not to the page).
    pub fn public_message(&self) -> String {
        match self {
            DashboardError::BadRequest(m) | DashboardError::NotFound(m) => m.clone(),
            other => {
                tracing::error!("request failed: {other}");
                "internal error; the server log has the details".into()
            }
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<metrics::Metrics>,
    pub listings: Arc<samples::Listings>,
}

impl AppState {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            metrics: Arc::new(metrics::Metrics::new()),
            listings: Arc::default(),
        }
    }
}

/// The whole app: pages, API, metrics, sample images.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::leaderboard))
        .route("/models/{id}", get(pages::model))
        .route("/compare", get(pages::compare))
        .route("/pipelines", get(pages::pipelines))
        .route("/pipelines/runs/{id}", get(pages::pipeline_run))
        .route("/samples/{evaluation_id}/{index}", get(samples::image))
        .route("/api/leaderboard", get(api::leaderboard))
        .route("/api/leaderboard.csv", get(api::leaderboard_csv))
        .route("/api/models/{id}", get(api::model))
        .route("/api/compare", get(api::compare))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{id}", get(api::run))
        .route("/metrics", get(metrics::export))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    pages::error_page(&DashboardError::NotFound(format!(
        "no page at {}",
        uri.path()
    )))
}

/// No page runs scripts (charts are SVG drawn by the server), so the policy forbids them: a
/// second wall behind the templates' escaping.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// How the dashboard logs in.
#[derive(Debug, Clone)]
pub enum ReaderLogin {
    /// Connect with the store's options and `SET ROLE llamagen_reader`.
    SetRole(PgConnectOptions),
    /// A login role of its own that is already read-only (`LLAMAGEN_DASHBOARD_DATABASE_URL`).
    Own(PgConnectOptions),
}

/// A pool whose sessions are read-only: the reader role (or the given login), read-only
/// transactions by default, and a statement timeout so a slow query cannot pile up.
pub async fn connect_reader(
    login: ReaderLogin,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    let (options, set_role) = match login {
        ReaderLogin::SetRole(o) => (o, true),
        ReaderLogin::Own(o) => (o, false),
    };
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if set_role {
                    conn.execute("SET ROLE llamagen_reader").await?;
                }
                conn.execute(
                    "SET default_transaction_read_only = on; SET statement_timeout = '10s'",
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

/// Refuses a login that can write to any of the project's tables.
pub async fn verify_read_only(pool: &PgPool) -> Result<(), DashboardError> {
    let writable: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r'
           AND (has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE')
                OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE'))
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    if !writable.is_empty() {
        return Err(DashboardError::Internal(format!(
            "the dashboard's database role can write to {}; give it a read-only role \
             (the migrations make {READER_ROLE})",
            writable.join(", ")
        )));
    }
    let readable: bool = sqlx::query_scalar("SELECT has_table_privilege('evaluations', 'SELECT')")
        .fetch_one(pool)
        .await?;
    if !readable {
        return Err(DashboardError::Internal(
            "the dashboard's database role cannot read the evaluations table".into(),
        ));
    }
    Ok(())
}

/// Serves the app on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// What a cell shows for a value that was not measured or recorded.
pub(crate) const MISSING: &str = "–";

/// Numbers as a leaderboard prints them: FIDs with two decimals as in the paper's tables.
pub(crate) fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(v) => v.to_string(),
        None => MISSING.into(),
    }
}

/// 111M, 3.1B: parameter counts as the paper's tables write them.
pub(crate) fn fmt_params(params: Option<i64>) -> String {
    match params {
        Some(p) if p >= 1_000_000_000 => format!("{:.1}B", p as f64 / 1e9),
        Some(p) if p >= 1_000_000 => format!("{:.0}M", p as f64 / 1e6),
        Some(p) => p.to_string(),
        None => MISSING.into(),
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        pages::error_page(&self)
    }
}
