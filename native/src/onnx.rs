//! ONNX Runtime through `ort` with `load-dynamic`: find the shared library, load it once per
//! process, and open sessions on it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::SessionBuilder;

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
    let dir = crate::lib_dir_beside_binary()?.join("onnxruntime");
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

/// The intra-op threads of a session whose caller asked for 0 ([`intra_threads_for`] on this
/// process's environment and CPUs).
pub fn default_intra_threads() -> usize {
    let variable = std::env::var(INTRA_THREADS_VARIABLE).ok();
    let available = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    // SAFETY: sysconf reads a constant of the running system.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    intra_threads_for(
        variable.as_deref(),
        available,
        usize::try_from(online).unwrap_or(0),
    )
}

/// ONNX Runtime's own variable for the size of a session's pool (read by its newer releases;
/// read here for every release).
pub const INTRA_THREADS_VARIABLE: &str = "ORT_INTRA_OP_NUM_THREADS";

/// How many intra-op threads a session gets when asked for 0, given the value of
/// [`INTRA_THREADS_VARIABLE`], the CPUs this process may use (`available`: its affinity mask
/// and cgroup CPU quota) and the machine's online CPUs; 0 leaves ONNX Runtime's own default.
///
/// ONNX Runtime sizes its pool to the machine's physical cores, blind to quotas: a
/// Kubernetes pod limited to 4 CPUs, or a Slurm task bound to 4 of a 64-core node, would start
/// dozens of threads that the quota then throttles (and on a restricted cpuset the runtime's
/// affinity calls fail). A process confined to fewer CPUs than the machine has therefore uses
/// those. An unconfined one keeps the runtime's default, which avoids putting two threads on
/// one physical core. `OMP_NUM_THREADS` is libtorch's and is not read: the test suite sets it
/// to 1 to keep libtorch's spinning threads apart, while ONNX models there gain from both
/// cores.
pub fn intra_threads_for(variable: Option<&str>, available: usize, online: usize) -> usize {
    // An explicit 0 asks for the runtime's default, as ONNX Runtime reads it.
    if let Some(n) = variable.and_then(|v| v.trim().parse::<usize>().ok()) {
        return n;
    }
    if available > 0 && available < online {
        available
    } else {
        0
    }
}

/// Opens an ONNX model for inference on the CPU with `intra_threads` threads per run (0:
/// [`default_intra_threads`]).
pub fn session(model: &Path, intra_threads: usize) -> Result<Session, NativeError> {
    session_on(model, intra_threads, OnnxDevice::Cpu).map(|(session, _)| session)
}

/// Where an ONNX model is asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnnxDevice {
    Cpu,
    /// A CUDA device by ordinal, through ONNX Runtime's CUDA execution provider.
    Cuda(usize),
}

impl OnnxDevice {
    /// Where the ONNX models of a stage running on libtorch's `device` go: its GPU, or the CPU.
    pub fn of(device: tch::Device) -> Self {
        match device {
            tch::Device::Cuda(ordinal) => OnnxDevice::Cuda(ordinal),
            _ => OnnxDevice::Cpu,
        }
    }
}

/// The execution provider a session runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::Cpu => write!(f, "CPUExecutionProvider"),
            Provider::Cuda(ordinal) => write!(f, "CUDAExecutionProvider (device {ordinal})"),
        }
    }
}

/// The name ONNX Runtime lists its CUDA execution provider under.
pub const CUDA_PROVIDER: &str = "CUDAExecutionProvider";

/// Opens an ONNX model on `device` with `intra_threads` CPU threads per run (0:
/// [`default_intra_threads`]). A CUDA device is reached through the CUDA execution provider
/// when the loaded library has it (`onnxruntime-gpu`, which scripts/setup.sh installs where an
/// NVIDIA driver is present) and it starts (it needs the CUDA and cuDNN libraries that
/// libtorch's CUDA build brings, loaded first here); otherwise the model runs on the CPU, and
/// the log says why at warning level. The provider the session runs on is returned and logged.
pub fn session_on(
    model: &Path,
    intra_threads: usize,
    device: OnnxDevice,
) -> Result<(Session, Provider), NativeError> {
    open_on(model, intra_threads, device, |mut builder| {
        builder.commit_from_file(model)
    })
}

/// The tiny MLP that scripts/make_tiny_onnx.py writes to `native/tests/fixtures` (`x` [1, 4] ->
/// `probs`, a softmax over 3).
const TINY_MLP: &[u8] = include_bytes!("../tests/fixtures/tiny_mlp.onnx");

/// Runs a tiny built-in model once on `device` (`llamagen doctor`'s check that ONNX Runtime
/// computes there): the provider it ran on and the sum of its softmax, 1 when it is right.
pub fn probe(device: OnnxDevice) -> Result<(Provider, f32), NativeError> {
    let name = Path::new("tiny_mlp.onnx (built in)");
    let (mut session, provider) = open_on(name, 1, device, |mut builder| {
        builder.commit_from_memory(TINY_MLP)
    })?;
    let x = ort::value::Tensor::from_array(([1usize, 4], vec![0.0f32; 4]))?;
    let out = session.run(ort::inputs!["x" => x])?;
    let sum = out["probs"].try_extract_array::<f32>()?.iter().sum();
    Ok((provider, sum))
}

