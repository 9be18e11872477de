//! The JSON API under `/api/`: the same data as the pages, for scripts and notebooks.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sqlx::PgPool;

use crate::pages::{RunsQuery, parse_query};
use crate::params::{CompareAxis, CompareQuery, LeaderboardQuery, Metric};
use crate::queries::{self, LeaderboardRow, Point};
use crate::samples::{self, SampleImage};
use crate::{AppState, DashboardError};

/// API errors are JSON: `{"error": "..."}` with the status code.
pub struct ApiError(DashboardError);

impl From<DashboardError> for ApiError {
    fn from(e: DashboardError) -> Self {
        Self(e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.0.public_message() });
        (self.0.status(), Json(body)).into_response()
    }
}

/// `GET /api/leaderboard`: the parameters of `/`, answered as `{total, rows}`.
pub async fn leaderboard(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let q: LeaderboardQuery = parse_query(&uri)?;
    q.validate()?;
    Ok(Json(queries::leaderboard(&state.pool, &q).await?).into_response())
}

/// `GET /api/leaderboard.csv`: the rows `/api/leaderboard` answers for the same parameters,
/// as a CSV file (crate::export).
pub async fn leaderboard_csv(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: LeaderboardQuery = parse_query(&uri)?;
    q.validate()?;
    let page = queries::leaderboard(&state.pool, &q).await?;
    let headers = [
        (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"leaderboard.csv\"",
        ),
    ];
    Ok((headers, crate::export::leaderboard_csv(&page.rows)).into_response())
}

/// Everything the model page shows.
#[derive(Debug, Serialize)]
pub struct ModelData {
    pub model: queries::Model,
    /// FID (rFID for tokenizers) against the training step, one series per cfg scale.
    pub fid_by_step: Vec<Point>,
    /// At the latest evaluated checkpoint.
    pub fid_by_cfg: Vec<Point>,
    pub is_by_cfg: Vec<Point>,
    /// Training loss, the gradient norm before clipping, tokens/s and the peak memory of each
    /// logged interval (MiB), each averaged into at most 400 points per training run.
    pub loss: Vec<Point>,
    pub grad_norm: Vec<Point>,
    pub tokens_per_s: Vec<Point>,
    pub memory_mib: Vec<Point>,
    pub samples: Vec<SampleImage>,
    /// The model's best 50 evaluations.
    pub evaluations: Vec<LeaderboardRow>,
}

pub async fn model_data(state: &AppState, id: i64) -> Result<ModelData, DashboardError> {
    let pool = &state.pool;
    let model = queries::model(pool, id)
        .await?
        .ok_or_else(|| DashboardError::NotFound(format!("no model {id}")))?;
    let fid = model.ranking_metric();
    // The newest grid still on disk: a benchmark may clear its folders once recorded.
    let candidates = queries::latest_samples(pool, id, 20).await?;
    let listings = state.listings.clone();
    let samples = tokio::task::spawn_blocking(move || {
        candidates
            .iter()
            .map(|(evaluation_id, dir)| samples::grid(&listings, *evaluation_id, dir))
            .find(|grid| !grid.is_empty())
            .unwrap_or_default()
    })
    .await
    .map_err(|e| DashboardError::Internal(format!("sample listing: {e}")))?;
    let evaluations = queries::model_evaluations(pool, id, fid, 50).await?;
    Ok(ModelData {
        fid_by_step: queries::metric_by_step(pool, id, fid).await?,
        fid_by_cfg: queries::metric_by_cfg(pool, id, fid).await?,
        is_by_cfg: queries::metric_by_cfg(pool, id, Metric::InceptionScore).await?,
        loss: queries::training_metric(pool, id, "loss", 400).await?,
        grad_norm: queries::training_metric(pool, id, "grad_norm", 400).await?,
        tokens_per_s: queries::training_metric(pool, id, "tokens_per_s", 400).await?,
        memory_mib: queries::training_metric(pool, id, "memory_mib", 400).await?,
        samples,
        evaluations,
        model,
    })
}

/// `GET /api/models/{id}`.
pub async fn model(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    Ok(Json(model_data(&state, id).await?).into_response())
}

/// Everything the comparison page shows.
#[derive(Debug, Serialize)]
pub struct CompareData {
    /// The compared models, in the order asked for (which is each one's colour).
    pub models: Vec<queries::Model>,
    /// Every benchmark and protocol any of them has results on, the widest first.
    pub suites: Vec<queries::Suite>,
    /// The one compared on: asked for, or the widest; `None` while none has results.
    pub suite: Option<queries::Suite>,
    pub axis: CompareAxis,
    /// FID (rFID for tokenizers) at each checkpoint's best guidance scale against `axis`.
    pub fid_by_axis: Vec<Point>,
    /// At each model's latest checkpoint evaluated with guidance.
    pub fid_by_cfg: Vec<Point>,
    pub is_by_cfg: Vec<Point>,
    /// Training loss and tokens/s against `axis`, at most 400 points per model.
    pub loss: Vec<Point>,
    pub tokens_per_s: Vec<Point>,
    /// Models whose training curves cannot be put on `axis`: no checkpoint of theirs records
    /// it. Always empty on the step axis.
    pub training_off_axis: Vec<String>,
    /// Each model's best evaluation on the suite, the best first.
    pub best: Vec<LeaderboardRow>,
}

