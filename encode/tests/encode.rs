//! `llamagen-encode` against LlamaGen's own extraction code (fixtures from
//! scripts/make_encode_fixtures.py), and end to end on webdataset shards: resume, a corrupt
//! image skipped with its reason, and the export to LlamaGen's layout.

use std::path::{Path, PathBuf};

use llamagen_encode::codes::{self, CodePaths};
use llamagen_encode::crops::{self, Augment};
use llamagen_encode::encoder::{EncodeOptions, encode_shard};
use llamagen_encode::export::export_llamagen;
use llamagen_encode::source::{self, Shard};
use llamagen_models::vq::{VqConfig, VqModel};
use ndarray::{Array2, Array3, Array4};
use tch::Device;
use tch::nn::VarStore;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The models crate's tiny VQ parity fixture (LlamaGen's VQModel shape, random weights).
fn tiny_vq() -> (VarStore, VqModel) {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("models/tests/fixtures/manifest.json")).unwrap(),
    )
    .unwrap();
    let m = &manifest["vq"];
    let int = |k: &str| m[k].as_i64().unwrap();
    let mult: Vec<i64> = m["ch_mult"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let config = VqConfig {
        codebook_size: int("codebook_size"),
        codebook_embed_dim: int("codebook_embed_dim"),
        encoder_ch_mult: mult.clone(),
        decoder_ch_mult: mult,
        z_channels: int("z_channels"),
        ch: int("ch"),
        num_res_blocks: int("num_res_blocks"),
        dropout_p: 0.0,
        ..VqConfig::vq16()
    };
    let vs = VarStore::new(Device::Cpu);
    let model = VqModel::new(&vs.root(), config).unwrap();
    llamagen_models::weights::load_strict(
        &vs,
        &root().join("models/tests/fixtures/vq.safetensors"),
    )
    .unwrap();
    (vs, model)
}

fn expected() -> ndarray_npy::NpzReader<std::fs::File> {
    ndarray_npy::NpzReader::new(std::fs::File::open(fixture("expected.npz")).unwrap()).unwrap()
}

fn decode(path: &Path) -> Array3<u8> {
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    Array3::from_shape_vec((h as usize, w as usize, 3), img.into_raw()).unwrap()
}

const PHOTOS: [&str; 2] = ["chelsea_square", "coffee_wide"];
const MODES: [(&str, Augment); 2] = [
    ("ten_crop", Augment::TenCrop { crop_range: 1.1 }),
    ("center_flip", Augment::CenterFlip),
];

fn options(augment: Augment) -> EncodeOptions {
    EncodeOptions {
        image_size: 16,
        augment,
        batch_size: 1,
        device: Device::Cpu,
    }
}

#[test]
fn views_match_llamagen_center_crop_arr_and_torchvision_ten_crop() {
    let mut npz = expected();
    for photo in PHOTOS {
        let image = decode(&fixture(&format!("{photo}.png")));
        for (mode, augment) in MODES {
            let theirs: Array4<u8> = npz.by_name(&format!("{photo}_{mode}_views")).unwrap();
            let ours = crops::stack(&crops::views(image.view(), 16, augment).unwrap()).unwrap();
            assert_eq!(ours.dim(), theirs.dim(), "{photo} {mode}");
            let differing = ours
                .iter()
                .zip(theirs.iter())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                differing, 0,
                "{photo} {mode}: {differing} pixel values differ"
            );
        }
    }
}

