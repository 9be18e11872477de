//! Gradients that are views of flat buckets, reduced over the ranks during or after the backward
//! pass.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

use llamagen_native::c_error::{ERROR_BYTES, message};
use tch::{Kind, Tensor};

use crate::ffi::*;
use crate::{DistributedError, ProcessGroup};

/// Gradients are reduced in flat buckets of about this many bytes, as PyTorch's DDP does (its
/// default `bucket_cap_mb` is 25): few enough calls to keep per-call overhead small, and small
/// enough that Gloo's threads work on several at once.
pub const BUCKET_BYTES: usize = 25 << 20;

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

/// Consecutive runs of `tensors` with one kind and device and at most `cap` bytes (a larger
/// tensor gets a bucket of its own), as index lists.
pub(crate) fn buckets_of(tensors: &[Tensor], cap: usize) -> Vec<Vec<usize>> {
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