pub async fn compare_data(pool: &PgPool, q: &CompareQuery) -> Result<CompareData, DashboardError> {
    let mut models = Vec::with_capacity(q.models.len());
    for &id in &q.models {
        models.push(
            queries::model(pool, id)
                .await?
                .ok_or_else(|| DashboardError::NotFound(format!("no model {id}")))?,
        );
    }
    if let Some(other) = models.iter().find(|m| m.kind != models[0].kind) {
        return Err(DashboardError::BadRequest(format!(
            "{} is a {} and {} a {}: compare models of one kind",
            models[0].name, models[0].kind, other.name, other.kind
        )));
    }
    let fid = models[0].ranking_metric();
    let ids = &q.models;
    let suites = queries::suites(pool, ids).await?;
    let wanted = |s: &&queries::Suite| {
        q.benchmark.as_ref().is_none_or(|b| *b == s.benchmark)
            && q.protocol.is_none_or(|p| s.protocol_id == Some(p))
    };
    let suite = suites.iter().find(wanted).cloned();
    if suite.is_none() && (q.benchmark.is_some() || q.protocol.is_some()) {
        return Err(DashboardError::NotFound(format!(
            "none of these models has results on {}{}",
            q.benchmark.as_deref().unwrap_or("any benchmark"),
            q.protocol
                .map(|p| format!(" under protocol {p}"))
                .unwrap_or_default()
        )));
    }
    // The charts' queries are independent: run them side by side on the pool.
    let training = async {
        tokio::try_join!(
            queries::training_metric_of_models(pool, ids, "loss", 400),
            queries::training_metric_of_models(pool, ids, "tokens_per_s", 400),
            queries::per_step_of_models(pool, ids, q.x),
        )
    };
    let results = async {
        let Some(suite) = &suite else {
            return Ok(Default::default());
        };
        let inception = async {
            match fid {
                Metric::Fid => {
                    queries::metric_by_cfg_of_models(pool, ids, suite, Metric::InceptionScore).await
                }
                _ => Ok(Vec::new()),
            }
        };
        tokio::try_join!(
            queries::metric_by_axis(pool, ids, suite, fid, q.x),
            queries::metric_by_cfg_of_models(pool, ids, suite, fid),
            inception,
            queries::best_of_models(pool, ids, suite, fid),
        )
    };
    let ((loss, tokens_per_s, per_step), (fid_by_axis, fid_by_cfg, is_by_cfg, best)) =
        tokio::try_join!(training, results)?;
    // Training curves are logged by step; each model's factor moves them onto the axis.
    let per_step: HashMap<i64, f64> = per_step.into_iter().collect();
    let factor: HashMap<&str, f64> = models
        .iter()
        .filter_map(|m| Some((m.name.as_str(), *per_step.get(&m.id)?)))
        .collect();
    let on_axis = |points: Vec<Point>| -> Vec<Point> {
        points
            .into_iter()
            .filter_map(|p| {
                let x = p.x * factor.get(p.series.as_str())?;
                Some(Point { x, ..p })
            })
            .collect()
    };
    let (loss, tokens_per_s) = (on_axis(loss), on_axis(tokens_per_s));
    let training_off_axis = models
        .iter()
        .filter(|m| !per_step.contains_key(&m.id))
        .map(|m| m.name.clone())
        .collect();
    Ok(CompareData {
        models,
        suites,
        suite,
        axis: q.x,
        fid_by_axis,
        fid_by_cfg,
        is_by_cfg,
        loss,
        tokens_per_s,
        training_off_axis,
        best,
    })
}

/// `GET /api/compare?model=ID&model=ID...`: the parameters of `/compare`.
pub async fn compare(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let q = CompareQuery::parse(uri.query().unwrap_or_default())?;
    Ok(Json(compare_data(&state.pool, &q).await?).into_response())
}

/// `GET /api/runs?pipeline=NAME&limit=N`.
pub async fn runs(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let q = RunsQuery::checked(&uri)?;
    Ok(Json(queries::pipeline_runs(&state.pool, q.pipeline(), q.limit()).await?).into_response())
}

/// Everything the run page shows.
#[derive(Debug, Serialize)]
pub struct RunData {
    pub run: queries::PipelineRun,
    pub stages: Vec<queries::Stage>,
    pub funnel: Vec<queries::FunnelRow>,
    pub failed_shards: Vec<queries::FailedShard>,
}

pub async fn run_data(pool: &PgPool, id: i64) -> Result<RunData, DashboardError> {
    let run = queries::pipeline_run(pool, id)
        .await?
        .ok_or_else(|| DashboardError::NotFound(format!("no pipeline run {id}")))?;
    Ok(RunData {
        stages: queries::stages(pool, id).await?,
        funnel: queries::funnel(pool, id).await?,
        failed_shards: queries::failed_shards(pool, id).await?,
        run,
    })
}

/// `GET /api/runs/{id}`.
pub async fn run(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    Ok(Json(run_data(&state.pool, id).await?).into_response())
}
