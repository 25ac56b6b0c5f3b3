// What every C function of the shim shares: exceptions become malloc'ed messages (NULL on
// success) that Rust frees with torchext_free_error, and tch's handles become tensor lists.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace torchext {

inline char *error_message(const char *what) {
  size_t n = std::strlen(what);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, what, n + 1);
  }
  return out;
}

#define TORCHEXT_PROTECT(...)                                                 \
  try {                                                                        \
    __VA_ARGS__;                                                                  \
    return nullptr;                                                            \
  } catch (const std::exception &e) {                                          \
    return ::torchext::error_message(e.what());                                            \
  } catch (...) {                                                              \
    return ::torchext::error_message("unknown C++ exception");                             \
  }

inline std::vector<at::Tensor> list(at::Tensor **ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

} // namespace torchext
