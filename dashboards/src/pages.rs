//! The HTML pages. Templates live in `dashboards/templates/` and are compiled in by askama,
//! which escapes every value for HTML unless a template says `|safe` (only the SVG charts,
//! which plotters escapes itself).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{Html, IntoResponse, Response};

use crate::params::SortKey::{Column as C, Metric as M};
use crate::params::{Column, CompareAxis, CompareQuery, Kind, LeaderboardQuery, Metric, SortKey};
use crate::queries::{self, LeaderboardRow};
use crate::samples::SampleImage;
use crate::{AppState, DashboardError, MISSING, api, fmt_opt, fmt_params};

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => error_page(&DashboardError::Internal(format!("template: {e}"))),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    message: String,
}

/// The page for an error, with its status code.
pub fn error_page(error: &DashboardError) -> Response {
    let status = error.status();
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("error").into(),
        message: error.public_message(),
    };
    let body = page
        .render()
        .unwrap_or_else(|_| format!("{} {}", page.status, page.reason));
    (status, Html(body)).into_response()
}

/// Parses the query string into `T` (400 with serde's reason on failure).
pub(crate) fn parse_query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, DashboardError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| DashboardError::BadRequest(e.body_text()))
}

pub struct SelectOption {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

pub struct Header {
    pub label: &'static str,
    pub href: String,
    pub arrow: &'static str,
    pub title: &'static str,
}

pub struct RowView {
    pub evaluation_id: i64,
    pub model_id: i64,
    pub model: String,
    pub benchmark: String,
    pub best: bool,
    /// The benchmark's leader, or tied with it (the intervals overlap).
    pub leader: bool,
    pub tie: bool,
    /// The protocol's id and label (empty for a row recorded without one).
    pub protocol_id: String,
    pub protocol: String,
    pub cells: Vec<Cell>,
}

/// A table cell: its text and a tooltip (empty: none).
pub struct Cell {
    pub text: String,
    pub title: String,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell {
            text,
            title: String::new(),
        }
    }
}

/// `value ±half-width` with the exact 95% interval as the tooltip (intervals need not be
/// symmetric); `scale` multiplies every figure (KID is shown x 10^3).
fn with_interval(
    value: Option<f64>,
    low: Option<f64>,
    high: Option<f64>,
    decimals: usize,
    scale: f64,
) -> Cell {
    let scaled = |v: Option<f64>| v.map(|v| v * scale);
    let (value, low, high) = (scaled(value), scaled(low), scaled(high));
    match (value, low.zip(high)) {
        (Some(v), Some((low, high))) if v.is_finite() => Cell {
            text: format!("{v:.decimals$} ±{:.decimals$}", (high - low) / 2.0),
            title: format!("95% interval [{low:.decimals$}, {high:.decimals$}]"),
        },
        _ => fmt_opt(value, decimals).into(),
    }
}

#[derive(Template)]
#[template(path = "leaderboard.html")]
struct LeaderboardPageView {
    total: i64,
    /// More rows match than were counted.
    more: bool,
    first: i64,
    last: i64,
    headers: Vec<Header>,
    rows: Vec<RowView>,
    benchmarks: Vec<SelectOption>,
    kinds: Vec<SelectOption>,
    protocols: Vec<SelectOption>,
    metrics: Vec<SelectOption>,
    model: String,
    min: String,
    max: String,
    sort: &'static str,
    order: &'static str,
    prev: Option<String>,
    next: Option<String>,
    /// This page's query, for its CSV link.
    this: String,
    /// The benchmark and protocol the page is filtered to, which a comparison started from it
    /// keeps.
    compare_benchmark: String,
    compare_protocol: String,
}

