//! The keep/drop decision of one sample, the first rule it fails naming the reason, and the
//! funnel: how many samples reached each rule and how many it removed. Rules run in the order
//! of [`RULES`]; a score that is NaN fails its rule (a broken model must not pass everything).

use serde::{Deserialize, Serialize};

/// The post-download thresholds (the pipeline TOML's `[filter]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// On the image as downloaded (`original_width` / `original_height` of the sample's json
    /// when ingest resized it, else the decoded size).
    pub min_width: u32,
    pub min_height: u32,
    pub max_watermark: f64,
    pub min_aesthetic: f64,
    pub min_clip_similarity: f64,
}

/// The rules in funnel order, with the reason a sample dropped by each gets.
pub const RULES: [&str; 6] = [
    "image decodes",
    "image size",
    "watermark",
    "aesthetic",
    "has caption",
    "clip similarity",
];

/// What the scorers said about one decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scores {
    pub watermark: f32,
    pub aesthetic: f32,
    /// None when the sample has no caption to compare with.
    pub clip_similarity: Option<f32>,
}

/// One sample's facts, before the decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Width and height the size rule reads, or None if the image did not decode.
    pub size: Option<(u32, u32)>,
    pub scores: Option<Scores>,
}

/// The index into [`RULES`] of the first rule the sample fails, or None if it is kept.
pub fn first_failed_rule(facts: &Facts, t: &Thresholds) -> Option<usize> {
    let Some((w, h)) = facts.size else {
        return Some(0);
    };
    if w < t.min_width || h < t.min_height {
        return Some(1);
    }
    let Some(scores) = facts.scores else {
        return Some(0);
    };
    // NaN is neither at most nor at least anything, so it fails every score rule.
    let at_most = |x: f32, max: f64| f64::from(x) <= max;
    let at_least = |x: f32, min: f64| f64::from(x) >= min;
    if !at_most(scores.watermark, t.max_watermark) {
        return Some(2);
    }
    if !at_least(scores.aesthetic, t.min_aesthetic) {
        return Some(3);
    }
    let Some(similarity) = scores.clip_similarity else {
        return Some(4);
    };
    if !at_least(similarity, t.min_clip_similarity) {
        return Some(5);
    }
    None
}

/// The threshold of each rule as text, for the funnel table.
pub fn thresholds_text(t: &Thresholds) -> [Option<String>; 6] {
    [
        None,
        Some(format!(">= {}x{}", t.min_width, t.min_height)),
        Some(format!("<= {}", t.max_watermark)),
        Some(format!(">= {}", t.min_aesthetic)),
        None,
        Some(format!(">= {}", t.min_clip_similarity)),
    ]
}

/// Funnel counts: samples entering and dropped per rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Funnel {
    pub rows_in: [u64; 6],
    pub dropped: [u64; 6],
}

impl Funnel {
    /// Counts one sample that failed rule `failed` (or passed all with None).
    pub fn count(&mut self, failed: Option<usize>) {
        let reached = failed.map_or(RULES.len(), |i| i + 1);
        for r in 0..reached {
            self.rows_in[r] += 1;
        }
        if let Some(i) = failed {
            self.dropped[i] += 1;
        }
    }

    pub fn kept(&self) -> u64 {
        self.rows_in[0] - self.dropped.iter().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds {
            min_width: 256,
            min_height: 256,
            max_watermark: 0.5,
            min_aesthetic: 5.0,
            min_clip_similarity: 0.28,
        }
    }

    fn facts(size: (u32, u32), w: f32, a: f32, c: Option<f32>) -> Facts {
        Facts {
            size: Some(size),
            scores: Some(Scores {
                watermark: w,
                aesthetic: a,
                clip_similarity: c,
            }),
        }
    }

    #[test]
    fn the_first_failed_rule_is_the_reason_and_nan_fails() {
        let t = t();
        let undecodable = Facts {
            size: None,
            scores: None,
        };
        let cases = [
            (undecodable, Some(0)),
            (facts((255, 400), 0.0, 9.0, Some(0.9)), Some(1)),
            (facts((300, 300), 0.6, 2.0, Some(0.1)), Some(2)),
            (facts((300, 300), f32::NAN, 9.0, Some(0.9)), Some(2)),
            (facts((300, 300), 0.1, 4.9, Some(0.9)), Some(3)),
            (facts((300, 300), 0.1, 5.0, None), Some(4)),
            (facts((300, 300), 0.1, 5.0, Some(0.27)), Some(5)),
            (facts((300, 300), 0.1, 5.0, Some(f32::NAN)), Some(5)),
            (facts((256, 256), 0.5, 5.0, Some(0.28)), None),
        ];
        let mut funnel = Funnel::default();
        for (f, want) in &cases {
            let got = first_failed_rule(f, &t);
            assert_eq!(got, *want, "{f:?}");
            funnel.count(got);
        }
        assert_eq!(funnel.rows_in, [9, 8, 7, 5, 4, 3]);
        assert_eq!(funnel.dropped, [1, 1, 2, 1, 1, 2]);
        assert_eq!(funnel.kept(), 1);
    }
}
