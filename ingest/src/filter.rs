//! The metadata filter: rules applied to LAION-COCO rows before any download, in a fixed
//! order, each counting the rows it removes (the funnel). A row is dropped by the first rule it
//! fails; a score that is NaN or null fails its rule (it cannot be shown to pass). Width and
//! height are the exception: LAION leaves them empty for some rows, and the sizes are checked
//! again on the decoded image, so an unknown size passes here.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::MetadataFilter;
use crate::reader::{AESTHETIC, HEIGHT, MetaRow, SIMILARITY, UNSAFE, WATERMARK, WIDTH};

/// The rules, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    ValidUrl,
    MinAesthetic,
    MaxWatermark,
    MaxUnsafe,
    MinClipSimilarity,
    MinSize,
    MaxAspectRatio,
    DuplicateUrl,
}

pub const RULES: [Rule; 8] = [
    Rule::ValidUrl,
    Rule::MinAesthetic,
    Rule::MaxWatermark,
    Rule::MaxUnsafe,
    Rule::MinClipSimilarity,
    Rule::MinSize,
    Rule::MaxAspectRatio,
    Rule::DuplicateUrl,
];

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::ValidUrl => "valid_url",
            Rule::MinAesthetic => "min_aesthetic",
            Rule::MaxWatermark => "max_watermark",
            Rule::MaxUnsafe => "max_unsafe",
            Rule::MinClipSimilarity => "min_clip_similarity",
            Rule::MinSize => "min_size",
            Rule::MaxAspectRatio => "max_aspect_ratio",
            Rule::DuplicateUrl => "dedup_url",
        }
    }

    /// The metadata column the rule needs, if any.
    fn column(self) -> Option<&'static str> {
        match self {
            Rule::MinAesthetic => Some(AESTHETIC),
            Rule::MaxWatermark => Some(WATERMARK),
            Rule::MaxUnsafe => Some(UNSAFE),
            Rule::MinClipSimilarity => Some(SIMILARITY),
            Rule::MinSize | Rule::MaxAspectRatio => Some(WIDTH),
            Rule::ValidUrl | Rule::DuplicateUrl => None,
        }
    }
}

/// Rows in, rows each rule dropped, rows kept; and the rules skipped for a missing column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    pub rows_in: u64,
    /// Dropped rows per rule, in [`RULES`] order.
    pub dropped: Vec<(Rule, u64)>,
    pub kept: u64,
    /// Rules that did not run, with the reason (a column missing from the metadata).
    pub skipped: Vec<(Rule, String)>,
    /// Thresholds as written in the config, per rule.
    pub thresholds: Vec<(Rule, String)>,
}

impl Funnel {
    pub fn dropped_by(&self, rule: Rule) -> u64 {
        self.dropped
            .iter()
            .find(|(r, _)| *r == rule)
            .map_or(0, |(_, n)| *n)
    }

    /// One line per rule: rows reaching it, rows it removed.
    pub fn steps(&self) -> Vec<(Rule, Option<String>, u64, u64)> {
        let mut rows = self.rows_in;
        RULES
            .iter()
            .map(|&rule| {
                let dropped = self.dropped_by(rule);
                let threshold = self
                    .skipped
                    .iter()
                    .find(|(r, _)| *r == rule)
                    .map(|(_, why)| format!("skipped: {why}"))
                    .or_else(|| {
                        self.thresholds
                            .iter()
                            .find(|(r, _)| *r == rule)
                            .map(|(_, t)| t.clone())
                    });
                let step = (rule, threshold, rows, dropped);
                rows -= dropped;
                step
            })
            .collect()
    }

    /// The funnel as a table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<22} {:>14} {:>14}  threshold\n",
            "rule", "rows in", "dropped"
        );
        for (rule, threshold, rows_in, dropped) in self.steps() {
            out += &format!(
                "{:<22} {rows_in:>14} {dropped:>14}  {}\n",
                rule.name(),
                threshold.unwrap_or_default()
            );
        }
        out += &format!("{:<22} {:>14}\n", "kept", self.kept);
        out
    }
}

