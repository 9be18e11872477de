//! Every SQL statement the dashboard runs. All of them read; every value that comes from a
//! request is a bound parameter. The only text spliced into SQL is a column name picked from
//! the fixed lists of [`crate::params::SortKey`] and [`Metric`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::params::{CompareAxis, LeaderboardQuery, Metric};

/// One row of the leaderboard (one evaluation of one checkpoint).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LeaderboardRow {
    pub evaluation_id: i64,
    pub benchmark: String,
    pub model_id: i64,
    pub model: String,
    pub kind: String,
    pub size: Option<String>,
    pub task: Option<String>,
    pub params: Option<i64>,
    pub step: i64,
    pub epoch: Option<f64>,
    pub tokens_seen: Option<i64>,
    pub image_size: Option<i32>,
    pub cfg_scale: Option<f64>,
    pub top_k: Option<i32>,
    pub num_samples: Option<i32>,
    pub finished_at: Option<DateTime<Utc>>,
    pub fid: Option<f64>,
    pub sfid: Option<f64>,
    pub inception_score: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub rfid: Option<f64>,
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
    pub codebook_usage: Option<f64>,
    pub kid: Option<f64>,
    /// KID's standard deviation over its subsets.
    pub kid_std: Option<f64>,
    /// 95% confidence intervals, where the evaluation computed them.
    pub fid_low: Option<f64>,
    pub fid_high: Option<f64>,
    pub kid_low: Option<f64>,
    pub kid_high: Option<f64>,
    pub rfid_low: Option<f64>,
    pub rfid_high: Option<f64>,
    pub psnr_low: Option<f64>,
    pub psnr_high: Option<f64>,
    pub ssim_low: Option<f64>,
    pub ssim_high: Option<f64>,
    /// The protocol it was measured under (`protocols.id`, and its label); rows are ranked only
    /// against rows of the same benchmark and protocol.
    pub protocol_id: Option<i64>,
    pub protocol: Option<String>,
    /// Text-to-image: FID on CLIP features and the CLIP score, with their intervals.
    pub clip_fid: Option<f64>,
    pub clip_score: Option<f64>,
    pub clip_fid_low: Option<f64>,
    pub clip_fid_high: Option<f64>,
    pub clip_score_low: Option<f64>,
    pub clip_score_high: Option<f64>,
    /// The best evaluation of its model on its benchmark and protocol (lowest FID, or rFID for
    /// tokenizers).
    #[sqlx(default)]
    pub best_of_model: bool,
    /// The best evaluation of its benchmark and protocol (lowest FID, or rFID for tokenizers).
    #[sqlx(default)]
    pub leader: bool,
    /// Not the leader, but its interval overlaps the leader's: the two cannot be told apart
    /// at the sample sizes measured.
    #[sqlx(default)]
    pub tied_with_leader: bool,
}

impl LeaderboardRow {
    /// The ranking metric (FID, rFID for tokenizers) and its interval.
    fn ranking(&self) -> (Option<f64>, Option<(f64, f64)>) {
        let (value, low, high) = if self.kind == "tokenizer" {
            (self.rfid, self.rfid_low, self.rfid_high)
        } else {
            (self.fid, self.fid_low, self.fid_high)
        };
        (value, low.zip(high))
    }

    /// Its ranking metric's interval overlaps `leader`'s: the samples measured cannot tell the
    /// two apart. False when either has no interval.
    fn ties_with(&self, leader: &LeaderboardRow) -> bool {
        match (self.ranking().1, leader.ranking().1) {
            (Some((low, high)), Some((leader_low, leader_high))) => {
                low <= leader_high && leader_low <= high
            }
            _ => false,
        }
    }
}

/// One page of the leaderboard and the number of rows that match the filters.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderboardPage {
    /// Matching rows, counted up to [`COUNT_CAP`].
    pub total: i64,
    /// `total` stopped at the cap: there are more.
    pub total_is_lower_bound: bool,
    pub rows: Vec<LeaderboardRow>,
}

