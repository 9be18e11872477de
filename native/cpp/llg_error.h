// How the C faces over libtorch (distributed/src/c10d.cpp, models/src/fused_adamw.cpp) hand a
// C++ exception back across the C boundary: its message, without libtorch's backtrace, copied
// into the caller's buffer.
#pragma once

#include <cstring>
#include <exception>
#include <string>

#include <c10/util/Exception.h>

namespace llg {

inline void fail(const std::exception& e, char* err, size_t err_len) {
  std::string message;
  if (auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    message = c10->what_without_backtrace();
  } else {
    message = e.what();
  }
  if (err_len > 0) {
    std::strncpy(err, message.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
}

}  // namespace llg
