//! The training loader over our own shards: every sample once per epoch, in an order that
//! depends on the seed and epoch only, captions joined by key with LlamaGen's left padding.

use std::collections::{BTreeMap, HashSet};

use llamagen_encode::codes::{self, CodePaths, ShardCodes, ShardSummary};
use llamagen_encode::dataset::{Dataset, TextOptions};
use llamagen_encode::embeddings::{self, FieldEmbeddings, ShardEmbeddings};
use ndarray::{Array1, Array2, Array3};

/// Three shards of 5, 3 and 4 samples, 2 views of 4 tokens; code = 100 * shard + 10 * row +
/// view. Captions for every sample but row 0 of each shard, features = the row number.
fn folders() -> (tempfile::TempDir, tempfile::TempDir) {
    let codes_dir = tempfile::tempdir().unwrap();
    let t5_dir = tempfile::tempdir().unwrap();
    for (shard, n) in [(0usize, 5usize), (1, 3), (2, 4)] {
        let name = format!("{shard:05}");
        let keys: Vec<String> = (0..n).map(|r| format!("{name}{r:04}")).collect();
        let codes = Array3::from_shape_fn((n, 2, 4), |(r, v, _)| (100 * shard + 10 * r + v) as u16);
        let data = ShardCodes {
            codes,
            labels: Array1::from_iter((0..n).map(|r| r as i64)),
            keys: keys.clone(),
        };
        let summary = ShardSummary {
            samples: n,
            views: 2,
            tokens: 4,
            skipped: vec![],
            seconds: 0.0,
            input: None,
        };
        codes::write(&CodePaths::new(codes_dir.path(), &name), &data, &summary).unwrap();
        let mut long = FieldEmbeddings::new(3);
        let mut short = FieldEmbeddings::new(3);
        for r in 1..n {
            long.push(Some(Array2::from_elem((2, 3), r as f32).view()))
                .unwrap();
            short
                .push(
                    (r % 2 == 0)
                        .then(|| Array2::from_elem((1, 3), -(r as f32)))
                        .as_ref()
                        .map(|a| a.view()),
                )
                .unwrap();
        }
        ShardEmbeddings {
            keys: keys[1..].to_vec(),
            fields: BTreeMap::from([("caption".into(), long), ("short_caption".into(), short)]),
            input: None,
        }
        .write(&embeddings::path(t5_dir.path(), &name))
        .unwrap();
    }
    (codes_dir, t5_dir)
}

#[test]
fn each_epoch_visits_every_sample_once_in_a_seeded_order() {
    let (codes, _) = folders();
    for block in [1, 2, 10] {
        let mut data = Dataset::open(codes.path(), None, block, 3).unwrap();
        assert_eq!((data.len(), data.tokens(), data.shards()), (12, 4, 3));
        let epoch = |data: &mut Dataset, e: u64| -> Vec<String> {
            (e * 12..(e + 1) * 12)
                .map(|g| data.get(g, None).unwrap().key)
                .collect()
        };
        let first = epoch(&mut data, 0);
        let second = epoch(&mut data, 1);
        assert_eq!(first.iter().collect::<HashSet<_>>().len(), 12);
        assert_eq!(second.iter().collect::<HashSet<_>>().len(), 12);
        assert_ne!(first, second, "a new order each epoch");
        // Another loader (a resumed run) starting mid-epoch reads the same samples.
        let mut again = Dataset::open(codes.path(), None, block, 3).unwrap();
        let tail: Vec<String> = (17..24).map(|g| again.get(g, None).unwrap().key).collect();
        assert_eq!(tail, second[5..]);
    }
    // Codes are one of the sample's views, as stored.
    let mut data = Dataset::open(codes.path(), None, 2, 3).unwrap();
    for g in 0..24 {
        let s = data.get(g, None).unwrap();
        let shard: i64 = s.key[..5].parse().unwrap();
        let row: i64 = s.key[5..].parse().unwrap();
        assert_eq!(s.label, row);
        assert!(s.codes.iter().all(|&c| c == s.codes[0]));
        assert!(s.codes[0] - 100 * shard - 10 * row < 2);
    }
}

#[test]
fn text_samples_join_captions_by_key_with_left_padding() {
    let (codes, t5) = folders();
    let mut data = Dataset::open(codes.path(), Some(t5.path()), 4, 0).unwrap();
    assert_eq!(data.len(), 9, "row 0 of each shard has no caption");
    let text = TextOptions {
        prefix: 5,
        short_probability: 0.3,
    };
    let (mut long, mut short) = (0, 0);
    for g in 0..90 {
        let s = data.get(g, Some(text)).unwrap();
        let row: f32 = s.key[5..].parse::<u16>().unwrap().into();
        assert!(row > 0.0);
        let (features, n) = s.caption.unwrap();
        assert_eq!(features.dim(), (5, 3));
        assert!(features.row(0).iter().all(|&x| x == 0.0), "padding first");
        let last = features[[4, 0]];
        if n == 2 {
            assert_eq!(last, row);
            long += 1;
        } else {
            assert_eq!((n, last), (1, -row), "the short caption, valid token last");
            short += 1;
        }
    }
    assert!(
        short > 5 && long > short,
        "short captions drawn about 30% where they exist: {short} vs {long}"
    );
}

#[test]
fn a_folder_without_finished_shards_is_refused() {
    let empty = tempfile::tempdir().unwrap();
    let err = Dataset::open(empty.path(), None, 4, 0).err().unwrap();
    assert!(err.to_string().contains("no finished shards"), "{err}");
}