/// Applies a [`MetadataFilter`] row by row and keeps the funnel.
pub struct Filter {
    config: MetadataFilter,
    active: Vec<Rule>,
    seen: HashSet<[u8; 16]>,
    funnel: Funnel,
}

impl Filter {
    /// `missing` lists the metadata columns the input lacks; rules that need them are skipped.
    pub fn new(config: &MetadataFilter, missing: &[String]) -> Self {
        let mut funnel = Funnel::default();
        let mut active = Vec::new();
        for rule in RULES {
            if rule == Rule::DuplicateUrl && !config.dedup_urls {
                funnel.skipped.push((rule, "dedup_urls = false".into()));
                continue;
            }
            let lacking: Vec<&str> = match rule {
                Rule::MinSize | Rule::MaxAspectRatio => [WIDTH, HEIGHT]
                    .into_iter()
                    .filter(|c| missing.iter().any(|m| m == c))
                    .collect(),
                _ => rule
                    .column()
                    .filter(|c| missing.iter().any(|m| m == c))
                    .into_iter()
                    .collect(),
            };
            if lacking.is_empty() {
                active.push(rule);
            } else {
                funnel
                    .skipped
                    .push((rule, format!("no column {}", lacking.join(", "))));
            }
        }
        let c = config;
        funnel.thresholds = vec![
            (Rule::ValidUrl, "http(s) with a host".into()),
            (Rule::MinAesthetic, format!(">= {}", c.min_aesthetic)),
            (Rule::MaxWatermark, format!("< {}", c.max_watermark)),
            (Rule::MaxUnsafe, format!("< {}", c.max_unsafe)),
            (
                Rule::MinClipSimilarity,
                format!(">= {}", c.min_clip_similarity),
            ),
            (
                Rule::MinSize,
                format!(">= {} x {}", c.min_width, c.min_height),
            ),
            (Rule::MaxAspectRatio, format!("<= {}", c.max_aspect_ratio)),
            (Rule::DuplicateUrl, "first occurrence kept".into()),
        ];
        funnel.dropped = RULES.iter().map(|&r| (r, 0)).collect();
        Filter {
            config: config.clone(),
            active,
            seen: HashSet::new(),
            funnel,
        }
    }

    /// Whether the row is kept; counts it either way.
    pub fn keep(&mut self, row: &MetaRow) -> bool {
        self.funnel.rows_in += 1;
        let failed = self
            .active
            .clone()
            .into_iter()
            .find(|&r| !self.passes(r, row));
        match failed {
            Some(rule) => {
                if let Some((_, n)) = self.funnel.dropped.iter_mut().find(|(r, _)| *r == rule) {
                    *n += 1;
                }
                false
            }
            None => {
                self.funnel.kept += 1;
                true
            }
        }
    }

    fn passes(&mut self, rule: Rule, row: &MetaRow) -> bool {
        let c = &self.config;
        let (w, h) = (row.score(WIDTH), row.score(HEIGHT));
        match rule {
            Rule::ValidUrl => row.url.as_deref().is_some_and(valid_url),
            // NaN compares false, so a NaN score fails every threshold.
            Rule::MinAesthetic => row.score(AESTHETIC) >= c.min_aesthetic,
            Rule::MaxWatermark => row.score(WATERMARK) < c.max_watermark,
            Rule::MaxUnsafe => row.score(UNSAFE) < c.max_unsafe,
            Rule::MinClipSimilarity => row.score(SIMILARITY) >= c.min_clip_similarity,
            Rule::MinSize => {
                w.is_nan() || h.is_nan() || (w >= c.min_width as f64 && h >= c.min_height as f64)
            }
            Rule::MaxAspectRatio => {
                w.is_nan()
                    || h.is_nan()
                    || (w > 0.0 && h > 0.0 && w.max(h) / w.min(h) <= c.max_aspect_ratio)
            }
            Rule::DuplicateUrl => {
                // 128 bits of SHA-256 per URL: 16 bytes a row instead of the URL itself, with a
                // collision chance of about 1e-21 at LAION-COCO's 600M rows.
                let digest = Sha256::digest(row.url.as_deref().unwrap_or_default().as_bytes());
                let mut key = [0u8; 16];
                key.copy_from_slice(&digest[..16]);
                self.seen.insert(key)
            }
        }
    }

