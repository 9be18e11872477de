// What the two C faces over c10d share: the group handle they give out and the TCPStore
// rendezvous they meet at. `c10d.cpp` (linked into every binary) opens Gloo groups and runs
// every collective through `c10d::Backend`'s virtual functions; `nccl.cpp` (a shared object
// loaded only on GPU machines, see src/nccl.rs) opens NCCL groups and hands back the same
// handle, so the collectives and `llg_c10d_free` serve both.
#pragma once

#include <chrono>
#include <cstdint>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace llg {

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
};

// The TCPStore on host:port (hosted by this process when `host_store`), seen under `prefix`.
inline c10::intrusive_ptr<c10d::Store> rendezvous_store(
    const char* host,
    uint16_t port,
    bool host_store,
    const char* prefix,
    int world,
    std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = port;
  options.isServer = host_store;
  options.numWorkers = world;
  options.waitWorkers = true;
  options.timeout = timeout;
  options.multiTenant = true;
  auto store = c10::make_intrusive<c10d::TCPStore>(host, options);
  return c10::make_intrusive<c10d::PrefixStore>(prefix, store);
}

}  // namespace llg
