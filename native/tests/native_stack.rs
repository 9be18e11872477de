//! The native stack end to end: libtorch computes a forward and backward pass and round-trips
//! weights through safetensors; ONNX Runtime runs a model made by scripts/make_tiny_onnx.py and
//! agrees with numpy.

use std::path::PathBuf;

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn torch_gradients_match_the_closed_form() {
    tch::manual_seed(0);
    // Least squares: loss = mean((x w - y)^2), so dloss/dw = 2/n x^T (x w - y).
    let x = Tensor::randn([16, 3], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([16, 1], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([3, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let residual = x.matmul(&w) - &y;
    let loss = residual.square().mean(Kind::Float);
    loss.backward();

    let expected = x.transpose(0, 1).matmul(&residual.detach()) * (2.0 / 16.0);
    let got = w.grad();
    let max_err = (&got - &expected).abs().max().double_value(&[]);
    assert!(
        max_err < 1e-6,
        "gradient differs from closed form by {max_err}"
    );
}

#[test]
fn torch_training_reduces_loss_and_safetensors_round_trips() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "fc1", 4, 16, Default::default()))
        .add_fn(|t| t.relu())
        .add(nn::linear(vs.root() / "fc2", 16, 1, Default::default()));
    let x = Tensor::randn([64, 4], (Kind::Float, Device::Cpu));
    let target = x
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .sin();
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let loss_of = |net: &dyn Module| (net.forward(&x) - &target).square().mean(Kind::Float);
    let first = loss_of(&net).double_value(&[]);
    for _ in 0..200 {
        opt.backward_step(&loss_of(&net));
    }
    let last = loss_of(&net).double_value(&[]);
    assert!(last < first * 0.2, "loss went from {first} to only {last}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.safetensors");
    vs.save(&path).unwrap();

    // The file is real safetensors: an 8-byte little-endian header length, then JSON naming
    // every tensor with its dtype and shape.
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["fc1.weight"]["dtype"], "F32");
    assert_eq!(header["fc1.weight"]["shape"], serde_json::json!([16, 4]));
    assert_eq!(header["fc2.bias"]["shape"], serde_json::json!([1]));

    let mut restored = nn::VarStore::new(Device::Cpu);
    let net2 = nn::seq()
        .add(nn::linear(
            restored.root() / "fc1",
            4,
            16,
            Default::default(),
        ))
        .add_fn(|t| t.relu())
        .add(nn::linear(
            restored.root() / "fc2",
            16,
            1,
            Default::default(),
        ));
    restored.load(&path).unwrap();
    let diff = (net.forward(&x) - net2.forward(&x))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(diff, 0.0, "weights changed in the safetensors round trip");
}

#[test]
fn onnx_runtime_runs_the_tiny_model_like_numpy() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny_mlp.json")).unwrap())
            .unwrap();
    let rows: Vec<Vec<f32>> = serde_json::from_value(fixture["input"].clone()).unwrap();
    let expected: Vec<Vec<f64>> = serde_json::from_value(fixture["expected"].clone()).unwrap();
    let input = ndarray::Array2::from_shape_vec(
        (rows.len(), rows[0].len()),
        rows.iter().flatten().copied().collect(),
    )
    .unwrap();

    // On the CPU, and asked for the first GPU: there through the CUDA execution provider where
    // this machine has it, else on the CPU for a reason that is named.
    use llamagen_native::onnx::{OnnxDevice, Provider};
    for device in [OnnxDevice::Cpu, OnnxDevice::Cuda(0)] {
        let (mut session, provider) =
            llamagen_native::onnx::session_on(&fixtures().join("tiny_mlp.onnx"), 1, device)
                .unwrap();
        match (device, llamagen_native::onnx::cuda_unavailable()) {
            (OnnxDevice::Cuda(_), Some(why)) => {
                assert_eq!(provider, Provider::Cpu, "{why}");
                assert!(why.contains("CUDA"), "{why}");
            }
            (OnnxDevice::Cuda(0), None) => assert_eq!(provider, Provider::Cuda(0)),
            _ => assert_eq!(provider, Provider::Cpu),
        }
        let outputs = session
            .run(ort::inputs!["x" => ort::value::Tensor::from_array(input.clone()).unwrap()])
            .unwrap();
        let probs = outputs["probs"].try_extract_array::<f32>().unwrap();
        assert_eq!(probs.shape(), &[expected.len(), 3]);
        for (i, row) in expected.iter().enumerate() {
            for (j, want) in row.iter().enumerate() {
                let got = probs[[i, j]] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "probs[{i}][{j}] = {got} on {provider}, numpy says {want}"
                );
            }
        }
    }
}

#[test]
fn native_info_reports_versions() {
    let torch = llamagen_native::torch::info();
    assert!(
        torch.version_matches(),
        "libtorch version {:?}",
        torch.version
    );
    let ort = llamagen_native::onnx::info().unwrap();
    assert!(
        ort.version.as_deref().is_some_and(|v| v.starts_with("1.")),
        "ONNX Runtime version {:?}",
        ort.version
    );
    assert!(
        ort.providers.iter().any(|p| p == "CPUExecutionProvider"),
        "providers {:?}",
        ort.providers
    );
}
