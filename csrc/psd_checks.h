// The input checks every psd op shares (TORCH_CHECK, naming the argument): rows x (M x D) and
// columns y (N x D) of one float dtype on one device, at least one row each.
#pragma once

#include <ATen/ATen.h>

namespace psd {

// The accumulation dtype of x's: float64 stays float64, everything else runs in float32.
inline at::ScalarType check_embeddings(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2, "x and y must be 2-D, got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.size(1) == y.size(1), "x and y must have the same width, got ", x.size(1), " and ", y.size(1));
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "x and y must have one dtype, got ", x.scalar_type(), " and ",
              y.scalar_type());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "x must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(y.device() == x.device(), "y must be on ", x.device(), ", got ", y.device());
  TORCH_CHECK(x.size(0) > 0 && y.size(0) > 0, "x and y need at least one row");
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace psd