/// Counting stops here: an exact count of a million rows would cost more than the page.
pub const COUNT_CAP: i64 = 10_000;

/// The filters: $1 benchmark, $2 kind, $3 model name substring, $4/$5 the range of the
/// metric named by the query (its column comes from [`Metric`]'s fixed list), $6 protocol.
fn filters(q: &LeaderboardQuery) -> String {
    let mut sql = String::from(
        "FROM leaderboard_rows l
         WHERE ($1::text IS NULL OR l.benchmark = $1)
           AND ($2::text IS NULL OR l.kind = $2)
           AND ($3::text IS NULL OR strpos(lower(l.model), lower($3)) > 0)
           AND ($6::bigint IS NULL OR l.protocol_id = $6)",
    );
    match q.metric {
        Some(metric) => {
            let col = metric.as_str();
            sql.push_str(&format!(
                "\n           AND l.{col} IS NOT NULL
           AND ($4::float8 IS NULL OR l.{col} >= $4)
           AND ($5::float8 IS NULL OR l.{col} <= $5)"
            ));
        }
        // Bounds need a metric (`LeaderboardQuery::validate`); without one they are absent.
        None => sql.push_str("\n           AND $4::float8 IS NULL AND $5::float8 IS NULL"),
    }
    sql
}

/// The leaderboard page `q` asks for. Reads `leaderboard_rows`, the indexed copy of the
/// `leaderboard` view that triggers keep current, so each sort is an index scan.
pub async fn leaderboard(
    pool: &PgPool,
    q: &LeaderboardQuery,
) -> Result<LeaderboardPage, sqlx::Error> {
    let from = filters(q);
    let counted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT 1 {from} LIMIT {}) capped",
        COUNT_CAP + 1
    )))
    .bind(q.benchmark.as_deref())
    .bind(q.kind.map(|k| k.as_str()))
    .bind(q.model.as_deref())
    .bind(q.min)
    .bind(q.max)
    .bind(q.protocol)
    .fetch_one(pool)
    .await?;

    let column = q.sort.column();
    let direction = if q.descending() { "DESC" } else { "ASC" };
    let mut rows: Vec<LeaderboardRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VIEW_COLUMNS} {from}
         ORDER BY l.{column} {direction} NULLS LAST, l.evaluation_id {direction}
         LIMIT $7 OFFSET $8"
    )))
    .bind(q.benchmark.as_deref())
    .bind(q.kind.map(|k| k.as_str()))
    .bind(q.model.as_deref())
    .bind(q.min)
    .bind(q.max)
    .bind(q.protocol)
    .bind(i64::from(q.limit()))
    .bind(i64::from(q.offset()))
    .fetch_all(pool)
    .await?;

    // Each (model, benchmark, protocol) on the page: its lowest FID (rFID for tokenizers), one
    // index probe each.
    let mut groups: Vec<(i64, String, String, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r.model_id,
                r.benchmark.clone(),
                r.kind.clone(),
                r.protocol_id,
            )
        })
        .collect();
    groups.sort();
    groups.dedup();
    let best: Vec<i64> = sqlx::query_scalar(
        "SELECT b.evaluation_id
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[])
              AS p(model_id, benchmark, kind, protocol_id)
         CROSS JOIN LATERAL (
            (SELECT r.evaluation_id FROM leaderboard_rows r
             WHERE p.kind <> 'tokenizer' AND r.model_id = p.model_id AND r.benchmark = p.benchmark
               AND COALESCE(r.protocol_id, 0) = COALESCE(p.protocol_id, 0) AND r.fid IS NOT NULL
             ORDER BY r.fid, r.evaluation_id LIMIT 1)
            UNION ALL
            (SELECT r.evaluation_id FROM leaderboard_rows r
             WHERE p.kind = 'tokenizer' AND r.model_id = p.model_id AND r.benchmark = p.benchmark
               AND COALESCE(r.protocol_id, 0) = COALESCE(p.protocol_id, 0) AND r.rfid IS NOT NULL
             ORDER BY r.rfid, r.evaluation_id LIMIT 1)) b",
    )
    .bind(groups.iter().map(|g| g.0).collect::<Vec<_>>())
    .bind(groups.iter().map(|g| g.1.clone()).collect::<Vec<_>>())
    .bind(groups.iter().map(|g| g.2.clone()).collect::<Vec<_>>())
    .bind(groups.iter().map(|g| g.3).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    for row in &mut rows {
        row.best_of_model = best.contains(&row.evaluation_id);
    }

    // Each benchmark, kind and protocol on the page: its leader, and who ties with it. Rows of
    // different protocols are never compared.
    let mut rankings: Vec<(String, String, Option<i64>)> = rows
        .iter()
        .map(|r| (r.benchmark.clone(), r.kind.clone(), r.protocol_id))
        .collect();
    rankings.sort();
    rankings.dedup();
    let leaders: Vec<LeaderboardRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VIEW_COLUMNS}
         FROM unnest($1::text[], $2::text[], $3::bigint[]) AS p(b, k, pr)
         CROSS JOIN LATERAL (
            (SELECT * FROM leaderboard_rows r
             WHERE p.k <> 'tokenizer' AND r.kind <> 'tokenizer' AND r.benchmark = p.b
               AND COALESCE(r.protocol_id, 0) = COALESCE(p.pr, 0) AND r.fid IS NOT NULL
             ORDER BY r.fid, r.evaluation_id LIMIT 1)
            UNION ALL
            (SELECT * FROM leaderboard_rows r
             WHERE p.k = 'tokenizer' AND r.kind = 'tokenizer' AND r.benchmark = p.b
               AND COALESCE(r.protocol_id, 0) = COALESCE(p.pr, 0) AND r.rfid IS NOT NULL
             ORDER BY r.rfid, r.evaluation_id LIMIT 1)) l"
    )))
    .bind(rankings.iter().map(|b| b.0.clone()).collect::<Vec<_>>())
    .bind(rankings.iter().map(|b| b.1.clone()).collect::<Vec<_>>())
    .bind(rankings.iter().map(|b| b.2).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    for row in &mut rows {
        let tokenizer = row.kind == "tokenizer";
        let Some(leader) = leaders.iter().find(|l| {
            l.benchmark == row.benchmark
                && (l.kind == "tokenizer") == tokenizer
                && l.protocol_id == row.protocol_id
        }) else {
            continue;
        };
        row.leader = leader.evaluation_id == row.evaluation_id;
        row.tied_with_leader = !row.leader && row.ties_with(leader);
    }
    Ok(LeaderboardPage {
        total: counted.min(COUNT_CAP),
        total_is_lower_bound: counted > COUNT_CAP,
        rows,
    })
}

