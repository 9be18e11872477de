//! Two and three ranks as processes of this test binary, meeting on loopback through a real
//! TCPStore: the sums, means, gathers, broadcasts and barriers of libtorch's Gloo backend, and a peer
//! that dies making the others' next collective fail instead of hanging.
//!
//! Each rank is a process because that is how ranks run (libtorch's c10d keeps process-wide
//! state, its flight recorder, that two groups starting at once in one process race on). The
//! `rank_*` tests are the ranks' bodies: ignored in a plain run, started with `--ignored` by the
//! tests above them with the rank in the environment.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llamagen_distributed::{GradientBuckets, ProcessGroup, Rendezvous};
use tch::{Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the ignored test `body` as `world` rank processes and returns their outputs in rank
/// order.
fn on_ranks(world: usize, body: &str) -> Vec<Output> {
    on_ranks_over(world, body, "gloo")
}

/// [`on_ranks`] with the ranks' group on `backend` (`gloo`, or `nccl` with one GPU per rank).
fn on_ranks_over(world: usize, body: &str, backend: &str) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    body,
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("LLAMAGEN_DIST_TIMEOUT", "30")
                .env("LLAMAGEN_TEST_BACKEND", backend)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every rank gives up on a dead or missing peer after LLAMAGEN_DIST_TIMEOUT; one that
    // still runs long after is killed, so that the test fails with what the ranks printed
    // instead of hanging the suite.
    let pids: Vec<libc::pid_t> = children
        .iter()
        .map(|c| libc::pid_t::try_from(c.id()).unwrap())
        .collect();
    let (finished, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let expired = matches!(
            watch.recv_timeout(RANKS_LIMIT),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if expired {
            for pid in pids {
                // SAFETY: kill(2) on a child this test spawned and has not reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        expired
    });
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    drop(finished);
    let killed = watchdog.join().unwrap();
    assert!(
        !killed,
        "ranks of {body} still ran after {RANKS_LIMIT:?}; killed. They printed:\n{}",
        outputs.iter().map(printed).collect::<Vec<_>>().join("\n")
    );
    outputs
}

/// How long ranks may take before they are killed: far beyond their 30 s collective timeout.
const RANKS_LIMIT: Duration = Duration::from_secs(300);

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// This process's group, from the variables `on_ranks_over` set.
fn join() -> ProcessGroup {
    let rendezvous = Rendezvous::from_env()
        .unwrap()
        .expect("run by on_ranks, with RANK and WORLD_SIZE");
    if std::env::var("LLAMAGEN_TEST_BACKEND").as_deref() == Ok("nccl") {
        llamagen_native::torch::load_cuda();
        ProcessGroup::nccl(&rendezvous).unwrap()
    } else {
        ProcessGroup::gloo(&rendezvous).unwrap()
    }
}

/// How many GPUs this machine's libtorch sees (none without an NVIDIA driver).
fn gpus() -> usize {
    llamagen_native::torch::load_cuda();
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

#[test]
fn sums_means_broadcasts_and_barriers() {
    for world in [2, 3] {
        for (rank, out) in on_ranks(world, "rank_collectives").iter().enumerate() {
            let text = printed(out);
            assert!(out.status.success(), "rank {rank} of {world}:\n{text}");
            assert!(
                text.contains(&format!("rank {rank} of {world}: collectives agree")),
                "{text}"
            );
        }
    }
}

/// The same bodies over NCCL, one GPU per rank, where a machine has two or three; elsewhere
/// (this CI's machines) it says it skipped. tests/nccl.rs checks the NCCL half without a GPU.
#[test]
fn the_same_collectives_over_nccl_on_every_gpu() {
    let gpus = gpus();
    if gpus < 2 {
        eprintln!("skipped: NCCL ranks need a GPU each, and this machine has {gpus}");
        return;
    }
    let world = gpus.min(3);
    for (rank, out) in on_ranks_over(world, "rank_collectives", "nccl")
        .iter()
        .enumerate()
    {
        let text = printed(out);
        assert!(out.status.success(), "rank {rank} of {world}:\n{text}");
        assert!(text.contains("over NCCL"), "{text}");
    }
}

#[test]
#[ignore = "a rank's body, run by sums_means_broadcasts_and_barriers"]
fn rank_collectives() {
    let group = join();
    // Parameters live where the group reduces (the CPU for Gloo, this rank's GPU for NCCL), so
    // that their buckets are reduced in place and during the backward pass; the other tensors
    // stay on the CPU, which the collectives stage to the group's device and back.
    let dev = group.device();
    let cpu = |t: Tensor| t.to_device(tch::Device::Cpu);
    let (rank, world) = (group.rank() as f64, group.world() as f64);
    // A gradient-like set: two kinds, a vector and a strided (transposed) matrix.
    let a = Tensor::from_slice(&[rank, 1.0, 2.0 * rank]);
    let b = Tensor::from_slice(&[rank as f32, -1.0, 0.5, 4.0])
        .view([2, 2])
        .tr();
    group
        .all_reduce_mean(&[a.shallow_clone(), b.shallow_clone()])
        .unwrap();
    let mean_rank = (world - 1.0) / 2.0;
    assert_eq!(
        Vec::<f64>::try_from(&a).unwrap(),
        [mean_rank, 1.0, 2.0 * mean_rank]
    );
    // b was [[r, -1], [0.5, 4]] seen transposed: [[r, 0.5], [-1, 4]].
    assert_eq!(
        Vec::<f32>::try_from(b.contiguous().view([-1])).unwrap(),
        [mean_rank as f32, 0.5, -1.0, 4.0]
    );
    assert_eq!(
        group.sum_f64(&[rank, 1.0]).unwrap(),
        [mean_rank * world, world]
    );
    // Float64 stays float64: means of values no float32 holds exactly.
    let fine = Tensor::from_slice(&[0.1 * (rank + 1.0), 1.0 / 3.0 + rank * 1e-12]);
    group.all_reduce_mean(&[fine.shallow_clone()]).unwrap();
    let fine = Vec::<f64>::try_from(&fine).unwrap();
    let ranks: Vec<f64> = (0..group.world()).map(|r| r as f64).collect();
    let expected = [
        ranks.iter().map(|r| 0.1 * (r + 1.0)).sum::<f64>() / world,
        ranks.iter().map(|r| 1.0 / 3.0 + r * 1e-12).sum::<f64>() / world,
    ];
    for (got, want) in fine.iter().zip(expected) {
        assert!(
            (got - want).abs() <= 4.0 * f64::EPSILON * want.abs(),
            "{got} vs {want}"
        );
    }
    let c = if group.rank() == 1 {
        Tensor::from_slice(&[7i64, 8])
    } else {
        Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu))
    };
    group.broadcast(&c, 1).unwrap();
    assert_eq!(Vec::<i64>::try_from(&c).unwrap(), [7, 8]);
    // Several tensors of two kinds from the last rank, one of them transposed.
    let last = group.world() - 1;
    let (d, e) = if group.rank() == last {
        (
            Tensor::from_slice(&[1.5f64, -2.0, 3.0]),
            Tensor::from_slice(&[1f32, 2.0, 3.0, 4.0]).view([2, 2]).tr(),
        )
    } else {
        (
            Tensor::zeros([3], (Kind::Double, tch::Device::Cpu)),
            Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)).tr(),
        )
    };
    group
        .broadcast_many(&[d.shallow_clone(), e.shallow_clone()], last)
        .unwrap();
    assert_eq!(Vec::<f64>::try_from(&d).unwrap(), [1.5, -2.0, 3.0]);
    assert_eq!(
        Vec::<f32>::try_from(e.contiguous().view([-1])).unwrap(),
        [1.0, 3.0, 2.0, 4.0]
    );
    // Uneven shares: rank r gives r + 1 rows of [r, 10 r + j]; rank 0 of 3 none at all.
    let given = if group.rank() == 0 && group.world() == 3 {
        0
    } else {
        group.rank() + 1
    };
    let rows: Vec<f32> = (0..given)
        .flat_map(|j| [rank as f32, 10.0 * rank as f32 + j as f32])
        .collect();
    let gathered = group
        .gather_rows(&Tensor::from_slice(&rows).view([given as i64, 2]))
        .unwrap();
    let expected: Vec<f32> = (0..group.world())
        .flat_map(|r| {
            let n = if r == 0 && group.world() == 3 {
                0
            } else {
                r + 1
            };
            (0..n).flat_map(move |j| [r as f32, 10.0 * r as f32 + j as f32])
        })
        .collect();
    assert_eq!(gathered.size()[1], 2);
    assert_eq!(Vec::<f32>::try_from(gathered.view([-1])).unwrap(), expected);
    // Means to owners: tensor i ends on rank i mod world as the mean; the others keep theirs.
    // Three kinds and a transposed matrix, so that buckets split by owner and kind.
    let own = |i: usize| i % group.world();
    let tensors = [
        Tensor::from_slice(&[rank, 2.0 * rank]),
        Tensor::from_slice(&[rank as f32 + 1.0, 4.0, 6.0, 8.0])
            .view([2, 2])
            .tr(),
        Tensor::from_slice(&[rank + 10.0]),
        Tensor::from_slice(&[rank as f32; 5]),
    ];
    let before: Vec<Tensor> = tensors.iter().map(Tensor::copy).collect();
    let owners: Vec<usize> = (0..tensors.len()).map(own).collect();
    group.reduce_mean_to_owners(&tensors, &owners).unwrap();
    let means = [
        Tensor::from_slice(&[mean_rank, 2.0 * mean_rank]),
        Tensor::from_slice(&[mean_rank as f32 + 1.0, 4.0, 6.0, 8.0])
            .view([2, 2])
            .tr(),
        Tensor::from_slice(&[mean_rank + 10.0]),
        Tensor::from_slice(&[mean_rank as f32; 5]),
    ];
    for (i, t) in tensors.iter().enumerate() {
        let want = if own(i) == group.rank() {
            &means[i]
        } else {
            &before[i]
        };
        assert!(t.equal(want), "tensor {i} on rank {}: {t:?}", group.rank());
    }
    let refused = group.reduce_mean_to_owners(&tensors, &[0, 0, 0, group.world()]);
    assert!(refused.unwrap_err().to_string().contains("owners"));

    // Gradients as views of buckets: backward passes accumulate into them, and the means are
    // taken where they are. Parameters of two kinds, one already with a gradient.
    let params = [
        Tensor::from_slice(&[1.0f32, 2.0, 3.0])
            .to_device(dev)
            .set_requires_grad(true),
        Tensor::from_slice(&[1.0f64, -1.0, 0.5, 2.0])
            .view([2, 2])
            .to_device(dev)
            .set_requires_grad(true),
        Tensor::from_slice(&[4.0f32])
            .to_device(dev)
            .set_requires_grad(true),
    ];
    (&params[2] * 3.0).sum(Kind::Float).backward();
    let backward = |scale: f64| {
        for p in &params {
            (p * (scale * (rank + 1.0))).sum(p.kind()).backward();
        }
    };
    for owners in [None, Some((0..params.len()).map(own).collect::<Vec<_>>())] {
        let before = params[2].grad().double_value(&[0]);
        let buckets = GradientBuckets::attach(&params, owners.as_deref(), None).unwrap();
        let grads = || params.iter().map(Tensor::grad).collect::<Vec<_>>();
        assert!(buckets.hold(&grads()));
        // A gradient keeps its value through the attachment (3 at first).
        assert_eq!(params[2].grad().double_value(&[0]), before);
        for p in &params {
            let _ = p.grad().zero_();
        }
        backward(1.0);
        backward(2.0);
        assert!(buckets.hold(&grads()), "accumulated in place");
        match &owners {
            None => buckets.all_reduce_mean(&group).unwrap(),
            Some(_) => buckets.reduce_mean_to_owners(&group).unwrap(),
        }
        // d/dp of 3 (r + 1) p summed over both passes, averaged over the ranks: 3 (mean + 1).
        let want = 3.0 * (mean_rank + 1.0);
        for (i, p) in params.iter().enumerate() {
            if owners.as_ref().is_some_and(|o| o[i] != group.rank()) {
                continue;
            }
            let g = cpu(p.grad().to_kind(Kind::Double).view([-1]));
            let got = Vec::<f64>::try_from(&g).unwrap();
            assert!(got.iter().all(|&v| (v - want).abs() < 1e-6), "{i}: {got:?}");
        }
    }
    let mismatched = GradientBuckets::attach(&params, Some(&[0]), None);
    assert!(mismatched.is_err());
    let not_a_permutation = GradientBuckets::attach(&params, None, Some(&[0, 0, 1]));
    assert!(not_a_permutation.is_err());

    // Reduced during the backward pass: in the ready order given (2, 1, 0) the kinds alternate,
    // so each parameter has a bucket of its own, numbered in that order. A bucket starts only
    // once it and every bucket before it are complete.
    let params = [
        Tensor::from_slice(&[1.0f32, 2.0])
            .to_device(dev)
            .set_requires_grad(true),
        Tensor::from_slice(&[1.0f64])
            .to_device(dev)
            .set_requires_grad(true),
        Tensor::from_slice(&[1.0f32, 2.0, 3.0])
            .to_device(dev)
            .set_requires_grad(true),
    ];
    let pass = |i: usize, scale: f64| {
        let p = &params[i];
        (p * (scale * (rank + 1.0))).sum(p.kind()).backward();
    };
    for owners in [None, Some(vec![1 % group.world(), 0, 2 % group.world()])] {
        let mut buckets =
            GradientBuckets::attach(&params, owners.as_deref(), Some(&[2, 1, 0])).unwrap();
        assert_eq!(buckets.len(), 3);
        assert!(buckets.reduce_during_backward(&group).unwrap());
        for step in 0..2 {
            for p in &params {
                let _ = p.grad().zero_();
            }
            // An unarmed pass (an earlier micro-batch) starts nothing.
            pass(0, 1.0);
            pass(1, 1.0);
            pass(2, 1.0);
            assert_eq!(buckets.started(), 0);
            buckets.arm();
            pass(0, 2.0);
            assert_eq!(buckets.started(), 0, "the last bucket waits for the others");
            pass(2, 2.0);
            assert_eq!(buckets.started(), 1, "step {step}");
            if step == 0 {
                pass(1, 2.0);
                assert_eq!(buckets.started(), 3);
            }
            // At step 1 parameter 1 misses the last pass: its bucket starts when asked.
            match &owners {
                None => buckets.all_reduce_mean(&group).unwrap(),
                Some(_) => buckets.reduce_mean_to_owners(&group).unwrap(),
            }
            // Bucket 0 started under the rest of the pass, the others with or after its last
            // gradient.
            assert_eq!(buckets.started_before_last_gradient(), 1);
            for (i, p) in params.iter().enumerate() {
                if owners.as_ref().is_some_and(|o| o[i] != group.rank()) {
                    continue;
                }
                let want = if step == 1 && i == 1 { 1.0 } else { 3.0 } * (mean_rank + 1.0);
                let g = cpu(p.grad().to_kind(Kind::Double));
                let got = Vec::<f64>::try_from(&g).unwrap();
                assert!(got.iter().all(|&v| (v - want).abs() < 1e-6), "{i}: {got:?}");
            }
        }
        // A gradient accumulated again after its bucket started is refused, not lost.
        buckets.arm();
        pass(2, 1.0);
        pass(2, 1.0);
        pass(0, 1.0);
        pass(1, 1.0);
        let twice = match &owners {
            None => buckets.all_reduce_mean(&group),
            Some(_) => buckets.reduce_mean_to_owners(&group),
        };
        assert!(
            twice.unwrap_err().to_string().contains("accumulated again"),
            "rank {}",
            group.rank()
        );
    }
    group.barrier().unwrap();
    println!(
        "rank {} of {}: collectives agree over {}",
        group.rank(),
        group.world(),
        group.backend()
    );
}

