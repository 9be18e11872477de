//! Prometheus metrics at `/metrics`: requests and their latency per route (the route pattern,
//! never the raw path, so a scanner cannot blow up the label set), and row counts read from
//! the database at scrape time.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::{AppState, DashboardError, queries};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    table: String,
    status: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    rows: Family<RowLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llamagen_dashboard");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 1 ms to ~4 s: the leaderboard's goal is a p99 under 50 ms.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 13,
            ))
        });
        let rows = Family::<RowLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request, by route",
            latency.clone(),
        );
        registry.register(
            "database_rows",
            "Rows in the results database by table and status (read at scrape time)",
            rows.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            rows,
        }
    }
}

/// Middleware: counts and times every request under its route pattern.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics` in the OpenMetrics text format.
pub async fn export(State(state): State<AppState>) -> Result<Response, DashboardError> {
    let counts = queries::gauge_counts(&state.pool).await?;
    state.metrics.rows.clear();
    for (table, status, n) in counts {
        state
            .metrics
            .rows
            .get_or_create(&RowLabels { table, status })
            .set(n);
    }
    let mut text = String::new();
    {
        let registry = state
            .metrics
            .registry
            .lock()
            .map_err(|_| DashboardError::Internal("metrics registry poisoned".into()))?;
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .map_err(|e| DashboardError::Internal(format!("encoding metrics: {e}")))?;
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
