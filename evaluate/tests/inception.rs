//! The FID Inception through ONNX Runtime agrees with PyTorch on the same weights.
//!
//! The network is 95 MB, too large to commit, so the test has scripts/export_inception.py
//! (run in the project's virtualenv) export it with seeded random weights into a temporary
//! folder, together with PyTorch's outputs for three real photos; the script itself checks
//! that its graph equals pytorch-fid's own InceptionV3 pipeline.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use llamagen_evaluate::inception::{
    Inception, LOGITS_DIM, POOL_DIM, SPATIAL_DIM, export_random_weights, stack,
};
use ndarray::{Array2, Array3};
use ndarray_npy::NpzReader;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const PHOTOS: [&str; 3] = ["astronaut", "coffee", "chelsea"];

fn export(dir: &Path) -> (PathBuf, PathBuf) {
    let (model, expect) = (dir.join("inception.onnx"), dir.join("expected.npz"));
    let photos: Vec<PathBuf> = PHOTOS
        .iter()
        .map(|p| repo().join(format!("evaluate/tests/fixtures/{p}_original.png")))
        .collect();
    let mut extra: Vec<&OsStr> = vec!["--expect".as_ref(), expect.as_os_str(), "--images".as_ref()];
    extra.extend(photos.iter().map(|p| p.as_os_str()));
    export_random_weights(&repo(), &model, 0, &extra).unwrap();
    (model, expect)
}

fn assert_close(got: ndarray::ArrayView1<f32>, want: ndarray::ArrayView1<f32>, what: &str) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale + 1e-6,
        "{what}: max difference {err} against a largest value of {scale}"
    );
}

#[test]
fn onnx_runtime_matches_pytorch_on_real_photos() {
    let dir = tempfile::tempdir().unwrap();
    let (model, expect) = export(dir.path());
    let mut npz = NpzReader::new(std::fs::File::open(&expect).unwrap()).unwrap();
    let images: Vec<Array3<u8>> = (0..PHOTOS.len())
        .map(|i| npz.by_name(&format!("image_{i}")).unwrap())
        .collect();

    // All three photos in one batch of two and one: batching must not change anything.
    let mut net = Inception::open(&model, 2, 2).unwrap();
    let features = net.features(stack(&images).unwrap().view()).unwrap();
    assert_eq!(features.pool.dim(), (3, POOL_DIM));
    assert_eq!(features.spatial.dim(), (3, SPATIAL_DIM));
    assert_eq!(features.logits.dim(), (3, LOGITS_DIM));
    for (i, photo) in PHOTOS.iter().enumerate() {
        for (name, got) in [
            ("pool", &features.pool),
            ("spatial", &features.spatial),
            ("logits", &features.logits),
        ] {
            let want: Array2<f32> = npz.by_name(&format!("{name}_{i}")).unwrap();
            assert_close(got.row(i), want.row(0), &format!("{photo} {name}"));
        }
    }
    // Non-trivial features: random weights still separate different photos.
    assert_ne!(features.pool.row(0), features.pool.row(1));

    // The float input (clean-fid's unquantised resize) is the same graph: whole levels give
    // the bytes' features, and a clean 299 x 299 view goes in without another resize.
    let batch = stack(&images).unwrap();
    let widened = net
        .features_f32(batch.mapv(f32::from).view(), &mut |_| {})
        .unwrap();
    assert_eq!(widened, features);
    let clean = llamagen_evaluate::text_to_image::clean_resize(images[0].view(), 299).unwrap();
    let clean = net
        .features_f32(clean.insert_axis(ndarray::Axis(0)).view(), &mut |_| {})
        .unwrap();
    assert_eq!(clean.pool.dim(), (1, POOL_DIM));
    // Bicubic with antialiasing and the graph's bilinear resize are different views.
    assert_ne!(clean.pool.row(0), features.pool.row(0));
}

#[test]
fn a_model_that_is_not_the_inception_export_is_refused() {
    let other = repo().join("native/tests/fixtures/tiny_mlp.onnx");
    let err = Inception::open(&other, 1, 8)
        .err()
        .expect("tiny MLP accepted as Inception")
        .to_string();
    assert!(
        err.contains("export_inception.py") && err.contains("images"),
        "{err}"
    );
    let missing = Inception::open(Path::new("/nonexistent/inception.onnx"), 1, 8)
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("/nonexistent/inception.onnx"), "{missing}");
}
