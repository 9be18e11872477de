//! Data-parallel collectives over libtorch's own c10d: a [`Rendezvous`] read from what a launcher
//! puts in the environment (torchrun, Slurm's `srun`, a Kubernetes indexed Job), and a
//! [`ProcessGroup`] on it that all-reduces, all-gathers, broadcasts and waits at barriers, and
//! [`GradientBuckets`]: flat buckets that the parameters' gradients are views of, reduced during
//! the backward pass as each is completed.
//!
//! The engine is PyTorch's: the TCPStore that `torch.distributed` meets at, and its two
//! backends, reached through small C++ files compiled against the same libtorch
//! (docs/architecture.md says why c10d rather than NCCL bindings of our own):
//!
//! - Gloo (in `libtorch_cpu.so`, `src/c10d.cpp`) reduces CPU tensors, so the same code trains
//!   on two CPU processes in CI as on a cluster's hosts;
//! - NCCL (ProcessGroupNCCL in `libtorch_cuda.so`, `src/nccl.cpp`, loaded by [`nccl`] only on
//!   GPU machines) reduces CUDA tensors in place, on the GPU each rank is bound to.
//!
//! [`ProcessGroup::from_env_for`] takes NCCL for ranks that train on CUDA and Gloo otherwise
//! (`LLAMAGEN_DIST_BACKEND` overrides); every collective stages its tensors on the group's
//! [`ProcessGroup::device`] (host memory for Gloo) and back, so callers pass tensors from
//! anywhere.
//!
//! A [`ProcessGroup`] is used from one thread at a time per rank, as a training loop does; every
//! rank must call the same collectives in the same order, and a rank that dies or stops calling
//! makes the others' next collective fail (a closed connection at once, a hung peer after the
//! rendezvous timeout), so that no rank waits for ever.
//!
//! One file each: `rendezvous.rs` (the launcher's variables), `process_group.rs` (joining a
//! group and its collectives), `gradient_buckets.rs` (the buckets and their backward-pass
//! hooks), `ffi.rs` (the C face of `c10d.cpp`), `nccl.rs` (loading the NCCL half).

use tch::Device;

mod ffi;
mod gradient_buckets;
pub mod nccl;
mod process_group;
mod rendezvous;

pub use gradient_buckets::{BUCKET_BYTES, GradientBuckets};
pub use process_group::ProcessGroup;
pub use rendezvous::{DEFAULT_TIMEOUT, Rendezvous};

/// What goes wrong, with the launcher variable or the collective that failed.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error("data-parallel environment: {0}")]
    Environment(String),
    #[error("rendezvous at {host}:{port} as rank {rank} of {world}: {reason}")]
    Rendezvous {
        host: String,
        port: u16,
        rank: usize,
        world: usize,
        reason: String,
    },
    #[error("{operation} on rank {rank} of {world}: {reason}")]
    Collective {
        operation: &'static str,
        rank: usize,
        world: usize,
        reason: String,
    },
    #[error("gradient buckets: {0}")]
    Buckets(String),
}

/// The c10d backend a [`ProcessGroup`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors over TCP.
    Gloo,
    /// NCCL: CUDA tensors over NVLink, InfiniBand or TCP, on the rank's GPU.
    Nccl,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Gloo => "Gloo",
            Backend::Nccl => "NCCL",
        })
    }
}

impl Backend {
    /// The backend for ranks whose work runs on `device`: NCCL on CUDA, Gloo on the CPU, unless
    /// `LLAMAGEN_DIST_BACKEND` (`gloo` or `nccl`) names one.
    pub fn for_device(device: Device) -> Result<Self, DistributedError> {
        Self::choose(
            device,
            std::env::var("LLAMAGEN_DIST_BACKEND").ok().as_deref(),
        )
    }

    /// [`Backend::for_device`] with the variable's value given.
    pub fn choose(device: Device, named: Option<&str>) -> Result<Self, DistributedError> {
        match named.map(str::trim) {
            None | Some("") => Ok(if device.is_cuda() {
                Backend::Nccl
            } else {
                Backend::Gloo
            }),
            Some(name) if name.eq_ignore_ascii_case("gloo") => Ok(Backend::Gloo),
            Some(name) if name.eq_ignore_ascii_case("nccl") => {
                if device.is_cuda() {
                    Ok(Backend::Nccl)
                } else {
                    Err(DistributedError::Environment(format!(
                        "LLAMAGEN_DIST_BACKEND={name} needs ranks on CUDA, and these run on {device:?}"
                    )))
                }
            }
            Some(other) => Err(DistributedError::Environment(format!(
                "LLAMAGEN_DIST_BACKEND={other:?} is neither gloo nor nccl"
            ))),
        }
    }
}

/// Rank `rank`'s contiguous share of `n` items among `world` ranks (see
/// [`ProcessGroup::share`]); the shares of all ranks cover `0..n` in order.
pub fn share(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let at = |r: usize| r * n / world.max(1);
    at(rank)..at(rank + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_list_in_order() {
        for (n, world) in [(0, 3), (2, 3), (10, 3), (12, 4), (50_000, 7)] {
            let shares: Vec<_> = (0..world).map(|r| share(n, r, world)).collect();
            assert_eq!(shares[0].start, 0);
            assert_eq!(shares[world - 1].end, n);
            for pair in shares.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len().abs_diff(pair[1].len()) <= 1, "{n} / {world}");
            }
        }
    }
}
