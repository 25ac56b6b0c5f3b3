// C ABI over the few libtorch functions tch 0.24 does not bind (see src/lib.rs);
// the distributed engine (c10d) is in dist.cpp.
//
// Every function catches C++ exceptions and returns them as a malloc'ed message (NULL on
// success) that the caller frees with torchext_free_error: no exception crosses into Rust.
// Tensors are passed as tch's handles, which are `at::Tensor*` (torch-sys's torch_api.h).
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/leaky_relu.h>

#include <torch/headeronly/version.h>

#include <stdexcept>

#include "protect.h"

using torchext::list;

namespace {

// Device codes: 0 = CPU, 1 = CUDA.
c10::DeviceType device_type(int code) {
  switch (code) {
  case 0:
    return c10::DeviceType::CPU;
  case 1:
    return c10::DeviceType::CUDA;
  default:
    throw std::invalid_argument("torchext: unknown autocast device code");
  }
}

} // namespace

extern "C" {

void torchext_free_error(char *message) { std::free(message); }

// The libtorch version whose headers this shim was compiled against (the LIBTORCH of the
// build, which tch links too).
void torchext_torch_version(int *major, int *minor, int *patch) {
  *major = TORCH_VERSION_MAJOR;
  *minor = TORCH_VERSION_MINOR;
  *patch = TORCH_VERSION_PATCH;
}

// at::_fused_adam_ over n parameters (torch.optim.Adam(fused=True)); no amsgrad, no maximize.
// grad_scale and found_inf may be NULL.
char *torchext_fused_adam(at::Tensor **params, at::Tensor **grads,
                          at::Tensor **exp_avgs, at::Tensor **exp_avg_sqs,
                          at::Tensor **state_steps, size_t n, double lr,
                          double beta1, double beta2, double weight_decay,
                          double eps, at::Tensor *grad_scale,
                          at::Tensor *found_inf) {
  TORCHEXT_PROTECT({
    std::optional<at::Tensor> scale, inf;
    if (grad_scale != nullptr) {
      scale = *grad_scale;
    }
    if (found_inf != nullptr) {
      inf = *found_inf;
    }
    at::_fused_adam_(list(params, n), list(grads, n), list(exp_avgs, n),
                     list(exp_avg_sqs, n), {}, list(state_steps, n), lr, beta1,
                     beta2, weight_decay, eps, /*amsgrad=*/false,
                     /*maximize=*/false, scale, inf);
  })
}

// torch.use_deterministic_algorithms(on, warn_only=warn_only) plus cuDNN's deterministic mode
// (and no cuDNN benchmarking, whose algorithm choice varies between runs).
char *torchext_set_deterministic(bool on, bool warn_only) {
  TORCHEXT_PROTECT({
    at::globalContext().setDeterministicAlgorithms(on, warn_only);
    at::globalContext().setDeterministicCuDNN(on);
    if (on) {
      at::globalContext().setBenchmarkCuDNN(false);
    }
  })
}

// Whether deterministic algorithms are on (torch.are_deterministic_algorithms_enabled()).
bool torchext_deterministic() {
  return at::globalContext().deterministicAlgorithms();
}

// at::_amp_foreach_non_finite_check_and_unscale_: grads *= inv_scale in place, found_inf
// set to 1 when any of them holds an inf or NaN.
char *torchext_unscale_check(at::Tensor **grads, size_t n,
                             at::Tensor *found_inf, at::Tensor *inv_scale) {
  TORCHEXT_PROTECT({
    at::_amp_foreach_non_finite_check_and_unscale_(list(grads, n), *found_inf,
                                                   *inv_scale);
  })
}

// at::leaky_relu with any negative slope (tch binds only the default 0.01): one fused kernel
// forward and one backward, as torch.nn.functional.leaky_relu. The result is a new
// at::Tensor owned by the caller (tch frees it with `delete`, as its own results).
char *torchext_leaky_relu(at::Tensor *x, double slope, at::Tensor **out) {
  TORCHEXT_PROTECT({ *out = new at::Tensor(at::leaky_relu(*x, slope)); })
}

// Drops the gradients of n tensors (`p.grad = None` in PyTorch): afterwards grad() is
// undefined, so the next backward pass allocates it anew instead of adding into zeros.
char *torchext_clear_grads(at::Tensor **ts, size_t n) {
  TORCHEXT_PROTECT({
    for (size_t i = 0; i < n; ++i) {
      ts[i]->mutable_grad().reset();
    }
  })
}

// Reads the autocast state of a device: enabled flag and dtype (c10::ScalarType code).
char *torchext_autocast_get(int device, bool *enabled, int *dtype) {
  TORCHEXT_PROTECT({
    auto d = device_type(device);
    *enabled = at::autocast::is_autocast_enabled(d);
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(d));
  })
}

// Sets the autocast state of a device.
char *torchext_autocast_set(int device, bool enabled, int dtype) {
  TORCHEXT_PROTECT({
    auto d = device_type(device);
    at::autocast::set_autocast_dtype(d, static_cast<c10::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(d, enabled);
  })
}

// Nesting counter of autocast regions (the cast cache is cleared when it returns to 0).
char *torchext_autocast_enter(int *depth) {
  TORCHEXT_PROTECT({ *depth = at::autocast::increment_nesting(); })
}

char *torchext_autocast_exit(int *depth) {
  TORCHEXT_PROTECT({
    *depth = at::autocast::decrement_nesting();
    if (*depth == 0) {
      at::autocast::clear_cache();
    }
  })
}

} // extern "C"
