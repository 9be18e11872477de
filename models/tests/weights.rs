//! Strict loading: a file with a missing, extra, misshaped or non-finite tensor is refused with
//! a message that names it, and the model keeps its weights.

mod common;

use common::{fixture, gpt_config};
use llamagen_models::gpt::Gpt;
use llamagen_models::weights;
use tch::{Device, Kind, Tensor, nn::VarStore};

fn write_variant(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> std::path::PathBuf {
    let mut tensors: Vec<(String, Tensor)> = weights::read(&fixture("gpt_c2i.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    edit(&mut tensors);
    let path = dir.join("variant.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn load_error(path: &std::path::Path) -> String {
    let vs = VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), gpt_config("gpt_c2i")).unwrap();
    let before = vs.variables()["norm.weight"].copy();
    let err = weights::load_strict(&vs, path).unwrap_err().to_string();
    assert_eq!(
        vs.variables()["norm.weight"],
        before,
        "a refused file changed the model"
    );
    err
}

#[test]
fn every_problem_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = write_variant(dir.path(), |t| {
        t.retain(|(n, _)| n != "layers.1.attention.wo.weight")
    });
    let err = load_error(&missing);
    assert!(
        err.contains("missing layers.1.attention.wo.weight"),
        "{err}"
    );

    let extra = write_variant(dir.path(), |t| {
        t.push((
            "layers.0.attention.kv_cache.k_cache".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ))
    });
    let err = load_error(&extra);
    assert!(
        err.contains("unexpected layers.0.attention.kv_cache.k_cache"),
        "{err}"
    );

    let misshaped = write_variant(dir.path(), |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "tok_embeddings.weight" {
                *tensor = tensor.narrow(0, 0, 32);
            }
        }
    });
    let err = load_error(&misshaped);
    assert!(
        err.contains("misshaped tok_embeddings.weight (file [32, 64], model [64, 64])"),
        "{err}"
    );

    let nan = write_variant(dir.path(), |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "norm.weight" {
                *tensor = tensor.to_kind(Kind::Float).fill_(f64::NAN);
            }
        }
    });
    let err = load_error(&nan);
    assert!(err.contains("norm.weight holds NaN"), "{err}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file").unwrap();
    assert!(load_error(&garbage).contains("not a readable safetensors file"));
    assert!(load_error(&dir.path().join("absent.safetensors")).contains("no such file"));
}

#[test]
fn save_then_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), gpt_config("gpt_c2i")).unwrap();
    weights::load_strict(&vs, &fixture("gpt_c2i.safetensors")).unwrap();
    let path = dir.path().join("saved.safetensors");
    weights::save(&vs, &path).unwrap();
    let again = VarStore::new(Device::Cpu);
    let _copy = Gpt::new(&again.root(), gpt_config("gpt_c2i")).unwrap();
    weights::load_strict(&again, &path).unwrap();
    for (name, tensor) in vs.variables() {
        assert_eq!(again.variables()[&name], tensor, "{name}");
    }
}