const VIEW_COLUMNS: &str = "evaluation_id, benchmark, model_id, model, kind, size, task, params,
    step, epoch, tokens_seen, image_size, cfg_scale, top_k, num_samples, finished_at, fid, sfid,
    inception_score, precision, recall, rfid, psnr, ssim, codebook_usage, kid, kid_std,
    fid_low, fid_high, kid_low, kid_high, rfid_low, rfid_high, psnr_low, psnr_high, ssim_low,
    ssim_high, protocol_id, protocol, clip_fid, clip_score, clip_fid_low, clip_fid_high,
    clip_score_low, clip_score_high";

/// A model's evaluations, best first by `metric` (lowest first).
pub async fn model_evaluations(
    pool: &PgPool,
    model_id: i64,
    metric: Metric,
    limit: i64,
) -> Result<Vec<LeaderboardRow>, sqlx::Error> {
    let order = metric.as_str();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VIEW_COLUMNS} FROM leaderboard_rows l WHERE model_id = $1
         ORDER BY {order} ASC NULLS LAST, evaluation_id LIMIT $2"
    )))
    .bind(model_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The protocols that have results, for the filter menu: (id, label).
pub async fn protocols(pool: &PgPool) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.name FROM protocols p
         WHERE EXISTS (SELECT 1 FROM leaderboard_rows l WHERE l.protocol_id = p.id)
         ORDER BY p.id",
    )
    .fetch_all(pool)
    .await
}

