// A C face for the peak of libtorch's caching allocator on an accelerator (what
// `torch.cuda.max_memory_allocated` reads and `torch.cuda.reset_peak_memory_stats` resets),
// which tch does not bind. It goes through c10's device-generic allocator interface in
// libc10, so it needs no CUDA headers and no link to libtorch_cuda: the CUDA allocator is
// there once libtorch's CUDA half is loaded, and asking without it is an error, not a crash.

#include <cstdint>
#include <exception>

#include <c10/core/Allocator.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceType.h>

#include "llg_error.h"

extern "C" {

// The peak of bytes allocated on CUDA device `device` since the last reset, into `peak`, and
// a new period started. Returns 0, or -1 with the reason in `err`.
int llg_cuda_take_peak_allocated(int device, int64_t* peak, char* err, size_t err_len) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto index = static_cast<c10::DeviceIndex>(device);
    auto stats = allocator->getDeviceStats(index);
    *peak = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
                .peak;
    allocator->resetPeakStats(index);
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

}  // extern "C"
