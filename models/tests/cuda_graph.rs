//! CUDA graph capture on a machine without a GPU: the face that records graphs is built into
//! this binary, is refused with the reason while libtorch_cuda is not loaded, loads once it is,
//! and reaches libtorch's CUDA runtime, whose device count (none here) it reports. On a GPU
//! machine a captured computation replays over new inputs, and code that reads back to the host
//! during a capture is an error, not a crash.
//!
//! Each case runs in a process of its own, because whether libtorch_cuda is loaded, and the
//! face with it, is decided once per process.

use llamagen_native::testing::run_case_in_fresh_process;

use llamagen_models::cuda_graph::{self, CudaGraph};
use llamagen_models::generate::Decoder;
use tch::{Device, Kind, Tensor};

fn has_gpu() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

#[test]
fn without_libtorch_cuda_graphs_are_refused_with_the_reason() {
    // The variable lets the case load libtorch_cuda itself, after its first refusals.
    let text = run_case_in_fresh_process("case_cuda_not_loaded", &[("LLAMAGEN_LOAD_CUDA", "1")]);
    assert!(text.contains("case passed"), "{text}");
}

#[test]
#[ignore = "run by without_libtorch_cuda_graphs_are_refused_with_the_reason"]
fn case_cuda_not_loaded() {
    let why = if cuda_graph::BUILT {
        "libtorch_cuda.so is not loaded"
    } else {
        "this build has no CUDA graphs"
    };
    let err = CudaGraph::capture(0, || ()).err().unwrap().to_string();
    assert!(err.contains(why), "{err}");
    assert!(cuda_graph::available().unwrap_err().contains(why));
    if cuda_graph::BUILT {
        // The refusal is not kept: once libtorch_cuda is loaded the face loads.
        llamagen_native::torch::load_cuda();
        cuda_graph::available().unwrap();
        assert_eq!(
            Decoder::Auto.resolve(Device::Cuda(0)).unwrap(),
            Decoder::CudaGraph
        );
        if !has_gpu() {
            // libtorch's CUDA runtime answers: there is no device 0 here.
            let err = CudaGraph::capture(0, || ()).err().unwrap().to_string();
            assert!(
                err.contains("CUDA device 0 does not exist (0 visible)"),
                "{err}"
            );
        }
    }
    println!("case passed: {err}");
}

#[test]
fn graphs_can_be_turned_off() {
    let text = run_case_in_fresh_process(
        "case_turned_off",
        &[("LLAMAGEN_LOAD_CUDA", "1"), ("LLAMAGEN_CUDA_GRAPHS", "0")],
    );
    assert!(text.contains("case passed"), "{text}");
}

#[test]
#[ignore = "run by graphs_can_be_turned_off"]
fn case_turned_off() {
    llamagen_native::torch::load_cuda();
    assert_eq!(
        Decoder::Auto.resolve(Device::Cuda(0)).unwrap(),
        Decoder::Eager
    );
    println!("case passed");
}

#[test]
fn on_a_gpu_a_graph_replays_over_new_inputs() {
    if !has_gpu() {
        eprintln!("skipped: no NVIDIA GPU");
        return;
    }
    let text = run_case_in_fresh_process("case_replay", &[]);
    assert!(text.contains("case passed"), "{text}");
}

#[test]
#[ignore = "run by on_a_gpu_a_graph_replays_over_new_inputs"]
fn case_replay() {
    llamagen_native::torch::load_cuda();
    let device = Device::Cuda(0);
    let mut x = Tensor::arange(8, (Kind::Float, device));
    let mut counter = Tensor::zeros([1], (Kind::Int64, device));
    let step = |x: &Tensor, counter: &mut Tensor| {
        let _ = counter.g_add_scalar_(1);
        (x * 2.0 + 1.0).matmul(&x.view([8, 1]))
    };
    // Once eagerly (libraries set themselves up), then recorded: nothing runs at capture.
    let _ = step(&x, &mut counter);
    let (graph, y) = CudaGraph::capture(0, || step(&x, &mut counter)).unwrap();
    assert_eq!(counter.int64_value(&[0]), 1, "the capture ran kernels");
    for k in 1..=3 {
        x.copy_(&(Tensor::arange(8, (Kind::Float, device)) * f64::from(k)));
        graph.replay().unwrap();
        let want = (&x * 2.0 + 1.0).matmul(&x.view([8, 1]));
        assert_eq!(y, want, "replay {k}");
        assert_eq!(counter.int64_value(&[0]), 1 + i64::from(k));
    }
    // Reading back to the host cannot be recorded: an error, and CUDA goes on working.
    let err = CudaGraph::capture(0, || (&x * 2.0).sum(Kind::Float).double_value(&[]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("captured into a CUDA graph failed"), "{err}");
    assert_eq!(
        (&x + 1.0).sum(Kind::Float).double_value(&[]),
        3.0 * 28.0 + 8.0
    );
    println!("case passed");
}
