//! Query parameters: parsed into closed types and checked before any SQL runs. An unknown
//! parameter, an unknown sort key or metric, a non-finite number or an out-of-range page is a
//! 400, never a silently ignored filter.

use serde::{Deserialize, Serialize};

use crate::DashboardError;

/// The headline metrics the leaderboard view has as columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Fid,
    Sfid,
    #[serde(alias = "is")]
    InceptionScore,
    Precision,
    Recall,
    Rfid,
    Psnr,
    Ssim,
    CodebookUsage,
    Kid,
    ClipFid,
    ClipScore,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::Fid,
        Metric::Sfid,
        Metric::InceptionScore,
        Metric::Precision,
        Metric::Recall,
        Metric::Rfid,
        Metric::Psnr,
        Metric::Ssim,
        Metric::CodebookUsage,
        Metric::Kid,
        Metric::ClipFid,
        Metric::ClipScore,
    ];

    /// The name in the `metrics` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Fid => "fid",
            Metric::Sfid => "sfid",
            Metric::InceptionScore => "inception_score",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::Rfid => "rfid",
            Metric::Psnr => "psnr",
            Metric::Ssim => "ssim",
            Metric::CodebookUsage => "codebook_usage",
            Metric::Kid => "kid",
            Metric::ClipFid => "clip_fid",
            Metric::ClipScore => "clip_score",
        }
    }

    /// The columns of its confidence interval, for the metrics that have one.
    pub fn interval_columns(self) -> Option<(&'static str, &'static str)> {
        match self {
            Metric::Fid => Some(("fid_low", "fid_high")),
            Metric::Kid => Some(("kid_low", "kid_high")),
            Metric::Rfid => Some(("rfid_low", "rfid_high")),
            Metric::Psnr => Some(("psnr_low", "psnr_high")),
            Metric::Ssim => Some(("ssim_low", "ssim_high")),
            Metric::ClipFid => Some(("clip_fid_low", "clip_fid_high")),
            Metric::ClipScore => Some(("clip_score_low", "clip_score_high")),
            _ => None,
        }
    }

    /// The kind of model it measures: a tokenizer's reconstructions, or a generator's samples.
    pub fn kind(self) -> Kind {
        match self {
            Metric::Rfid | Metric::Psnr | Metric::Ssim | Metric::CodebookUsage => Kind::Tokenizer,
            _ => Kind::Generator,
        }
    }

    /// FIDs and KID are distances; every other headline metric is better when higher.
    pub fn lower_is_better(self) -> bool {
        matches!(
            self,
            Metric::Fid | Metric::Sfid | Metric::Rfid | Metric::Kid | Metric::ClipFid
        )
    }
}

/// What the leaderboard can be sorted by: a metric, or one of the descriptive columns. In a
/// query string both are plain names (`sort=fid`, `sort=step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortKey {
    Metric(Metric),
    Column(Column),
}

impl Default for SortKey {
    fn default() -> Self {
        SortKey::Metric(Metric::Fid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Model,
    Benchmark,
    Params,
    Step,
    Epoch,
    Tokens,
    ImageSize,
    Cfg,
    Finished,
}

impl SortKey {
    /// The kind of model its column is for (the guidance scale is a generator's), or `None`
    /// for columns of every model.
    pub fn kind(self) -> Option<Kind> {
        match self {
            SortKey::Metric(m) => Some(m.kind()),
            SortKey::Column(Column::Cfg) => Some(Kind::Generator),
            SortKey::Column(_) => None,
        }
    }

    pub fn metric(self) -> Option<Metric> {
        match self {
            SortKey::Metric(m) => Some(m),
            SortKey::Column(_) => None,
        }
    }

    /// The `leaderboard_rows` column it sorts by (a fixed string, never request text).
    pub fn column(self) -> &'static str {
        match self {
            SortKey::Metric(m) => m.as_str(),
            SortKey::Column(c) => match c {
                Column::Model => "model",
                Column::Benchmark => "benchmark",
                Column::Params => "params",
                Column::Step => "step",
                Column::Epoch => "epoch",
                Column::Tokens => "tokens_seen",
                Column::ImageSize => "image_size",
                Column::Cfg => "cfg_scale",
                Column::Finished => "finished_at",
            },
        }
    }

    /// The name in a query string.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Metric(m) => m.as_str(),
            SortKey::Column(Column::Tokens) => "tokens",
            SortKey::Column(Column::Cfg) => "cfg",
            SortKey::Column(Column::Finished) => "finished",
            key => key.column(),
        }
    }

    /// Distances sort best-first ascending; scores and "newest" descending; names ascending.
    fn default_descending(self) -> bool {
        match self {
            SortKey::Metric(m) => !m.lower_is_better(),
            SortKey::Column(c) => matches!(
                c,
                Column::Params | Column::Step | Column::Epoch | Column::Tokens | Column::Finished
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Generator,
    Tokenizer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Generator => "generator",
            Kind::Tokenizer => "tokenizer",
        }
    }
}

