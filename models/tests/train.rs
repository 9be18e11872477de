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

/// The text-conditioned tiny GPT: a 6-token caption prefix 8 wide.
fn tiny_text() -> GptConfig {
    let mut c = GptConfig::new(2, 4, 64, Conditioning::Text);
    c.vocab_size = VOCAB;
    c.block_size = 16;
    c.cls_token_num = 6;
    c.caption_dim = 8;
    c.caption_token_num = 6;
    c.multiple_of = 32;
    c
}

/// `c` with the dropouts inside the network off (condition dropout stays).
fn without_network_dropout(mut c: GptConfig) -> GptConfig {
    c.token_dropout_p = 0.0;
    c.attn_dropout_p = 0.0;
    c.resid_dropout_p = 0.0;
    c.ffn_dropout_p = 0.0;
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

/// LlamaGen's dataset/t2i.py mask, restated loop by loop: tril over T + N, the caption
/// columns multiplied by the emb_mask (valid tokens last), the diagonal set, then [:-1, :-1].
fn llamagen_mask(length: i64, prefix: i64, n: i64) -> Vec<Vec<bool>> {
    let total = prefix + n;
    let mut m = vec![vec![false; total as usize]; total as usize];
    for (r, row) in m.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            let tril = c <= r;
            let emb = (c as i64) >= prefix || (c as i64) >= prefix - length;
            *cell = (tril && emb) || r == c;
        }
    }
    m.truncate(total as usize - 1);
    for row in &mut m {
        row.truncate(total as usize - 1);
    }
    m
}

#[test]
fn caption_mask_is_llamagens() {
    let lengths = Tensor::from_slice(&[2i64, 5, 1]);
    let mask = llamagen_models::train::caption_mask(&lengths, 5, 4);
    assert_eq!(mask.size(), [3, 1, 8, 8]);
    for (b, length) in [2i64, 5, 1].into_iter().enumerate() {
        let want = llamagen_mask(length, 5, 4);
        for (r, row) in want.iter().enumerate() {
            for (c, &cell) in row.iter().enumerate() {
                let got = mask.int64_value(&[b as i64, 0, r as i64, c as i64]) != 0;
                assert_eq!(
                    got, cell,
                    "sample {b} (length {length}), row {r}, column {c}"
                );
            }
        }
    }
}

/// Text conditioning: captions of 3 tokens (features say the class) padded to a 6-token
/// prefix, half the batch masked out by `valid`; the model still learns the codes.
#[test]
fn a_text_conditioned_gpt_learns_with_padded_captions() {
    let _turn = turn();
    let mut trainer = Trainer::new(tiny_text(), config(), Device::Cpu).unwrap();
    let batch = |step: i64| {
        let b = 8i64;
        let classes: Vec<i64> = (0..b).map(|i| (step + i * 3) % 4).collect();
        let mut features = vec![0f32; (b * 6 * 8) as usize];
        let mut codes = Vec::new();
        for (i, class) in classes.iter().enumerate() {
            for t in 3..6 {
                features[(i * 48) + t * 8 + *class as usize] = 1.0;
            }
            for t in 0..16 {
                codes.push((5 * class + 3 * t) % VOCAB);
            }
        }
        llamagen_models::train::MicroBatch {
            cond: Tensor::from_slice(&features).view([b, 6, 8]),
            codes: Tensor::from_slice(&codes).view([b, 16]),
            caption_lengths: Some(Tensor::from_slice(&[3i64; 8])),
            valid: Some(Tensor::from_slice(&[1i64, 0, 1, 0, 1, 0, 1, 0])),
        }
    };
    let first = trainer.train_step_on(&[batch(0)]).unwrap();
    let mut last = first;
    for step in 1..150 {
        last = trainer.train_step_on(&[batch(step)]).unwrap();
    }
    let ln_v = (VOCAB as f64).ln();
    assert!(first > 0.8 * ln_v, "starts near ln V: {first}");
    assert!(last < 0.3 * ln_v, "learns: {first} -> {last}");
}

#[test]
fn ema_weights_are_kept_saved_and_resumed() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let with_ema = TrainConfig {
        ema_decay: 0.9,
        ..config()
    };
    let mut trainer = Trainer::new(tiny(), with_ema.clone(), Device::Cpu).unwrap();
    let name = "tok_embeddings.weight";
    let start = trainer.ema().unwrap()[name].copy();
    for step in 0..3 {
        trainer.train_step(&batches(step)).unwrap();
    }
    let ema = trainer.ema().unwrap()[name].copy();
    let weights = trainer.vs.variables()[name].copy();
    // The average lags the weights: it moved, but less than they did.
    let moved = (&ema - &start).abs().sum(Kind::Float).double_value(&[]);
    let weights_moved = (&weights - &start).abs().sum(Kind::Float).double_value(&[]);
    assert!(
        moved > 0.0 && moved < weights_moved,
        "{moved} vs {weights_moved}"
    );
    trainer.save(&path).unwrap();
    let resumed = Trainer::resume(&path, Device::Cpu).unwrap();
    assert!(resumed.ema().unwrap()[name].equal(&ema));
    assert_eq!(resumed.config, with_ema);
    // No EMA asked for, none kept or saved.
    assert!(
        Trainer::new(tiny(), config(), Device::Cpu)
            .unwrap()
            .ema()
            .is_none()
    );
}

