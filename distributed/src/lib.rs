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

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr::NonNull;
use std::time::Duration;

use llamagen_native::c_error::{ERROR_BYTES, message};
use tch::{Device, Kind, Tensor};

pub mod nccl;

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

/// Where the ranks of a run meet and who this process is among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank, 0 ..= world - 1.
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes of this host (the GPU it takes).
    pub local_rank: usize,
    /// The TCPStore's host and port (`MASTER_ADDR`, `MASTER_PORT`).
    pub host: String,
    pub port: u16,
    /// Whether this process hosts the store (rank 0, unless torchrun's agent hosts it).
    pub host_store: bool,
    /// Key prefix in the store, per launch attempt, so that a restarted job does not read the
    /// previous attempt's keys.
    pub prefix: String,
    /// How long the rendezvous and each collective may wait for a peer.
    pub timeout: Duration,
}

/// Collectives and the rendezvous wait this long for a peer unless `LLAMAGEN_DIST_TIMEOUT`
/// (seconds) says otherwise; PyTorch's default for Gloo is the same 30 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

impl Rendezvous {
    /// The rendezvous a launcher described in this process's environment, or `None` for a
    /// single process (no launcher, or a world of one).
    pub fn from_env() -> Result<Option<Self>, DistributedError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Rendezvous::from_env`] over any variable lookup. Recognised, in order:
    ///
    /// - torchrun: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; with
    ///   `TORCHELASTIC_USE_AGENT_STORE=True` the agent hosts the store and every rank connects,
    ///   under `TORCHELASTIC_RESTART_COUNT`'s attempt;
    /// - Slurm's `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR`
    ///   and `MASTER_PORT` exported by the batch script;
    /// - a Kubernetes indexed Job: `JOB_COMPLETION_INDEX` as the rank, with `WORLD_SIZE`,
    ///   `MASTER_ADDR` and `MASTER_PORT` in the pod template.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, DistributedError> {
        let number = |name: &str| -> Result<Option<usize>, DistributedError> {
            var(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        DistributedError::Environment(format!("{name}={v:?} is not a number"))
                    })
                })
                .transpose()
        };
        let (rank, world, local_rank) = if let Some(rank) = number("RANK")? {
            let world = number("WORLD_SIZE")?.ok_or_else(|| {
                DistributedError::Environment("RANK is set but WORLD_SIZE is not".into())
            })?;
            (rank, world, number("LOCAL_RANK")?.unwrap_or(0))
        } else if let Some(rank) = number("SLURM_PROCID")? {
            let world = number("SLURM_NTASKS")?.unwrap_or(1);
            (rank, world, number("SLURM_LOCALID")?.unwrap_or(0))
        } else if let Some(rank) = number("JOB_COMPLETION_INDEX")? {
            let world = number("WORLD_SIZE")?.ok_or_else(|| {
                DistributedError::Environment(
                    "JOB_COMPLETION_INDEX is set but WORLD_SIZE is not (the Job's completions)"
                        .into(),
                )
            })?;
            (rank, world, 0)
        } else {
            return Ok(None);
        };
        if world <= 1 {
            return Ok(None);
        }
        if rank >= world {
            return Err(DistributedError::Environment(format!(
                "rank {rank} is not below the world size {world}"
            )));
        }
        let host = var("MASTER_ADDR").ok_or_else(|| {
            DistributedError::Environment(format!(
                "{world} ranks but no MASTER_ADDR: the host of rank 0 (or of torchrun's agent)"
            ))
        })?;
        let port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                DistributedError::Environment(format!("MASTER_PORT={p:?} is not a port"))
            })?,
            None => 29500,
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let attempt = var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into());
        let timeout = match var("LLAMAGEN_DIST_TIMEOUT") {
            Some(s) => Duration::from_secs_f64(
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .ok_or_else(|| {
                        DistributedError::Environment(format!(
                            "LLAMAGEN_DIST_TIMEOUT={s:?} is not a positive number of seconds"
                        ))
                    })?,
            ),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Rendezvous {
            rank,
            world,
            local_rank,
            host,
            port,
            host_store: rank == 0 && !agent_store,
            prefix: format!("/llamagen/attempt_{attempt}/"),
            timeout,
        }))
    }
}

unsafe extern "C" {
    fn llg_c10d_gloo(
        host: *const c_char,
        port: u16,
        host_store: c_int,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        device: c_int,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn llg_c10d_all_reduce_sum(
        group: *mut c_void,
        tensors: *const *const c_void,
        count: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn llg_c10d_reduce_sum(
        group: *mut c_void,
        tensors: *const *const c_void,
        roots: *const c_int,
        count: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn llg_c10d_broadcast(
        group: *mut c_void,
        tensor: *const c_void,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn llg_c10d_all_gather(
        group: *mut c_void,
        input: *const c_void,
        outputs: *const *const c_void,
        world: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn llg_set_grad(
        param: *const c_void,
        grad: *const c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn llg_c10d_barrier(group: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn llg_c10d_free(group: *mut c_void);
    fn llg_overlap_new(
        group: *mut c_void,
        flats: *const *const c_void,
        roots: *const c_int,
        buckets: usize,
        params: *const *const c_void,
        bucket_of: *const usize,
        count: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn llg_overlap_arm(handle: *mut c_void);
    fn llg_overlap_started(handle: *mut c_void) -> usize;
    fn llg_overlap_early(handle: *mut c_void) -> usize;
    fn llg_overlap_finish(handle: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn llg_overlap_free(handle: *mut c_void);
}

/// Gradients are reduced in flat buckets of about this many bytes, as PyTorch's DDP does (its
/// default `bucket_cap_mb` is 25): few enough calls to keep per-call overhead small, and small
/// enough that Gloo's threads work on several at once.
pub const BUCKET_BYTES: usize = 25 << 20;

/// One rank's handle on a process group of `world` ranks.
pub struct ProcessGroup {
    handle: NonNull<c_void>,
    rank: usize,
    world: usize,
    local_rank: usize,
    backend: Backend,
    /// Where the collectives' tensors must be: the CPU for Gloo, the rank's GPU for NCCL.
    device: Device,
}

// SAFETY: c10d backends may be called from any thread; the handle is only freed in `drop`.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// The Gloo group a launcher described in the environment ([`Rendezvous::from_env`]),
    /// joined; `None` for a single process. For the small agreements of sampling and
    /// evaluation, whatever device they run on.
    pub fn from_env() -> Result<Option<Self>, DistributedError> {
        Rendezvous::from_env()?
            .map(|rendezvous| Self::gloo(&rendezvous))
            .transpose()
    }

    /// The group a launcher described in the environment, for ranks whose work (a training
    /// step's gradients) is on `device`: on CUDA an NCCL group on the GPU of the rank's local
    /// rank, else Gloo ([`Backend::for_device`]). `None` for a single process.
    pub fn from_env_for(device: Device) -> Result<Option<Self>, DistributedError> {
        let Some(rendezvous) = Rendezvous::from_env()? else {
            return Ok(None);
        };
        Self::open(&rendezvous, Backend::for_device(device)?).map(Some)
    }

    /// A Gloo group of this process alone, meeting itself at a free loopback port: the
    /// data-parallel path with no peer, for measuring its own cost or testing it.
    pub fn alone() -> Result<Self, DistributedError> {
        Self::alone_on(Device::Cpu)
    }

    /// [`ProcessGroup::alone`] for work on `device`: an NCCL group on a GPU
    /// ([`Backend::for_device`]).
    pub fn alone_on(device: Device) -> Result<Self, DistributedError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| DistributedError::Environment(format!("no free loopback port: {e}")))?
            .port();
        let rendezvous = Rendezvous {
            rank: 0,
            world: 1,
            local_rank: match device {
                Device::Cuda(gpu) => gpu,
                _ => 0,
            },
            host: "127.0.0.1".into(),
            port,
            host_store: true,
            prefix: "/alone/".into(),
            timeout: Duration::from_secs(60),
        };
        Self::open(&rendezvous, Backend::for_device(device)?)
    }

    /// Meets the other ranks at the rendezvous and opens a Gloo group with them. Returns when
    /// every rank has arrived, or fails after the rendezvous timeout.
    pub fn gloo(rendezvous: &Rendezvous) -> Result<Self, DistributedError> {
        Self::open(rendezvous, Backend::Gloo)
    }

    /// Meets the other ranks at the rendezvous and opens an NCCL group with them, bound to the
    /// GPU of this rank's local rank and connected before it returns. Fails with the reason
    /// where NCCL cannot run: a build without it, a machine without an NVIDIA driver (so
    /// libtorch_cuda is not loaded), no such GPU, or a peer that does not arrive in time.
    pub fn nccl(rendezvous: &Rendezvous) -> Result<Self, DistributedError> {
        Self::open(rendezvous, Backend::Nccl)
    }

    fn open(rendezvous: &Rendezvous, backend: Backend) -> Result<Self, DistributedError> {
        let failed = |reason: String| DistributedError::Rendezvous {
            host: rendezvous.host.clone(),
            port: rendezvous.port,
            rank: rendezvous.rank,
            world: rendezvous.world,
            reason,
        };
        let host = CString::new(rendezvous.host.as_str())
            .map_err(|_| failed("the host name holds a NUL byte".into()))?;
        let prefix = CString::new(rendezvous.prefix.as_str())
            .map_err(|_| failed("the prefix holds a NUL byte".into()))?;
        let as_int = |n: usize| c_int::try_from(n).map_err(|_| failed(format!("{n} ranks")));
        let (rank, world) = (as_int(rendezvous.rank)?, as_int(rendezvous.world)?);
        let timeout_ms = i64::try_from(rendezvous.timeout.as_millis()).unwrap_or(i64::MAX);
        let (open, device): (nccl::Open, Device) = match backend {
            Backend::Gloo => (llg_c10d_gloo, Device::Cpu),
            Backend::Nccl => {
                let shim = nccl::shim().map_err(|why| {
                    failed(format!(
                        "NCCL: {why} (LLAMAGEN_DIST_BACKEND=gloo reduces CUDA tensors through \
                         host memory instead)"
                    ))
                })?;
                (shim.open, Device::Cuda(rendezvous.local_rank))
            }
        };
        let mut err = vec![0u8; ERROR_BYTES];
        // SAFETY: the strings are NUL-terminated and outlive the call; `err` has `err_len` bytes;
        // both entry points have the signature `nccl::Open` names.
        let handle = unsafe {
            open(
                host.as_ptr(),
                rendezvous.port,
                c_int::from(rendezvous.host_store),
                prefix.as_ptr(),
                rank,
                world,
                as_int(rendezvous.local_rank)?,
                timeout_ms,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        let handle = NonNull::new(handle).ok_or_else(|| failed(message(&err)))?;
        tracing::info!(
            rank = rendezvous.rank,
            world = rendezvous.world,
            "joined the {backend} process group at {}:{} on {device:?}",
            rendezvous.host,
            rendezvous.port
        );
        Ok(ProcessGroup {
            handle,
            rank: rendezvous.rank,
            world: rendezvous.world,
            local_rank: rendezvous.local_rank,
            backend,
            device,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the collectives run: the CPU for Gloo, this rank's GPU for NCCL.
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Rank among the processes of this host: the GPU this rank takes.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// This rank's contiguous share of `n` items, the first ranks taking one more where `n`
    /// does not divide: rank r of w takes `[r n / w, (r + 1) n / w)`.
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        share(n, self.rank, self.world)
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn check(
        &self,
        operation: &'static str,
        status: c_int,
        err: &[u8],
    ) -> Result<(), DistributedError> {
        if status == 0 {
            return Ok(());
        }
        Err(DistributedError::Collective {
            operation,
            rank: self.rank,
            world: self.world,
            reason: message(err),
        })
    }

    /// Replaces each tensor with its sum over the ranks. Each must be dense, contiguous and on
    /// the group's [`ProcessGroup::device`], and every rank must pass tensors of the same shapes
    /// and kinds in the same order.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<(), DistributedError> {
        if let Some(t) = tensors
            .iter()
            .find(|t| !t.is_contiguous() || t.device() != self.device)
        {
            return Err(DistributedError::Collective {
                operation: "all-reduce",
                rank: self.rank,
                world: self.world,
                reason: format!(
                    "a tensor of shape {:?} on {:?} is not contiguous, or not on the group's {:?}",
                    t.size(),
                    t.device(),
                    self.device
                ),
            });
        }
        let pointers: Vec<*const c_void> = tensors.iter().map(|t| t.as_ptr().cast()).collect();
        let mut err = vec![0u8; ERROR_BYTES];
        // SAFETY: each pointer is a live `at::Tensor` owned by `tensors` for the whole call.
        let status = unsafe {
            llg_c10d_all_reduce_sum(
                self.handle.as_ptr(),
                pointers.as_ptr(),
                pointers.len(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        self.check("all-reduce", status, &err)
    }

    /// Replaces each tensor (a gradient, say; any layout, any device) with its mean over the
    /// ranks. The tensors are flattened into buckets of at most [`BUCKET_BYTES`] per kind and
    /// device, reduced together on the group's device, and copied back.
    pub fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<(), DistributedError> {
        let buckets = buckets_of(tensors, BUCKET_BYTES);
        let flats: Vec<Tensor> = buckets
            .iter()
            .map(|bucket| flatten(tensors, bucket, self.device))
            .collect();
        self.all_reduce_sum(&flats)?;
        let world = self.world as f64;
        for (bucket, flat) in buckets.iter().zip(flats) {
            unflatten_into(&(flat / world), tensors, bucket);
        }
        Ok(())
    }

    /// Replaces tensor i with its mean over the ranks on rank `owners[i]` only; the other ranks
    /// keep their own tensor i. Each rank receives the sums it owns and no others: the
    /// reduce-scatter of ZeRO, with parameters as the unit. The tensors (any layout, any
    /// device) are flattened into buckets of at most [`BUCKET_BYTES`] per owner, kind and
    /// device, and all buckets are reduced together on the group's device. Every rank passes the
    /// same shapes and owners.
    pub fn reduce_mean_to_owners(
        &self,
        tensors: &[Tensor],
        owners: &[usize],
    ) -> Result<(), DistributedError> {
        if owners.len() != tensors.len() || owners.iter().any(|&o| o >= self.world) {
            return Err(DistributedError::Collective {
                operation: "reduce",
                rank: self.rank,
                world: self.world,
                reason: format!(
                    "{} owners for {} tensors, each below the world of {}",
                    owners.len(),
                    tensors.len(),
                    self.world
                ),
            });
        }
        let mut owned_buckets: Vec<(usize, Vec<usize>)> = Vec::new();
        for owner in 0..self.world {
            let mine: Vec<usize> = (0..tensors.len()).filter(|&i| owners[i] == owner).collect();
            let theirs: Vec<Tensor> = mine.iter().map(|&i| tensors[i].shallow_clone()).collect();
            for bucket in buckets_of(&theirs, BUCKET_BYTES) {
                owned_buckets.push((owner, bucket.into_iter().map(|j| mine[j]).collect()));
            }
        }
        let flats: Vec<Tensor> = owned_buckets
            .iter()
            .map(|(_, bucket)| flatten(tensors, bucket, self.device))
            .collect();
        let roots: Vec<usize> = owned_buckets.iter().map(|&(owner, _)| owner).collect();
        self.reduce_sum(&flats, &roots)?;
        let world = self.world as f64;
        for ((owner, bucket), flat) in owned_buckets.iter().zip(flats) {
            if *owner != self.rank {
                continue;
            }
            unflatten_into(&(flat / world), tensors, bucket);
        }
        Ok(())
    }

    /// Sums each of `tensors` (dense, contiguous, on the group's device) into rank `roots[i]`'s
    /// copy, in place there; the others' contents are unspecified afterwards.
    fn reduce_sum(&self, tensors: &[Tensor], roots: &[usize]) -> Result<(), DistributedError> {
        let pointers: Vec<*const c_void> = tensors.iter().map(|t| t.as_ptr().cast()).collect();
        let roots: Vec<c_int> = roots
            .iter()
            .map(|&r| c_int::try_from(r).unwrap_or(c_int::MAX))
            .collect();
        let mut err = vec![0u8; ERROR_BYTES];
        // SAFETY: `pointers` and `roots` both hold `tensors.len()` entries, each pointer a live
        // `at::Tensor` owned by `tensors` for the whole call.
        let status = unsafe {
            llg_c10d_reduce_sum(
                self.handle.as_ptr(),
                pointers.as_ptr(),
                roots.as_ptr(),
                pointers.len().min(roots.len()),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        self.check("reduce", status, &err)
    }

    /// Copies rank `root`'s `tensor` into every rank's (any layout, any device).
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<(), DistributedError> {
        let staged = tensor.to_device(self.device).contiguous();
        self.broadcast_in_place(&staged, root)?;
        if staged.data_ptr() != tensor.data_ptr() {
            tensor.shallow_clone().copy_(&staged);
        }
        Ok(())
    }

    /// Copies rank `root`'s `tensors` into every rank's (any layout, any device; the same
    /// shapes and kinds on every rank), in flat buckets of at most [`BUCKET_BYTES`] as
    /// [`ProcessGroup::all_reduce_mean`] makes them.
    pub fn broadcast_many(&self, tensors: &[Tensor], root: usize) -> Result<(), DistributedError> {
        for bucket in buckets_of(tensors, BUCKET_BYTES) {
            let flat = flatten(tensors, &bucket, self.device);
            self.broadcast_in_place(&flat, root)?;
            if self.rank == root {
                continue;
            }
            unflatten_into(&flat, tensors, &bucket);
        }
        Ok(())
    }

    fn broadcast_in_place(&self, tensor: &Tensor, root: usize) -> Result<(), DistributedError> {
        let mut err = vec![0u8; ERROR_BYTES];
        let root = c_int::try_from(root).unwrap_or(c_int::MAX);
        // SAFETY: `tensor` is a live `at::Tensor` for the whole call.
        let status = unsafe {
            llg_c10d_broadcast(
                self.handle.as_ptr(),
                tensor.as_ptr().cast(),
                root,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        self.check("broadcast", status, &err)
    }

    /// Every rank's `tensor` (the same shape and kind on each; any layout, any device), in rank
    /// order, on the CPU.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, DistributedError> {
        let input = tensor.to_device(self.device).contiguous();
        let outputs: Vec<Tensor> = (0..self.world).map(|_| input.empty_like()).collect();
        let pointers: Vec<*const c_void> = outputs.iter().map(|t| t.as_ptr().cast()).collect();
        let mut err = vec![0u8; ERROR_BYTES];
        // SAFETY: `input` and each output are live `at::Tensor`s for the whole call, and
        // `pointers` holds `world` of them.
        let status = unsafe {
            llg_c10d_all_gather(
                self.handle.as_ptr(),
                input.as_ptr().cast(),
                pointers.as_ptr(),
                pointers.len(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        self.check("all-gather", status, &err)?;
        Ok(outputs.iter().map(|t| t.to_device(Device::Cpu)).collect())
    }

    /// The rows of every rank's `rows` ([n_r, ...], the trailing shape and kind the same on
    /// every rank, n_r free) stacked in rank order: [sum n_r, ...] on the CPU, on every rank.
    /// Ranks that took [`ProcessGroup::share`]s of a list get the whole list's rows back in its
    /// order.
    pub fn gather_rows(&self, rows: &Tensor) -> Result<Tensor, DistributedError> {
        let size = rows.size();
        let Some(&n) = size.first() else {
            return Err(DistributedError::Collective {
                operation: "all-gather",
                rank: self.rank,
                world: self.world,
                reason: "a scalar has no rows".into(),
            });
        };
        let mut counts = vec![0.0; self.world];
        counts[self.rank] = n as f64;
        let counts: Vec<i64> = self.sum_f64(&counts)?.iter().map(|&c| c as i64).collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        let mut padded_size = size.clone();
        padded_size[0] = most;
        let padded = Tensor::zeros(&padded_size, (rows.kind(), tch::Device::Cpu));
        if n > 0 {
            padded.narrow(0, 0, n).copy_(rows);
        }
        let parts: Vec<Tensor> = self
            .all_gather(&padded)?
            .iter()
            .zip(&counts)
            .map(|(part, &count)| part.narrow(0, 0, count))
            .collect();
        Ok(Tensor::cat(&parts, 0))
    }

    /// Returns when every rank has reached its barrier.
    pub fn barrier(&self) -> Result<(), DistributedError> {
        let mut err = vec![0u8; ERROR_BYTES];
        // SAFETY: a call on a live group; `err` has `err.len()` bytes.
        let status =
            unsafe { llg_c10d_barrier(self.handle.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
        self.check("barrier", status, &err)
    }

    /// Sums `values` over the ranks, in f64 on the CPU: the small agreements a training loop
    /// needs each step (the mean loss, whether any rank was asked to stop).
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>, DistributedError> {
        let tensor = Tensor::from_slice(values).to_device(self.device);
        self.all_reduce_sum(std::slice::from_ref(&tensor))?;
        Vec::<f64>::try_from(&tensor.to_device(Device::Cpu)).map_err(|e| {
            DistributedError::Collective {
                operation: "all-reduce",
                rank: self.rank,
                world: self.world,
                reason: e.to_string(),
            }
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from `llg_c10d_gloo` or the NCCL shim (the same `llg::Group`)
        // and is freed once.
        unsafe { llg_c10d_free(self.handle.as_ptr()) }
    }
}

/// `tensors[i]` for each i of `bucket`, flattened and concatenated on `device`.
fn flatten(tensors: &[Tensor], bucket: &[usize], device: Device) -> Tensor {
    let parts: Vec<Tensor> = bucket.iter().map(|&i| tensors[i].reshape([-1])).collect();
    Tensor::cat(&parts, 0).to_device(device)
}

/// The inverse of [`flatten`]: copies consecutive pieces of `flat` into `tensors[i]` for each i
/// of `bucket`, in order, on their own device and in their own layout.
fn unflatten_into(flat: &Tensor, tensors: &[Tensor], bucket: &[usize]) {
    let flat = flat.to_device(tensors[bucket[0]].device());
    let mut offset = 0;
    for &i in bucket {
        let n = tensors[i].numel() as i64;
        let mut target = tensors[i].shallow_clone();
        target.copy_(&flat.narrow(0, offset, n).view_as(&target));
        offset += n;
    }
}

/// Flat buffers that parameters' gradients are views of, so that the backward pass accumulates
/// straight into the memory that is then reduced: averaging the gradients copies none of them
/// (PyTorch DDP's `gradient_as_bucket_view`). Buckets hold at most [`BUCKET_BYTES`] of one
/// kind, device and owner each. Buckets on the group's device (CPU buckets with Gloo, CUDA
/// buckets with NCCL) are reduced in place; others are staged there, one copy each way.
///
/// Buckets on the group's device can also be reduced while the backward pass runs
/// ([`GradientBuckets::reduce_during_backward`]), each as soon as its last gradient is
/// accumulated, as DDP's Reducer does.
pub struct GradientBuckets {
    buckets: Vec<GradientBucket>,
    /// The attached parameters, for the hooks.
    params: Vec<Tensor>,
    /// Each attached gradient's data address, to tell that the gradients are still the views.
    addresses: Vec<usize>,
    /// The bucket each attached gradient is a view of.
    bucket_of: Vec<usize>,
    /// Whether the buckets were laid out per owner (reduced to owners) or not (all-reduced).
    sharded: bool,
    /// The hooks that launch the reductions during the backward pass, once installed.
    overlap: Option<NonNull<c_void>>,
    /// Whether the next (or running) backward pass launches the reductions.
    armed: std::cell::Cell<bool>,
}

// SAFETY: the hooks' state is behind a mutex in C++; the handle itself is only used through
// `&self` / `&mut self` from one thread at a time.
unsafe impl Send for GradientBuckets {}

struct GradientBucket {
    flat: Tensor,
    /// The rank that receives this bucket's mean when the optimizer is sharded.
    owner: usize,
}

impl GradientBuckets {
    /// Gives each of `params` a gradient that is a view of a bucket, holding the gradient's
    /// current value (zero where it had none). With `owners` (one rank per parameter) a bucket
    /// holds one owner's parameters only, for [`GradientBuckets::reduce_mean_to_owners`].
    ///
    /// `ready_order` (a permutation of the parameters' indices) is the order the backward pass
    /// is expected to finish their gradients in, roughly the reverse of the forward pass: the
    /// buckets are filled and numbered in that order, so that during the backward pass the
    /// first bucket is complete first (see [`GradientBuckets::reduce_during_backward`]).
    /// `None` takes the parameters in reverse, as DDP does. Every rank must pass the same
    /// shapes, owners and order.
    pub fn attach(
        params: &[Tensor],
        owners: Option<&[usize]>,
        ready_order: Option<&[usize]>,
    ) -> Result<Self, DistributedError> {
        if owners.is_some_and(|o| o.len() != params.len()) {
            return Err(DistributedError::Buckets("one owner per parameter".into()));
        }
        let order: Vec<usize> = match ready_order {
            Some(order) => order.to_vec(),
            None => (0..params.len()).rev().collect(),
        };
        let mut position = vec![usize::MAX; params.len()];
        for (at, &i) in order.iter().enumerate() {
            if i < params.len() && position[i] == usize::MAX {
                position[i] = at;
            }
        }
        if order.len() != params.len() || position.contains(&usize::MAX) {
            return Err(DistributedError::Buckets(format!(
                "the ready order must name each of the {} parameters once",
                params.len()
            )));
        }
        let owner_of = |i: usize| owners.map_or(0, |o| o[i]);
        let last_owner = (0..params.len()).map(owner_of).max().unwrap_or(0);
        // (the ready position of the last member, members) per bucket
        let mut laid_out: Vec<(usize, Vec<usize>)> = Vec::new();
        for owner in 0..=last_owner {
            let mine: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| owner_of(i) == owner)
                .collect();
            let theirs: Vec<Tensor> = mine.iter().map(|&i| params[i].shallow_clone()).collect();
            for bucket in buckets_of(&theirs, BUCKET_BYTES) {
                let members: Vec<usize> = bucket.into_iter().map(|j| mine[j]).collect();
                let last = members.iter().map(|&i| position[i]).max().unwrap_or(0);
                laid_out.push((last, members));
            }
        }
        // Owners' buckets interleave by when they complete, so that no owner's last bucket holds
        // back another's first.
        laid_out.sort_by_key(|&(last, _)| last);
        let mut buckets = Vec::new();
        let mut addresses = vec![0; params.len()];
        let mut bucket_of = vec![0; params.len()];
        for (_, members) in laid_out {
            let first = &params[members[0]];
            let total: i64 = members.iter().map(|&i| params[i].numel() as i64).sum();
            let flat = Tensor::zeros([total], (first.kind(), first.device()));
            let mut offset = 0;
            for &i in &members {
                let p = &params[i];
                let n = p.numel() as i64;
                let view = flat.narrow(0, offset, n).view_as(p);
                let old = p.grad();
                if old.defined() {
                    view.shallow_clone().copy_(&old);
                }
                let mut err = vec![0u8; ERROR_BYTES];
                // SAFETY: both are live `at::Tensor`s for the whole call.
                let status = unsafe {
                    llg_set_grad(
                        p.as_ptr().cast(),
                        view.as_ptr().cast(),
                        err.as_mut_ptr().cast(),
                        err.len(),
                    )
                };
                if status != 0 {
                    return Err(DistributedError::Buckets(message(&err)));
                }
                addresses[i] = view.data_ptr() as usize;
                bucket_of[i] = buckets.len();
                offset += n;
            }
            buckets.push(GradientBucket {
                flat,
                owner: members.first().map_or(0, |&i| owner_of(i)),
            });
        }
        Ok(GradientBuckets {
            buckets,
            params: params.iter().map(Tensor::shallow_clone).collect(),
            addresses,
            bucket_of,
            sharded: owners.is_some(),
            overlap: None,
            armed: std::cell::Cell::new(false),
        })
    }

    /// Installs hooks on the attached parameters that start each bucket's reduction as soon as an armed backward pass
    /// ([`GradientBuckets::arm`]) has accumulated the last of its gradients, so that the
    /// communication runs under the rest of the backward pass. Buckets are started in their
    /// order on every rank (a complete bucket waits for the ones before it), so the ranks' Gloo
    /// calls match whatever order their engines finish in. The reduction is the layout's: an
    /// all-reduce, or a reduce to each bucket's owner for a sharded layout.
    ///
    /// Returns whether the hooks were installed: buckets off the group's device (CUDA buckets
    /// with Gloo, which stages them through host memory) are reduced after the backward pass
    /// instead.
    pub fn reduce_during_backward(
        &mut self,
        group: &ProcessGroup,
    ) -> Result<bool, DistributedError> {
        if self.overlap.is_some() {
            return Ok(true);
        }
        if self
            .buckets
            .iter()
            .any(|b| b.flat.device() != group.device())
        {
            return Ok(false);
        }
        let flats: Vec<*const c_void> = self
            .buckets
            .iter()
            .map(|b| b.flat.as_ptr().cast())
            .collect();
        let roots: Vec<c_int> = self
            .buckets
            .iter()
            .map(|b| {
                if self.sharded {
                    c_int::try_from(b.owner).unwrap_or(c_int::MAX)
                } else {
                    -1
                }
            })
            .collect();
        let pointers: Vec<*const c_void> = self.params.iter().map(|p| p.as_ptr().cast()).collect();
        let mut err = vec![0u8; ERROR_BYTES];
        // SAFETY: every pointer is a live `at::Tensor` for the whole call (the C++ side keeps
        // its own references); `flats`/`roots` and `pointers`/`bucket_of` have equal lengths.
        let handle = unsafe {
            llg_overlap_new(
                group.handle.as_ptr(),
                flats.as_ptr(),
                roots.as_ptr(),
                flats.len(),
                pointers.as_ptr(),
                self.bucket_of.as_ptr(),
                pointers.len(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        match NonNull::new(handle) {
            Some(handle) => {
                self.overlap = Some(handle);
                Ok(true)
            }
            None => Err(DistributedError::Buckets(message(&err))),
        }
    }

    /// Makes the next backward pass start the reductions (the last micro-batch's: the ones
    /// before it accumulate without communicating). Does nothing without the hooks.
    pub fn arm(&self) {
        if let Some(handle) = self.overlap {
            // SAFETY: the handle came from `llg_overlap_new` and is freed only on drop.
            unsafe { llg_overlap_arm(handle.as_ptr()) };
            self.armed.set(true);
        }
    }

    /// How many buckets the armed backward pass has started reducing so far (0 without the
    /// hooks): the buckets are started in order, each once its gradients and those of every
    /// bucket before it are complete.
    pub fn started(&self) -> usize {
        match self.overlap {
            // SAFETY: the handle came from `llg_overlap_new` and is freed only on drop.
            Some(handle) if self.armed.get() => unsafe { llg_overlap_started(handle.as_ptr()) },
            _ => 0,
        }
    }

    /// How many buckets the last finished backward pass started before its last gradient was
    /// accumulated, that is, under the rest of the pass: all but the last bucket when the
    /// ready order matches the pass, none when the first bucket holds a gradient finished last.
    pub fn started_before_last_gradient(&self) -> usize {
        match self.overlap {
            // SAFETY: the handle came from `llg_overlap_new` and is freed only on drop.
            Some(handle) => unsafe { llg_overlap_early(handle.as_ptr()) },
            None => 0,
        }
    }

    /// Whether the hooks are installed.
    pub fn overlapping(&self) -> bool {
        self.overlap.is_some()
    }

    /// How many buckets there are.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Replaces every attached gradient with its mean over the ranks.
    pub fn all_reduce_mean(&self, group: &ProcessGroup) -> Result<(), DistributedError> {
        if self.armed.get() {
            self.finish_overlap(group, false)?;
            self.unstage(group, self.staged(group), |_| true);
            return Ok(());
        }
        let staged = self.staged(group);
        group.all_reduce_sum(&staged)?;
        self.unstage(group, staged, |_| true);
        Ok(())
    }

    /// Replaces each attached gradient with its mean over the ranks on its owner only; on the
    /// other ranks its contents are unspecified afterwards (Gloo may use them as scratch).
    pub fn reduce_mean_to_owners(&self, group: &ProcessGroup) -> Result<(), DistributedError> {
        let mine = |b: &GradientBucket| b.owner == group.rank();
        if self.armed.get() {
            self.finish_overlap(group, true)?;
            self.unstage(group, self.staged(group), mine);
            return Ok(());
        }
        let staged = self.staged(group);
        let roots: Vec<usize> = self.buckets.iter().map(|b| b.owner).collect();
        group.reduce_sum(&staged, &roots)?;
        self.unstage(group, staged, mine);
        Ok(())
    }

    /// Waits for what an armed backward pass started, when the gradients are to be reduced
    /// some other way (they were replaced since [`GradientBuckets::attach`]): every rank still
    /// completes the collectives its hooks started.
    pub fn settle(&self, group: &ProcessGroup) -> Result<(), DistributedError> {
        if !self.armed.get() {
            return Ok(());
        }
        self.finish_overlap(group, self.sharded)
    }

    /// Waits for what the armed backward pass started (starting what it did not reach) and
    /// disarms; `to_owners` must match the layout the hooks reduce by.
    fn finish_overlap(
        &self,
        group: &ProcessGroup,
        to_owners: bool,
    ) -> Result<(), DistributedError> {
        let operation = if to_owners { "reduce" } else { "all-reduce" };
        self.armed.set(false);
        let Some(handle) = self.overlap else {
            return Ok(());
        };
        let mut err = vec![0u8; ERROR_BYTES];
        // SAFETY: the handle came from `llg_overlap_new` and is freed only on drop.
        let status =
            unsafe { llg_overlap_finish(handle.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
        group.check(operation, status, &err)?;
        if to_owners != self.sharded {
            return Err(DistributedError::Buckets(format!(
                "the backward pass {} buckets laid out {}",
                if self.sharded {
                    "reduced to owners"
                } else {
                    "all-reduced"
                },
                if to_owners {
                    "to be reduced to owners"
                } else {
                    "to be all-reduced"
                },
            )));
        }
        Ok(())
    }

    /// Whether `grads` (in the order [`GradientBuckets::attach`] saw their parameters) are
    /// still the bucket views: a gradient set to a new tensor since is not.
    pub fn hold(&self, grads: &[Tensor]) -> bool {
        grads.len() == self.addresses.len()
            && grads
                .iter()
                .zip(&self.addresses)
                .all(|(g, &a)| g.defined() && g.data_ptr() as usize == a)
    }

    /// The buckets on the group's device: themselves where they are there already, else copies.
    fn staged(&self, group: &ProcessGroup) -> Vec<Tensor> {
        self.buckets
            .iter()
            .map(|b| b.flat.to_device(group.device()))
            .collect()
    }

    /// Divides the reduced buckets that `keep` selects by the world and copies staged ones back.
    fn unstage(
        &self,
        group: &ProcessGroup,
        staged: Vec<Tensor>,
        keep: impl Fn(&GradientBucket) -> bool,
    ) {
        let world = group.world() as f64;
        for (bucket, mut host) in self.buckets.iter().zip(staged) {
            if !keep(bucket) {
                continue;
            }
            let _ = host.g_div_scalar_(world);
            if host.data_ptr() != bucket.flat.data_ptr() {
                bucket.flat.shallow_clone().copy_(&host);
            }
        }
    }
}

impl Drop for GradientBuckets {
    fn drop(&mut self) {
        if let Some(handle) = self.overlap.take() {
            // SAFETY: the handle came from `llg_overlap_new` and is freed once.
            unsafe { llg_overlap_free(handle.as_ptr()) }
        }
    }
}

/// Rank `rank`'s contiguous share of `n` items among `world` ranks (see
/// [`ProcessGroup::share`]); the shares of all ranks cover `0..n` in order.
pub fn share(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let at = |r: usize| r * n / world.max(1);
    at(rank)..at(rank + 1)
}

/// Consecutive runs of `tensors` with one kind and device and at most `cap` bytes (a larger
/// tensor gets a bucket of its own), as index lists.
fn buckets_of(tensors: &[Tensor], cap: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    let mut key: Option<(Kind, tch::Device)> = None;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let k = (t.kind(), t.device());
        match out.last_mut() {
            Some(bucket) if key == Some(k) && bytes + size <= cap => {
                bucket.push(i);
                bytes += size;
            }
            _ => {
                out.push(vec![i]);
                bytes = size;
                key = Some(k);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn each_launcher_is_read() {
        assert_eq!(Rendezvous::from_vars(vars(&[])).unwrap(), None);
        let one = [("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "h")];
        assert_eq!(Rendezvous::from_vars(vars(&one)).unwrap(), None);

        let torchrun = Rendezvous::from_vars(vars(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node-a"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (torchrun.rank, torchrun.world, torchrun.local_rank),
            (1, 4, 1)
        );
        assert_eq!((torchrun.host.as_str(), torchrun.port), ("node-a", 29400));
        assert!(!torchrun.host_store);
        assert_eq!(torchrun.prefix, "/llamagen/attempt_2/");

        let srun = Rendezvous::from_vars(vars(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "0"),
            ("MASTER_ADDR", "node-b"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((srun.rank, srun.world, srun.port), (0, 8, 29500));
        assert!(srun.host_store, "rank 0 hosts the store without an agent");

        let job = Rendezvous::from_vars(vars(&[
            ("JOB_COMPLETION_INDEX", "3"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "train-0.train"),
            ("LLAMAGEN_DIST_TIMEOUT", "60"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((job.rank, job.world), (3, 4));
        assert_eq!(job.timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_bad_environment_is_named() {
        for (pairs, expected) in [
            (vec![("RANK", "x"), ("WORLD_SIZE", "2")], "RANK=\"x\""),
            (vec![("RANK", "1")], "WORLD_SIZE is not"),
            (
                vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
                "not below",
            ),
            (vec![("RANK", "1"), ("WORLD_SIZE", "2")], "no MASTER_ADDR"),
            (
                vec![
                    ("RANK", "1"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "99999"),
                ],
                "MASTER_PORT",
            ),
            (vec![("JOB_COMPLETION_INDEX", "1")], "completions"),
        ] {
            let err = Rendezvous::from_vars(vars(&pairs)).unwrap_err().to_string();
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
    }

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

    #[test]
    fn buckets_split_by_kind_and_size() {
        let t = |n: i64, kind| Tensor::zeros([n], (kind, tch::Device::Cpu));
        let tensors = [
            t(10, Kind::Float),
            t(10, Kind::Float),
            t(30, Kind::Float),
            t(4, Kind::Double),
            t(1, Kind::Float),
        ];
        assert_eq!(
            buckets_of(&tensors, 100),
            vec![vec![0, 1], vec![2], vec![3], vec![4]]
        );
    }
}