/// The benchmarks that have results, for the filter menu.
pub async fn benchmarks(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    // A loose index scan: one index probe per distinct benchmark instead of reading every row.
    sqlx::query_scalar(
        "WITH RECURSIVE b(name) AS (
            SELECT min(benchmark) FROM leaderboard_rows
            UNION ALL
            SELECT (SELECT min(benchmark) FROM leaderboard_rows WHERE benchmark > b.name)
            FROM b WHERE b.name IS NOT NULL)
         SELECT name FROM b WHERE name IS NOT NULL",
    )
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Model {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub architecture: String,
    pub size: Option<String>,
    pub task: Option<String>,
    pub params: Option<i64>,
    pub image_size: Option<i32>,
    pub created_at: DateTime<Utc>,
}

impl Model {
    /// What ranks it: rFID for a tokenizer, FID for a generator.
    pub fn ranking_metric(&self) -> Metric {
        if self.kind == "tokenizer" {
            Metric::Rfid
        } else {
            Metric::Fid
        }
    }
}

pub async fn model(pool: &PgPool, id: i64) -> Result<Option<Model>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, kind, architecture, size, task, params, image_size, created_at
         FROM models WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One point of a chart: x, y, the series it belongs to, and y's confidence interval where
/// the metric has one.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Point {
    pub series: String,
    pub x: f64,
    pub y: f64,
    #[sqlx(default)]
    pub low: Option<f64>,
    #[sqlx(default)]
    pub high: Option<f64>,
}

/// SQL for the interval of the best (lowest) `col` value of a group, or NULLs.
fn interval_of_min(metric: Metric, table: &str) -> String {
    interval_of_first(metric, table, "ASC")
}

/// SQL for the interval of the group's first row by `col` in `order` (`ASC`, `DESC`), or NULLs.
fn interval_of_first(metric: Metric, table: &str, order: &str) -> String {
    let col = metric.as_str();
    match metric.interval_columns() {
        Some((low, high)) => format!(
            "(array_agg({table}{low} ORDER BY {table}{col} {order}))[1] AS low,
             (array_agg({table}{high} ORDER BY {table}{col} {order}))[1] AS high"
        ),
        None => "NULL::float8 AS low, NULL::float8 AS high".into(),
    }
}

/// FID (rFID for tokenizers) against the checkpoint's training step, one series per guidance
/// scale: the paper's Figure 3 (a) for one model.
pub async fn metric_by_step(
    pool: &PgPool,
    model_id: i64,
    metric: Metric,
) -> Result<Vec<Point>, sqlx::Error> {
    let col = metric.as_str();
    let interval = interval_of_min(metric, "");
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT CASE WHEN cfg_scale IS NULL THEN 'all' ELSE 'cfg ' || cfg_scale::text END AS series,
                step::float8 AS x, min({col}) AS y, {interval}
         FROM leaderboard_rows
         WHERE model_id = $1 AND {col} IS NOT NULL
         GROUP BY 1, 2 ORDER BY 1, 2"
    )))
    .bind(model_id)
    .fetch_all(pool)
    .await
}

/// A metric against the guidance scale at the model's latest evaluated checkpoint: the paper's
/// Figure 3 (b, c).
pub async fn metric_by_cfg(
    pool: &PgPool,
    model_id: i64,
    metric: Metric,
) -> Result<Vec<Point>, sqlx::Error> {
    let col = metric.as_str();
    let interval = interval_of_min(metric, "r.");
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH latest AS (
            SELECT checkpoint_id, step FROM leaderboard_rows
            WHERE model_id = $1 AND cfg_scale IS NOT NULL AND {col} IS NOT NULL
            ORDER BY step DESC, checkpoint_id DESC LIMIT 1)
         SELECT 'step ' || latest.step::text AS series, r.cfg_scale AS x, min(r.{col}) AS y,
                {interval}
         FROM latest JOIN leaderboard_rows r ON r.checkpoint_id = latest.checkpoint_id
         WHERE r.cfg_scale IS NOT NULL AND r.{col} IS NOT NULL
         GROUP BY 1, 2 ORDER BY 2"
    )))
    .bind(model_id)
    .fetch_all(pool)
    .await
}

