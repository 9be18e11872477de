//! The trainer's gradients reduced during the backward pass, in a process group of one on
//! loopback: the buckets start in the order the real backward pass finishes them (all but the
//! last under the rest of the pass), with and without activation checkpointing and with the
//! optimizer sharded, and the weights are the bytes of reducing after the pass.

use llamagen_distributed::ProcessGroup;
use llamagen_models::gpt::{Conditioning, GptConfig};
use llamagen_models::train::{MicroBatch, TrainConfig, Trainer};
use llamagen_pipeline::train::Ranks;
use tch::{Device, Kind, Tensor};

/// Six layers 384 wide over a 16384-token vocabulary: about 74 MB of fp32 gradients, so
/// several 25 MB buckets.
fn config() -> GptConfig {
    let mut c = GptConfig::new(6, 6, 384, Conditioning::Class);
    c.vocab_size = 16384;
    c.block_size = 16;
    c
}

fn batches() -> Vec<MicroBatch> {
    tch::manual_seed(7);
    let c = config();
    (0..2)
        .map(|_| MicroBatch {
            cond: Tensor::randint(c.num_classes, [2], (Kind::Int64, Device::Cpu)),
            codes: Tensor::randint(c.vocab_size, [2, c.block_size], (Kind::Int64, Device::Cpu)),
            caption_lengths: None,
            valid: None,
        })
        .collect()
}

/// Two steps of two micro-batches; the weights after them, and what the last step overlapped.
fn train(
    group: &ProcessGroup,
    checkpointing: bool,
    shard: bool,
    overlap: bool,
) -> (Vec<Tensor>, Option<(usize, usize)>) {
    let settings = TrainConfig {
        activation_checkpointing: checkpointing,
        ..TrainConfig::default()
    };
    tch::manual_seed(0);
    let mut trainer = Trainer::new(config(), settings, Device::Cpu).unwrap();
    if shard {
        trainer.shard_optimizer(0, 1);
    }
    let ranks = if overlap {
        Ranks::new(group)
    } else {
        Ranks::reducing_after_backward(group)
    };
    let batches = batches();
    for _ in 0..2 {
        trainer.train_step_replicated(&batches, &ranks).unwrap();
    }
    let mut variables: Vec<(String, Tensor)> = trainer.vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    (
        variables.into_iter().map(|(_, t)| t).collect(),
        ranks.overlapped_buckets(),
    )
}

#[test]
fn buckets_start_under_the_backward_pass_and_change_no_weight() {
    let group = ProcessGroup::alone().unwrap();
    for (checkpointing, shard) in [(false, false), (true, false), (false, true)] {
        let (overlapped, counts) = train(&group, checkpointing, shard, true);
        let (started_early, buckets) = counts.expect("the CPU buckets overlap");
        assert!(buckets >= 3, "{buckets} buckets");
        assert_eq!(
            started_early,
            buckets - 1,
            "checkpointing {checkpointing}, sharded {shard}: buckets started before the last \
             gradient"
        );
        let (after, none) = train(&group, checkpointing, shard, false);
        assert!(none.is_none());
        assert_eq!(overlapped.len(), after.len());
        for (a, b) in overlapped.iter().zip(&after) {
            assert!(a.equal(b), "checkpointing {checkpointing}, sharded {shard}");
        }
    }
}
