// A C face for the few pieces of libtorch's c10d that data-parallel training needs: a TCPStore
// rendezvous, a Gloo process group, and all-reduce, reduce, all-gather, broadcast and barrier
// on it or on an NCCL group from nccl.cpp. tch binds libtorch's tensors but not c10d, so this file is compiled with the `cc`
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
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "c10d_group.h"
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

using llg::Group;

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

// Gradient buckets reduced while the backward pass is still running, as PyTorch DDP's Reducer
// does: a post-accumulate hook on each parameter counts down its bucket, and buckets are
// launched strictly in their index order (a bucket that is complete waits for the ones before
// it), so that every rank starts the same collectives in the same order whatever order its
// autograd engine finishes the gradients in. The hooks do nothing until `armed`, so that the
// micro-batches before the last one accumulate without communicating (DDP's `no_sync`).
struct Overlap {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::vector<at::Tensor> flats;
  // The rank a bucket is reduced to, or -1 to all-reduce it.
  std::vector<int> roots;
  std::vector<size_t> members;
  std::vector<at::Tensor> params;
  std::vector<size_t> bucket_of;
  // The hooks installed on `params`, to tell ours from a later owner's when freeing.
  std::vector<torch::autograd::PostAccumulateGradHook*> installed;

  std::mutex mutex;
  bool armed = false;
  std::vector<size_t> waiting;
  std::vector<char> seen;
  size_t next = 0;
  // Gradients accumulated so far in the armed pass, and buckets started before its last one
  // (under the rest of the pass); `last_early` keeps the finished pass's count.
  size_t arrived = 0;
  size_t early = 0;
  size_t last_early = 0;
  std::vector<std::vector<at::Tensor>> lists;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::string error;

  // Starts the reduction of bucket `b`. Called with `mutex` held.
  void launch(size_t b) {
    lists[b] = {flats[b]};
    if (roots[b] < 0) {
      works[b] = backend->allreduce(lists[b]);
    } else {
      c10d::ReduceOptions options;
      options.rootRank = roots[b];
      works[b] = backend->reduce(lists[b], options);
    }
  }

  // Launches every complete bucket whose predecessors are launched. Called with `mutex` held.
  void launch_ready() {
    while (next < flats.size() && waiting[next] == 0) {
      launch(next++);
    }
  }

  // Waits for the launched reductions, keeping the first failure. Called with `mutex` held.
  void wait_launched() {
    for (size_t b = 0; b < next; ++b) {
      if (!works[b]) {
        continue;
      }
      try {
        works[b]->wait();
      } catch (const std::exception& e) {
        if (error.empty()) {
          error = llg::message(e);
        }
      }
      works[b].reset();
    }
  }

  void ready(size_t param) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed || !error.empty()) {
      return;
    }
    size_t b = bucket_of[param];
    if (seen[param]) {
      // A second accumulation is harmless until the bucket is on its way; after, the sum sent
      // would miss it.
      if (b < next) {
        error = "parameter " + std::to_string(param) +
            "'s gradient was accumulated again after its bucket was reduced (a parameter used "
            "by two backward passes of one micro-batch)";
      }
      return;
    }
    seen[param] = 1;
    waiting[b] -= 1;
    arrived += 1;
    try {
      size_t before = next;
      launch_ready();
      if (arrived < params.size()) {
        early += next - before;
      }
    } catch (const std::exception& e) {
      error = llg::message(e);
    }
  }
};

struct BucketHook : torch::autograd::PostAccumulateGradHook {
  BucketHook(std::shared_ptr<Overlap> overlap, size_t param)
      : overlap(std::move(overlap)), param(param) {}
  // Runs on the thread that accumulated the gradient (the caller's on CPUs, the autograd engine's
  // device thread on a GPU, where NCCL orders the reduction after the accumulation on the
  // thread's current stream, as DDP's Reducer relies on). It must not throw:
  // an exception here would abort the backward pass mid-graph, so failures wait in `error`.
  void operator()(const torch::autograd::Variable&) override {
    overlap->ready(param);
  }
  std::shared_ptr<Overlap> overlap;
  size_t param;
};

struct OverlapHandle {
  std::shared_ptr<Overlap> overlap;
};

}  // namespace