/// One logged training metric (`loss`, `grad_norm`, `tokens_per_s`, `memory_mib`) of every training run of
/// the model, averaged into at most `buckets` step ranges per run so a million-step curve stays
/// a light page.
pub async fn training_metric(
    pool: &PgPool,
    model_id: i64,
    name: &str,
    buckets: i32,
) -> Result<Vec<Point>, sqlx::Error> {
    // Each run's first and last step are two index probes, not a pass over its points; made
    // once (MATERIALIZED), or PostgreSQL would probe again for every point in the grouping.
    sqlx::query_as(
        "WITH runs AS MATERIALIZED (
            SELECT t.id,
                   (SELECT min(step) FROM training_metrics
                    WHERE training_run_id = t.id AND name = $3) AS lo,
                   (SELECT max(step) FROM training_metrics
                    WHERE training_run_id = t.id AND name = $3) AS hi
            FROM training_runs t WHERE t.model_id = $1)
         SELECT 'run ' || runs.id::text AS series, avg(tm.step)::float8 AS x, avg(tm.value) AS y
         FROM runs JOIN training_metrics tm ON tm.training_run_id = runs.id AND tm.name = $3
         GROUP BY runs.id,
                  CASE WHEN runs.hi = runs.lo THEN 0
                       ELSE floor((tm.step - runs.lo)::float8 * $2 / (runs.hi - runs.lo + 1)) END
         ORDER BY 1, 2",
    )
    .bind(model_id)
    .bind(buckets)
    .bind(name)
    .fetch_all(pool)
    .await
}

/// A benchmark and protocol that some of the compared models have results on: rows of one
/// suite are comparable, rows of two are not.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Suite {
    pub benchmark: String,
    pub protocol_id: Option<i64>,
    pub protocol: Option<String>,
    /// How many of the compared models have results in it, and how many evaluations.
    pub models: i64,
    pub evaluations: i64,
}

/// The suites the models have results on, the widest first (most models, then most
/// evaluations).
pub async fn suites(pool: &PgPool, model_ids: &[i64]) -> Result<Vec<Suite>, sqlx::Error> {
    sqlx::query_as(
        "SELECT benchmark, protocol_id, max(protocol) AS protocol,
                count(DISTINCT model_id) AS models, count(*) AS evaluations
         FROM leaderboard_rows WHERE model_id = ANY($1)
         GROUP BY benchmark, protocol_id
         ORDER BY 4 DESC, 5 DESC, benchmark, protocol_id NULLS FIRST",
    )
    .bind(model_ids)
    .fetch_all(pool)
    .await
}

/// The rows of `sql`, whose `$1` is the compared models, `$2` the suite's benchmark and `$3`
/// its protocol (0 standing for none, as the best-row indexes have it).
async fn on_suite<T>(
    pool: &PgPool,
    model_ids: &[i64],
    suite: &Suite,
    sql: String,
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(model_ids)
        .bind(&suite.benchmark)
        .bind(suite.protocol_id)
        .fetch_all(pool)
        .await
}

/// SQL for the best of a group of `metric` values (the lowest distance, the highest score) and
/// that row's interval.
fn best_with_interval(metric: Metric, table: &str) -> String {
    let (best, order) = if metric.lower_is_better() {
        ("min", "ASC")
    } else {
        ("max", "DESC")
    };
    let interval = interval_of_first(metric, table, order);
    format!("{best}({table}{}) AS y, {interval}", metric.as_str())
}