#[test]
fn learning_rate_warms_up_then_holds_or_follows_a_cosine() {
    let constant = TrainConfig {
        lr: 1.0,
        warmup_steps: 4,
        ..TrainConfig::default()
    };
    let rates: Vec<f64> = (0..6).map(|s| constant.lr_at(s)).collect();
    assert_eq!(rates, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    let cosine = TrainConfig {
        cosine_steps: 10,
        ..constant
    };
    assert_eq!(cosine.lr_at(3), 1.0);
    assert_eq!(cosine.lr_at(4), 1.0);
    assert!((cosine.lr_at(9) - 0.5).abs() < 1e-12, "half-way");
    assert!(cosine.lr_at(14).abs() < 1e-12 && cosine.lr_at(100).abs() < 1e-12);
}

#[test]
fn init_from_starts_a_larger_image_size_from_trained_weights() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    let mut small = Trainer::new(tiny(), config(), Device::Cpu).unwrap();
    for step in 0..3 {
        small.train_step(&batches(step)).unwrap();
    }
    small.save(&path).unwrap();

    // 8 x 8 tokens instead of 4 x 4: the same weights, a fresh optimizer and step.
    let mut larger = tiny();
    larger.block_size = 64;
    let with_ema = TrainConfig {
        ema_decay: 0.5,
        ..config()
    };
    let mut stage_two = Trainer::new(larger, with_ema, Device::Cpu).unwrap();
    stage_two.init_from(&path).unwrap();
    assert_eq!((stage_two.step, stage_two.tokens_seen), (0, 0));
    let trained = small.vs.variables();
    for (name, t) in stage_two.vs.variables() {
        assert!(t.equal(&trained[&name]), "{name} not loaded");
        assert!(stage_two.ema().unwrap()[&name].equal(&t), "EMA of {name}");
    }
    let codes = Tensor::arange(64, (Kind::Int64, Device::Cpu))
        .remainder(VOCAB)
        .repeat([4, 1]);
    let classes = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let loss = stage_two.train_step(&[(classes, codes)]).unwrap();
    assert!(loss.is_finite() && stage_two.step == 1, "{loss}");

    // Another architecture is refused by name and shape.
    let mut wider = tiny();
    wider.dim = 128;
    let mut other = Trainer::new(wider, config(), Device::Cpu).unwrap();
    let err = other.init_from(&path).unwrap_err().to_string();
    assert!(err.contains("file [") && err.contains("model ["), "{err}");
}

/// Weights of two trainers: the largest |a - b| / max |b| over the tensors.
fn largest_difference(a: &Trainer, b: &Trainer) -> f64 {
    let theirs = b.vs.variables();
    a.vs.variables()
        .iter()
        .map(|(name, t)| {
            let other = &theirs[name];
            let scale = other.abs().max().double_value(&[]).max(1e-300);
            (t - other).abs().max().double_value(&[]) / scale
        })
        .fold(0.0, f64::max)
}

#[test]
fn activation_checkpointing_takes_the_same_steps() {
    let _turn = turn();
    // The network's dropouts are off: checkpointed steps draw their masks per block. Condition
    // dropout, drawn before the network, stays on. float64, so that only the order of the
    // arithmetic could differ.
    let mut c = without_network_dropout(tiny());
    c.class_dropout_prob = 0.25;
    let plain = TrainConfig {
        mixed_precision: llamagen_models::train::MixedPrecision::Fp64,
        ..config()
    };
    let checkpointed = TrainConfig {
        activation_checkpointing: true,
        ..plain.clone()
    };
    let mut a = Trainer::new(c.clone(), plain, Device::Cpu).unwrap();
    let mut b = Trainer::new(c, checkpointed, Device::Cpu).unwrap();
    for step in 0..4 {
        let la = a.train_step(&batches(step)).unwrap();
        let lb = b.train_step(&batches(step)).unwrap();
        assert!(
            (la - lb).abs() <= 1e-12 * la.abs(),
            "step {step}: {la} vs {lb}"
        );
    }
    let moved = largest_difference(&a, &Trainer::new(tiny(), config(), Device::Cpu).unwrap());
    assert!(moved > 1e-3, "training moves the weights: {moved}");
    let difference = largest_difference(&b, &a);
    assert!(
        difference < 1e-10,
        "checkpointed weights differ by {difference}"
    );

    // Padded captions, weighted samples.
    let t = without_network_dropout(tiny_text());
    let batch = llamagen_models::train::MicroBatch {
        cond: Tensor::randn([4, 6, 8], (Kind::Float, Device::Cpu)),
        codes: Tensor::randint(VOCAB, [4, 16], (Kind::Int64, Device::Cpu)),
        caption_lengths: Some(Tensor::from_slice(&[3i64, 6, 1, 4])),
        valid: Some(Tensor::from_slice(&[1i64, 0, 1, 1])),
    };
    let plain = TrainConfig {
        mixed_precision: llamagen_models::train::MixedPrecision::Fp64,
        ..config()
    };
    let mut a = Trainer::new(t.clone(), plain.clone(), Device::Cpu).unwrap();
    let mut b = Trainer::new(
        t,
        TrainConfig {
            activation_checkpointing: true,
            ..plain
        },
        Device::Cpu,
    )
    .unwrap();
    for _ in 0..3 {
        a.train_step_on(std::slice::from_ref(&batch)).unwrap();
        b.train_step_on(std::slice::from_ref(&batch)).unwrap();
    }
    let text = largest_difference(&b, &a);
    assert!(text < 1e-10, "text-conditioned: {text}");
    println!("activation checkpointing: weights within {difference:e} (class), {text:e} (text)");
}