    pub fn funnel(&self) -> &Funnel {
        &self.funnel
    }
}

/// An absolute http(s) URL with a host. Private addresses are refused later, when the name
/// resolves (a public name can point at a private address).
pub fn valid_url(s: &str) -> bool {
    url::Url::parse(s.trim()).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(url: &str, scores: [f64; 6]) -> MetaRow {
        MetaRow {
            url: Some(url.into()),
            caption: Some("c".into()),
            scores,
        }
    }

    // WIDTH, HEIGHT, similarity, aesthetic, watermark, unsafe
    const GOOD: [f64; 6] = [512.0, 384.0, 0.33, 6.0, 0.1, 0.01];

    #[test]
    fn each_rule_drops_what_it_should_and_the_funnel_adds_up() {
        let mut f = Filter::new(&MetadataFilter::default(), &[]);
        let with = |i: usize, v: f64| {
            let mut s = GOOD;
            s[i] = v;
            s
        };
        let rows = [
            row("http://a.com/1.jpg", GOOD),
            row("ftp://a.com/2.jpg", GOOD),
            row("not a url", GOOD),
            row("http://a.com/3.jpg", with(3, 4.9)),
            row("http://a.com/4.jpg", with(3, f64::NAN)),
            row("http://a.com/5.jpg", with(4, 0.5)),
            row("http://a.com/6.jpg", with(5, 0.9)),
            row("http://a.com/7.jpg", with(2, 0.2)),
            row("http://a.com/8.jpg", with(0, 100.0)),
            row("http://a.com/9.jpg", [1000.0, 300.0, 0.33, 6.0, 0.1, 0.01]),
            row("http://a.com/1.jpg", GOOD),
            row("https://a.com/10.jpg", with(0, f64::NAN)),
        ];
        let kept: Vec<bool> = rows.iter().map(|r| f.keep(r)).collect();
        assert_eq!(
            kept,
            [
                true, false, false, false, false, false, false, false, false, false, false, true
            ]
        );
        let funnel = f.funnel();
        assert_eq!(funnel.rows_in, 12);
        assert_eq!(funnel.kept, 2);
        assert_eq!(funnel.dropped_by(Rule::ValidUrl), 2);
        assert_eq!(funnel.dropped_by(Rule::MinAesthetic), 2);
        assert_eq!(funnel.dropped_by(Rule::MaxWatermark), 1);
        assert_eq!(funnel.dropped_by(Rule::MaxUnsafe), 1);
        assert_eq!(funnel.dropped_by(Rule::MinClipSimilarity), 1);
        assert_eq!(funnel.dropped_by(Rule::MinSize), 1);
        assert_eq!(funnel.dropped_by(Rule::MaxAspectRatio), 1);
        assert_eq!(funnel.dropped_by(Rule::DuplicateUrl), 1);
        let steps = funnel.steps();
        assert_eq!(steps[0].2, 12);
        assert_eq!(steps[7].2, 3, "rows reaching dedup");
    }

    #[test]
    fn rules_without_their_column_are_skipped_and_say_so() {
        let missing = vec![AESTHETIC.to_string(), HEIGHT.to_string()];
        let mut f = Filter::new(&MetadataFilter::default(), &missing);
        let mut s = GOOD;
        s[3] = f64::NAN;
        assert!(f.keep(&row("http://a.com/x.jpg", s)));
        let skipped: Vec<Rule> = f.funnel().skipped.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            skipped,
            [Rule::MinAesthetic, Rule::MinSize, Rule::MaxAspectRatio]
        );
        assert!(
            f.funnel()
                .table()
                .contains("skipped: no column AESTHETIC_SCORE")
        );
    }
}
