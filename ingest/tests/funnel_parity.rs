//! The metadata funnel screened on all cores, row group by row group, against the rules applied
//! one row at a time in input order as the reference below states them: the same kept rows in
//! the same order, cut into the same shards, and the same count for every rule.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use llamagen_ingest::config::{IngestConfig, MetadataFilter};
use llamagen_ingest::filter::Rule;
use llamagen_ingest::prepare::{prepare, read_shard};
use llamagen_ingest::reader::MetaRow;
use llamagen_ingest::testing::XorShift as Rng;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// One generated row with the extra column the `where` rule reads.
struct Row {
    meta: MetaRow,
    language: Option<&'static str>,
}

fn generate(rng: &mut Rng, n: usize) -> Vec<Row> {
    let odd_urls = [
        "ftp://example.com/a.jpg",
        "not a url",
        "",
        "  https://pad.example.com/x.jpg  ",
        "HTTPS://UPPER.EXAMPLE.COM/X.JPG",
        "http://1.2.3.999/x.jpg",
        "http://10.0.0.1/x.jpg",
        "http://host.com:99999/x.jpg",
        "http:example.com/x.jpg",
        "https://xn--nxasmq6b.com/x.jpg",
        "http://under_score.example.com/x.jpg",
        "javascript:alert(1)",
    ];
    let languages = [Some("en"), Some("en"), Some("de"), Some("fr"), None];
    (0..n)
        .map(|i| {
            let url = match rng.below(20) {
                0 => None,
                1 | 2 => Some(odd_urls[rng.below(odd_urls.len() as u64) as usize].to_owned()),
                // A small pool of URLs, so duplicates cross batches, row groups and files.
                3..=5 => Some(format!("https://dup.example.com/{}.jpg", rng.below(300))),
                _ => Some(format!(
                    "https://img{}.example.com/p/{i}.jpg",
                    rng.below(50)
                )),
            };
            let mut score = |lo: f64, hi: f64| {
                if rng.below(40) == 0 {
                    f64::NAN
                } else {
                    rng.uniform(lo, hi)
                }
            };
            let scores = [
                score(50.0, 1500.0).round(),
                score(50.0, 1500.0).round(),
                score(0.1, 0.45),
                score(3.0, 8.0),
                score(0.0, 1.0),
                score(0.0, 1.0),
            ];
            Row {
                meta: MetaRow {
                    url,
                    caption: (rng.below(30) != 0).then(|| format!("caption {i}")),
                    scores,
                },
                language: languages[rng.below(languages.len() as u64) as usize],
            }
        })
        .collect()
}