#[test]
fn codes_match_llamagen_extract_codes_c2i() {
    // An ImageFolder of the two photos, classes 0 and 1, through the whole encoder.
    let input = tempfile::tempdir().unwrap();
    for (class, photo) in PHOTOS.iter().enumerate() {
        let dir = input.path().join(format!("n0{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            fixture(&format!("{photo}.png")),
            dir.join(format!("{photo}.png")),
        )
        .unwrap();
    }
    let shards = source::shards(input.path(), 1000).unwrap();
    assert_eq!(shards.len(), 1);
    let (_vs, vq) = tiny_vq();
    let mut npz = expected();
    for (mode, augment) in MODES {
        let out = tempfile::tempdir().unwrap();
        let summary = encode_shard(&vq, &shards[0], out.path(), &options(augment))
            .unwrap()
            .expect("a new shard is encoded");
        assert_eq!(
            (summary.samples, summary.views, summary.tokens),
            (2, augment.views(), 64)
        );
        let ours = codes::read(&CodePaths::new(out.path(), shards[0].name())).unwrap();
        assert_eq!(ours.labels.to_vec(), [0, 1]);
        assert_eq!(ours.keys, ["n00/chelsea_square.png", "n01/coffee_wide.png"]);
        for (i, photo) in PHOTOS.iter().enumerate() {
            let theirs: Array2<i64> = npz.by_name(&format!("{photo}_{mode}_codes")).unwrap();
            let mine = ours.codes.index_axis(ndarray::Axis(0), i).mapv(i64::from);
            assert_eq!(mine, theirs, "{photo} {mode}");
            let distinct: std::collections::BTreeSet<i64> = theirs.iter().copied().collect();
            assert!(
                distinct.len() > 3,
                "a degenerate fixture would prove little"
            );
        }
    }
}

/// Two webdataset shards as `llamagen ingest` writes them, one with a corrupt image and a
/// class member.
fn shard_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let photos = root().join("evaluate/tests/fixtures");
    for (index, names) in [["astronaut", "coffee"], ["chelsea", "corrupt"]]
        .iter()
        .enumerate()
    {
        let path = dir.path().join(format!("{index:05}.tar"));
        let mut tar = llamagen_shards::webdataset::TarWriter::create(&path).unwrap();
        for (row, name) in names.iter().enumerate() {
            let key = format!("{index:05}{row:04}");
            let bytes = if *name == "corrupt" {
                b"\xff\xd8\xff\xe0 not really a jpeg".to_vec()
            } else {
                std::fs::read(photos.join(format!("{name}_original.png"))).unwrap()
            };
            let ext = if *name == "corrupt" { "jpg" } else { "png" };
            tar.append(&key, ext, &bytes).unwrap();
            tar.append(&key, "txt", format!("a photo of {name}").as_bytes())
                .unwrap();
            tar.append(&key, "cls", (row + 3).to_string().as_bytes())
                .unwrap();
        }
        tar.finish().unwrap();
    }
    dir
}

#[test]
fn shards_encode_resume_skip_corrupt_images_and_export_to_llamagen_layout() {
    let input = shard_folder();
    let shards = source::shards(input.path(), 1000).unwrap();
    assert_eq!(shards.len(), 2);
    assert!(matches!(&shards[0], Shard::Tar { name, .. } if name == "00000"));
    let (_vs, vq) = tiny_vq();
    let out = tempfile::tempdir().unwrap();
    let opts = options(Augment::CenterFlip);
    // A killed attempt at shard 00000 left temporaries of its codes and summary.
    let dead =
        [".tmp.00000.codes.npy.a1B2c3", ".tmp.00000.json.d4E5f6"].map(|name| out.path().join(name));
    for path in &dead {
        std::fs::write(path, b"half").unwrap();
    }
    let first: Vec<_> = shards
        .iter()
        .map(|s| encode_shard(&vq, s, out.path(), &opts).unwrap().unwrap())
        .collect();
    assert!(
        dead.iter().all(|p| !p.exists()),
        "the next attempt removes them"
    );
    assert_eq!(first[0].samples, 2);
    assert_eq!(first[1].samples, 1);
    assert_eq!(first[1].skipped.len(), 1);
    assert_eq!(first[1].skipped[0].key, "000010001");
    assert!(
        first[1].skipped[0].error.contains("undecodable"),
        "{:?}",
        first[1].skipped
    );

    let before = std::fs::read(out.path().join("00000.codes.npy")).unwrap();
    for s in &shards {
        assert!(
            encode_shard(&vq, s, out.path(), &opts).unwrap().is_none(),
            "resumed, not redone"
        );
    }
    assert!(std::fs::read(out.path().join("00000.codes.npy")).unwrap() == before);

    // Shard 00001 is written again without its corrupt image: only it is encoded again.
    let path = input.path().join("00001.tar");
    let mut tar = llamagen_shards::webdataset::TarWriter::create(&path).unwrap();
    let chelsea = root().join("evaluate/tests/fixtures/chelsea_original.png");
    tar.append("000010000", "png", &std::fs::read(chelsea).unwrap())
        .unwrap();
    tar.append("000010000", "cls", b"3").unwrap();
    tar.finish().unwrap();
    let shards = source::shards(input.path(), 1000).unwrap();
    assert!(
        encode_shard(&vq, &shards[0], out.path(), &opts)
            .unwrap()
            .is_none()
    );
    let redone = encode_shard(&vq, &shards[1], out.path(), &opts)
        .unwrap()
        .expect("a changed input is encoded again");
    assert_eq!((redone.samples, redone.skipped.len()), (1, 0));
    assert!(
        encode_shard(&vq, &shards[1], out.path(), &opts)
            .unwrap()
            .is_none()
    );

    let codes = codes::read(&CodePaths::new(out.path(), "00000")).unwrap();
    assert_eq!(codes.codes.dim(), (2, 2, 64));
    assert!(
        codes.codes.iter().all(|&c| c < 32),
        "codes within the codebook of 32"
    );
    assert_eq!(codes.labels.to_vec(), [3, 4], "labels from the cls members");
    assert_eq!(codes.keys, ["000000000", "000000001"]);

    let exported = tempfile::tempdir().unwrap();
    let n = export_llamagen(out.path(), exported.path(), "tiny16").unwrap();
    assert_eq!(n, 3);
    let sample2: Array3<i64> =
        ndarray_npy::read_npy(exported.path().join("tiny16_codes/2.npy")).unwrap();
    assert_eq!(
        sample2.dim(),
        (1, 2, 64),
        "LlamaGen's (1, augmentations, tokens)"
    );
    let last = codes::read(&CodePaths::new(out.path(), "00001")).unwrap();
    assert_eq!(
        sample2.index_axis(ndarray::Axis(0), 0),
        last.codes.index_axis(ndarray::Axis(0), 0).mapv(i64::from)
    );
    let label: ndarray::Array1<i64> =
        ndarray_npy::read_npy(exported.path().join("tiny16_labels/2.npy")).unwrap();
    assert_eq!(label.to_vec(), [3]);
}

