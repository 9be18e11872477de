//! FLAN-T5 embeddings against LlamaGen's own `T5Embedder` (language/t5.py) on the same ONNX
//! weights' PyTorch original: caption cleaning, token ids and the valid tokens' embeddings of
//! hostile captions. Fixtures: `scripts/export_t5.py encode/tests/fixtures/t5 --tiny-random
//! --fixtures encode/tests/fixtures --llamagen LLAMAGEN_CHECKOUT`.

use std::path::PathBuf;

use llamagen_encode::caption_clean::clean_caption_twice;
use llamagen_encode::t5::{MAX_LENGTH, T5Encoder};
use ndarray::Array2;
use safetensors::SafeTensors;

#[derive(serde::Deserialize)]
struct Reference {
    caption: String,
    cleaned: String,
    input_ids: Vec<i64>,
    length: usize,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn references() -> Vec<Reference> {
    let text = std::fs::read_to_string(fixtures().join("t5_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn caption_cleaning_matches_llamagen() {
    for r in references() {
        assert_eq!(
            clean_caption_twice(&r.caption),
            r.cleaned,
            "caption {:?}",
            r.caption
        );
    }
}

#[test]
fn tokens_match_llamagen() {
    let encoder = T5Encoder::open(&fixtures().join("t5"), MAX_LENGTH, 1).unwrap();
    let mut saw_cut = false;
    for r in references() {
        let ids = encoder.tokenize(&r.caption).unwrap();
        assert_eq!(ids.len(), r.length, "caption {:?}", r.caption);
        assert_eq!(ids, r.input_ids[..r.length], "caption {:?}", r.caption);
        // LlamaGen pads to 120 with <pad> (0); only the valid tokens are kept here.
        assert!(r.input_ids[r.length..].iter().all(|&i| i == 0));
        assert_eq!(r.input_ids.len(), MAX_LENGTH);
        saw_cut |= r.length == MAX_LENGTH;
    }
    assert!(saw_cut, "the fixtures hold a caption cut at 120 tokens");
}

#[test]
fn embeddings_match_llamagen_whatever_the_batching() {
    let mut encoder = T5Encoder::open(&fixtures().join("t5"), MAX_LENGTH, 1).unwrap();
    let bytes = std::fs::read(fixtures().join("t5_reference.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let refs = references();
    let captions: Vec<&str> = refs.iter().map(|r| r.caption.as_str()).collect();
    // LlamaGen runs one caption padded to 120; here batches of 1, 4 and all, each padded only
    // to its longest caption.
    for batch in [1, 4, captions.len()] {
        let got = encoder.embed(&captions, batch).unwrap();
        assert_eq!(got.len(), refs.len());
        for (i, (r, g)) in refs.iter().zip(&got).enumerate() {
            let view = expected.tensor(&format!("embedding.{i}")).unwrap();
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let want = Array2::from_shape_vec((view.shape()[0], view.shape()[1]), values).unwrap();
            assert_eq!(g.dim(), want.dim(), "caption {:?}", r.caption);
            let worst = (g - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(
                worst < 1e-4,
                "caption {:?}, batch {batch}: max difference {worst}",
                r.caption
            );
        }
    }
}

#[test]
fn a_folder_without_t5_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = T5Encoder::open(dir.path(), MAX_LENGTH, 1)
        .err()
        .expect("an empty folder is not an export");
    assert!(err.to_string().contains("t5_encoder.json"), "{err}");
}

/// XL's weights pass protobuf's 2 GB, so its export keeps them in `t5_encoder.onnx.data`;
/// `--external-data` makes the tiny model the same way. Same seed, same weights: the
/// embeddings equal the committed export's, and the data file counts among its files.
#[test]
fn an_export_with_external_data_loads_and_agrees() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/export_t5.py"))
        .arg(dir.path())
        .args(["--tiny-random", "--external-data"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut external = T5Encoder::open(dir.path(), MAX_LENGTH, 1).unwrap();
    assert!(
        external
            .files()
            .iter()
            .any(|f| f.ends_with("t5_encoder.onnx.data"))
    );
    let mut committed = T5Encoder::open(&fixtures().join("t5"), MAX_LENGTH, 1).unwrap();
    let captions = ["A photo of a cat sitting on a red couch.", "Two dogs."];
    let a = external.embed(&captions, 2).unwrap();
    let b = committed.embed(&captions, 2).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let worst = (x - y).iter().fold(0f32, |m, d| m.max(d.abs()));
        assert!(worst < 1e-6, "{worst}");
    }
}
