//! `center_crop` against ADM's `center_crop_arr` on Pillow (fixtures from
//! `scripts/make_center_crop_fixtures.py`): every pixel equal, on tall, wide and square photos,
//! with zero, one and two BOX halvings and BICUBIC down- and up-scaling.

use std::fs::File;
use std::path::PathBuf;

use llamagen_evaluate::center_crop::center_crop;
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

#[test]
fn matches_pillow_pixel_for_pixel() {
    let mut expected =
        NpzReader::new(File::open(fixtures().join("center_crop_expected.npz")).unwrap()).unwrap();
    let inputs = [
        (
            "astronaut_tall",
            photo("astronaut").slice(s![0..160, 20..140, ..]).to_owned(),
        ),
        (
            "coffee_wide",
            photo("coffee").slice(s![30..140, 0..160, ..]).to_owned(),
        ),
        ("chelsea_square", photo("chelsea")),
    ];
    for (name, image) in &inputs {
        for size in [37, 64, 125] {
            let theirs: Array3<u8> = expected.by_name(&format!("{name}_{size}.npy")).unwrap();
            let ours = center_crop(image.view(), size).unwrap();
            assert_eq!(ours.dim(), theirs.dim(), "{name} at {size}");
            let differing = ours
                .iter()
                .zip(theirs.iter())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                differing, 0,
                "{name} at {size}: {differing} values differ from Pillow"
            );
        }
    }
}