#[test]
fn a_peer_that_dies_fails_the_others_collective() {
    let outs = on_ranks(2, "rank_dies_or_waits");
    assert!(!outs[1].status.success(), "rank 1 aborts");
    let text = printed(&outs[0]);
    assert!(outs[0].status.success(), "{text}");
    assert!(
        text.contains("rank 0 saw: all-reduce on rank 0 of 2"),
        "{text}"
    );
}

#[test]
#[ignore = "a rank's body, run by a_peer_that_dies_fails_the_others_collective"]
fn rank_dies_or_waits() {
    let group = join();
    if group.rank() == 1 {
        // As a SIGKILL would: no destructor runs, the kernel closes the sockets.
        std::process::abort();
    }
    let started = Instant::now();
    let err = group
        .all_reduce_sum(&[Tensor::ones([4], (Kind::Float, tch::Device::Cpu))])
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "waited {waited:?} for a dead peer"
    );
    println!("rank 0 saw: {err} after {waited:?}");
}

#[test]
fn no_peer_is_a_rendezvous_error_after_the_timeout() {
    let alone = Rendezvous {
        rank: 1,
        world: 2,
        local_rank: 1,
        host: "127.0.0.1".into(),
        port: free_port(),
        host_store: false,
        prefix: "/test/".into(),
        timeout: Duration::from_secs(2),
    };
    let err = ProcessGroup::gloo(&alone).err().unwrap().to_string();
    assert!(err.starts_with("rendezvous at 127.0.0.1:"), "{err}");
    assert!(err.contains("as rank 1 of 2"), "{err}");
}