pub const MAX_PAGE_SIZE: u32 = 500;
const MAX_TEXT: usize = 200;

/// `/?benchmark=...&kind=...&model=...&protocol=ID&metric=fid&min=..&max=..&sort=fid&order=asc&page=1&per_page=50`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardQuery {
    /// Exact benchmark name, e.g. `imagenet256-c2i`.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub benchmark: Option<String>,
    #[serde(default, deserialize_with = "empty_or_enum")]
    pub kind: Option<Kind>,
    /// Case-insensitive substring of the model name.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub model: Option<String>,
    /// Keep rows whose `metric` lies in `[min, max]`.
    #[serde(default, deserialize_with = "empty_or_enum")]
    pub metric: Option<Metric>,
    /// Only rows measured under this protocol (`protocols.id`).
    #[serde(default, deserialize_with = "empty_or_parse")]
    pub protocol: Option<i64>,
    #[serde(default, deserialize_with = "empty_or_parse")]
    pub min: Option<f64>,
    #[serde(default, deserialize_with = "empty_or_parse")]
    pub max: Option<f64>,
    #[serde(default)]
    pub sort: SortKey,
    #[serde(default, deserialize_with = "empty_or_enum")]
    pub order: Option<Order>,
    #[serde(default, deserialize_with = "empty_or_parse")]
    pub page: Option<u32>,
    #[serde(default, deserialize_with = "empty_or_parse")]
    pub per_page: Option<u32>,
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.filter(|s| !s.trim().is_empty()))
}

/// An HTML form sends every field, empty ones as `name=`: those mean "no filter".
fn empty_or_parse<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}"))),
    }
}

fn empty_or_enum<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::IntoDeserializer as _;
    match Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => T::deserialize(s.into_deserializer()).map(Some),
    }
}

