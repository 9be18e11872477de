// A C face over libtorch's `at::cuda::CUDAGraph`: capture the kernels that tch ops launch on one
// device into a CUDA graph, then replay them with one launch.
//
// CUDAGraph lives in libtorch_cuda.so, which our binaries load only where an NVIDIA driver is
// (llamagen-native's `load_cuda`), so this file is not linked into them: build.rs compiles it into
// a shared object of its own, the binary carries its bytes, and src/cuda_graph.rs loads it once
// libtorch_cuda is loaded (the same way as the NCCL face of llamagen-distributed).
//
// Capture follows `torch.cuda.graph`: the device is synchronised, then the kernels are recorded
// on a side stream from libtorch's pool (a capture cannot run on the default stream) made
// current for the capture's length, into the graph's private memory pool, so that the tensors the
// captured code allocates keep their addresses for every replay. Replay launches on the current
// stream, where the eager work around it runs.

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "llg_error.h"

namespace {

struct Graph {
  at::cuda::CUDAGraph graph;
  // The side stream made current while capturing; empty outside a capture.
  std::optional<c10::cuda::CUDAStreamGuard> capturing;
  c10::DeviceIndex device;
};

}  // namespace

extern "C" {

// Sets CUDA device `device` current, or says why it cannot be.
static bool use_device(int device, char* err, size_t err_len) {
  auto count = c10::cuda::device_count();
  if (device < 0 || device >= count) {
    llg::fail_with(
        "CUDA device " + std::to_string(device) + " does not exist (" +
            std::to_string(count) + " visible)",
        err, err_len);
    return false;
  }
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
  return true;
}

// A new, empty graph for CUDA device `device`; null on failure with the reason in `err`.
void* llg_cuda_graph_new(int device, char* err, size_t err_len) {
  try {
    if (!use_device(device, err, err_len)) {
      return nullptr;
    }
    return new Graph{at::cuda::CUDAGraph(), {}, static_cast<c10::DeviceIndex>(device)};
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return nullptr;
  }
}

// Starts recording: everything libtorch launches from this thread until `llg_cuda_graph_end`
// goes into the graph instead of running. 0 on success.
int llg_cuda_graph_begin(void* handle, char* err, size_t err_len) {
  auto* g = static_cast<Graph*>(handle);
  try {
    if (g->capturing) {
      llg::fail_with("this graph is already capturing", err, err_len);
      return 1;
    }
    c10::cuda::set_device(g->device);
    c10::cuda::device_synchronize();
    g->capturing.emplace(
        c10::cuda::getStreamFromPool(/*isHighPriority=*/false, g->device));
    try {
      // Thread-local: another thread's CUDA calls (a decoder, a data loader) neither break
      // this capture nor are refused while it runs.
      g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    } catch (...) {
      g->capturing.reset();
      throw;
    }
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return 1;
  }
}

// Stops recording and instantiates the graph; the side stream stops being current whether or
// not that succeeds. 0 on success.
int llg_cuda_graph_end(void* handle, char* err, size_t err_len) {
  auto* g = static_cast<Graph*>(handle);
  if (!g->capturing) {
    llg::fail_with("this graph is not capturing", err, err_len);
    return 1;
  }
  int status = 0;
  try {
    g->graph.capture_end();
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    status = 1;
  }
  g->capturing.reset();
  return status;
}

// Launches the recorded kernels on the current stream. 0 on success.
int llg_cuda_graph_replay(void* handle, char* err, size_t err_len) {
  try {
    static_cast<Graph*>(handle)->graph.replay();
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return 1;
  }
}

void llg_cuda_graph_free(void* handle) {
  try {
    delete static_cast<Graph*>(handle);
  } catch (...) {
    // A destructor that throws while the process shuts CUDA down leaves nothing to free.
  }
}

}  // extern "C"
