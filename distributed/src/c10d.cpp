// A C face for the few pieces of libtorch's c10d that data-parallel training needs: a TCPStore
// rendezvous, a Gloo process group, and all-reduce, reduce, all-gather, broadcast and barrier
// on it. tch binds libtorch's tensors but not c10d, so this file is compiled with the `cc`
// crate against the headers of the same libtorch (build.rs) and called from `src/lib.rs`.
//
// Why ProcessGroupGloo is declared here instead of included: its header needs gloo's headers,
// which the torch wheel does not ship, although libtorch_cpu.so carries the whole of Gloo and
// exports the class. The declaration below names only what we call: the options factory, the
// constructor and the destructor; every collective goes through `c10d::Backend`'s virtual
// functions, whose header is complete, so the calls land in libtorch's own vtable. Because the
// class's full size is not visible, the object is built in a buffer larger than libtorch 2.11's
// `sizeof(ProcessGroupGloo)` (488 bytes, read from its deleting destructor) and handed to an
// intrusive_ptr as if it came from `new`: libtorch's virtual destructor frees it with
// `operator delete`, which takes the buffer back whatever size it passes. The workspace pins
// libtorch exactly (tch =0.24.0 <-> torch 2.11.0), and a libtorch without these symbols fails to
// link rather than misbehave.

#include <chrono>
#include <cstdint>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "llg_error.h"

namespace c10d {
class TORCH_API ProcessGroupGloo : public Backend {
 public:
  struct TORCH_API Options : public Backend::Options {
    // One TCP device on the address this host's name resolves to (GLOO_SOCKET_IFNAME or
    // GLOO_DEVICE_TRANSPORT choose otherwise, as in PyTorch), and the given timeout.
    static c10::intrusive_ptr<Options> create_default(std::chrono::milliseconds timeout);
  };
  explicit ProcessGroupGloo(
      const c10::intrusive_ptr<Store>& store,
      int rank,
      int size,
      c10::intrusive_ptr<Options> options);
  ~ProcessGroupGloo() override;
};
}  // namespace c10d

namespace {

// Eight times libtorch 2.11's sizeof(ProcessGroupGloo).
constexpr size_t kGlooBytes = 4096;

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
};

// Starts `start(list_i, i)` for each of `tensors` (one-tensor lists, which the collectives take
// by reference and keep until their work is done) before waiting for the first, so that Gloo's
// worker threads overlap them.
template <typename Start>
void start_all_then_wait(at::Tensor* const* tensors, size_t count, Start start) {
  std::vector<std::vector<at::Tensor>> lists(count);
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  works.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    lists[i].push_back(*tensors[i]);
    works.push_back(start(lists[i], i));
  }
  for (auto& work : works) {
    work->wait();
  }
}


}  // namespace

extern "C" {

// A Gloo process group of `world` ranks meeting at the TCPStore on host:port (hosted by this
// process when `host_store`), under `prefix`. Null on failure, with the reason in `err`.
void* llg_c10d_gloo(
    const char* host,
    uint16_t port,
    int host_store,
    const char* prefix,
    int rank,
    int world,
    int64_t timeout_ms,
    char* err,
    size_t err_len) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = port;
    store_options.isServer = host_store != 0;
    store_options.numWorkers = world;
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    store_options.multiTenant = true;
    auto store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
    c10::intrusive_ptr<c10d::Store> prefixed =
        c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    void* memory = ::operator new(kGlooBytes);
    c10d::ProcessGroupGloo* group = nullptr;
    try {
      group = new (memory) c10d::ProcessGroupGloo(prefixed, rank, world, options);
    } catch (...) {
      ::operator delete(memory);
      throw;
    }
    auto backend = c10::intrusive_ptr<c10d::Backend>::unsafe_steal_from_new(group);
    return new Group{std::move(backend)};
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return nullptr;
  }
}

// Sums each of `tensors` (dense, contiguous, on one device) over the ranks, in place. All the
// reductions are started before the first is waited for, so that Gloo's worker threads overlap
// them. Returns 0, or -1 with the reason in `err`.
int llg_c10d_all_reduce_sum(
    void* group,
    at::Tensor* const* tensors,
    size_t count,
    char* err,
    size_t err_len) {
  try {
    auto* g = static_cast<Group*>(group);
    start_all_then_wait(tensors, count, [&](std::vector<at::Tensor>& list, size_t) {
      return g->backend->allreduce(list);
    });
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

// Sums each of `tensors` (dense, contiguous, on one device) over the ranks into rank
// `roots[i]`'s copy of tensor i, in place there; on the other ranks the tensor's contents are
// left undefined (Gloo may use it as scratch). All the reductions are started before the first
// is waited for. Returns 0, or -1 with the reason in `err`.
int llg_c10d_reduce_sum(
    void* group,
    at::Tensor* const* tensors,
    const int* roots,
    size_t count,
    char* err,
    size_t err_len) {
  try {
    auto* g = static_cast<Group*>(group);
    start_all_then_wait(tensors, count, [&](std::vector<at::Tensor>& list, size_t i) {
      c10d::ReduceOptions options;
      options.rootRank = roots[i];
      return g->backend->reduce(list, options);
    });
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

// Copies rank `root`'s `tensor` into every rank's, in place.
int llg_c10d_broadcast(void* group, at::Tensor* tensor, int root, char* err, size_t err_len) {
  try {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> list{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    g->backend->broadcast(list, options)->wait();
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

// Every rank's `input` (dense, contiguous, the same shape and kind on every rank) into
// `outputs[r]` for each rank r, which the caller allocated like `input`.
int llg_c10d_all_gather(
    void* group,
    at::Tensor* input,
    at::Tensor* const* outputs,
    size_t world,
    char* err,
    size_t err_len) {
  try {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> inputs{*input};
    std::vector<std::vector<at::Tensor>> gathered(1);
    for (size_t r = 0; r < world; ++r) {
      gathered[0].push_back(*outputs[r]);
    }
    g->backend->allgather(gathered, inputs)->wait();
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

int llg_c10d_barrier(void* group, char* err, size_t err_len) {
  try {
    static_cast<Group*>(group)->backend->barrier()->wait();
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

// Makes `grad` the gradient of `param` (the same shape, kind and device), so that backward
// passes accumulate into it in place. Returns 0, or -1 with the reason in `err`.
int llg_set_grad(at::Tensor* param, at::Tensor* grad, char* err, size_t err_len) {
  try {
    TORCH_CHECK(
        grad->sizes() == param->sizes() && grad->scalar_type() == param->scalar_type() &&
            grad->device() == param->device(),
        "a gradient of ", grad->sizes(), " ", grad->scalar_type(), " on ", grad->device(),
        " for a parameter of ", param->sizes(), " ", param->scalar_type(), " on ",
        param->device());
    param->mutable_grad() = *grad;
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

void llg_c10d_free(void* group) {
  delete static_cast<Group*>(group);
}

}  // extern "C"