/// (label, key, tooltip) of the sortable columns after the model name and benchmark.
#[rustfmt::skip]
const COLUMNS: [(&str, SortKey, &str); 19] = [
    ("params", C(Column::Params), "parameters"),
    ("step", C(Column::Step), "training step of the checkpoint"),
    ("epoch", C(Column::Epoch), "training epochs"),
    ("tokens", C(Column::Tokens), "training tokens seen"),
    ("image", C(Column::ImageSize), "generated image size"),
    ("cfg", C(Column::Cfg), "classifier-free guidance scale"),
    ("FID", M(Metric::Fid), "Fréchet Inception Distance (lower is better)"),
    ("sFID", M(Metric::Sfid), "spatial FID (lower is better)"),
    ("IS", M(Metric::InceptionScore), "Inception Score"),
    ("Prec.", M(Metric::Precision), "precision (Kynkäänniemi et al.)"),
    ("Rec.", M(Metric::Recall), "recall (Kynkäänniemi et al.)"),
    ("KID×10³", M(Metric::Kid), "Kernel Inception Distance x 1000 (lower is better)"),
    ("CLIP-FID", M(Metric::ClipFid), "FID on CLIP ViT-B/32 image features, text-to-image (lower is better)"),
    ("CLIP", M(Metric::ClipScore), "CLIP score: cosine of image and prompt embeddings, text-to-image"),
    ("rFID", M(Metric::Rfid), "reconstruction FID of a tokenizer"),
    ("PSNR", M(Metric::Psnr), "reconstruction PSNR (dB)"),
    ("SSIM", M(Metric::Ssim), "reconstruction SSIM"),
    ("usage", M(Metric::CodebookUsage), "share of the codebook used"),
    ("size", C(Column::Params), "model size name"),
];

impl From<&LeaderboardRow> for RowView {
    fn from(r: &LeaderboardRow) -> Self {
        RowView {
            evaluation_id: r.evaluation_id,
            model_id: r.model_id,
            model: r.model.clone(),
            benchmark: r.benchmark.clone(),
            best: r.best_of_model,
            leader: r.leader,
            tie: r.tied_with_leader,
            protocol_id: r.protocol_id.map(|p| p.to_string()).unwrap_or_default(),
            protocol: r.protocol.clone().unwrap_or_default(),
            cells: cells(r).into(),
        }
    }
}

impl RowView {
    /// The row with the cells of the columns `shown` marks (one flag per [`COLUMNS`] entry).
    fn with_columns(mut self, shown: &[bool]) -> Self {
        let mut keep = shown.iter();
        self.cells.retain(|_| keep.next().copied().unwrap_or(true));
        self
    }
}

/// One cell per column of [`COLUMNS`], in its order (the array length holds them equal).
fn cells(r: &LeaderboardRow) -> [Cell; COLUMNS.len()] {
    [
        fmt_params(r.params).into(),
        r.step.to_string().into(),
        fmt_opt(r.epoch, 1).into(),
        r.tokens_seen
            .map(fmt_count)
            .unwrap_or_else(|| MISSING.into())
            .into(),
        r.image_size
            .map(|s| s.to_string())
            .unwrap_or_else(|| MISSING.into())
            .into(),
        fmt_opt(r.cfg_scale, 2).into(),
        with_interval(r.fid, r.fid_low, r.fid_high, 2, 1.0),
        fmt_opt(r.sfid, 2).into(),
        fmt_opt(r.inception_score, 2).into(),
        fmt_opt(r.precision, 2).into(),
        fmt_opt(r.recall, 2).into(),
        with_interval(r.kid, r.kid_low, r.kid_high, 2, 1e3),
        with_interval(r.clip_fid, r.clip_fid_low, r.clip_fid_high, 2, 1.0),
        with_interval(r.clip_score, r.clip_score_low, r.clip_score_high, 4, 1.0),
        with_interval(r.rfid, r.rfid_low, r.rfid_high, 2, 1.0),
        with_interval(r.psnr, r.psnr_low, r.psnr_high, 2, 1.0),
        with_interval(r.ssim, r.ssim_low, r.ssim_high, 4, 1.0),
        r.codebook_usage
            .map(|u| format!("{:.1}%", u * 100.0))
            .unwrap_or_else(|| MISSING.into())
            .into(),
        r.size.clone().unwrap_or_else(|| MISSING.into()).into(),
    ]
}

/// Which of [`COLUMNS`] any of `rows` has a value in (all of them when there are no rows),
/// so that a table leaves out a column of dashes; and those columns' (label, tooltip).
fn columns_with_values(rows: &[RowView]) -> (Vec<bool>, Vec<(&'static str, &'static str)>) {
    let shown: Vec<bool> = (0..COLUMNS.len())
        .map(|i| rows.is_empty() || rows.iter().any(|r| r.cells[i].text != MISSING))
        .collect();
    let labels = COLUMNS
        .iter()
        .zip(&shown)
        .filter(|(_, shown)| **shown)
        .map(|(&(label, _, title), _)| (label, title))
        .collect();
    (shown, labels)
}