/// Writes rows as LAION-COCO metadata with several row groups per file (integer sizes, as
/// LAION's WIDTH and HEIGHT are).
fn write(path: &Path, rows: &[Row], row_group: usize) {
    let column = |c: usize| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| Some(r.meta.scores[c]))
                .collect::<Float64Array>(),
        )
    };
    let size = |c: usize| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| (!r.meta.scores[c].is_nan()).then_some(r.meta.scores[c] as i64))
                .collect::<Int64Array>(),
        )
    };
    let batch = RecordBatch::try_from_iter([
        (
            "URL",
            Arc::new(
                rows.iter()
                    .map(|r| r.meta.url.as_deref())
                    .collect::<StringArray>(),
            ) as ArrayRef,
        ),
        (
            "TEXT",
            Arc::new(
                rows.iter()
                    .map(|r| r.meta.caption.as_deref())
                    .collect::<StringArray>(),
            ),
        ),
        ("WIDTH", size(0)),
        ("HEIGHT", size(1)),
        ("similarity", column(2)),
        ("AESTHETIC_SCORE", column(3)),
        ("pwatermark", column(4)),
        ("punsafe", column(5)),
        (
            "LANGUAGE",
            Arc::new(rows.iter().map(|r| r.language).collect::<StringArray>()),
        ),
    ])
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_size(row_group)
        .build();
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn reference_valid_url(s: &str) -> bool {
    url::Url::parse(s.trim()).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

/// The rules one row at a time, as the funnel documents them: the first rule a row fails
/// drops it; NaN fails a score rule; unknown sizes pass; the `where` rule here is
/// `LANGUAGE = 'en'`; the first occurrence of each URL is kept.
fn reference(rows: &[Row], c: &MetadataFilter) -> (Vec<MetaRow>, Vec<(Rule, u64)>) {
    let mut seen = HashSet::new();
    let mut dropped: Vec<(Rule, u64)> = Vec::new();
    let mut kept = Vec::new();
    for row in rows {
        let m = &row.meta;
        let [w, h, similarity, aesthetic, watermark, unsafe_] = m.scores;
        let checks: [(Rule, bool); 9] = [
            (
                Rule::ValidUrl,
                m.url.as_deref().is_some_and(reference_valid_url),
            ),
            (Rule::MinAesthetic, aesthetic >= c.min_aesthetic),
            (Rule::MaxWatermark, watermark < c.max_watermark),
            (Rule::MaxUnsafe, unsafe_ < c.max_unsafe),
            (Rule::MinClipSimilarity, similarity >= c.min_clip_similarity),
            (
                Rule::MinSize,
                w.is_nan() || h.is_nan() || (w >= c.min_width as f64 && h >= c.min_height as f64),
            ),
            (
                Rule::MaxAspectRatio,
                w.is_nan()
                    || h.is_nan()
                    || (w > 0.0 && h > 0.0 && w.max(h) / w.min(h) <= c.max_aspect_ratio),
            ),
            (Rule::Where, row.language == Some("en")),
            (Rule::DuplicateUrl, true),
        ];
        let failed = checks.iter().find(|(_, pass)| !pass).map(|(rule, _)| *rule);
        let failed = failed.or_else(|| {
            (!seen.insert(m.url.clone().unwrap_or_default())).then_some(Rule::DuplicateUrl)
        });
        match failed {
            Some(rule) => match dropped.iter_mut().find(|(r, _)| *r == rule) {
                Some((_, n)) => *n += 1,
                None => dropped.push((rule, 1)),
            },
            None => kept.push(m.clone()),
        }
    }
    (kept, dropped)
}

fn same_row(a: &MetaRow, b: &MetaRow) -> bool {
    a.url == b.url
        && a.caption == b.caption
        && a.scores
            .iter()
            .zip(&b.scores)
            .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

#[test]
fn the_parallel_funnel_keeps_what_the_row_by_row_rules_keep() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut all = Vec::new();
    let mut inputs: Vec<PathBuf> = Vec::new();
    // Files of different sizes and row groups, one of them a single small group.
    for (i, (n, group)) in [(9_000, 1_000), (4_321, 700), (250, 4_096), (7_000, 3_000)]
        .into_iter()
        .enumerate()
    {
        let rows = generate(&mut rng, n);
        let path = dir.path().join(format!("part-{i}.parquet"));
        write(&path, &rows, group);
        inputs.push(path);
        all.extend(rows);
    }
    let filter = MetadataFilter {
        min_aesthetic: 4.5,
        min_clip_similarity: 0.2,
        r#where: Some("LANGUAGE = 'en'".into()),
        ..MetadataFilter::default()
    };
    let config = IngestConfig {
        rows_per_shard: 97,
        metadata_filter: filter.clone(),
        ..IngestConfig::default()
    };
    let out = dir.path().join("out");
    let prepared = prepare(&inputs, &config, &out).unwrap();

    let (want, want_dropped) = reference(&all, &filter);
    assert!(
        want.len() > 300,
        "the test keeps enough rows to mean something: {}",
        want.len()
    );
    let mut got = Vec::new();
    for shard in 0..prepared.shards {
        let rows = read_shard(&out, shard).unwrap();
        assert!(
            rows.len() == 97 || shard + 1 == prepared.shards,
            "shard {shard}: {}",
            rows.len()
        );
        got.extend(rows);
    }
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(same_row(g, w), "row {i}: {g:?} against {w:?}");
    }
    let funnel = &prepared.funnel;
    assert_eq!(funnel.rows_in, all.len() as u64);
    assert_eq!(funnel.kept, want.len() as u64);
    for (rule, n) in &want_dropped {
        assert_eq!(funnel.dropped_by(*rule), *n, "{rule:?}");
    }
    for rule in llamagen_ingest::filter::RULES {
        if want_dropped.iter().all(|(r, _)| *r != rule) {
            assert_eq!(funnel.dropped_by(rule), 0, "{rule:?}");
        }
    }
    // Every rule dropped something here, so each count above was tested.
    assert_eq!(want_dropped.len(), 9, "{want_dropped:?}");
}

#[test]
fn a_where_rule_naming_a_column_a_file_lacks_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let path = dir.path().join("m.parquet");
    write(&path, &generate(&mut rng, 50), 1_000);
    let config = IngestConfig {
        metadata_filter: MetadataFilter {
            r#where: Some("LICENSE IS NOT NULL".into()),
            ..MetadataFilter::default()
        },
        ..IngestConfig::default()
    };
    let err = prepare(&[path], &config, &dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("LICENSE") && err.contains("LANGUAGE"), "{err}");
}
