//! Our models at the paper's sizes have as many parameters as LlamaGen's, counted as PyTorch's
//! `model.parameters()` counts them (`fixtures/parameter_counts.json`, written by
//! `scripts/make_parameter_counts.py` from LlamaGen's own classes): what the leaderboard's
//! `params` column shows beside the paper's tables.

mod common;

use common::fixture;
use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::vq::{VqConfig, VqModel};
use llamagen_models::weights::parameter_count;
use tch::{Device, nn::VarStore};

fn counts() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("parameter_counts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn gpt_sizes_count_as_llamagen_s() {
    let counts = counts();
    let gpt = counts["gpt"].as_object().unwrap();
    assert_eq!(gpt.len(), 4);
    for (key, expected) in gpt {
        let (name, task) = key.split_once(' ').unwrap();
        let conditioning = match task {
            "c2i" => Conditioning::Class,
            "t2i" => Conditioning::Text,
            other => panic!("task {other}"),
        };
        let vs = VarStore::new(Device::Cpu);
        let _gpt = Gpt::new(
            &vs.root(),
            GptConfig::named(name, conditioning, 16).unwrap(),
        )
        .unwrap();
        assert_eq!(
            Some(parameter_count(&vs)),
            expected.as_i64(),
            "{key}: ours against LlamaGen's"
        );
    }
}

#[test]
fn tokenizer_sizes_count_as_llamagen_s() {
    let counts = counts();
    let vq = counts["vq"].as_object().unwrap();
    assert_eq!(vq.len(), 2);
    for (name, expected) in vq {
        let vs = VarStore::new(Device::Cpu);
        let _vq = VqModel::new(&vs.root(), VqConfig::named(name).unwrap()).unwrap();
        assert_eq!(
            Some(parameter_count(&vs)),
            expected.as_i64(),
            "{name}: ours against LlamaGen's"
        );
    }
}
