//! `center_crop` against ADM's `center_crop_arr` on Pillow (fixtures from
//! `scripts/make_center_crop_fixtures.py`): every pixel equal, on tall, wide and square photos,
//! with zero, one and two BOX halvings and BICUBIC down- and up-scaling; `random_crop` against
//! LlamaGen's `random_crop_arr` with the same draws.

use std::fs::File;
use std::path::PathBuf;

use llamagen_evaluate::center_crop::{center_crop, random_crop};
use ndarray::{Array3, s};
use ndarray_npy::NpzReader;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn photo(name: &str) -> Array3<u8> {
    let img = image::open(fixtures().join(format!("{name}_original.png")))
        .unwrap()
        .into_rgb8();
    let (w, h) = img.dimensions();
    Array3::from_shape_vec((h as usize, w as usize, 3), img.into_raw()).unwrap()
}

fn inputs() -> [(&'static str, Array3<u8>); 3] {
    [
        (
            "astronaut_tall",
            photo("astronaut").slice(s![0..160, 20..140, ..]).to_owned(),
        ),
        (
            "coffee_wide",
            photo("coffee").slice(s![30..140, 0..160, ..]).to_owned(),
        ),
        ("chelsea_square", photo("chelsea")),
    ]
}

fn assert_same(ours: &Array3<u8>, theirs: &Array3<u8>, what: &str) {
    assert_eq!(ours.dim(), theirs.dim(), "{what}");
    let differing = ours
        .iter()
        .zip(theirs.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing, 0,
        "{what}: {differing} values differ from Pillow"
    );
}

#[test]
fn llamagens_random_crop_matches_pillow_pixel_for_pixel() {
    let mut expected =
        NpzReader::new(File::open(fixtures().join("center_crop_expected.npz")).unwrap()).unwrap();
    let cases = [
        (64, 64, 0, 0),
        (64, 80, 7, 3),
        (37, 47, 1000003, 12),
        (125, 156, 5, 99),
    ];
    for (name, image) in &inputs() {
        for (size, short, y, x) in cases {
            let key = format!("random_{name}_{size}_{short}_{y}_{x}");
            let theirs: Array3<u8> = expected.by_name(&format!("{key}.npy")).unwrap();
            let ours = random_crop(image.view(), size, short, (y, x)).unwrap();
            assert_same(&ours, &theirs, &key);
        }
    }
    assert!(random_crop(inputs()[0].1.view(), 64, 63, (0, 0)).is_err());
}

#[test]
fn matches_pillow_pixel_for_pixel() {
    let mut expected =
        NpzReader::new(File::open(fixtures().join("center_crop_expected.npz")).unwrap()).unwrap();
    for (name, image) in &inputs() {
        for size in [37, 64, 125] {
            let theirs: Array3<u8> = expected.by_name(&format!("{name}_{size}.npy")).unwrap();
            let ours = center_crop(image.view(), size).unwrap();
            assert_same(&ours, &theirs, &format!("{name} at {size}"));
        }
    }
}
