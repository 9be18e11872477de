//! Loading the C++ faces that need libtorch's CUDA half (NCCL process groups, CUDA graphs).
//!
//! Those faces call into `libtorch_cuda.so`, which a binary loads only where an NVIDIA driver is
//! ([`crate::torch::load_cuda`]), so they cannot be linked into the binary: each crate's build.rs
//! makes its face a shared object of its own (`build_cuda_shim` in `native/libtorch_cpp.rs`),
//! the binary carries its bytes (`include_bytes!`), and [`load`] maps them from an anonymous
//! in-memory file once libtorch_cuda is loaded. Nothing is installed beside the binary, so a
//! copied or packaged binary has these faces wherever it has libtorch_cuda.

use std::ffi::{CStr, CString, c_void};

/// A loaded shim; it stays loaded for the life of the process (what it hands out calls back
/// into it until freed).
pub struct Shim {
    handle: *mut c_void,
    name: &'static CStr,
}

// SAFETY: a dlopen handle may be used from any thread; `dlsym` is thread-safe.
unsafe impl Send for Shim {}
unsafe impl Sync for Shim {}

impl Shim {
    /// The address of the exported function `symbol`.
    pub fn symbol(&self, symbol: &CStr) -> Result<*mut c_void, String> {
        // SAFETY: a live handle and a NUL-terminated name.
        let found = unsafe { libc::dlsym(self.handle, symbol.as_ptr()) };
        if found.is_null() {
            Err(format!("{} has no {symbol:?}", self.name.to_string_lossy()))
        } else {
            Ok(found)
        }
    }
}

/// What a crate takes from its shim (its functions), loaded once: the first call after
/// libtorch_cuda is loaded keeps the load's outcome; a call before that is refused with the
/// reason and not kept, so a later one tries again. Declared as a `static`.
pub struct Once<T> {
    loaded: std::sync::OnceLock<Result<T, String>>,
    /// Whether the build carries the shim; if not, `load` only explains why.
    built: bool,
    load: fn() -> Result<T, String>,
}

impl<T> Once<T> {
    pub const fn new(built: bool, load: fn() -> Result<T, String>) -> Self {
        Once {
            loaded: std::sync::OnceLock::new(),
            built,
            load,
        }
    }

    /// The loaded functions, or why there are none.
    pub fn get(&self) -> Result<&T, String> {
        if self.loaded.get().is_none() && self.built {
            cuda_loaded()?;
        }
        self.loaded
            .get_or_init(self.load)
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Whether libtorch_cuda, whose libraries a shim needs by name, is loaded in this process.
pub fn cuda_loaded() -> Result<(), String> {
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

/// Loads the shared object `bytes` (named `name` in messages and /proc/self/maps), which must
/// only need libraries libtorch_cuda has loaded. It stays loaded, and its in-memory file open,
/// for the life of the process: callers load each shim once and keep what they take from it.
pub fn load(name: &'static CStr, bytes: &[u8]) -> Result<Shim, String> {
    cuda_loaded()?;
    let (file, path) = in_memory_file(name, bytes)?;
    let path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!(
            "loading {}: {}",
            name.to_string_lossy(),
            loader_error()
        ));
    }
    // The file stays open for the life of the process, as the library stays loaded: the
    // loader knows a library by its path, `/proc/self/fd/N`, and would hand back this one for
    // a second shim whose file reused this descriptor number.
    let _ = std::os::fd::IntoRawFd::into_raw_fd(file);
    Ok(Shim { handle, name })
}

/// `bytes` as an anonymous in-memory file, and the /proc path that names it while it is open.
fn in_memory_file(name: &CStr, bytes: &[u8]) -> Result<(std::fs::File, String), String> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; a descriptor it returns is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "memfd_create for {}: {}",
            name.to_string_lossy(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)
        .map_err(|e| format!("writing {} to memory: {e}", name.to_string_lossy()))?;
    Ok((file, format!("/proc/self/fd/{fd}")))
}

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
