//! `embed_shard` on a captions file as `llamagen caption` writes it: captioned samples only,
//! both fields, a re-run skips the shard, changed captions are embedded again, and a file
//! that is not a captions table is refused by name.

use std::path::PathBuf;

use llamagen_caption::testing::record;
use llamagen_encode::embeddings::{self, ShardEmbeddings};
use llamagen_encode::t5::{MAX_LENGTH, T5Encoder};
use llamagen_encode::t5_shard::embed_shard;
use llamagen_shards::captions::{CaptionStatus, captions_path, write_captions};

fn encoder() -> T5Encoder {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5");
    T5Encoder::open(&dir, MAX_LENGTH, 1).unwrap()
}

#[test]
fn captioned_samples_are_embedded_once_and_again_when_captions_change() {
    let dir = tempfile::tempdir().unwrap();
    let captions = captions_path(dir.path(), "00000");
    let long = "A cat sits on a red couch. It looks at the window.";
    write_captions(
        &captions,
        &[
            record(
                "0000000",
                CaptionStatus::Ok,
                long,
                Some("A cat sits on a red couch."),
            ),
            record("0000001", CaptionStatus::Filtered, "", None),
            record(
                "0000002",
                CaptionStatus::Ok,
                "Two dogs play in the snow",
                None,
            ),
            record("0000003", CaptionStatus::Failed, "", None),
        ],
    )
    .unwrap();
    let mut t5 = encoder();
    let out = dir.path().join("t5");
    std::fs::create_dir_all(&out).unwrap();
    let dead = out.join(".tmp.00000.t5.safetensors.q1W2e3");
    std::fs::write(&dead, b"half").unwrap();
    let summary = embed_shard(&mut t5, &captions, "00000", &out, 4)
        .unwrap()
        .unwrap();
    assert!(!dead.exists(), "a killed attempt's temporary is removed");
    assert_eq!((summary.samples, summary.texts), (2, 3));
    assert!(summary.stored_bytes < summary.llamagen_bytes);
    let stored = ShardEmbeddings::read(&embeddings::path(&out, "00000")).unwrap();
    assert_eq!(stored.keys, vec!["0000000", "0000002"]);
    let caption = &stored.fields["caption"];
    let short = &stored.fields["short_caption"];
    // f16 storage keeps the encoder's output to f16 precision.
    let direct = t5.embed(&[long], 1).unwrap().remove(0);
    let back = caption.valid(0);
    assert_eq!(back.dim(), direct.dim());
    let worst = (&back - &direct).iter().fold(0f32, |m, d| m.max(d.abs()));
    assert!(worst < 2e-3, "{worst}");
    assert!(short.lengths[0] > 0 && short.lengths[0] < caption.lengths[0]);
    assert_eq!(short.lengths[1], 0, "no short caption, no embedding");

    assert!(
        embed_shard(&mut t5, &captions, "00000", &out, 4)
            .unwrap()
            .is_none()
    );
    // Captions rewritten (a re-caption): the shard is embedded again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_captions(
        &captions,
        &[record(
            "0000009",
            CaptionStatus::Ok,
            "A boat.",
            Some("A boat."),
        )],
    )
    .unwrap();
    let again = embed_shard(&mut t5, &captions, "00000", &out, 4)
        .unwrap()
        .unwrap();
    assert_eq!(again.samples, 1);
    let stored = ShardEmbeddings::read(&embeddings::path(&out, "00000")).unwrap();
    assert_eq!(stored.keys, vec!["0000009"]);
}

#[test]
fn a_file_that_is_not_a_captions_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let captions = captions_path(dir.path(), "00001");
    std::fs::write(&captions, b"PAR1 not really").unwrap();
    let err = embed_shard(&mut encoder(), &captions, "00001", dir.path(), 4)
        .err()
        .unwrap();
    assert!(err.to_string().contains("00001_captions.parquet"), "{err}");
    assert!(!embeddings::path(dir.path(), "00001").exists());
}

#[test]
fn a_shard_with_no_captioned_sample_is_finished_empty() {
    let dir = tempfile::tempdir().unwrap();
    let captions = captions_path(dir.path(), "00002");
    write_captions(
        &captions,
        &[record("0000000", CaptionStatus::Filtered, "", None)],
    )
    .unwrap();
    let summary = embed_shard(&mut encoder(), &captions, "00002", dir.path(), 4)
        .unwrap()
        .unwrap();
    assert_eq!((summary.samples, summary.texts), (0, 0));
    let stored = ShardEmbeddings::read(&embeddings::path(dir.path(), "00002")).unwrap();
    assert!(stored.keys.is_empty());
    assert!(stored.fields["caption"].is_empty());
    assert!(
        embed_shard(&mut encoder(), &captions, "00002", dir.path(), 4)
            .unwrap()
            .is_none()
    );
}
