// The NCCL half of the C face over c10d (see c10d.cpp): a ProcessGroupNCCL meeting at the same
// TCPStore rendezvous, handed back as the same `llg::Group`, so every collective of c10d.cpp
// runs on it unchanged (through `c10d::Backend`'s virtual functions) with CUDA tensors in place.
//
// ProcessGroupNCCL lives in libtorch_cuda.so, which our binaries load only where an NVIDIA driver
// is (llamagen-native's `load_cuda`), so this file is not linked into them: build.rs compiles it
// into a shared object of its own, the binary carries that object's bytes, and src/nccl.rs loads
// it once libtorch_cuda is loaded. Unlike Gloo's, NCCL's header is complete in the wheel (with
// nccl.h from the nvidia-nccl wheel that torch pins exactly), so nothing is declared by hand;
// the objects are still built in buffers larger than this header's sizes, as c10d.cpp does for
// Gloo, so that a header a little off from the library could not overrun them.

#include <chrono>
#include <cstdint>
#include <exception>
#include <new>
#include <string>

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/NCCLUtils.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "c10d_group.h"
#include "llg_error.h"

namespace {

// Builds a `T` in a buffer four times this header's `sizeof(T)` and hands it to an intrusive_ptr
// as if it came from `new` (libtorch's virtual destructors free it with `operator delete`).
template <typename T, typename... Args>
c10::intrusive_ptr<T> make_roomy(Args&&... args) {
  void* memory = ::operator new(4 * sizeof(T));
  T* object = nullptr;
  try {
    object = new (memory) T(std::forward<Args>(args)...);
  } catch (...) {
    ::operator delete(memory);
    throw;
  }
  return c10::intrusive_ptr<T>::unsafe_steal_from_new(object);
}

}  // namespace

extern "C" {

// An NCCL process group of `world` ranks meeting at the TCPStore on host:port (hosted by this
// process when `host_store`), under `prefix`, bound to CUDA device `device` and connected
// before returning (as `init_process_group(device_id=...)` does), so that a missing GPU or an
// unreachable peer fails here rather than at the first collective. Null on failure, with the
// reason in `err`.
void* llg_c10d_nccl(
    const char* host,
    uint16_t port,
    int host_store,
    const char* prefix,
    int rank,
    int world,
    int device,
    int64_t timeout_ms,
    char* err,
    size_t err_len) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto store = llg::rendezvous_store(host, port, host_store != 0, prefix, world, timeout);
    auto options = make_roomy<c10d::ProcessGroupNCCL::Options>(false);
    options->timeout = timeout;
    auto cuda = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    int visible = c10::cuda::device_count();
    if (visible > 0) {
      TORCH_CHECK(
          device < visible, "local rank ", device, " has no GPU: this process sees ", visible,
          " (CUDA_VISIBLE_DEVICES, or more ranks on this host than GPUs)");
      c10::cuda::set_device(cuda.index());
    }
    // With no GPU visible, ProcessGroupNCCL's constructor refuses with its own message.
    auto group = make_roomy<c10d::ProcessGroupNCCL>(store, rank, world, options);
    group->setBoundDeviceId(cuda);
    group->eagerConnectSingleDevice(cuda);
    return new llg::Group{std::move(group)};
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return nullptr;
  }
}

// The version of the NCCL library libtorch_cuda loaded, as "2.28.9".
const char* llg_nccl_version() {
  static const std::string version = [] {
    try {
      return c10d::getNcclVersion();
    } catch (const std::exception& e) {
      return std::string("unknown (") + llg::message(e) + ")";
    }
  }();
  return version.c_str();
}

}  // extern "C"
