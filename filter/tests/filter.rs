//! Parity with the Python references on real photos (scikit-image's chelsea, coffee and a crop
//! of astronaut): open_clip's preprocessing and tokenizer, LAION's watermark transform, and the
//! scores of the same ONNX models. The fixtures and the tiny random-weight models come from
//! `scripts/export_filter_models.py filter/tests/fixtures/models --tiny-random --fixtures
//! filter/tests/fixtures`.

use std::path::{Path, PathBuf};

use llamagen_clip::preprocess::clip_view;
use llamagen_filter::output::{filter_path, read_filter};
use llamagen_filter::preprocess::{decode_rgb, watermark_view};
use llamagen_filter::rules::{RULES, Thresholds};
use llamagen_filter::scorers::Scorers;
use llamagen_filter::shard::{ShardOptions, filter_shard, folder_funnel};
use llamagen_shards::webdataset::TarWriter;
use ndarray::{Array1, Array2, Array3, Array4, ArrayD};
use ndarray_npy::NpzReader;

const PHOTOS: [&str; 3] = ["chelsea", "coffee", "astronaut"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference<T: ndarray_npy::ReadableElement>(name: &str) -> ArrayD<T> {
    let file = std::fs::File::open(fixtures().join("reference.npz")).unwrap();
    NpzReader::new(file).unwrap().by_name(name).unwrap()
}

fn photo(name: &str) -> (Vec<u8>, Array3<u8>) {
    let bytes = std::fs::read(fixtures().join(format!("{name}.png"))).unwrap();
    let rgb = decode_rgb(&bytes, 1 << 24).unwrap();
    (bytes, rgb)
}

fn captions() -> Vec<String> {
    serde_json::from_slice(&std::fs::read(fixtures().join("captions.json")).unwrap()).unwrap()
}

fn scorers() -> Scorers {
    Scorers::open(&fixtures().join("models"), 1).unwrap()
}

fn assert_close(ours: &[f32], theirs: &[f32], tol: f32, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn views_equal_open_clip_and_the_watermark_transform_to_the_level() {
    let clip: Array4<u8> = reference::<u8>("clip_u8").into_dimensionality().unwrap();
    let marks: Array4<u8> = reference::<u8>("watermark_u8")
        .into_dimensionality()
        .unwrap();
    for (i, name) in PHOTOS.iter().enumerate() {
        let (_, rgb) = photo(name);
        // 451x300 (down), 300x200 (up), 210x150 (a centre offset of 44.5, rounded to even).
        assert_eq!(
            clip_view(rgb.view(), 224).unwrap(),
            clip.index_axis(ndarray::Axis(0), i),
            "{name}"
        );
        assert_eq!(
            watermark_view(rgb.view(), 256).unwrap(),
            marks.index_axis(ndarray::Axis(0), i),
            "{name}"
        );
    }
}

#[test]
fn tokens_equal_open_clip_tokenize() {
    let theirs: Array2<i64> = reference::<i64>("tokens").into_dimensionality().unwrap();
    let captions = captions();
    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
    let ours = scorers().tokenizer().encode(&texts).unwrap();
    // Accents, CJK, HTML entities, a contraction, numbers; and one cut at 77 with <|endoftext|> last.
    assert_eq!(ours, theirs);
    assert_eq!(ours[[4, 76]], 49407);
}

#[test]
fn scores_equal_onnxruntime_in_python_on_the_same_models() {
    let mut scorers = scorers();
    let images: Vec<Array3<u8>> = PHOTOS.iter().map(|n| photo(n).1).collect();
    let views: Vec<_> = images.iter().map(|i| i.view()).collect();
    let captions = captions();
    let texts: Vec<Option<&str>> = captions[..3].iter().map(|c| Some(c.as_str())).collect();
    let scores = scorers.score(&views, &texts).unwrap();
    let column = |f: &dyn Fn(&llamagen_filter::rules::Scores) -> f32| -> Vec<f32> {
        scores.iter().map(f).collect()
    };
    let theirs = |name: &str| -> Vec<f32> {
        let a: Array1<f32> = reference::<f32>(name).into_dimensionality().unwrap();
        a.to_vec()
    };
    assert_close(
        &column(&|s| s.clip_similarity.unwrap()),
        &theirs("similarity"),
        1e-5,
        "similarity",
    );
    assert_close(
        &column(&|s| s.aesthetic),
        &theirs("aesthetic"),
        1e-5,
        "aesthetic",
    );
    assert_close(
        &column(&|s| s.watermark),
        &theirs("watermark"),
        1e-5,
        "watermark",
    );
    let text_ref: Array2<f32> = reference::<f32>("text_embeds")
        .into_dimensionality()
        .unwrap();
    let all: Vec<&str> = captions.iter().map(String::as_str).collect();
    let text_ours = scorers.text_embeds(&all).unwrap();
    assert_close(
        text_ours.as_slice().unwrap(),
        text_ref.as_slice().unwrap(),
        1e-5,
        "text_embeds",
    );
}

/// A shard: the three photos with their captions (json with original sizes as ingest writes),
/// one without a caption, one whose original was small, one corrupt image, one with no image.
fn shard(dir: &Path) -> PathBuf {
    let captions = captions();
    let path = dir.join("00000.tar");
    let mut tar = TarWriter::create(&path).unwrap();
    for (i, name) in PHOTOS.iter().enumerate() {
        let key = format!("000000{i}");
        tar.append(&key, "png", &photo(name).0).unwrap();
        tar.append(&key, "txt", captions[i].as_bytes()).unwrap();
        tar.append(
            &key,
            "json",
            br#"{"original_width": 640, "original_height": 480}"#,
        )
        .unwrap();
    }
    tar.append("0000003", "png", &photo("coffee").0).unwrap();
    tar.append("0000004", "png", &photo("chelsea").0).unwrap();
    tar.append("0000004", "txt", b"a cat").unwrap();
    tar.append(
        "0000004",
        "json",
        br#"{"original_width": 120, "original_height": 480}"#,
    )
    .unwrap();
    tar.append("0000005", "jpg", b"\xff\xd8 truncated").unwrap();
    tar.append("0000006", "txt", b"caption without image")
        .unwrap();
    tar.finish().unwrap();
    path
}

#[test]
fn a_shard_is_decided_rule_by_rule_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let tar = shard(dir.path());
    let similarity: Array1<f32> = reference::<f32>("similarity")
        .into_dimensionality()
        .unwrap();
    // Between the first photo's similarity and the others': it alone passes.
    let cut = f64::from((similarity[0] + similarity[1].max(similarity[2])) / 2.0);
    assert!(
        similarity[0] > similarity[1].max(similarity[2]),
        "fixture assumption"
    );
    let thresholds = Thresholds {
        min_width: 200,
        min_height: 200,
        max_watermark: 0.9,
        min_aesthetic: -1.0,
        min_clip_similarity: cut,
    };
    let mut scorers = scorers();
    let options = ShardOptions {
        batch_size: 2, // batches cut across the kinds of samples
        ..ShardOptions::default()
    };
    // A killed attempt's temporary decisions go; another shard's temporary stays.
    let dead = dir.path().join(".tmp.00000_filter.parquet.AbC123");
    let other = dir.path().join(".tmp.00001_filter.parquet.XyZ789");
    std::fs::write(&dead, b"half").unwrap();
    std::fs::write(&other, b"in progress").unwrap();
    let summary = filter_shard(&mut scorers, &thresholds, &tar, dir.path(), &options)
        .unwrap()
        .unwrap();
    assert!(!dead.exists() && other.exists());
    assert_eq!((summary.samples, summary.kept), (7, 1));
    let rows = read_filter(&filter_path(dir.path(), "00000")).unwrap();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    assert_eq!(
        reasons,
        [
            None,
            Some("clip similarity"),
            Some("clip similarity"),
            Some("has caption"),
            Some("image size"),
            Some("image decodes"),
            Some("image decodes"),
        ]
    );
    assert!(rows[0].keep && !rows[1].keep);
    assert_eq!(
        (rows[0].width, rows[0].original_width),
        (Some(451), Some(640))
    );
    assert!((rows[0].clip_similarity.unwrap() - similarity[0]).abs() < 1e-5);
    assert!(rows[3].clip_similarity.is_none() && rows[3].aesthetic.is_some());
    assert!(rows[5].error.as_deref().unwrap().len() > 3);
    assert_eq!(rows[6].error.as_deref(), Some("no image member"));

    // Done: a re-run does nothing, and the funnel recounted from the files is the same.
    assert!(
        filter_shard(&mut scorers, &thresholds, &tar, dir.path(), &options)
            .unwrap()
            .is_none()
    );
    let (funnel, shards) = folder_funnel(dir.path()).unwrap();
    assert_eq!(shards, 1);
    assert_eq!(funnel, summary.funnel);
    assert_eq!(funnel.rows_in, [7, 5, 4, 4, 4, 3]);
    assert_eq!(funnel.dropped, [2, 1, 0, 0, 1, 2]);
    assert_eq!(RULES.len(), 6);
}

#[test]
fn a_folder_that_is_not_an_export_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let Err(err) = Scorers::open(dir.path(), 1) else {
        panic!("an empty folder opened");
    };
    assert!(err.to_string().contains("filter_models.json"), "{err}");
    for f in llamagen_filter::scorers::FILES {
        std::fs::copy(fixtures().join("models").join(f), dir.path().join(f)).unwrap();
    }
    // The aesthetic model where the watermark model should be.
    std::fs::copy(
        fixtures().join("models/aesthetic.onnx"),
        dir.path().join("watermark.onnx"),
    )
    .unwrap();
    let Err(err) = Scorers::open(dir.path(), 1) else {
        panic!("a wrong model opened");
    };
    assert!(err.to_string().contains("not an export"), "{err}");
}
