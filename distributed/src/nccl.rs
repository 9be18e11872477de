//! Loading the NCCL half of the C face (`src/nccl.cpp`).
//!
//! ProcessGroupNCCL lives in `libtorch_cuda.so`, which a binary loads only where an NVIDIA driver
//! is (`llamagen_native::torch::load_cuda`), so the shim that opens NCCL groups cannot be linked
//! into the binary like the Gloo half: build.rs makes it a shared object of its own, the binary
//! carries its bytes, and [`shim`] loads it through `llamagen_native::cuda_shim` once
//! libtorch_cuda is loaded.

use std::ffi::{CStr, c_char, c_int, c_void};

/// `llg_c10d_nccl` of src/nccl.cpp and `llg_c10d_gloo` of src/c10d.cpp: opens a group (on CUDA
/// device `device` for NCCL), or returns null with the reason in `err`.
pub(crate) type Open = unsafe extern "C" fn(
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

/// `llg_nccl_version` of src/nccl.cpp.
type Version = unsafe extern "C" fn() -> *const c_char;

/// The entry points of the loaded shim.
pub(crate) struct Shim {
    pub(crate) open: Open,
    version: Version,
}

impl Shim {
    /// The version of the NCCL library libtorch_cuda loaded, as "2.28.9".
    pub(crate) fn version(&self) -> String {
        // SAFETY: the shim returns a pointer to a static NUL-terminated string.
        unsafe { CStr::from_ptr((self.version)()) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Whether this build carries the NCCL shim (its libtorch had a CUDA half).
pub const BUILT: bool = cfg!(llamagen_nccl);

/// The NCCL version this process can use, or why it cannot: not built in, libtorch_cuda not
/// loaded (no NVIDIA driver), or the shim failed to load.
pub fn version() -> Result<String, String> {
    shim().map(Shim::version)
}

/// The shim, loaded on first use once libtorch_cuda is loaded; an error says why it cannot be.
pub(crate) fn shim() -> Result<&'static Shim, String> {
    static SHIM: llamagen_native::cuda_shim::Once<Shim> =
        llamagen_native::cuda_shim::Once::new(BUILT, load);
    SHIM.get()
}

#[cfg(not(llamagen_nccl))]
fn load() -> Result<Shim, String> {
    Err("this build has no NCCL: its libtorch had no CUDA half (libtorch_cuda.so)".into())
}

#[cfg(llamagen_nccl)]
fn load() -> Result<Shim, String> {
    static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libllamagen_nccl.so"));
    let loaded = llamagen_native::cuda_shim::load(c"libllamagen_nccl.so", BYTES)?;
    let open = loaded.symbol(c"llg_c10d_nccl")?;
    let version = loaded.symbol(c"llg_nccl_version")?;
    // SAFETY: both symbols are `extern "C"` functions of src/nccl.cpp with exactly these
    // signatures.
    unsafe {
        Ok(Shim {
            open: std::mem::transmute::<*mut c_void, Open>(open),
            version: std::mem::transmute::<*mut c_void, Version>(version),
        })
    }
}
