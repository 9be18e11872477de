//! libtorch as `tch` links it: version, devices, and the device a stage should run on.

use std::path::{Path, PathBuf};

/// The PyTorch release that `tch` 0.24 is written against.
pub const EXPECTED_TORCH_VERSION: &str = "2.11.0";

/// What `llamagen doctor` reports about libtorch.
#[derive(Debug, Clone)]
pub struct TorchInfo {
    /// The libtorch folder the binary was built against (`LIBTORCH` at build time), if known.
    pub libtorch_dir: Option<PathBuf>,
    /// The PyTorch version string of that folder, e.g. `2.11.0+cu130`.
    pub version: Option<String>,
    /// Whether libtorch sees a usable CUDA device.
    pub cuda_available: bool,
    /// Number of CUDA devices (0 without CUDA).
    pub cuda_devices: i64,
    /// Whether cuDNN is usable.
    pub cudnn_available: bool,
    /// CPU threads libtorch uses for intra-op parallelism.
    pub cpu_threads: i32,
}

impl TorchInfo {
    /// Whether the release part of [`Self::version`] is the one `tch` expects.
    pub fn version_matches(&self) -> bool {
        self.version
            .as_deref()
            .is_some_and(|v| v.split('+').next() == Some(EXPECTED_TORCH_VERSION))
    }
}

/// Probes libtorch. Touching `tch` loads libtorch, so this also proves the rpath works.
pub fn info() -> TorchInfo {
    load_cuda();
    // The libtorch this process runs on (a packaged copy, say), else the one it was built on.
    let libtorch_dir = loaded_libtorch_dir()
        .and_then(|lib| lib.parent().map(Path::to_path_buf))
        .or_else(|| option_env!("LIBTORCH").map(PathBuf::from));
    let version = libtorch_dir.as_deref().and_then(read_version);
    TorchInfo {
        libtorch_dir,
        version,
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cpu_threads: tch::get_num_threads(),
    }
}

/// The first CUDA device when there is one, else the CPU.
pub fn default_device() -> tch::Device {
    load_cuda();
    tch::Device::cuda_if_available()
}

/// The first CUDA device, or why libtorch sees none (for a `--device cuda` that must not fall
/// back to the CPU).
pub fn cuda_device() -> Result<tch::Device, String> {
    let load = load_cuda();
    if tch::Cuda::is_available() {
        Ok(tch::Device::Cuda(0))
    } else {
        Err(format!("no CUDA device: {load}"))
    }
}

/// What became of libtorch's CUDA half (`libtorch_cuda.so`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaLoad {
    /// Loaded from this path: CUDA devices are visible to tch.
    Loaded(PathBuf),
    /// No NVIDIA driver on this machine, so it was not loaded (it costs 0.2 s and 350 MB of
    /// resident memory per process, for nothing on a CPU worker).
    NoDriver,
    /// The libtorch in use has no CUDA half (a CPU build of PyTorch).
    CpuBuild(PathBuf),
    /// It is there but failed to load: the loader's message.
    Failed(String),
}

impl std::fmt::Display for CudaLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaLoad::Loaded(path) => write!(f, "libtorch_cuda loaded from {}", path.display()),
            CudaLoad::NoDriver => write!(
                f,
                "no NVIDIA driver (no /proc/driver/nvidia/version, no libcuda.so.1)"
            ),
            CudaLoad::CpuBuild(dir) => write!(
                f,
                "{} holds a CPU-only libtorch (no libtorch_cuda.so)",
                dir.display()
            ),
            CudaLoad::Failed(why) => write!(f, "libtorch_cuda.so did not load: {why}"),
        }
    }
}

/// Loads libtorch's CUDA half when this machine has an NVIDIA driver, once per process.
///
/// The linker drops `libtorch_cuda.so` from our binaries (no symbol of it is named; its
/// kernels register themselves when it loads), so tch would see no GPU. Loading it here, from
/// the folder of the `libtorch_cpu.so` this process runs, makes CUDA work with no
/// `LD_PRELOAD`, and CPU machines never pay for it. `LLAMAGEN_LOAD_CUDA=1` loads it without a
/// driver (tests of the loading itself), `=0` never loads it.
pub fn load_cuda() -> &'static CudaLoad {
    static LOADED: std::sync::OnceLock<CudaLoad> = std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        let wanted = match std::env::var("LLAMAGEN_LOAD_CUDA").as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => nvidia_driver_present(),
        };
        if !wanted {
            return CudaLoad::NoDriver;
        }
        let Some(dir) = loaded_libtorch_dir() else {
            return CudaLoad::Failed(
                "libtorch_cpu.so is not among this process's libraries".into(),
            );
        };
        let path = dir.join("libtorch_cuda.so");
        if !path.exists() {
            return CudaLoad::CpuBuild(dir);
        }
        let result = dlopen_global(&path);
        tracing::debug!(path = %path.display(), ?result, "loading libtorch_cuda");
        match result {
            Ok(()) => CudaLoad::Loaded(path),
            Err(why) => CudaLoad::Failed(why),
        }
    })
}

fn nvidia_driver_present() -> bool {
    Path::new("/proc/driver/nvidia/version").exists() || {
        // Containers often see the driver's library without /proc/driver/nvidia.
        // SAFETY: a NUL-terminated name; a handle it returns is closed at once.
        let name = c"libcuda.so.1";
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            unsafe { libc::dlclose(handle) };
        }
        !handle.is_null()
    }
}

/// The folder of the `libtorch_cpu.so` mapped into this process, from /proc/self/maps (it
/// works wherever the binary and its libraries were copied to).
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        path.ends_with("/libtorch_cpu.so")
            .then(|| Path::new(path).parent().map(Path::to_path_buf))
            .flatten()
    })
}

fn dlopen_global(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path; the handle is kept for the life of the process on purpose
    // (the library's kernels must stay registered).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns the thread's last loader message or null.
        let message = unsafe { libc::dlerror() };
        return Err(if message.is_null() {
            "unknown loader error".into()
        } else {
            unsafe { std::ffi::CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        });
    }
    Ok(())
}

/// Reads `__version__` from the `version.py` that the PyTorch wheel ships next to its `lib/`.
fn read_version(libtorch_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(libtorch_dir.join("version.py")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("__version__")?;
        let value = rest.trim_start().strip_prefix('=')?.trim();
        let value = value.split('#').next()?.trim();
        Some(value.trim_matches(|c| c == '\'' || c == '"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wheel_version_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("version.py"),
            "from typing import Optional\n__all__ = ['__version__']\n__version__ = '2.11.0+cu130'\ngit_version = 'abc'\n",
        )
        .unwrap();
        assert_eq!(read_version(dir.path()).as_deref(), Some("2.11.0+cu130"));
        assert_eq!(read_version(&dir.path().join("missing")), None);
    }

    #[test]
    fn version_match_ignores_the_local_build_tag() {
        let mut info = info();
        info.version = Some("2.11.0+cpu".into());
        assert!(info.version_matches());
        info.version = Some("2.10.1".into());
        assert!(!info.version_matches());
        info.version = None;
        assert!(!info.version_matches());
    }
}
