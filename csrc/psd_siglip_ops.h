// The sigmoid (SigLIP) loss's ops (defined in psd_siglip.cpp), registered with the softmax loss's
// in psd_loss.cpp: one registration of every psd op.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#define PSD_SIGLIP_PARAMS                                                                                   \
  const at::Tensor &x, const at::Tensor &y, const at::Tensor &scale, const at::Tensor &bias,              \
      const at::Tensor &alpha_rows, const at::Tensor &alpha_cols, const at::Tensor &labels,               \
      const c10::optional<at::Tensor> &teacher_x, const c10::optional<at::Tensor> &teacher_y,             \
      const c10::optional<at::Tensor> &teacher_scale, const c10::optional<at::Tensor> &teacher_bias
// The same arguments in the op schema.
#define PSD_SIGLIP_ARGS                                                                                  \
  "Tensor x, Tensor y, Tensor scale, Tensor bias, Tensor alpha_rows, Tensor alpha_cols, Tensor labels, " \
  "Tensor? teacher_x, Tensor? teacher_y, Tensor? teacher_scale, Tensor? teacher_bias"

namespace psd {

// psd::siglip_forward: the per-row losses row_i = sum_j e_ij, (M,).
at::Tensor siglip_forward(PSD_SIGLIP_PARAMS);
// psd::siglip_backward: dx, dy, ds, db for per-row upstream gradients grad_rows (recomputes).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> siglip_backward(PSD_SIGLIP_PARAMS,
                                                                           const at::Tensor &grad_rows);
// psd::siglip_forward_backward: sum_i w_i row_i and its gradients in one sweep.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> siglip_forward_backward(
    PSD_SIGLIP_PARAMS, const at::Tensor &weight_rows);

}  // namespace psd
