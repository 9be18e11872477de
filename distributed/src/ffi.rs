//! The C face of `src/c10d.cpp` (linked into every binary): Gloo groups, their collectives, and
//! the hooks that reduce gradient buckets during the backward pass. Each call that can fail
//! writes its reason into `err` (`llamagen_native::c_error`) and returns non-zero or null.

use std::ffi::{c_char, c_int, c_void};

unsafe extern "C" {
    pub(crate) fn llg_c10d_gloo(
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
    pub(crate) fn llg_c10d_all_reduce_sum(
        group: *mut c_void,
        tensors: *const *const c_void,
        count: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub(crate) fn llg_c10d_reduce_sum(
        group: *mut c_void,
        tensors: *const *const c_void,
        roots: *const c_int,
        count: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub(crate) fn llg_c10d_broadcast(
        group: *mut c_void,
        tensor: *const c_void,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub(crate) fn llg_c10d_all_gather(
        group: *mut c_void,
        input: *const c_void,
        outputs: *const *const c_void,
        world: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub(crate) fn llg_set_grad(
        param: *const c_void,
        grad: *const c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub(crate) fn llg_c10d_barrier(group: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    pub(crate) fn llg_c10d_free(group: *mut c_void);
    pub(crate) fn llg_overlap_new(
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
    pub(crate) fn llg_overlap_arm(handle: *mut c_void);
    pub(crate) fn llg_overlap_started(handle: *mut c_void) -> usize;
    pub(crate) fn llg_overlap_early(handle: *mut c_void) -> usize;
    pub(crate) fn llg_overlap_finish(
        handle: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub(crate) fn llg_overlap_free(handle: *mut c_void);
}
