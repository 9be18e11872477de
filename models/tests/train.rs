//! The trainer on CPU with a tiny GPT and synthetic codes: it learns (loss far below ln V),
//! a resumed run continues with exactly the losses of the uninterrupted one, and a corrupted
//! checkpoint is refused by its checksum.

use llamagen_models::gpt::{Conditioning, GptConfig};
use llamagen_models::train::{TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 32;

/// Dropout draws from libtorch's process-wide generator, which the trainer reseeds every step;
/// two trainers stepping in parallel threads would interleave their draws. The `llamagen train`
/// process runs one trainer; these tests take turns.
static ONE_TRAINER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_TRAINER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tiny() -> GptConfig {
    let mut c = GptConfig::new(2, 4, 64, Conditioning::Class);
    c.vocab_size = VOCAB;
    c.block_size = 16;
    c.num_classes = 4;
    c.multiple_of = 32;
    c
}

fn config() -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        seed: 5,
        ..TrainConfig::default()
    }
}

/// A learnable language: image i of class c has codes (5 c + 3 t + i % 2) mod V at position t.
/// Two micro-batches of 8 per step; the batch depends only on the step.
fn batches(step: i64) -> Vec<(Tensor, Tensor)> {
    (0..2)
        .map(|m| {
            let ids: Vec<i64> = (0..8).map(|i| step * 16 + m * 8 + i).collect();
            let classes: Vec<i64> = ids.iter().map(|i| (i * 7) % 4).collect();
            let mut codes = Vec::new();
            for (i, c) in ids.iter().zip(&classes) {
                for t in 0..16 {
                    codes.push((5 * c + 3 * t + i % 2) % VOCAB);
                }
            }
            (
                Tensor::from_slice(&classes),
                Tensor::from_slice(&codes).view([8, 16]),
            )
        })
        .collect()
}

#[test]
fn tiny_gpt_learns_synthetic_codes() {
    let _turn = turn();
    let mut trainer = Trainer::new(tiny(), config(), Device::Cpu).unwrap();
    let first = trainer.train_step(&batches(0)).unwrap();
    let mut last = first;
    for step in 1..120 {
        last = trainer.train_step(&batches(step)).unwrap();
    }
    let chance = (VOCAB as f64).ln();
    eprintln!("loss {first:.3} -> {last:.3} (ln V = {chance:.3})");
    assert!(
        (first - chance).abs() < 0.2,
        "untrained loss {first} should be near ln V"
    );
    assert!(
        last < 0.35 * chance,
        "loss {last} after 120 steps, ln V = {chance}"
    );
    assert_eq!(trainer.step, 120);
    assert_eq!(trainer.tokens_seen, 120 * 16 * 16);
}

#[test]
fn resumed_run_repeats_the_uninterrupted_losses() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("step3.safetensors");

    let mut straight = Trainer::new(tiny(), config(), Device::Cpu).unwrap();
    let mut expected = Vec::new();
    for step in 0..6 {
        expected.push(straight.train_step(&batches(step)).unwrap());
        if step == 2 {
            straight.save(&path).unwrap();
        }
    }

    let mut resumed = Trainer::resume(&path, Device::Cpu).unwrap();
    assert_eq!(resumed.step, 3);
    let again: Vec<f64> = (3..6)
        .map(|step| resumed.train_step(&batches(step)).unwrap())
        .collect();
    assert_eq!(again, expected[3..], "a resumed run diverged");
    for (name, t) in straight.vs.variables() {
        let other = &resumed.vs.variables()[&name];
        assert!(t.equal(other), "{name} differs after the same steps");
    }
}

#[test]
fn corrupted_checkpoints_are_refused() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut trainer = Trainer::new(tiny(), config(), Device::Cpu).unwrap();
    trainer.train_step(&batches(0)).unwrap();
    let sha = trainer.save(&path).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ckpt.safetensors.sha256"))
            .unwrap()
            .trim(),
        sha
    );

    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = Trainer::resume(&path, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");

    std::fs::write(&path, &bytes[..middle]).unwrap();
    assert!(Trainer::resume(&path, Device::Cpu).is_err());
    std::fs::remove_file(dir.path().join("ckpt.safetensors.sha256")).unwrap();
    let err = Trainer::resume(&path, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sha256"), "{err}");
    // NaN losses stop training instead of poisoning the weights.
    let bad = vec![(
        Tensor::from_slice(&[9i64]),
        Tensor::zeros([1, 16], (Kind::Int64, Device::Cpu)),
    )];
    assert!(trainer.train_step(&bad).is_err());
}
