//! ONNX Runtime through `ort` with `load-dynamic`: find the shared library, load it once per
//! process, and open sessions on it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;

use crate::NativeError;

/// The ONNX Runtime library to load: `ORT_DYLIB_PATH` if set, else the one beside the binary
/// in the relocatable layout (`BIN/../lib/onnxruntime/`, as scripts/package.sh makes it), else
/// the one scripts/setup.sh linked into the virtualenv when this binary was built.
pub fn dylib_path() -> Result<PathBuf, NativeError> {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(packaged_dylib)
        .or_else(|| option_env!("LLAMAGEN_ORT_DYLIB").map(PathBuf::from))
        .ok_or(NativeError::OrtLibraryUnset)?;
    if !path.exists() {
        return Err(NativeError::OrtLibraryMissing { path });
    }
    Ok(path)
}

/// `libonnxruntime.so*` in `lib/onnxruntime/` next to the folder of the running binary.
fn packaged_dylib() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.join("lib").join("onnxruntime");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // The versioned file (libonnxruntime.so.1.31.1) if there are several names.
    found.sort();
    found.pop()
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, NativeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = dylib_path()?;
    let env = ort::init_from(&path)
        .map_err(|source| NativeError::OrtLoad {
            path: path.clone(),
            source,
        })?
        .with_name("llamagen")
        .build()?;
    // Two threads racing here build two environments; the loser's is dropped, which is harmless.
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Opens an ONNX model for inference with `intra_threads` threads per run (0: the runtime's
/// default, one per core).
pub fn session(model: &Path, intra_threads: usize) -> Result<Session, NativeError> {
    let env = environment()?;
    let with_model = |source| NativeError::OrtModel {
        path: model.to_path_buf(),
        source,
    };
    let mut builder = Session::builder(env).map_err(with_model)?;
    if intra_threads > 0 {
        builder = builder
            .with_intra_threads(intra_threads)
            .map_err(|e| with_model(e.into()))?;
    }
    builder.commit_from_file(model).map_err(with_model)
}

/// What `llamagen doctor` reports about ONNX Runtime.
#[derive(Debug, Clone)]
pub struct OrtInfo {
    pub dylib_path: PathBuf,
    /// The release, e.g. `1.31.1`, as the library's build string states it.
    pub version: Option<String>,
    /// Execution providers compiled into the loaded library, e.g. `CPUExecutionProvider`.
    pub providers: Vec<String>,
}

/// Loads ONNX Runtime (if not yet loaded) and describes it.
pub fn info() -> Result<OrtInfo, NativeError> {
    let dylib_path = dylib_path()?;
    environment()?;
    let build = ort::info();
    Ok(OrtInfo {
        version: release_from_build_info(build).or_else(|| release_from_file_name(&dylib_path)),
        dylib_path,
        providers: available_providers()?,
    })
}

/// `ORT Build Info: git-branch=rel-1.31.1, ...` -> `1.31.1`.
fn release_from_build_info(build: &str) -> Option<String> {
    let start = build.find("git-branch=rel-")? + "git-branch=rel-".len();
    let rest = &build[start..];
    let end = rest.find([',', ' ']).unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// `libonnxruntime.so.1.31.1` -> `1.31.1`, following a link to the real file.
fn release_from_file_name(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let name = real.file_name()?.to_str()?;
    let version = name.split_once(".so.")?.1;
    Some(version.to_owned())
}

fn available_providers() -> Result<Vec<String>, NativeError> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut count: std::ffi::c_int = 0;
    // SAFETY: the API table comes from the loaded library; the list it returns is read once and
    // handed back to the library's own release function.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut count);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Ok(Vec::new());
        }
        let names = (0..count as usize)
            .map(|i| {
                std::ffi::CStr::from_ptr(*list.add(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let _ = (api.ReleaseAvailableProviders)(list, count);
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_from_build_info() {
        let s = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(release_from_build_info(s).as_deref(), Some("1.31.1"));
        assert_eq!(
            release_from_build_info("ORT Build Info: git-branch=main"),
            None
        );
    }
}
