//! CUDA graphs: the kernels a piece of tch code launches, recorded once and replayed with one
//! launch (libtorch's `at::cuda::CUDAGraph`, through the C face `src/cuda_graph.cpp`).
//!
//! A decode step of a small GPT is hundreds of small kernels; launched one by one from the host
//! the GPU waits on the launches. Replaying a graph removes that cost, on two conditions the
//! captured code must meet: every shape is fixed and nothing is read back to the host (the
//! capture records kernels, it does not run them), and every input is a tensor whose address
//! stays the same (a replay reads what lies there now).
//!
//! The face needs libtorch_cuda, which binaries load only where an NVIDIA driver is, so it is
//! a shared object of its own that this crate embeds and loads through
//! `llamagen_native::cuda_shim`.

use std::ffi::{c_char, c_int, c_void};

use llamagen_native::c_error::{ERROR_BYTES, message};

use crate::ModelError;

type New = unsafe extern "C" fn(device: c_int, err: *mut c_char, len: usize) -> *mut c_void;
type Run = unsafe extern "C" fn(graph: *mut c_void, err: *mut c_char, len: usize) -> c_int;
type Free = unsafe extern "C" fn(graph: *mut c_void);

/// The entry points of the loaded face.
struct Face {
    new: New,
    begin: Run,
    end: Run,
    replay: Run,
    free: Free,
}

/// Whether this build carries the CUDA graph face (its libtorch had a CUDA half).
pub const BUILT: bool = cfg!(llamagen_cuda_graph);

/// Whether the user turned graphs off (`LLAMAGEN_CUDA_GRAPHS=0`): sampling then decodes
/// eagerly on CUDA too.
pub fn turned_off() -> bool {
    std::env::var("LLAMAGEN_CUDA_GRAPHS").as_deref() == Ok("0")
}

/// Whether this process can capture CUDA graphs, or why not: not built in, libtorch_cuda not
/// loaded (no NVIDIA driver), or the face failed to load.
pub fn available() -> Result<(), String> {
    face().map(|_| ())
}

/// The face, loaded on first use once libtorch_cuda is loaded.
fn face() -> Result<&'static Face, String> {
    static FACE: llamagen_native::cuda_shim::Once<Face> =
        llamagen_native::cuda_shim::Once::new(BUILT, load);
    FACE.get()
}

#[cfg(not(llamagen_cuda_graph))]
fn load() -> Result<Face, String> {
    Err("this build has no CUDA graphs: its libtorch had no CUDA half (libtorch_cuda.so)".into())
}

#[cfg(llamagen_cuda_graph)]
fn load() -> Result<Face, String> {
    static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libllamagen_cuda_graph.so"));
    let shim = llamagen_native::cuda_shim::load(c"libllamagen_cuda_graph.so", BYTES)?;
    // SAFETY: each symbol is an `extern "C"` function of src/cuda_graph.cpp with exactly the
    // signature it is cast to.
    unsafe {
        Ok(Face {
            new: std::mem::transmute::<*mut c_void, New>(shim.symbol(c"llg_cuda_graph_new")?),
            begin: std::mem::transmute::<*mut c_void, Run>(shim.symbol(c"llg_cuda_graph_begin")?),
            end: std::mem::transmute::<*mut c_void, Run>(shim.symbol(c"llg_cuda_graph_end")?),
            replay: std::mem::transmute::<*mut c_void, Run>(shim.symbol(c"llg_cuda_graph_replay")?),
            free: std::mem::transmute::<*mut c_void, Free>(shim.symbol(c"llg_cuda_graph_free")?),
        })
    }
}

/// Calls a face function that reports failure through an error buffer.
fn checked(what: &str, call: impl FnOnce(*mut c_char, usize) -> bool) -> Result<(), ModelError> {
    let mut err = vec![0u8; ERROR_BYTES];
    if call(err.as_mut_ptr().cast(), err.len()) {
        return Ok(());
    }
    Err(ModelError::Cuda(format!("{what}: {}", message(&err))))
}

/// A captured CUDA graph; [`CudaGraph::replay`] runs it again.
pub struct CudaGraph {
    face: &'static Face,
    handle: *mut c_void,
}

impl CudaGraph {
    /// Records what `record` launches on CUDA device `device` and returns the graph with
    /// `record`'s result. Tensors `record` allocates live in the graph's own memory and are
    /// rewritten by each replay; none of its kernels has run when this returns.
    ///
    /// `record` must run the code once eagerly before (libraries initialise lazily on first
    /// use, and that cannot be recorded), keep shapes fixed and read nothing back to the host;
    /// a tch call that breaks the capture panics inside `record`, which is reported here as
    /// an error after the capture is closed.
    pub fn capture<R>(device: usize, record: impl FnOnce() -> R) -> Result<(Self, R), ModelError> {
        let face = face().map_err(ModelError::Cuda)?;
        let device = c_int::try_from(device)
            .map_err(|_| ModelError::Cuda(format!("CUDA device {device} is out of range")))?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: the buffer and its length are the callee's to write.
        checked("creating a CUDA graph", |err, len| {
            handle = unsafe { (face.new)(device, err, len) };
            !handle.is_null()
        })?;
        let graph = CudaGraph { face, handle };
        // SAFETY: a live graph handle; the buffer and its length are the callee's to write.
        checked("starting a CUDA graph capture", |err, len| unsafe {
            (face.begin)(graph.handle, err, len) == 0
        })?;
        let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(record));
        // SAFETY: as above; the capture is closed whether or not `record` finished.
        let ended = checked("ending a CUDA graph capture", |err, len| unsafe {
            (face.end)(graph.handle, err, len) == 0
        });
        match recorded {
            Ok(value) => ended.map(|()| (graph, value)),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic without a message");
                Err(ModelError::Cuda(format!(
                    "the code being captured into a CUDA graph failed: {why}"
                )))
            }
        }
    }

    /// Runs the recorded kernels again on the current stream, reading their inputs where they
    /// lie now.
    pub fn replay(&self) -> Result<(), ModelError> {
        // SAFETY: a live, captured graph; the buffer and its length are the callee's to write.
        checked("replaying a CUDA graph", |err, len| unsafe {
            (self.face.replay)(self.handle, err, len) == 0
        })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: the handle came from `new` and is freed once.
        unsafe { (self.face.free)(self.handle) }
    }
}
