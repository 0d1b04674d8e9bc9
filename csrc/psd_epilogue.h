// The element-wise epilogues of the fused PSD loss, one implementation per device.
//
// The driver (psd_loss.cpp) computes a block of dot products d = x_blk @ y^T
// (R rows x N columns, fp32 or fp64, row-major with leading dimension N) and,
// with a separate teacher, t = tx_blk @ ty^T. These functions turn the block
// into statistics and into the gradient tile G without any other M x N buffer.
// Notation (docs/loss.md): S = s d, T = ts t (t is d for a self
// teacher), P = softmax(S), R = softmax(T) over the row (or over the column).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace psd {

// Per-row statistics of complete rows. For each row i of the block:
//   m_i  = max_j S_ij          l_i  = sum_j exp(S_ij - m_i)     pd_i = sum_j exp(S_ij - m_i) d_ij
//   tm_i = max_j T_ij          tl_i = sum_j exp(T_ij - tm_i)    td_i = sum_j exp(T_ij - tm_i) d_ij
// so lse_i = m_i + log l_i, E_P[d_i] = pd_i / l_i, E_R[d_i] = td_i / tl_i.
// `t` undefined: no teacher statistics (self teacher at the student's scale).
// Outputs are (R,) tensors of d's dtype.
void row_stats(const at::Tensor& d, const at::Tensor& t, double s, double ts,
               at::Tensor& m, at::Tensor& l, at::Tensor& pd,
               at::Tensor& tm, at::Tensor& tl, at::Tensor& td);

// Folds the block's rows into running column statistics (online softmax over rows):
// the same six quantities as row_stats, per column j, over all rows seen so far.
// Columns start at max = -inf and sums = 0. (N,) tensors, updated in place.
void col_stats_update(const at::Tensor& d, const at::Tensor& t, double s, double ts,
                      at::Tensor& cm, at::Tensor& cl, at::Tensor& cpd,
                      at::Tensor& ctm, at::Tensor& ctl, at::Tensor& ctd);

// Overwrites d with the gradient tile, apart from the one-hot terms:
//   G_ij = rp_i exp(S_ij - lse_i) - rr_i exp(T_ij - tlse_i)
//        + cp_j exp(S_ij - clse_j) - cr_j exp(T_ij - ctlse_j)
// Row coefficients (R,): rp, rr (rr unused when t is undefined).
// Column coefficients (N,): undefined cp means no column direction.
void form_grad(at::Tensor& d, const at::Tensor& t, double s, double ts,
               const at::Tensor& lse, const at::Tensor& tlse, const at::Tensor& rp, const at::Tensor& rr,
               const at::Tensor& clse, const at::Tensor& ctlse, const at::Tensor& cp, const at::Tensor& cr);

namespace cpu {
void row_stats(const at::Tensor& d, const at::Tensor& t, double s, double ts,
               at::Tensor& m, at::Tensor& l, at::Tensor& pd,
               at::Tensor& tm, at::Tensor& tl, at::Tensor& td);
void col_stats_update(const at::Tensor& d, const at::Tensor& t, double s, double ts,
                      at::Tensor& cm, at::Tensor& cl, at::Tensor& cpd,
                      at::Tensor& ctm, at::Tensor& ctl, at::Tensor& ctd);
void form_grad(at::Tensor& d, const at::Tensor& t, double s, double ts,
               const at::Tensor& lse, const at::Tensor& tlse, const at::Tensor& rp, const at::Tensor& rr,
               const at::Tensor& clse, const at::Tensor& ctlse, const at::Tensor& cp, const at::Tensor& cr);
}  // namespace cpu

#ifdef PSD_WITH_CUDA
namespace cuda {
// The architectures nvcc compiled the kernels for, compute capability x 10 (80, 90, 100):
// its __CUDA_ARCH_LIST__, so the extension itself says what it holds.
std::vector<int64_t> compiled_archs();
// The error for a GPU of compute capability major.minor that has no kernel image here:
// its sm_XY, the built archs and the build flag to set.
std::string arch_error(int64_t major, int64_t minor);
// Throws arch_error (prefixed by the device) unless the kernels load on CUDA device
// `index`; asks the driver once per device, later calls read the cached answer.
void check_arch(int index);
void row_stats(const at::Tensor& d, const at::Tensor& t, double s, double ts,
               at::Tensor& m, at::Tensor& l, at::Tensor& pd,
               at::Tensor& tm, at::Tensor& tl, at::Tensor& td);
void col_stats_update(const at::Tensor& d, const at::Tensor& t, double s, double ts,
                      at::Tensor& cm, at::Tensor& cl, at::Tensor& cpd,
                      at::Tensor& ctm, at::Tensor& ctl, at::Tensor& ctd);
void form_grad(at::Tensor& d, const at::Tensor& t, double s, double ts,
               const at::Tensor& lse, const at::Tensor& tlse, const at::Tensor& rp, const at::Tensor& rr,
               const at::Tensor& clse, const at::Tensor& ctlse, const at::Tensor& cp, const at::Tensor& cr);
}  // namespace cuda
#endif

}  // namespace psd