impl LeaderboardQuery {
    /// Checks what serde cannot: lengths, finiteness, ranges, and that a range has a metric.
    pub fn validate(&self) -> Result<(), DashboardError> {
        for (name, text) in [("benchmark", &self.benchmark), ("model", &self.model)] {
            if let Some(t) = text {
                if t.chars().count() > MAX_TEXT {
                    return Err(DashboardError::BadRequest(format!(
                        "{name} is longer than {MAX_TEXT} characters"
                    )));
                }
                if t.chars().any(char::is_control) {
                    return Err(DashboardError::BadRequest(format!(
                        "{name} contains control characters"
                    )));
                }
            }
        }
        for (name, v) in [("min", self.min), ("max", self.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(DashboardError::BadRequest(format!(
                    "{name} must be a finite number"
                )));
            }
        }
        if (self.min.is_some() || self.max.is_some()) && self.metric.is_none() {
            return Err(DashboardError::BadRequest(
                "min and max need metric=NAME to say what they bound".into(),
            ));
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max)
            && lo > hi
        {
            return Err(DashboardError::BadRequest(format!(
                "min {lo} is above max {hi}"
            )));
        }
        if self.page == Some(0) || self.page.is_some_and(|p| p > 1_000_000) {
            return Err(DashboardError::BadRequest(
                "page counts from 1 (at most 1000000)".into(),
            ));
        }
        if let Some(n) = self.per_page
            && !(1..=MAX_PAGE_SIZE).contains(&n)
        {
            return Err(DashboardError::BadRequest(format!(
                "per_page must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        Ok(())
    }

    pub fn descending(&self) -> bool {
        match self.order {
            Some(o) => o == Order::Desc,
            None => self.sort.default_descending(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.per_page.unwrap_or(50)
    }

    pub fn page(&self) -> u32 {
        self.page.unwrap_or(1)
    }

    pub fn offset(&self) -> u32 {
        (self.page() - 1).saturating_mul(self.limit())
    }

    /// The query string of this query with the sort changed to `key` (toggling the order
    /// when it already sorts by `key`), for the column headers' links.
    pub fn with_sort(&self, key: SortKey) -> String {
        let mut next = self.clone();
        next.order = if self.sort == key {
            Some(if self.descending() {
                Order::Asc
            } else {
                Order::Desc
            })
        } else {
            None
        };
        next.sort = key;
        next.page = None;
        next.to_query_string()
    }

    pub fn with_page(&self, page: u32) -> String {
        let mut next = self.clone();
        next.page = Some(page);
        next.to_query_string()
    }

    fn to_query_string(&self) -> String {
        // Serialising our own validated struct cannot fail; fall back to no filters at all.
        serde_urlencoded::to_string(self).unwrap_or_default()
    }
}

/// How many models one comparison holds: a line each, in as many colours as a chart has.
pub const MAX_COMPARED: usize = crate::charts::MAX_SERIES;

/// What the x axis of the comparison's charts against training progress counts: its FID chart
/// and its training curves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareAxis {
    /// Optimizer steps: the same for models trained with the same global batch.
    #[default]
    Step,
    /// Passes over the training set, as the paper's tables count training.
    Epoch,
    /// Image tokens seen, for models trained with different batches or image sizes.
    Tokens,
}

impl CompareAxis {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareAxis::Step => "step",
            CompareAxis::Epoch => "epoch",
            CompareAxis::Tokens => "tokens",
        }
    }

    /// The expression for x over `leaderboard_rows` or `checkpoints`, which name the columns
    /// alike (a fixed string, never request text); tokens in millions, so that the axis labels
    /// stay short.
    pub fn expression(self) -> &'static str {
        match self {
            CompareAxis::Step => "step::float8",
            CompareAxis::Epoch => "epoch",
            CompareAxis::Tokens => "tokens_seen::float8 / 1e6",
        }
    }

    /// The axis title.
    pub fn label(self) -> &'static str {
        match self {
            CompareAxis::Step => "step",
            CompareAxis::Epoch => "epoch",
            CompareAxis::Tokens => "tokens seen (millions)",
        }
    }
}

/// `/compare?model=ID&model=ID[&benchmark=NAME][&protocol=ID][&x=step|epoch|tokens]`: up to
/// [`MAX_COMPARED`] models side by side on one benchmark and protocol. `model` repeats, which
/// a derived struct cannot read, so the pairs are walked by hand; anything unknown is a 400
/// all the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompareQuery {
    /// Distinct model ids, in the order first given.
    pub models: Vec<i64>,
    pub benchmark: Option<String>,
    pub protocol: Option<i64>,
    pub x: CompareAxis,
}