extern "C" {

// A Gloo process group of `world` ranks meeting at the TCPStore on host:port (hosted by this
// process when `host_store`), under `prefix`. Null on failure, with the reason in `err`.
// `device` is not used (Gloo runs on the CPU): it is there so that this function and nccl.cpp's
// `llg_c10d_nccl` have one signature.
void* llg_c10d_gloo(
    const char* host,
    uint16_t port,
    int host_store,
    const char* prefix,
    int rank,
    int world,
    int /*device*/,
    int64_t timeout_ms,
    char* err,
    size_t err_len) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto prefixed = llg::rendezvous_store(host, port, host_store != 0, prefix, world, timeout);
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

// Installs the hooks that reduce `flats[b]` (dense, contiguous buckets on the group's device:
// the CPU for Gloo, the bound GPU for NCCL; all-reduced when `roots[b]` is -1, else reduced to
// that rank) once every parameter i with `bucket_of[i] == b` has had its gradient accumulated in
// an armed backward pass. Null on failure, with the reason in `err`.
void* llg_overlap_new(
    void* group,
    at::Tensor* const* flats,
    const int* roots,
    size_t buckets,
    at::Tensor* const* params,
    const size_t* bucket_of,
    size_t count,
    char* err,
    size_t err_len) {
  try {
    auto overlap = std::make_shared<Overlap>();
    overlap->backend = static_cast<Group*>(group)->backend;
    overlap->members.assign(buckets, 0);
    for (size_t b = 0; b < buckets; ++b) {
      TORCH_CHECK(
          flats[b]->is_contiguous() && flats[b]->device() == flats[0]->device(),
          "bucket ", b, " is not contiguous or not on the first bucket's device");
      overlap->flats.push_back(*flats[b]);
      overlap->roots.push_back(roots[b]);
    }
    for (size_t i = 0; i < count; ++i) {
      TORCH_CHECK(bucket_of[i] < buckets, "parameter ", i, " names bucket ", bucket_of[i]);
      overlap->params.push_back(*params[i]);
      overlap->bucket_of.push_back(bucket_of[i]);
      overlap->members[bucket_of[i]] += 1;
    }
    overlap->waiting = overlap->members;
    overlap->seen.assign(count, 0);
    overlap->lists.resize(buckets);
    overlap->works.resize(buckets);
    for (size_t i = 0; i < count; ++i) {
      auto hook = std::make_unique<BucketHook>(overlap, i);
      overlap->installed.push_back(hook.get());
      torch::autograd::impl::set_post_acc_grad_hooks(overlap->params[i], std::move(hook));
    }
    return new OverlapHandle{std::move(overlap)};
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return nullptr;
  }
}

// Makes the next backward pass launch the reductions: waits for anything left launched by an
// unfinished pass, then resets the counts.
void llg_overlap_arm(void* handle) {
  auto& o = *static_cast<OverlapHandle*>(handle)->overlap;
  std::lock_guard<std::mutex> lock(o.mutex);
  o.wait_launched();
  o.error.clear();
  o.waiting = o.members;
  std::fill(o.seen.begin(), o.seen.end(), 0);
  o.next = 0;
  o.arrived = 0;
  o.early = 0;
  o.armed = true;
}

// How many buckets the armed backward pass has started so far.
size_t llg_overlap_started(void* handle) {
  auto& o = *static_cast<OverlapHandle*>(handle)->overlap;
  std::lock_guard<std::mutex> lock(o.mutex);
  return o.next;
}

// How many buckets the last finished pass started before its last gradient was accumulated.
size_t llg_overlap_early(void* handle) {
  auto& o = *static_cast<OverlapHandle*>(handle)->overlap;
  std::lock_guard<std::mutex> lock(o.mutex);
  return o.last_early;
}

// Launches the buckets the armed backward pass left (parameters it did not reach), in order,
// waits for all of them and disarms. Returns 0, or -1 with the first failure in `err` (a
// collective's, or a hook's).
int llg_overlap_finish(void* handle, char* err, size_t err_len) {
  auto& o = *static_cast<OverlapHandle*>(handle)->overlap;
  std::lock_guard<std::mutex> lock(o.mutex);
  o.armed = false;
  o.last_early = o.early;
  if (o.error.empty()) {
    try {
      while (o.next < o.flats.size()) {
        o.launch(o.next++);
      }
    } catch (const std::exception& e) {
      o.error = llg::message(e);
    }
  }
  o.wait_launched();
  if (!o.error.empty()) {
    llg::fail_with(o.error, err, err_len);
    return -1;
  }
  return 0;
}

// Removes the hooks that are still ours (a parameter may have been given newer buckets' hooks
// since) and waits for anything launched.
void llg_overlap_free(void* handle) {
  auto* h = static_cast<OverlapHandle*>(handle);
  auto& o = *h->overlap;
  {
    std::lock_guard<std::mutex> lock(o.mutex);
    o.armed = false;
    o.wait_launched();
  }
  for (size_t i = 0; i < o.params.size(); ++i) {
    auto& hook = torch::autograd::impl::post_acc_grad_hooks(o.params[i]);
    if (hook.get() == o.installed[i]) {
      hook.reset();
    }
  }
  delete h;
}

void llg_c10d_free(void* group) {
  delete static_cast<Group*>(group);
}

}  // extern "C"
