//! Loading the NCCL half of the C face (`src/nccl.cpp`).
//!
//! ProcessGroupNCCL lives in `libtorch_cuda.so`, which a binary loads only where an NVIDIA driver
//! is (`llamagen_native::load_cuda`), so the shim that opens NCCL groups cannot be linked into
//! the binary like the Gloo half: build.rs makes it a shared object of its own, the binary
//! carries its bytes, and [`shim`] loads it from an anonymous in-memory file once libtorch_cuda
//! is loaded. Nothing is installed beside the binary, so a copied or packaged binary has NCCL
//! wherever it has libtorch_cuda.

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
/// Only the load's outcome is kept: a call before libtorch_cuda is loaded is refused and a
/// later one tries again.
pub(crate) fn shim() -> Result<&'static Shim, String> {
    static LOADED: std::sync::OnceLock<Result<Shim, String>> = std::sync::OnceLock::new();
    if LOADED.get().is_none() {
        cuda_loaded()?;
    }
    LOADED.get_or_init(load).as_ref().map_err(Clone::clone)
}

#[cfg(not(llamagen_nccl))]
fn cuda_loaded() -> Result<(), String> {
    Ok(())
}

#[cfg(not(llamagen_nccl))]
fn load() -> Result<Shim, String> {
    Err("this build has no NCCL: its libtorch had no CUDA half (libtorch_cuda.so)".into())
}

/// Whether libtorch_cuda, whose libraries the shim needs by name, is loaded in this process.
#[cfg(llamagen_nccl)]
fn cuda_loaded() -> Result<(), String> {
    // SAFETY: a NUL-terminated soname; RTLD_NOLOAD only looks, and the handle it returns for a
    // loaded library is a reference we keep (the library stays loaded regardless).
    let cuda = unsafe {
        libc::dlopen(
            c"libtorch_cuda.so".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD,
        )
    };
    if cuda.is_null() {
        return Err(
            "libtorch_cuda.so is not loaded in this process (no NVIDIA driver here: `llamagen doctor` says why)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(llamagen_nccl)]
fn load() -> Result<Shim, String> {
    static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libllamagen_nccl.so"));
    let (file, path) = in_memory_file(BYTES)?;
    let name = std::ffi::CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path; the handle is kept for the life of the process on purpose
    // (the groups it opens call into it until they are freed).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    // The loader has mapped what it needs; the file goes when the mapping does.
    drop(file);
    if handle.is_null() {
        return Err(format!("loading the NCCL shim: {}", loader_error()));
    }
    let symbol = |name: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: a live handle and a NUL-terminated name.
        let found = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if found.is_null() {
            Err(format!("the NCCL shim has no {name:?}"))
        } else {
            Ok(found)
        }
    };
    let open = symbol(c"llg_c10d_nccl")?;
    let version = symbol(c"llg_nccl_version")?;
    // SAFETY: both symbols are `extern "C"` functions of src/nccl.cpp with exactly these
    // signatures.
    unsafe {
        Ok(Shim {
            open: std::mem::transmute::<*mut c_void, Open>(open),
            version: std::mem::transmute::<*mut c_void, Version>(version),
        })
    }
}

/// `bytes` as an anonymous in-memory file, and the /proc path that names it while it is open.
#[cfg(llamagen_nccl)]
fn in_memory_file(bytes: &[u8]) -> Result<(std::fs::File, String), String> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; a descriptor it returns is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"libllamagen_nccl.so".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "memfd_create for the NCCL shim: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)
        .map_err(|e| format!("writing the NCCL shim to memory: {e}"))?;
    Ok((file, format!("/proc/self/fd/{fd}")))
}

#[cfg(llamagen_nccl)]
fn loader_error() -> String {
    // SAFETY: dlerror returns the thread's last loader message or null.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        "unknown loader error".into()
    } else {
        // SAFETY: a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}