fn fmt_count(n: i64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// `GET /`: the leaderboard.
pub async fn leaderboard(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Response, DashboardError> {
    let q: LeaderboardQuery = parse_query(&uri)?;
    q.validate()?;
    let page = queries::leaderboard(&state.pool, &q).await?;
    let benchmarks = queries::benchmarks(&state.pool).await?;
    let protocols = queries::protocols(&state.pool).await?;

    let arrow = |key: SortKey| match (q.sort == key, q.descending()) {
        (false, _) => "",
        (true, true) => " ▼",
        (true, false) => " ▲",
    };
    let mut headers = vec![
        Header {
            label: "model",
            href: q.with_sort(SortKey::Column(Column::Model)),
            arrow: arrow(SortKey::Column(Column::Model)),
            title: "model name",
        },
        Header {
            label: "benchmark",
            href: q.with_sort(SortKey::Column(Column::Benchmark)),
            arrow: arrow(SortKey::Column(Column::Benchmark)),
            title: "benchmark",
        },
    ];
    // Filtered to one kind of model, the other kind's columns would be dashes only; so is a
    // column none of the page's rows has, unless the page is sorted by it.
    let all_rows: Vec<RowView> = page.rows.iter().map(RowView::from).collect();
    let (with_values, _) = columns_with_values(&all_rows);
    let shown: Vec<bool> = COLUMNS
        .iter()
        .zip(with_values)
        .map(|(&(label, key, _), has_values)| {
            let of_kind = match (q.kind, key.kind()) {
                (Some(wanted), Some(kind)) => wanted == kind,
                _ => true,
            };
            let sorted_by = key == q.sort && label != "size";
            of_kind && (has_values || sorted_by)
        })
        .collect();
    headers.extend(COLUMNS.iter().zip(&shown).filter(|(_, shown)| **shown).map(
        |(&(label, key, title), _)| Header {
            label,
            href: q.with_sort(key),
            arrow: if label == "size" { "" } else { arrow(key) },
            title,
        },
    ));
    let rows = all_rows
        .into_iter()
        .map(|r| r.with_columns(&shown))
        .collect();
    let options = |values: Vec<(String, String)>, selected: Option<&str>| {
        let mut all = vec![SelectOption {
            value: String::new(),
            label: "all".into(),
            selected: selected.is_none(),
        }];
        all.extend(values.into_iter().map(|(value, label)| SelectOption {
            selected: selected == Some(value.as_str()),
            value,
            label,
        }));
        all
    };
    let first = i64::from(q.offset()) + 1;
    let last = i64::from(q.offset()) + page.rows.len() as i64;
    let page_no = q.page();
    let view = LeaderboardPageView {
        total: page.total,
        first: if page.rows.is_empty() { 0 } else { first },
        last,
        headers,
        rows,
        benchmarks: options(
            benchmarks.into_iter().map(|b| (b.clone(), b)).collect(),
            q.benchmark.as_deref(),
        ),
        kinds: options(
            [Kind::Generator, Kind::Tokenizer]
                .iter()
                .map(|k| (k.as_str().into(), k.as_str().into()))
                .collect(),
            q.kind.map(Kind::as_str),
        ),
        protocols: options(
            protocols
                .into_iter()
                .map(|(id, name)| (id.to_string(), format!("P{id}: {name}")))
                .collect(),
            q.protocol.map(|p| p.to_string()).as_deref(),
        ),
        metrics: options(
            Metric::ALL
                .iter()
                .map(|m| (m.as_str().into(), m.as_str().into()))
                .collect(),
            q.metric.map(Metric::as_str),
        ),
        model: q.model.clone().unwrap_or_default(),
        min: q.min.map(|v| v.to_string()).unwrap_or_default(),
        max: q.max.map(|v| v.to_string()).unwrap_or_default(),
        sort: q.sort.as_str(),
        order: if q.descending() { "desc" } else { "asc" },
        prev: (page_no > 1).then(|| q.with_page(page_no - 1)),
        this: q.with_page(page_no),
        next: (last < page.total || page.total_is_lower_bound).then(|| q.with_page(page_no + 1)),
        more: page.total_is_lower_bound,
        compare_benchmark: q.benchmark.clone().unwrap_or_default(),
        compare_protocol: q.protocol.map(|p| p.to_string()).unwrap_or_default(),
    };
    Ok(render(&view))
}

/// A chart and the id of its figure; its title is drawn in the SVG.
pub struct ChartView {
    pub id: &'static str,
    pub svg: String,
}

#[derive(Template)]
#[template(path = "model.html")]
struct ModelPageView {
    model: queries::Model,
    params: String,
    charts: Vec<ChartView>,
    samples: Vec<SampleImage>,
    /// (label, tooltip) of the columns after the benchmark: the leaderboard's that any of the
    /// model's evaluations has, the rows' cells cut to the same.
    columns: Vec<(&'static str, &'static str)>,
    rows: Vec<RowView>,
}

/// `GET /models/{id}`: charts, samples and evaluations of one model.
pub async fn model(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, DashboardError> {
    let data = api::model_data(&state, id).await?;
    let tokenizer = data.model.kind == "tokenizer";
    let (fid, step_title, cfg_title) = if tokenizer {
        (
            "rFID",
            "rFID against training step",
            "rFID against guidance scale",
        )
    } else {
        (
            "FID",
            "FID against training step",
            "FID against guidance scale",
        )
    };
    let chart = |id, title, x, y, points: &[queries::Point]| {
        crate::charts::line_chart(title, x, y, points).map(|svg| ChartView { id, svg })
    };
    let charts = [
        chart("fid-step", step_title, "step", fid, &data.fid_by_step),
        chart("fid-cfg", cfg_title, "cfg scale", fid, &data.fid_by_cfg),
        chart(
            "is-cfg",
            "Inception Score against guidance scale",
            "cfg scale",
            "IS",
            &data.is_by_cfg,
        ),
        chart("loss", "training loss", "step", "loss", &data.loss),
        chart(
            "grad-norm",
            "gradient norm before clipping",
            "step",
            "norm",
            &data.grad_norm,
        ),
        chart(
            "tokens",
            "training speed",
            "step",
            "tokens/s",
            &data.tokens_per_s,
        ),
        chart(
            "memory",
            "peak memory per interval (GPU: allocated; CPU: resident set)",
            "step",
            "MiB",
            &data.memory_mib,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let rows: Vec<RowView> = data.evaluations.iter().map(RowView::from).collect();
    // A model's evaluations are all on its page, so a column none of them has (a generator's
    // PSNR, a tokenizer's FID) is left out rather than shown as a column of dashes.
    let (shown, columns) = columns_with_values(&rows);
    let rows: Vec<RowView> = rows.into_iter().map(|r| r.with_columns(&shown)).collect();
    let view = ModelPageView {
        params: fmt_params(data.model.params),
        model: data.model,
        charts,
        samples: data.samples,
        columns,
        rows,
    };
    Ok(render(&view))
}

/// A link among the comparison's choices (a suite, an axis); the current one is not a link.
pub struct Choice {
    pub label: String,
    pub href: String,
    pub current: bool,
}

pub struct ComparedModel {
    pub id: i64,
    pub name: String,
    /// Its line's colour on every chart of the page.
    pub colour: String,
    pub description: String,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePageView {
    models: Vec<ComparedModel>,
    suites: Vec<Choice>,
    axes: Vec<Choice>,
    charts: Vec<ChartView>,
    /// Charts of the suite's metrics are left out: none of the models has results yet.
    no_results: bool,
    /// Models left out of the training charts on this axis (comma-separated; empty if none).
    training_off_axis: String,
    columns: Vec<(&'static str, &'static str)>,
    rows: Vec<RowView>,
}

/// `GET /compare?model=ID&model=ID...`: models side by side on one benchmark and protocol.
pub async fn compare(State(state): State<AppState>, uri: Uri) -> Result<Response, DashboardError> {
    let q = CompareQuery::parse(uri.query().unwrap_or_default())?;
    let data = api::compare_data(&state.pool, &q).await?;
    let names: Vec<&str> = data.models.iter().map(|m| m.name.as_str()).collect();
    let tokenizer = data.models.first().is_some_and(|m| m.kind == "tokenizer");
    let fid = if tokenizer { "rFID" } else { "FID" };
    let chart = |id, title: String, x, y, points: &[queries::Point]| {
        crate::charts::line_chart_keyed(&title, x, y, points, &names)
            .map(|svg| ChartView { id, svg })
    };
    let charts = [
        chart(
            "fid-axis",
            format!("{fid} at each checkpoint's best guidance scale"),
            data.axis.label(),
            fid,
            &data.fid_by_axis,
        ),
        chart(
            "fid-cfg",
            format!("{fid} against guidance scale, latest checkpoint of each"),
            "cfg scale",
            fid,
            &data.fid_by_cfg,
        ),
        chart(
            "is-cfg",
            "Inception Score against guidance scale, latest checkpoint of each".into(),
            "cfg scale",
            "IS",
            &data.is_by_cfg,
        ),
        chart(
            "loss",
            "training loss".into(),
            data.axis.label(),
            "loss",
            &data.loss,
        ),
        chart(
            "tokens",
            "training speed".into(),
            data.axis.label(),
            "tokens/s",
            &data.tokens_per_s,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let suites = data
        .suites
        .iter()
        .map(|s| {
            let asked = CompareQuery {
                benchmark: Some(s.benchmark.clone()),
                protocol: s.protocol_id,
                ..q.clone()
            };
            let protocol = match (s.protocol_id, &s.protocol) {
                (Some(id), Some(name)) => format!(" · P{id}: {name}"),
                (Some(id), None) => format!(" · P{id}"),
                (None, _) => String::new(),
            };
            Choice {
                label: format!(
                    "{}{protocol} ({} of {} models, {} evaluations)",
                    s.benchmark,
                    s.models,
                    data.models.len(),
                    s.evaluations
                ),
                href: asked.to_query_string(),
                current: data.suite.as_ref() == Some(s),
            }
        })
        .collect();
    let axes = [CompareAxis::Step, CompareAxis::Epoch, CompareAxis::Tokens]
        .into_iter()
        .map(|x| {
            // The axis link stays on the suite shown.
            let asked = CompareQuery {
                benchmark: data.suite.as_ref().map(|s| s.benchmark.clone()),
                protocol: data.suite.as_ref().and_then(|s| s.protocol_id),
                x,
                ..q.clone()
            };
            Choice {
                label: x.label().into(),
                href: asked.to_query_string(),
                current: x == data.axis,
            }
        })
        .collect();
    let rows: Vec<RowView> = data.best.iter().map(RowView::from).collect();
    let (shown, columns) = columns_with_values(&rows);
    let view = ComparePageView {
        models: data
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| ComparedModel {
                id: m.id,
                name: m.name.clone(),
                colour: crate::charts::colour_css(i).unwrap_or_default(),
                description: [
                    Some(m.kind.clone()),
                    Some(m.architecture.clone()),
                    m.size.clone(),
                    Some(format!("{} parameters", fmt_params(m.params))),
                    m.image_size.map(|s| format!("{s} px")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · "),
            })
            .collect(),
        suites,
        axes,
        charts,
        no_results: data.suite.is_none(),
        training_off_axis: data.training_off_axis.join(", "),
        columns,
        rows: rows.into_iter().map(|r| r.with_columns(&shown)).collect(),
    };
    Ok(render(&view))
}

pub struct RunView {
    pub id: i64,
    pub pipeline: String,
    pub trigger: String,
    pub status: String,
    pub started: String,
    pub duration: String,
    pub error: String,
}

/// A duration as a person reads it: "12.3 s", "4 min 05 s", "2 h 05 min", "3 d 07 h".
fn fmt_seconds(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return MISSING.into();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as u64;
    match s {
        s if s < 3600 => format!("{} min {:02} s", s / 60, s % 60),
        s if s < 86400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {:02} h", s / 86400, s % 86400 / 3600),
    }
}

fn run_view(r: &queries::PipelineRun) -> RunView {
    RunView {
        id: r.id,
        pipeline: r.pipeline.clone(),
        trigger: r.trigger.clone(),
        status: r.status.clone(),
        started: r.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        duration: r.seconds.map(fmt_seconds).unwrap_or_else(|| MISSING.into()),
        error: r.error.clone().unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "pipelines.html")]
struct PipelinesView {
    runs: Vec<RunView>,
    ticks: Vec<queries::ScheduleTick>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    #[serde(default)]
    pub pipeline: Option<String>,
    #[serde(default)]
    pub limit: Option<u16>,
}

impl RunsQuery {
    pub fn checked(uri: &Uri) -> Result<Self, DashboardError> {
        let q: RunsQuery = parse_query(uri)?;
        if q.limit.is_some_and(|n| n == 0 || n > 1000) {
            return Err(DashboardError::BadRequest(
                "limit must be between 1 and 1000".into(),
            ));
        }
        if q.pipeline.as_ref().is_some_and(|p| p.len() > 200) {
            return Err(DashboardError::BadRequest("pipeline name too long".into()));
        }
        Ok(q)
    }

    pub fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100))
    }

    pub fn pipeline(&self) -> Option<&str> {
        self.pipeline.as_deref().filter(|p| !p.is_empty())
    }
}

/// `GET /pipelines`: run history and the scheduler's decisions.
pub async fn pipelines(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Response, DashboardError> {
    let q = RunsQuery::checked(&uri)?;
    let runs = queries::pipeline_runs(&state.pool, q.pipeline(), q.limit()).await?;
    let ticks = queries::schedule_ticks(&state.pool, 50).await?;
    Ok(render(&PipelinesView {
        runs: runs.iter().map(run_view).collect(),
        ticks,
    }))
}

pub struct StageView {
    pub stage: String,
    pub status: String,
    pub shards_done: i64,
    pub shards_total: i64,
    pub shards_running: i64,
    pub shards_failed: i64,
    pub rows_out: i64,
    pub rows_failed: i64,
    /// For a stage without shards (training, sampling, a stage run in one process): what it
    /// recorded it did, as `name value` pairs ("–" when it recorded nothing).
    pub summary: String,
    /// How long it took; "–" while it runs.
    pub took: String,
    pub output: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPageView {
    run: RunView,
    stages: Vec<StageView>,
    funnel: Vec<queries::FunnelRow>,
    failed: Vec<queries::FailedShard>,
}

/// A stage's recorded counts as `name value` pairs joined by ` · `, by name;
/// names read with spaces, numbers with at most four decimals, anything nested left out.
fn counts_text(counts: &serde_json::Value) -> String {
    let Some(map) = counts.as_object() else {
        return String::new();
    };
    map.iter()
        .filter_map(|(name, value)| {
            let value = match value {
                serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => i.to_string(),
                    (None, Some(f)) => format!("{:.4}", f)
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string(),
                    _ => return None,
                },
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some(format!("{} {value}", name.replace('_', " ")))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// `GET /pipelines/runs/{id}`: one run's stages, shard progress and funnel.
pub async fn pipeline_run(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, DashboardError> {
    let data = api::run_data(&state.pool, id).await?;
    let stages = data
        .stages
        .iter()
        .map(|s| {
            let shards_total =
                s.shards_pending + s.shards_running + s.shards_succeeded + s.shards_failed;
            StageView {
                stage: s.stage.clone(),
                status: s.status.clone(),
                shards_done: s.shards_succeeded + s.shards_failed,
                shards_total,
                shards_running: s.shards_running,
                shards_failed: s.shards_failed,
                rows_out: s.rows_out,
                rows_failed: s.rows_failed,
                summary: if shards_total > 0 {
                    String::new()
                } else {
                    Some(counts_text(&s.counts))
                        .filter(|text| !text.is_empty())
                        .unwrap_or_else(|| MISSING.into())
                },
                took: s
                    .finished_at
                    .map(|end| fmt_seconds((end - s.started_at).as_seconds_f64()))
                    .unwrap_or_else(|| MISSING.into()),
                output: s.output_path.clone().unwrap_or_default(),
                error: s.error.clone().unwrap_or_default(),
            }
        })
        .collect();
    Ok(render(&RunPageView {
        run: run_view(&data.run),
        stages,
        funnel: data.funnel,
        failed: data.failed_shards,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_says_them() {
        for (seconds, text) in [
            (0.04, "0.0 s"),
            (59.94, "59.9 s"),
            (65.0, "1 min 05 s"),
            (7500.0, "2 h 05 min"),
            (3.0 * 86400.0 + 7.0 * 3600.0 + 59.0, "3 d 07 h"),
            (-1.0, "–"),
        ] {
            assert_eq!(fmt_seconds(seconds), text, "{seconds}");
        }
    }
}
