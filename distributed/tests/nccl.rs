//! The NCCL half on a machine without a GPU: the shim that opens NCCL groups is built into this
//! binary, loads once libtorch_cuda is loaded, reports the NCCL release the torch wheel pins,
//! and reaches ProcessGroupNCCL's own constructor, whose refusal (no GPU here) comes back as a
//! rendezvous error with libtorch's reason. Where libtorch_cuda is not loaded (a CPU machine's
//! normal state) the error says so, and a call after it is loaded succeeds. On a GPU machine a group of one rank reduces CUDA tensors
//! in place, during the backward pass (tests/gloo.rs runs its multi-rank bodies over NCCL where
//! there are GPUs enough).
//!
//! Each case runs in a process of its own, because whether libtorch_cuda is loaded, and the
//! shim with it, is decided once per process.

use std::time::Duration;

use llamagen_distributed::{Backend, GradientBuckets, ProcessGroup, Rendezvous, nccl};
use llamagen_native::testing::run_case_in_fresh_process;
use tch::{Device, Kind, Tensor};

fn has_gpu() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

fn rendezvous() -> Rendezvous {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Rendezvous {
        rank: 0,
        world: 1,
        local_rank: 0,
        host: "127.0.0.1".into(),
        port,
        host_store: true,
        prefix: "/nccl-test/".into(),
        timeout: Duration::from_secs(20),
    }
}

#[test]
fn without_libtorch_cuda_nccl_is_refused_with_the_reason() {
    // The variable lets the case load libtorch_cuda itself, after its first refusals.
    let text = run_case_in_fresh_process("case_cuda_not_loaded", &[("LLAMAGEN_LOAD_CUDA", "1")]);
    assert!(text.contains("case passed"), "{text}");
}

#[test]
#[ignore = "run by without_libtorch_cuda_nccl_is_refused_with_the_reason"]
fn case_cuda_not_loaded() {
    let err = ProcessGroup::nccl(&rendezvous()).err().unwrap().to_string();
    assert!(err.starts_with("rendezvous at 127.0.0.1:"), "{err}");
    let why = if nccl::BUILT {
        "libtorch_cuda.so is not loaded"
    } else {
        "this build has no NCCL"
    };
    assert!(err.contains(why), "{err}");
    assert!(nccl::version().unwrap_err().contains(why));
    if nccl::BUILT {
        // The refusal is not kept: once libtorch_cuda is loaded the shim loads.
        llamagen_native::torch::load_cuda();
        assert_eq!(nccl::version().unwrap(), "2.28.9");
    }
    println!("case passed: {err}");
}

#[test]
fn with_libtorch_cuda_the_shim_reaches_process_group_nccl() {
    if has_gpu() || !nccl::BUILT {
        eprintln!(
            "skipped: this machine has a GPU (where the shim opens a real group), or this build \
             has no NCCL (a CPU-only libtorch)"
        );
        return;
    }
    let text = run_case_in_fresh_process("case_cuda_loaded", &[("LLAMAGEN_LOAD_CUDA", "1")]);
    assert!(text.contains("case passed"), "{text}");
}

#[test]
#[ignore = "run by with_libtorch_cuda_the_shim_reaches_process_group_nccl"]
fn case_cuda_loaded() {
    let loaded = llamagen_native::torch::load_cuda();
    assert!(
        matches!(loaded, llamagen_native::torch::CudaLoad::Loaded(_)),
        "{loaded}"
    );
    // The release torch 2.11's wheel pins (nvidia-nccl-cu13==2.28.9).
    assert_eq!(nccl::version().unwrap(), "2.28.9");
    let err = ProcessGroup::nccl(&rendezvous()).err().unwrap().to_string();
    assert!(err.starts_with("rendezvous at 127.0.0.1:"), "{err}");
    assert!(
        err.contains("ProcessGroupNCCL is only supported with GPUs, no GPUs found"),
        "{err}"
    );
    println!("case passed: {err}");
}

#[test]
fn the_backend_follows_the_device_unless_named() {
    let cuda = Device::Cuda(0);
    assert_eq!(Backend::choose(cuda, None).unwrap(), Backend::Nccl);
    assert_eq!(Backend::choose(Device::Cpu, None).unwrap(), Backend::Gloo);
    assert_eq!(Backend::choose(cuda, Some("gloo")).unwrap(), Backend::Gloo);
    assert_eq!(
        Backend::choose(cuda, Some(" NCCL ")).unwrap(),
        Backend::Nccl
    );
    let err = Backend::choose(Device::Cpu, Some("nccl"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs ranks on CUDA"), "{err}");
    let err = Backend::choose(cuda, Some("mpi")).unwrap_err().to_string();
    assert!(err.contains("neither gloo nor nccl"), "{err}");
}

#[test]
fn on_a_gpu_one_rank_reduces_cuda_buckets_during_the_backward_pass() {
    if !has_gpu() {
        eprintln!("skipped: no NVIDIA driver on this machine");
        return;
    }
    let text = run_case_in_fresh_process("case_one_gpu", &[]);
    assert!(text.contains("case passed"), "{text}");
}

#[test]
#[ignore = "run by on_a_gpu_one_rank_reduces_cuda_buckets_during_the_backward_pass"]
fn case_one_gpu() {
    llamagen_native::torch::load_cuda();
    let gpu = Device::Cuda(0);
    let group = ProcessGroup::nccl(&rendezvous()).unwrap();
    assert_eq!((group.backend(), group.device()), (Backend::Nccl, gpu));
    let host = |t: &Tensor| Vec::<f32>::try_from(&t.to_device(Device::Cpu)).unwrap();
    let t = Tensor::from_slice(&[1.0f32, 2.0]).to_device(gpu);
    group.all_reduce_sum(&[t.shallow_clone()]).unwrap();
    assert_eq!(host(&t), [1.0, 2.0]);
    let refused = group.all_reduce_sum(&[Tensor::from_slice(&[1.0f32])]);
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("not on the group's Cuda(0)")
    );
    assert_eq!(group.sum_f64(&[1.5, -2.0]).unwrap(), [1.5, -2.0]);
    let gathered = group.all_gather(&t).unwrap();
    assert_eq!(gathered.len(), 1);
    assert_eq!(gathered[0].device(), Device::Cpu);
    group.broadcast(&Tensor::from_slice(&[3.0f32]), 0).unwrap();

    let params: Vec<Tensor> = [[1.0f32, 2.0, 3.0].as_slice(), &[4.0], &[5.0, 6.0]]
        .iter()
        .map(|v| Tensor::from_slice(v).to_device(gpu).set_requires_grad(true))
        .collect();
    let mut buckets = GradientBuckets::attach(&params, None, None).unwrap();
    assert!(buckets.reduce_during_backward(&group).unwrap());
    buckets.arm();
    for p in &params {
        (p * 2.0).sum(Kind::Float).backward();
    }
    assert_eq!(buckets.started(), buckets.len());
    buckets.all_reduce_mean(&group).unwrap();
    for p in &params {
        assert!(host(&p.grad()).iter().all(|&g| g == 2.0));
    }
    group.barrier().unwrap();
    println!("case passed");
}