impl CompareQuery {
    pub fn parse(query: &str) -> Result<Self, DashboardError> {
        let bad = |m: String| DashboardError::BadRequest(m);
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| bad(format!("query string: {e}")))?;
        let mut q = CompareQuery::default();
        for (key, value) in pairs {
            let value = value.trim();
            match key.as_str() {
                "model" => {
                    let id: i64 = value
                        .parse()
                        .map_err(|_| bad(format!("model must be a model id, not {value:?}")))?;
                    if !q.models.contains(&id) {
                        q.models.push(id);
                    }
                }
                "benchmark" if value.is_empty() => q.benchmark = None,
                "benchmark" => {
                    if value.chars().count() > MAX_TEXT || value.chars().any(char::is_control) {
                        return Err(bad(format!(
                            "benchmark must be at most {MAX_TEXT} printable characters"
                        )));
                    }
                    q.benchmark = Some(value.to_string());
                }
                "protocol" if value.is_empty() => q.protocol = None,
                "protocol" => {
                    q.protocol = Some(value.parse().map_err(|_| {
                        bad(format!("protocol must be a protocol id, not {value:?}"))
                    })?)
                }
                "x" => {
                    use serde::de::IntoDeserializer as _;
                    q.x = CompareAxis::deserialize(value.into_deserializer()).map_err(
                        |_: serde::de::value::Error| {
                            bad(format!("x must be step, epoch or tokens, not {value:?}"))
                        },
                    )?
                }
                other => return Err(bad(format!("unknown parameter {other:?}"))),
            }
        }
        if q.models.is_empty() {
            return Err(bad(
                "nothing to compare: tick models on the leaderboard, or ask for \
                 /compare?model=ID&model=ID"
                    .into(),
            ));
        }
        if q.models.len() > MAX_COMPARED {
            return Err(bad(format!(
                "{} models asked for; a comparison holds at most {MAX_COMPARED}",
                q.models.len()
            )));
        }
        Ok(q)
    }

    /// The query string that asks for this comparison.
    pub fn to_query_string(&self) -> String {
        let mut pairs: Vec<(&str, String)> = self
            .models
            .iter()
            .map(|id| ("model", id.to_string()))
            .collect();
        if let Some(b) = &self.benchmark {
            pairs.push(("benchmark", b.clone()));
        }
        if let Some(p) = self.protocol {
            pairs.push(("protocol", p.to_string()));
        }
        pairs.push(("x", self.x.as_str().to_string()));
        // Pairs of plain strings always serialise.
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<LeaderboardQuery, String> {
        let q: LeaderboardQuery = axum::extract::Query::try_from_uri(
            &format!("http://x/?{query}")
                .parse()
                .map_err(|e| format!("{e}"))?,
        )
        .map_err(|e| e.body_text())?
        .0;
        q.validate().map_err(|e| e.to_string())?;
        Ok(q)
    }

    #[test]
    fn defaults_sort_by_fid_best_first() {
        let q = parse("").unwrap();
        assert_eq!(q.sort, SortKey::Metric(Metric::Fid));
        assert!(!q.descending());
        assert_eq!((q.limit(), q.offset()), (50, 0));
        let q = parse("sort=is").unwrap();
        assert_eq!(q.sort, SortKey::Metric(Metric::InceptionScore));
        assert!(q.descending(), "a higher Inception Score is better");
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for bad in [
            "sort=fid;DROP TABLE models",
            "sort=name",
            "order=sideways",
            "kind=diffusion",
            "metric=loss",
            "page=0",
            "page=-1",
            "per_page=100000",
            "min=abc&metric=fid",
            "min=NaN&metric=fid",
            "max=inf&metric=fid",
            "min=1",
            "metric=fid&min=5&max=1",
            "colour=red",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        let long = "m".repeat(MAX_TEXT + 1);
        assert!(parse(&format!("model={long}")).is_err());
    }

    #[test]
    fn sort_links_toggle_and_keep_filters() {
        let q = parse("benchmark=imagenet256-c2i&model=%3Cscript%3E&sort=fid").unwrap();
        let toggled = q.with_sort(SortKey::Metric(Metric::Fid));
        assert!(toggled.contains("order=desc"), "{toggled}");
        assert!(toggled.contains("model=%3Cscript%3E"), "{toggled}");
        let other = q.with_sort(SortKey::Column(Column::Step));
        assert!(
            other.contains("sort=step") && !other.contains("order="),
            "{other}"
        );
        let back = parse(&toggled).unwrap();
        assert_eq!(back.benchmark.as_deref(), Some("imagenet256-c2i"));
        assert!(back.descending());
    }

    #[test]
    fn a_comparison_reads_repeated_models_and_refuses_the_rest() {
        let q =
            CompareQuery::parse("model=3&model=1&model=3&benchmark=&protocol=&x=epoch").unwrap();
        assert_eq!(q.models, [3, 1], "duplicates dropped, order kept");
        assert_eq!(
            (q.benchmark, q.protocol, q.x),
            (None, None, CompareAxis::Epoch)
        );
        let q = CompareQuery::parse("model=2&benchmark=imagenet256-c2i&protocol=7").unwrap();
        assert_eq!(q.benchmark.as_deref(), Some("imagenet256-c2i"));
        assert_eq!((q.protocol, q.x), (Some(7), CompareAxis::Step));
        let asked = CompareQuery {
            benchmark: Some("a&b=c".into()),
            protocol: None,
            ..q
        };
        let back = CompareQuery::parse(&asked.to_query_string()).unwrap();
        assert_eq!(
            (back.benchmark.as_deref(), back.protocol),
            (Some("a&b=c"), None)
        );
        assert_eq!(back.models, [2]);
        for bad in [
            "",
            "benchmark=x",
            "model=abc",
            "model=1;DROP",
            "model=1&x=loss",
            "model=1&protocol=P3",
            "model=1&colour=red",
            "model=1&model=2&model=3&model=4&model=5&model=6&model=7",
        ] {
            assert!(CompareQuery::parse(bad).is_err(), "{bad} was accepted");
        }
        let long = "b".repeat(MAX_TEXT + 1);
        assert!(CompareQuery::parse(&format!("model=1&benchmark={long}")).is_err());
    }
}
