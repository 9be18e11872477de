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
    let libtorch_dir = option_env!("LIBTORCH").map(PathBuf::from);
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
    tch::Device::cuda_if_available()
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
