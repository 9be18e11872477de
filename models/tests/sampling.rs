//! Generation behaviour on the tiny fixture GPTs: shapes, guidance, greedy decoding, seeds and
//! the errors a caller gets for bad input.

mod common;

use common::{assert_close, expected, gpt};
use llamagen_models::generate::{Sampling, generate, guide};
use llamagen_models::gpt::Gpt;
use tch::{Kind, Tensor};

/// Greedy decoding without the cache: the argmax of a full forward pass per position.
fn greedy_without_cache(model: &Gpt, cond: &Tensor) -> Tensor {
    let b = cond.size()[0];
    let mut tokens = Tensor::zeros([b, 0], (Kind::Int64, tch::Device::Cpu));
    for _ in 0..model.config.block_size {
        let logits = model.forward(cond, &tokens, None, false).unwrap();
        let next = logits.select(1, -1).argmax(-1, true);
        tokens = Tensor::cat(&[tokens, next], 1);
    }
    tokens
}

fn plain(top_k: i64) -> Sampling {
    Sampling {
        cfg_scale: 1.0,
        top_k,
        ..Sampling::default()
    }
}

#[test]
fn top_k_one_is_greedy_and_ignores_the_seed() {
    let (_vs, model) = gpt("gpt_c2i");
    let cond = Tensor::from_slice(&[0i64, 4, 9]);
    let reference = tch::no_grad(|| greedy_without_cache(&model, &cond));
    for seed in [1, 2] {
        let codes = generate(&model, &cond, None, &plain(1), &[seed, seed + 1, seed + 2]).unwrap();
        assert_eq!(codes.size(), [3, 16]);
        assert_eq!(
            codes, reference,
            "cached greedy decoding differs from uncached (seed {seed})"
        );
    }
}

#[test]
fn seeds_reproduce_and_differ() {
    let (_vs, model) = gpt("gpt_c2i");
    let cond = Tensor::from_slice(&[2i64, 2, 5, 7]);
    let sampling = Sampling {
        cfg_scale: 2.0,
        top_p: 0.95,
        ..Sampling::default()
    };
    let run = |seeds: &[u64]| generate(&model, &cond, None, &sampling, seeds).unwrap();
    let a = run(&[40, 41, 42, 43]);
    assert_eq!(a, run(&[40, 41, 42, 43]), "same seeds, different codes");
    assert_ne!(
        a.get(0),
        a.get(1),
        "two samples of one class with different seeds are identical"
    );
    // A sample depends on its own seed and condition only, not on the rest of the batch.
    let alone = generate(&model, &cond.narrow(0, 2, 1), None, &sampling, &[42]).unwrap();
    assert_eq!(alone.get(0), a.get(2), "a sample changed with its batch");
    let (lo, hi) = (a.min().int64_value(&[]), a.max().int64_value(&[]));
    assert!(
        lo >= 0 && hi < 64,
        "codes outside the vocabulary: {lo}..={hi}"
    );
}

#[test]
fn guidance_scale_one_is_the_conditional_logits() {
    let (_vs, model) = gpt("gpt_t2i");
    let e = expected("gpt_t2i");
    let cond = e["cond"].narrow(0, 0, 2);
    tch::no_grad(|| {
        let null = model.null_condition(2);
        let both = Tensor::cat(&[&cond, &null], 0);
        let mut cache = model.new_cache(4);
        let logits = model
            .prefill(&both, &mut cache, None)
            .unwrap()
            .select(1, -1);
        let conditional = logits.narrow(0, 0, 2);
        assert_close("scale 1", &guide(&logits, 1.0), &conditional, 1e-6);
        // Guidance moves the logits away from the unconditional ones.
        let unconditional = logits.narrow(0, 2, 2);
        let pushed = guide(&logits, 3.0) - &unconditional;
        assert_close(
            "scale 3",
            &pushed,
            &((&conditional - &unconditional) * 3.0),
            1e-5,
        );
    });
}

#[test]
fn text_guidance_uses_the_null_caption_rows() {
    let (_vs, model) = gpt("gpt_t2i");
    let null = model.null_condition(3);
    assert_eq!(null.size(), [3, 120, 16]);
    let cond = Tensor::ones([3, 120, 16], (Kind::Float, tch::Device::Cpu));
    let drop = Tensor::from_slice(&[true, false, true]);
    let dropped = model.drop_condition(&cond, &drop);
    assert_eq!(dropped.get(0), null.get(0));
    assert_eq!(dropped.get(1), cond.get(1));
    let (_vs, c2i) = gpt("gpt_c2i");
    let labels = c2i.drop_condition(&Tensor::from_slice(&[1i64, 2, 3]), &drop);
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [10, 2, 10]);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_vs, model) = gpt("gpt_c2i");
    let s = plain(0);
    let err = |r: Result<Tensor, llamagen_models::ModelError>| r.unwrap_err().to_string();
    assert!(
        err(generate(
            &model,
            &Tensor::from_slice(&[11i64]),
            None,
            &s,
            &[0]
        ))
        .contains("class ids")
    );
    assert!(
        err(generate(
            &model,
            &Tensor::from_slice(&[0.5f32]),
            None,
            &s,
            &[0]
        ))
        .contains("int64")
    );
    let empty = Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu));
    assert!(err(generate(&model, &empty, None, &s, &[])).contains("empty"));
    assert!(
        err(generate(
            &model,
            &Tensor::from_slice(&[1i64, 2]),
            None,
            &s,
            &[0]
        ))
        .contains("1 seeds")
    );
    let bad_p = Sampling {
        top_p: 1.5,
        ..s.clone()
    };
    assert!(
        err(generate(
            &model,
            &Tensor::from_slice(&[1i64]),
            None,
            &bad_p,
            &[0]
        ))
        .contains("top-p")
    );

    let cond = Tensor::from_slice(&[1i64]);
    let mut cache = model.new_cache(1);
    assert!(
        err(model.decode_step(&Tensor::from_slice(&[1i64]).view([1, 1]), &mut cache))
            .contains("before prefill")
    );
    let _ = model.prefill(&cond, &mut cache, None).unwrap();
    assert!(err(model.prefill(&cond, &mut cache, None)).contains("empty cache"));
    assert!(
        err(model.decode_step(&Tensor::from_slice(&[64i64]).view([1, 1]), &mut cache))
            .contains("0..64")
    );
    for _ in 0..16 {
        let _ = model
            .decode_step(&Tensor::from_slice(&[1i64]).view([1, 1]), &mut cache)
            .unwrap();
    }
    assert!(
        err(model.decode_step(&Tensor::from_slice(&[1i64]).view([1, 1]), &mut cache))
            .contains("cache holds")
    );
    let too_long = Tensor::zeros([1, 17], (Kind::Int64, tch::Device::Cpu));
    assert!(err(model.forward(&cond, &too_long, None, false)).contains("exceeds"));
}
