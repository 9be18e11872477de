//! Parity with the reference implementations on fixtures that scripts/make_metric_fixtures.py
//! generated with scipy, scikit-image and a numpy transcription of the ADM evaluator.

use std::path::PathBuf;

use llamagen_evaluate::frechet::{Statistics, frechet_distance};
use llamagen_evaluate::image_quality::{Convention, reconstruction_quality};
use llamagen_evaluate::inception_score::inception_score;
use llamagen_evaluate::precision_recall::{ADM_K, precision_recall};
use ndarray::{Array2, Array3};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn npy(name: &str) -> Array2<f32> {
    ndarray_npy::read_npy(fixture(name)).unwrap()
}

fn png(name: &str) -> Array3<u8> {
    let img = image::open(fixture(name)).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    Array3::from_shape_vec((h as usize, w as usize, 3), img.into_raw()).unwrap()
}

fn assert_close(got: f64, want: f64, rel: f64, what: &str) {
    let err = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        err <= rel,
        "{what}: got {got}, reference {want} (relative error {err:.2e} > {rel:.0e})"
    );
}

#[test]
fn frechet_distance_matches_scipy_sqrtm() {
    let want = expected()["fid"].as_f64().unwrap();
    let a = Statistics::from_features(npy("fid_features_a.npy").view()).unwrap();
    let b = Statistics::from_features(npy("fid_features_b.npy").view()).unwrap();
    assert_close(frechet_distance(&a, &b).unwrap(), want, 1e-6, "FID");
    // The same set against itself: scipy's answer is round-off around zero, so is ours.
    assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
}

#[test]
fn frechet_distance_of_sets_smaller_than_their_dimension_matches_scipy_sqrtm() {
    // 40 and 50 samples of 64 dimensions: singular covariances, the N x N route.
    let want = expected()["fid_small"].as_f64().unwrap();
    let a = Statistics::from_features(npy("fid_small_a.npy").view()).unwrap();
    let b = Statistics::from_features(npy("fid_small_b.npy").view()).unwrap();
    assert!(a.low_rank.is_some() && b.low_rank.is_some());
    assert_close(frechet_distance(&a, &b).unwrap(), want, 1e-6, "FID");
    // Against statistics read back from a file (no low-rank factor): the other side's route.
    let b_file = Statistics {
        low_rank: None,
        ..b.clone()
    };
    assert_close(frechet_distance(&a, &b_file).unwrap(), want, 1e-6, "FID");
}

#[test]
fn inception_score_matches_the_adm_formula() {
    let e = expected();
    let split = e["inception_score_split_size"].as_u64().unwrap() as usize;
    let is = inception_score(npy("is_logits.npy").view(), split).unwrap();
    let splits: Vec<f64> = serde_json::from_value(e["inception_score_splits"].clone()).unwrap();
    assert_eq!(is.splits.len(), splits.len());
    for (got, want) in is.splits.iter().zip(&splits) {
        assert_close(*got, *want, 1e-9, "IS split");
    }
    assert_close(is.mean, e["inception_score"].as_f64().unwrap(), 1e-9, "IS");
}

#[test]
fn precision_and_recall_match_the_adm_manifold_estimator() {
    let e = expected();
    let pr = precision_recall(npy("pr_real.npy").view(), npy("pr_fake.npy").view(), ADM_K).unwrap();
    assert_eq!(pr.precision, e["precision"].as_f64().unwrap());
    assert_eq!(pr.recall, e["recall"].as_f64().unwrap());
}

#[test]
fn psnr_and_ssim_match_scikit_image_on_real_photos() {
    let e = expected();
    for name in ["astronaut", "coffee", "chelsea"] {
        let want = &e["images"][name];
        let original = png(&format!("{name}_original.png"));
        let restored = png(&format!("{name}_restored.png"));
        let (psnr, ssim) =
            reconstruction_quality(original.view(), restored.view(), Convention::Standard).unwrap();
        assert_close(
            psnr,
            want["standard_psnr"].as_f64().unwrap(),
            1e-9,
            &format!("{name} PSNR"),
        );
        assert_close(
            ssim,
            want["standard_ssim"].as_f64().unwrap(),
            1e-9,
            &format!("{name} SSIM"),
        );
        let (psnr, ssim) =
            reconstruction_quality(original.view(), restored.view(), Convention::LlamaGen).unwrap();
        assert_close(
            psnr,
            want["llamagen_psnr"].as_f64().unwrap(),
            1e-9,
            &format!("{name} LlamaGen PSNR"),
        );
        assert_close(
            ssim,
            want["llamagen_ssim"].as_f64().unwrap(),
            1e-9,
            &format!("{name} LlamaGen SSIM"),
        );
        // LlamaGen runs scikit-image on float32 arrays; we stay within 1e-6 of that too.
        assert_close(
            ssim,
            want["llamagen_ssim_f32"].as_f64().unwrap(),
            1e-6,
            &format!("{name} LlamaGen SSIM (f32)"),
        );
        assert_close(
            psnr,
            want["llamagen_psnr_f32"].as_f64().unwrap(),
            1e-6,
            &format!("{name} LlamaGen PSNR (f32)"),
        );
    }
}

fn kid_expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("kid_expected.json")).unwrap()).unwrap()
}

#[test]
fn numpy_legacy_draws_are_reproduced() {
    use llamagen_evaluate::numpy_random::RandomState;
    let e = kid_expected();
    let want: Vec<usize> = serde_json::from_value(e["permutation_seed_2020_n_20"].clone()).unwrap();
    assert_eq!(RandomState::new(2020).permutation(20), want);
    let want: Vec<usize> = serde_json::from_value(e["choice_seed_7_n_5000_m_8"].clone()).unwrap();
    assert_eq!(
        RandomState::new(7).choice_without_replacement(5000, 8),
        want
    );
}

#[test]
fn kid_matches_torch_fidelity_and_clean_fid_on_the_same_features() {
    use llamagen_evaluate::kernel_distance::{KidSettings, kernel_distance};
    let generated = npy("kid_generated.npy");
    let reference = npy("kid_reference.npy");
    let cases = kid_expected()["kid"].as_array().unwrap().clone();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let settings = KidSettings {
            subsets: case["subsets"].as_u64().unwrap() as usize,
            subset_size: case["subset_size"].as_u64().unwrap() as usize,
            seed: case["seed"].as_u64().unwrap() as u32,
            ..Default::default()
        };
        let (first, second) = match case["first"].as_str().unwrap() {
            "generated" => (generated.view(), reference.view()),
            _ => (reference.view(), generated.view()),
        };
        let kid = kernel_distance(first, second, &settings, None).unwrap();
        let what = format!("{} KID {settings:?}", case["reference"]);
        assert_close(kid.mean, case["mean"].as_f64().unwrap(), 1e-9, &what);
        if let Some(std) = case["std"].as_f64() {
            assert_close(kid.std, std, 1e-7, &what);
        }
    }
}
