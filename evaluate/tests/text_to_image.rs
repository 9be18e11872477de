//! Parity of the text-to-image protocol with the code LlamaGen's evaluations/t2i runs (Pillow,
//! torchvision, clean-fid 0.1.35, its CLIP score on open_clip's towers), on fixtures that
//! scripts/make_t2i_fixtures.py generated.

use std::path::PathBuf;

use llamagen_clip::Clip;
use llamagen_evaluate::text_to_image::{
    clean_resize, clip_features, clip_score_tokens, clip_scores, eval_view, tensor_round_trip,
};
use llamagen_imaging::pillow::{Filter, resize, resize_f32};
use ndarray::{Array2, Array3, ArrayD, Ix2, s};
use ndarray_npy::NpzReader;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t2i")
}

fn expected(name: &str) -> ArrayD<f64> {
    let file = std::fs::File::open(dir().join("t2i_expected.npz")).unwrap();
    let mut npz = NpzReader::new(file).unwrap();
    let key = name;
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<u8>, ndarray::IxDyn>(key) {
        return a.mapv(f64::from);
    }
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::IxDyn>(key) {
        return a.mapv(f64::from);
    }
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<i64>, ndarray::IxDyn>(key) {
        return a.mapv(|v| v as f64);
    }
    let err = npz
        .by_name::<ndarray::OwnedRepr<f64>, ndarray::IxDyn>(key)
        .unwrap_err();
    panic!("no array {name} in the fixture: {err}");
}

fn photo(i: usize) -> Array3<u8> {
    let img = image::open(dir().join(format!("photo_{i}.png")))
        .unwrap()
        .to_rgb8();
    let (w, h) = img.dimensions();
    Array3::from_shape_vec((h as usize, w as usize, 3), img.into_raw()).unwrap()
}

fn settings() -> (Vec<String>, usize) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("captions.json")).unwrap())
            .unwrap();
    (
        serde_json::from_value(v["captions"].clone()).unwrap(),
        v["eval_res"].as_u64().unwrap() as usize,
    )
}

/// The largest relative difference, against the reference's largest magnitude.
fn max_relative(got: &ArrayD<f64>, want: &ArrayD<f64>) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want.iter())
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn as_f64<D: ndarray::Dimension, T: Copy + Into<f64>>(a: &ndarray::Array<T, D>) -> ArrayD<f64> {
    a.mapv(Into::into).into_dyn()
}

#[test]
fn pillow_lanczos_and_float_resizes_match_to_the_level() {
    for i in 0..3 {
        let image = photo(i);
        for (w, h) in [(40, 48), (150, 170)] {
            let want = expected(&format!("lanczos_{i}_{w}x{h}"));
            let got = resize(image.view(), w, h, Filter::Lanczos);
            assert_eq!(as_f64(&got), want, "photo {i} LANCZOS to {w}x{h}");
            let plane = image.slice(s![.., .., 1]).mapv(f32::from);
            for (name, filter) in [("bicubic", Filter::Bicubic), ("lanczos", Filter::Lanczos)] {
                let want = expected(&format!("f32_{name}_{i}_{w}x{h}"));
                let got = resize_f32(plane.view(), w, h, filter);
                let err = max_relative(&as_f64(&got), &want);
                assert!(err <= 1e-6, "photo {i} float {name} to {w}x{h}: {err:.2e}");
            }
        }
    }
}

#[test]
fn the_protocol_views_match_llamagen_and_clean_fid() {
    let (_, res) = settings();
    for i in 0..3 {
        let view = eval_view(photo(i).view(), res).unwrap();
        assert_eq!(
            as_f64(&view),
            expected(&format!("eval_view_{i}")),
            "eval view {i}"
        );
        let clean = clean_resize(view.view(), 75).unwrap();
        let err = max_relative(&as_f64(&clean), &expected(&format!("clean_{i}_75")));
        assert!(err <= 1e-6, "clean resize of photo {i}: {err:.2e}");
        let clip = llamagen_clip::preprocess::clip_view(view.view(), 224).unwrap();
        assert_eq!(
            as_f64(&clip),
            expected(&format!("clip_fid_view_{i}")),
            "CLIP view {i}"
        );
    }
    let view = eval_view(photo(0).view(), res).unwrap();
    let clean = clean_resize(view.view(), 299).unwrap();
    let err = max_relative(&as_f64(&clean), &expected("clean_0_299"));
    assert!(err <= 1e-6, "clean resize to 299: {err:.2e}");
}

fn tiny_clip() -> Clip {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../filter/tests/fixtures/models");
    Clip::open(&models, 1).unwrap()
}

#[test]
fn clip_score_and_clip_features_match_llamagen_on_the_same_towers() {
    let (captions, res) = settings();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    let mut clip = tiny_clip();
    let tokens = clip_score_tokens(clip.tokenizer(), &captions).unwrap();
    assert_eq!(
        tokens.mapv(|v| v as f64).into_dyn(),
        expected("clip_score_tokens"),
        "spliced tokens"
    );
    let photos: Vec<Array3<u8>> = (0..3).map(photo).collect();
    let round_trip: Vec<Array3<u8>> = photos
        .iter()
        .map(|p| tensor_round_trip(eval_view(p.view(), res).unwrap().view()))
        .collect();
    let stacked = ndarray::stack(
        ndarray::Axis(0),
        &round_trip.iter().map(|a| a.view()).collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(
        as_f64(&stacked),
        expected("clip_score_round_trip"),
        "tensor2pil round trip"
    );
    let views: Vec<Array3<u8>> = photos
        .iter()
        .map(|p| eval_view(p.view(), res).unwrap())
        .collect();
    let views: Vec<_> = views.iter().map(|v| v.view()).collect();
    let scores = clip_scores(&mut clip, &views, &captions).unwrap();
    let want = expected("clip_scores");
    for (i, (got, want)) in scores.iter().zip(want.iter()).enumerate() {
        // Relative to the score, or to 0.1 for a cosine near zero (random towers give those;
        // real ones score 0.2 to 0.35), where float32 round-off is all that is left.
        let err = (f64::from(*got) - want).abs() / want.abs().max(0.1);
        assert!(err <= 1e-5, "CLIP score {i}: {got} vs {want} ({err:.2e})");
    }
    let features: Array2<f32> = clip_features(&mut clip, &views).unwrap();
    let want = expected("clip_features")
        .into_dimensionality::<Ix2>()
        .unwrap();
    let err = max_relative(&as_f64(&features), &want.into_dyn());
    assert!(err <= 1e-5, "CLIP-FID features: {err:.2e}");
}
