//! The native stack under llamagen-rs: libtorch (through `tch`) for the models and ONNX Runtime
//! (through `ort`, loaded at run time) for the scorers, text encoder and Inception features.
//!
//! Both libraries come from the project's virtualenv (`scripts/setup.sh`); `.cargo/config.toml`
//! bakes their locations into the build, so nothing here needs environment variables, while
//! `LIBTORCH` (at build time) and `ORT_DYLIB_PATH` (at run time) still override them.
//! [`torch::TorchInfo`] and [`onnx::OrtInfo`] are what `llamagen doctor` reports.

pub mod c_error;
pub mod cuda_shim;
pub mod onnx;
pub mod testing;
pub mod torch;

/// `BIN/../lib` of the running binary: where scripts/package.sh's layout (a copied folder, a
/// container image) puts libtorch (`torch/lib`) and ONNX Runtime (`onnxruntime/`).
pub fn lib_dir_beside_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("lib"))
}

/// Whether the running binary sits in scripts/package.sh's layout, with its own libtorch.
pub fn packaged() -> bool {
    lib_dir_beside_binary().is_some_and(|lib| lib.join("torch").join("lib").is_dir())
}

/// What can go wrong while locating or loading the native libraries.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(
        "ONNX Runtime library not found at {path}: run scripts/setup.sh, or set ORT_DYLIB_PATH to a libonnxruntime.so (1.31 or newer)"
    )]
    OrtLibraryMissing { path: std::path::PathBuf },
    #[error("no ONNX Runtime library configured: set ORT_DYLIB_PATH to a libonnxruntime.so")]
    OrtLibraryUnset,
    #[error("loading ONNX Runtime from {path}: {source}")]
    OrtLoad {
        path: std::path::PathBuf,
        source: ort::LoadDynamicError,
    },
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    #[error("ONNX model {path}: {source}")]
    OrtModel {
        path: std::path::PathBuf,
        source: ort::Error,
    },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
