// How the C faces over libtorch (distributed/src/c10d.cpp, models/src/fused_adamw.cpp) hand a
// C++ exception back across the C boundary: its message, without libtorch's backtrace, copied
// into the caller's buffer (read back by `llamagen_native::c_error`).
#pragma once

#include <cstring>
#include <exception>
#include <string>

#include <c10/util/Exception.h>

namespace llg {

inline std::string message(const std::exception& e) {
  if (auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    return c10->what_without_backtrace();
  }
  return e.what();
}

inline void fail_with(const std::string& message, char* err, size_t err_len) {
  if (err_len > 0) {
    std::strncpy(err, message.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
}

inline void fail(const std::exception& e, char* err, size_t err_len) {
  fail_with(message(e), err, err_len);
}

}  // namespace llg