/// [`session_on`] for a model that `commit` reads (named `model` in errors and the log).
fn open_on(
    model: &Path,
    intra_threads: usize,
    device: OnnxDevice,
    commit: impl Fn(SessionBuilder) -> ort::Result<Session>,
) -> Result<(Session, Provider), NativeError> {
    let env = environment()?;
    let with_model = |source| NativeError::OrtModel {
        path: model.to_path_buf(),
        source,
    };
    let intra_threads = match intra_threads {
        0 => default_intra_threads(),
        n => n,
    };
    let builder = || -> Result<_, NativeError> {
        let mut builder = Session::builder(env).map_err(with_model)?;
        if intra_threads > 0 {
            builder = builder
                .with_intra_threads(intra_threads)
                .map_err(|e| with_model(e.into()))?;
        }
        Ok(builder)
    };
    if let OnnxDevice::Cuda(ordinal) = device {
        match cuda_session(builder()?, &commit, ordinal) {
            Ok(session) => {
                let provider = Provider::Cuda(ordinal);
                tracing::info!(
                    model = %model.display(),
                    %provider,
                    threads = intra_threads,
                    "ONNX model opened"
                );
                return Ok((session, provider));
            }
            Err(why) => tracing::warn!(
                model = %model.display(),
                "ONNX model runs on the CPU, not CUDA device {ordinal}: {why}"
            ),
        }
    }
    let session = commit(builder()?).map_err(with_model)?;
    // 0: the runtime's own default (physical cores).
    tracing::info!(
        model = %model.display(),
        provider = %Provider::Cpu,
        threads = intra_threads,
        "ONNX model opened"
    );
    Ok((session, Provider::Cpu))
}

/// Why the CUDA execution provider cannot be used on this machine, found without opening a
/// model: the loaded ONNX Runtime has none (the CPU build), or CUDA's libraries are not loaded
/// (no NVIDIA driver). `None` when it can be tried.
pub fn cuda_unavailable() -> Option<String> {
    let providers = match environment().and_then(|_| available_providers()) {
        Ok(providers) => providers,
        Err(e) => return Some(e.to_string()),
    };
    if !providers.iter().any(|p| p == CUDA_PROVIDER) {
        let library = dylib_path().ok();
        // A package's ONNX Runtime is the one its build had; no setup.sh is beside it.
        let advice = if library.is_some() && library == packaged_dylib() {
            "the Dockerfile's cuda flavour carries onnxruntime-gpu (docs/deploy.md)"
        } else {
            "scripts/setup.sh installs onnxruntime-gpu where an NVIDIA driver is present"
        };
        let library = library.map_or_else(|| "?".to_string(), |p| p.display().to_string());
        return Some(format!(
            "the ONNX Runtime at {library} has no {CUDA_PROVIDER} (it lists {}); {advice}",
            providers.join(", ")
        ));
    }
    // The provider library links CUDA's and cuDNN's by name; libtorch's CUDA half brings the
    // same major releases (onnxruntime-gpu 1.31 and torch 2.11 are both CUDA 13 builds).
    let cuda = crate::torch::load_cuda();
    if !matches!(cuda, crate::torch::CudaLoad::Loaded(_)) {
        return Some(format!("CUDA's libraries are not loaded: {cuda}"));
    }
    None
}

/// `model` on the CUDA execution provider, or why not.
fn cuda_session(
    builder: SessionBuilder,
    commit: &impl Fn(SessionBuilder) -> ort::Result<Session>,
    ordinal: usize,
) -> Result<Session, String> {
    if let Some(why) = cuda_unavailable() {
        return Err(why);
    }
    let device_id = i32::try_from(ordinal).map_err(|_| format!("no CUDA device {ordinal}"))?;
    let cuda_ep = ort::ep::CUDA::default()
        .with_device_id(device_id)
        .build()
        .error_on_failure();
    let builder = builder
        .with_execution_providers([cuda_ep])
        .map_err(|e| format!("the CUDA execution provider did not start: {e}"))?;
    commit(builder).map_err(|e| format!("the CUDA execution provider did not take the model: {e}"))
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

    #[test]
    fn threads_follow_the_variable_then_the_cpus_this_process_may_use() {
        // The runtime's own variable is the user's word, even above the CPUs at hand.
        assert_eq!(intra_threads_for(Some("3"), 2, 64), 3);
        assert_eq!(intra_threads_for(Some("0"), 4, 64), 0);
        // A Kubernetes quota or a Slurm task bound to 4 CPUs of a 64-CPU node.
        assert_eq!(intra_threads_for(None, 4, 64), 4);
        // Unconfined: the runtime's default (physical cores).
        assert_eq!(intra_threads_for(None, 64, 64), 0);
        // An unreadable value is ignored; unknown CPU counts leave the default.
        assert_eq!(intra_threads_for(Some("many"), 4, 64), 4);
        assert_eq!(intra_threads_for(None, 0, 0), 0);
    }
}
