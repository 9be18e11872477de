// A C face for libtorch's fused AdamW kernel (`at::_fused_adamw_`), which tch does not bind.
// The kernel reads each parameter, gradient and moment once and writes them once, where the
// same update written with tch's per-tensor operations launches ten kernels per parameter and
// passes over its memory as many times. Compiled by build.rs against the headers of the
// libtorch that tch links, and called from `src/optim.rs`.

#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/full.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include "llg_error.h"

extern "C" {

// One AdamW step (PyTorch's, decoupled decay, bias-corrected moments; `step` counts from 1)
// over `count` parameters with their gradients and moments, updated in place. The kernel wants
// one device and one dtype per call, so the parameters are grouped by both, as
// `torch.optim.AdamW(fused=True)` groups them. Returns 0, or -1 with the reason in `err`.
int llg_fused_adamw(
    at::Tensor* const* params,
    at::Tensor* const* grads,
    at::Tensor* const* exp_avgs,
    at::Tensor* const* exp_avg_sqs,
    size_t count,
    double step,
    double lr,
    double beta1,
    double beta2,
    double weight_decay,
    double eps,
    char* err,
    size_t err_len) {
  try {
    c10::NoGradGuard no_grad;
    std::map<std::pair<std::string, int>, std::vector<size_t>> groups;
    for (size_t i = 0; i < count; ++i) {
      const at::Tensor& p = *params[i];
      // libtorch's CPU kernel walks the four buffers by the parameter's element count without
      // checking them, so a mismatch would read and write out of bounds.
      for (const at::Tensor* t : {grads[i], exp_avgs[i], exp_avg_sqs[i]}) {
        TORCH_CHECK(
            t->sizes() == p.sizes() && t->scalar_type() == p.scalar_type() &&
                t->device() == p.device(),
            "parameter ", i, " is ", p.sizes(), " ", p.scalar_type(), " on ", p.device(),
            " but its gradient or moment is ", t->sizes(), " ", t->scalar_type(), " on ",
            t->device());
      }
      TORCH_CHECK(
          p.is_contiguous() && grads[i]->is_contiguous() && exp_avgs[i]->is_contiguous() &&
              exp_avg_sqs[i]->is_contiguous(),
          "parameter ", i, ": the fused kernel needs contiguous tensors");
      groups[{p.device().str(), static_cast<int>(p.scalar_type())}].push_back(i);
    }
    for (const auto& [key, members] : groups) {
      std::vector<at::Tensor> p, g, m, v, steps;
      const at::Tensor& first = *params[members.front()];
      // The kernel reads the step from a float32 tensor on the parameters' device, one per
      // parameter; they may all be the same tensor because it only reads them.
      at::Tensor step_tensor =
          at::full({}, step, at::TensorOptions().dtype(at::kFloat).device(first.device()));
      for (size_t i : members) {
        p.push_back(*params[i]);
        g.push_back(*grads[i]);
        m.push_back(*exp_avgs[i]);
        v.push_back(*exp_avg_sqs[i]);
        steps.push_back(step_tensor);
      }
      at::_fused_adamw_(
          p, g, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
          /*amsgrad=*/false, /*maximize=*/false);
    }
    return 0;
  } catch (const std::exception& e) {
    llg::fail(e, err, err_len);
    return -1;
  }
}

}  // extern "C"