/// Each model's best `metric` per checkpoint (over its guidance sweep, as the paper reports a
/// checkpoint at its best scale) on one suite, against `axis`: one series per model, named
/// after it, in the order of `model_ids`.
pub async fn metric_by_axis(
    pool: &PgPool,
    model_ids: &[i64],
    suite: &Suite,
    metric: Metric,
    axis: CompareAxis,
) -> Result<Vec<Point>, sqlx::Error> {
    let col = metric.as_str();
    let x = axis.expression();
    let y = best_with_interval(metric, "");
    let sql = format!(
        "SELECT model AS series, {x} AS x, {y}
         FROM leaderboard_rows
         WHERE model_id = ANY($1) AND benchmark = $2 AND COALESCE(protocol_id, 0) = COALESCE($3, 0)
           AND {col} IS NOT NULL AND {x} IS NOT NULL
         GROUP BY model_id, model, checkpoint_id, 2
         ORDER BY array_position($1, model_id), 2"
    );
    on_suite(pool, model_ids, suite, sql).await
}

/// `metric` against the guidance scale at each model's latest checkpoint evaluated on the
/// suite with a guidance scale: one series per model, named after it.
pub async fn metric_by_cfg_of_models(
    pool: &PgPool,
    model_ids: &[i64],
    suite: &Suite,
    metric: Metric,
) -> Result<Vec<Point>, sqlx::Error> {
    let col = metric.as_str();
    let y = best_with_interval(metric, "r.");
    let sql = format!(
        "WITH latest AS (
            SELECT DISTINCT ON (model_id) model_id, checkpoint_id FROM leaderboard_rows
            WHERE model_id = ANY($1) AND benchmark = $2 AND COALESCE(protocol_id, 0) = COALESCE($3, 0)
              AND cfg_scale IS NOT NULL AND {col} IS NOT NULL
            ORDER BY model_id, step DESC, checkpoint_id DESC)
         SELECT r.model AS series, r.cfg_scale AS x, {y}
         FROM latest JOIN leaderboard_rows r ON r.checkpoint_id = latest.checkpoint_id
         WHERE r.benchmark = $2 AND COALESCE(r.protocol_id, 0) = COALESCE($3, 0)
           AND r.cfg_scale IS NOT NULL AND r.{col} IS NOT NULL
         GROUP BY r.model_id, r.model, 2
         ORDER BY array_position($1, r.model_id), 2"
    );
    on_suite(pool, model_ids, suite, sql).await
}

/// A logged training metric of each model against the step, all of a model's training runs
/// together (a resumed run continues its steps), averaged into at most `buckets` step ranges
/// per model: one series per model, named after it.
pub async fn training_metric_of_models(
    pool: &PgPool,
    model_ids: &[i64],
    name: &str,
    buckets: i32,
) -> Result<Vec<Point>, sqlx::Error> {
    // Each run's first and last step are two index probes, not a pass over its points, made
    // once (as on the model page).
    sqlx::query_as(
        "WITH runs AS MATERIALIZED (
            SELECT t.model_id,
                   (SELECT min(step) FROM training_metrics
                    WHERE training_run_id = t.id AND name = $3) AS lo,
                   (SELECT max(step) FROM training_metrics
                    WHERE training_run_id = t.id AND name = $3) AS hi
            FROM training_runs t WHERE t.model_id = ANY($1)),
         span AS (
            SELECT model_id, min(lo) AS lo, max(hi) AS hi FROM runs
            WHERE lo IS NOT NULL GROUP BY model_id)
         SELECT m.name AS series, avg(tm.step)::float8 AS x, avg(tm.value) AS y
         FROM span
         JOIN models m ON m.id = span.model_id
         JOIN training_runs t ON t.model_id = span.model_id
         JOIN training_metrics tm ON tm.training_run_id = t.id AND tm.name = $3
         GROUP BY span.model_id, m.name,
                  CASE WHEN span.hi = span.lo THEN 0
                       ELSE floor((tm.step - span.lo)::float8 * $2 / (span.hi - span.lo + 1)) END
         ORDER BY array_position($1, span.model_id), 2",
    )
    .bind(model_ids)
    .bind(buckets)
    .bind(name)
    .fetch_all(pool)
    .await
}