/// A shard whose member names try to leave the folder they are exported to, encoded and
/// embedded as the pipeline would: the text-to-image export refuses it by name and writes
/// nothing outside its output folder.
#[test]
fn export_t2i_refuses_member_names_that_leave_the_output_folder() {
    use llamagen_caption::testing::record;
    use llamagen_shards::captions::{CaptionStatus, captions_path, write_captions};

    let work = tempfile::tempdir().unwrap();
    let shards = work.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let photo = std::fs::read(root().join("evaluate/tests/fixtures/chelsea_original.png")).unwrap();
    // From OUT/images/00000, four levels up is two above OUT.
    let hostile = "../../../../escaped";
    {
        // The tar crate's builder refuses `..` in names, so the header is written raw.
        let file = std::fs::File::create(shards.join("00000.tar")).unwrap();
        let mut b = tar::Builder::new(file);
        for (ext, data) in [("png", photo.as_slice()), ("txt", b"a cat".as_slice())] {
            let name = format!("{hostile}.{ext}");
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            b.append(&header, data).unwrap();
        }
        b.finish().unwrap();
    }
    let codes_dir = work.path().join("codes");
    std::fs::create_dir_all(&codes_dir).unwrap();
    let (_vs, vq) = tiny_vq();
    let shard = &source::shards(&shards, 1000).unwrap()[0];
    let encoded = encode_shard(&vq, shard, &codes_dir, &options(Augment::Center))
        .unwrap()
        .unwrap();
    assert_eq!(encoded.samples, 1);
    let captions = captions_path(&shards, "00000");
    write_captions(
        &captions,
        &[record(hostile, CaptionStatus::Ok, "A cat.", Some("A cat."))],
    )
    .unwrap();
    let t5_dir = work.path().join("t5");
    std::fs::create_dir_all(&t5_dir).unwrap();
    let mut t5 =
        llamagen_encode::t5::T5Encoder::open(&fixture("t5"), llamagen_encode::t5::MAX_LENGTH, 1)
            .unwrap();
    llamagen_encode::t5_shard::embed_shard(&mut t5, &captions, "00000", &t5_dir, 4)
        .unwrap()
        .unwrap();

    let out = work.path().join("deep/er/export");
    let err = llamagen_encode::export::export_llamagen_t2i(&shards, &codes_dir, &t5_dir, &out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("../../escaped") && err.contains("plain"),
        "{err}"
    );
    for escaped in [
        work.path().join("deep/escaped.png"),
        out.join("../escaped.png"),
    ] {
        assert!(!escaped.exists(), "{} was written", escaped.display());
    }
}
