//! One rank's handle on a c10d process group and the collectives on it.

use std::ffi::{CString, c_int, c_void};
use std::ptr::NonNull;
use std::time::Duration;

use llamagen_native::c_error::{ERROR_BYTES, message};
use tch::{Device, Tensor};

use crate::ffi::*;
use crate::gradient_buckets::{BUCKET_BYTES, buckets_of};
use crate::{Backend, DistributedError, Rendezvous, nccl, share};

/// One rank's handle on a process group of `world` ranks.
pub struct ProcessGroup {
    pub(crate) handle: NonNull<c_void>,
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

    pub(crate) fn check(
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
    pub(crate) fn reduce_sum(
        &self,
        tensors: &[Tensor],
        roots: &[usize],
    ) -> Result<(), DistributedError> {
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