/// Each model's units of `axis` per optimizer step, from its latest checkpoint that records
/// them: with a fixed global batch and image size a model sees the same tokens (and the same
/// share of an epoch) at every step, so one factor moves its training curves from the step
/// onto that axis. Models without such a checkpoint are absent; on the step axis, all are 1.
pub async fn per_step_of_models(
    pool: &PgPool,
    model_ids: &[i64],
    axis: CompareAxis,
) -> Result<Vec<(i64, f64)>, sqlx::Error> {
    if axis == CompareAxis::Step {
        return Ok(model_ids.iter().map(|&id| (id, 1.0)).collect());
    }
    // One probe of the (model, step) index per model; `x` is the axis' fixed expression.
    let x = axis.expression();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT ON (model_id) model_id, ({x}) / step AS per_step FROM checkpoints
         WHERE model_id = ANY($1) AND step > 0 AND ({x}) IS NOT NULL
         ORDER BY model_id, step DESC"
    )))
    .bind(model_ids)
    .fetch_all(pool)
    .await
}

/// Each model's best evaluation on the suite by `metric` (lowest first), best model first,
/// with the leader and the rows whose interval overlaps the leader's marked.
pub async fn best_of_models(
    pool: &PgPool,
    model_ids: &[i64],
    suite: &Suite,
    metric: Metric,
) -> Result<Vec<LeaderboardRow>, sqlx::Error> {
    let col = metric.as_str();
    // One probe of the (model, benchmark, protocol, FID) index per model.
    let sql = format!(
        "SELECT best.* FROM unnest($1::bigint[]) AS p(model_id)
         CROSS JOIN LATERAL (
            SELECT {VIEW_COLUMNS} FROM leaderboard_rows
            WHERE model_id = p.model_id AND benchmark = $2
              AND COALESCE(protocol_id, 0) = COALESCE($3, 0) AND {col} IS NOT NULL
            ORDER BY {col} ASC, evaluation_id LIMIT 1) best
         ORDER BY best.{col} ASC, best.evaluation_id"
    );
    let mut rows: Vec<LeaderboardRow> = on_suite(pool, model_ids, suite, sql).await?;
    let leader = rows.first().cloned();
    for (i, row) in rows.iter_mut().enumerate() {
        row.best_of_model = true;
        row.leader = i == 0;
        row.tied_with_leader = i > 0 && leader.as_ref().is_some_and(|l| row.ties_with(l));
    }
    Ok(rows)
}

/// The model's newest `limit` evaluations that recorded a samples folder, newest first, with
/// that folder (which may have been cleared since).
pub async fn latest_samples(
    pool: &PgPool,
    model_id: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.samples_path FROM evaluations e
         JOIN checkpoints c ON c.id = e.checkpoint_id
         WHERE c.model_id = $1 AND e.status = 'succeeded' AND e.samples_path IS NOT NULL
         ORDER BY e.finished_at DESC NULLS LAST, e.id DESC LIMIT $2",
    )
    .bind(model_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn samples_path(
    pool: &PgPool,
    evaluation_id: i64,
) -> Result<Option<String>, sqlx::Error> {
    let path: Option<Option<String>> =
        sqlx::query_scalar("SELECT samples_path FROM evaluations WHERE id = $1")
            .bind(evaluation_id)
            .fetch_optional(pool)
            .await?;
    Ok(path.flatten())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PipelineRun {
    pub id: i64,
    pub pipeline: String,
    pub trigger: String,
    pub status: String,
    pub config_sha256: String,
    pub git_revision: Option<String>,
    pub host: Option<String>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

const RUN_COLUMNS: &str = "id, pipeline, trigger, status, config_sha256, git_revision, host,
    scheduled_for, started_at, finished_at,
    extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 AS seconds, error";

/// The newest runs, optionally of one pipeline.
pub async fn pipeline_runs(
    pool: &PgPool,
    pipeline: Option<&str>,
    limit: i64,
) -> Result<Vec<PipelineRun>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM pipeline_runs
         WHERE ($1::text IS NULL OR pipeline = $1)
         ORDER BY started_at DESC, id DESC LIMIT $2"
    )))
    .bind(pipeline)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn pipeline_run(pool: &PgPool, id: i64) -> Result<Option<PipelineRun>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A stage of a run with its shard progress.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Stage {
    pub id: i64,
    pub stage: String,
    pub status: String,
    pub output_path: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// What the stage recorded it did (`stage_runs.counts`), e.g. images encoded or the
    /// training step reached.
    pub counts: serde_json::Value,
    pub shards_pending: i64,
    pub shards_running: i64,
    pub shards_succeeded: i64,
    pub shards_failed: i64,
    pub rows_out: i64,
    pub rows_failed: i64,
}

pub async fn stages(pool: &PgPool, run_id: i64) -> Result<Vec<Stage>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id, s.stage, s.status, s.output_path, s.started_at, s.finished_at, s.error,
                s.counts,
                count(*) FILTER (WHERE sh.status = 'pending')   AS shards_pending,
                count(*) FILTER (WHERE sh.status = 'running')   AS shards_running,
                count(*) FILTER (WHERE sh.status = 'succeeded') AS shards_succeeded,
                count(*) FILTER (WHERE sh.status = 'failed')    AS shards_failed,
                coalesce(sum(sh.output_rows), 0)::bigint AS rows_out,
                coalesce(sum(sh.failed_rows), 0)::bigint AS rows_failed
         FROM stage_runs s LEFT JOIN shards sh ON sh.stage_run_id = s.id
         WHERE s.run_id = $1
         GROUP BY s.id ORDER BY s.started_at, s.id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FunnelRow {
    pub stage: String,
    pub step: i32,
    pub rule: String,
    pub threshold: Option<String>,
    pub rows_in: i64,
    pub rows_dropped: i64,
    pub rows_out: i64,
}

/// The filter funnel of a run, stage by stage, rule by rule.
pub async fn funnel(pool: &PgPool, run_id: i64) -> Result<Vec<FunnelRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.stage, f.step, f.rule, f.threshold, f.rows_in, f.rows_dropped, f.rows_out
         FROM filter_funnel f JOIN stage_runs s ON s.id = f.stage_run_id
         WHERE s.run_id = $1 ORDER BY s.started_at, s.id, f.step",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedShard {
    pub stage: String,
    pub shard_index: i32,
    pub attempts: i32,
    pub error: Option<String>,
}

pub async fn failed_shards(pool: &PgPool, run_id: i64) -> Result<Vec<FailedShard>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.stage, sh.shard_index, sh.attempts, sh.error
         FROM shards sh JOIN stage_runs s ON s.id = sh.stage_run_id
         WHERE s.run_id = $1 AND sh.status = 'failed'
         ORDER BY s.id, sh.shard_index LIMIT 50",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ScheduleTick {
    pub pipeline: String,
    pub scheduled_for: DateTime<Utc>,
    pub run_id: Option<i64>,
    pub outcome: String,
    pub decided_at: DateTime<Utc>,
}

/// What the scheduler decided for its latest cron ticks.
pub async fn schedule_ticks(pool: &PgPool, limit: i64) -> Result<Vec<ScheduleTick>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pipeline, scheduled_for, run_id, outcome, decided_at FROM schedule_ticks
         ORDER BY scheduled_for DESC, pipeline LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Counts that `/metrics` exports as gauges: (table or status label, count).
pub async fn gauge_counts(pool: &PgPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT 'evaluations', status, count(*) FROM evaluations GROUP BY status
         UNION ALL SELECT 'pipeline_runs', status, count(*) FROM pipeline_runs GROUP BY status
         UNION ALL SELECT 'shards', status, count(*) FROM shards GROUP BY status
         UNION ALL SELECT 'models', kind, count(*) FROM models GROUP BY kind
         UNION ALL SELECT 'checkpoints', 'all', count(*) FROM checkpoints",
    )
    .fetch_all(pool)
    .await
}
