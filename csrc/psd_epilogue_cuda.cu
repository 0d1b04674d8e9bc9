// CUDA epilogues of the fused PSD loss (declared in psd_epilogue.h).
//
// Design choice: on CUDA the driver (psd_loss.cpp) keeps cuBLAS GEMMs for the
// dot products and gradient products and fuses everything else into these three
// kernels. The GEMMs are > 90% of the FLOPs and cuBLAS runs them near peak for any
// shape and dtype with no tuning; each epilogue reads the block once or twice,
// so with large blocks (up to 256 MB) the loss costs the GEMMs plus a few
// bandwidth-bound passes. A fully fused kernel (GEMM and softmax in registers,
// flash-attention style) is what the Triton backend (psd_kernels/backends/triton/launcher.py) provides.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_runtime.h>

#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "psd_epilogue.h"

namespace psd {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }

template <typename T>
__device__ __forceinline__ T block_max(T v, T* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] = fmax(sh[threadIdx.x], sh[threadIdx.x + w]);
    __syncthreads();
  }
  T r = sh[0];
  __syncthreads();
  return r;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  T r = sh[0];
  __syncthreads();
  return r;
}

// One thread block per row: max, then sum of exp(c v - max) and of exp(c v - max) d.
// Reads the row twice (max, sums); writes three scalars.
template <typename T>
__device__ void row_pass(const T* v, const T* d, int64_t N, T c, T* sh, T& m_out, T& l_out, T& w_out) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = threadIdx.x; j < N; j += kThreads) m = fmax(m, v[j]);
  m = c * block_max(m, sh);  // c > 0: max of c v is c max v
  T l = 0, w = 0;
  for (int64_t j = threadIdx.x; j < N; j += kThreads) {
    T e = dexp(c * v[j] - m);
    l += e;
    w += e * d[j];
  }
  l = block_sum(l, sh);
  w = block_sum(w, sh);
  m_out = m;
  l_out = l;
  w_out = w;
}

template <typename T>
__global__ void row_stats_kernel(const T* d, const T* t, int64_t N, T s, T ts, T* m, T* l, T* pd, T* tm, T* tl,
                                 T* td) {
  __shared__ T sh[kThreads];
  const int64_t i = blockIdx.x;
  const T* di = d + i * N;
  T a, b, c;
  row_pass(di, di, N, s, sh, a, b, c);
  if (threadIdx.x == 0) {
    m[i] = a;
    l[i] = b;
    pd[i] = c;
  }
  if (t != nullptr) {
    row_pass(t + i * N, di, N, ts, sh, a, b, c);
    if (threadIdx.x == 0) {
      tm[i] = a;
      tl[i] = b;
      td[i] = c;
    }
  }
}

// A 32 x 32 thread block per 32 columns: thread (tx, ty) reads column j = 32 blockIdx.x + tx
// at rows ty, ty + 32, ... (a warp reads 32 consecutive columns of one row: coalesced);
// partial maxima and sums are combined over ty in shared memory, then folded into the
// running (max, sum, weighted sum) of the rows seen so far.
constexpr int kColW = 32, kRowT = 32;

template <typename T>
__device__ void col_pass(const T* v, const T* d, int64_t R, int64_t N, T c, T* cm, T* cl, T* cw) {
  __shared__ T sa[kRowT][kColW + 1];
  __shared__ T sb[kRowT][kColW + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColW + tx;
  const bool valid = j < N;
  T m = -std::numeric_limits<T>::infinity();
  if (valid) {
    for (int64_t i = ty; i < R; i += kRowT) m = fmax(m, v[i * N + j]);
  }
  sa[ty][tx] = m;
  __syncthreads();
  if (ty == 0) {
    for (int k = 1; k < kRowT; ++k) m = fmax(m, sa[k][tx]);
    sa[0][tx] = valid ? fmax(cm[j], c * m) : T(0);  // c > 0: max of c v is c max v
  }
  __syncthreads();
  const T nm = sa[0][tx];
  T l = 0, w = 0;
  if (valid) {
    for (int64_t i = ty; i < R; i += kRowT) {
      const T e = dexp(c * v[i * N + j] - nm);
      l += e;
      w += e * d[i * N + j];
    }
  }
  __syncthreads();  // every thread has read sa[0][tx]
  sa[ty][tx] = l;
  sb[ty][tx] = w;
  __syncthreads();
  if (ty == 0 && valid) {
    for (int k = 1; k < kRowT; ++k) {
      l += sa[k][tx];
      w += sb[k][tx];
    }
    const T f = dexp(cm[j] - nm);  // rescale the earlier rows' sums to the new max
    cl[j] = cl[j] * f + l;
    cw[j] = cw[j] * f + w;
    cm[j] = nm;
  }
  __syncthreads();
}

template <typename T>
__global__ void col_stats_kernel(const T* d, const T* t, int64_t R, int64_t N, T s, T ts, T* cm, T* cl, T* cpd,
                                 T* ctm, T* ctl, T* ctd) {
  col_pass(d, d, R, N, s, cm, cl, cpd);
  if (t != nullptr) col_pass(t, d, R, N, ts, ctm, ctl, ctd);
}

// G_ij = rp_i e^{S_ij - lse_i} - rr_i e^{T_ij - tlse_i} + cp_j e^{S_ij - clse_j} - cr_j e^{T_ij - ctlse_j},
// written over d (t may alias d: each thread reads its element before writing it).
template <typename T>
__global__ void form_grad_kernel(T* d, const T* t, int64_t R, int64_t N, T s, T ts, const T* lse, const T* tlse,
                                 const T* rp, const T* rr, const T* clse, const T* ctlse, const T* cp, const T* cr) {
  const int64_t total = R * N;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = k / N, j = k - i * N;
    const T sd = s * d[k];
    T g = rp[i] * dexp(sd - lse[i]);
    T st = 0;
    if (t != nullptr) {
      st = ts * t[k];
      g -= rr[i] * dexp(st - tlse[i]);
    }
    if (cp != nullptr) {
      g += cp[j] * dexp(sd - clse[j]);
      if (t != nullptr) g -= cr[j] * dexp(st - ctlse[j]);
    }
    d[k] = g;
  }
}

template <typename T>
T* ptr(const at::Tensor& v) { return v.defined() ? v.data_ptr<T>() : nullptr; }

}  // namespace

#ifndef __CUDA_ARCH_LIST__
#error "nvcc >= 11.5 is needed: psd_kernels._C records its archs from __CUDA_ARCH_LIST__"
#endif

std::vector<int64_t> compiled_archs() {
  std::vector<int64_t> archs;
  for (int64_t code : {__CUDA_ARCH_LIST__}) archs.push_back(code / 10);  // 900 -> 90
  return archs;
}

std::string arch_error(int64_t major, int64_t minor) {
  std::string built;
  for (int64_t code : compiled_archs()) built += (built.empty() ? "sm_" : ", sm_") + std::to_string(code);
  const std::string arch = std::to_string(major) + "." + std::to_string(minor);
  return "psd_kernels._C has no CUDA kernels for this GPU's arch sm_" + std::to_string(major * 10 + minor) +
         ": it was built for " + built + ". Rebuild it for this GPU: PSD_CUDA_ARCHS=" + arch +
         " pip install --no-build-isolation -e . (in the repository root; list several archs separated by "
         "';'), or use backend=\"triton\"";
}

void check_arch(int index) {
  // per device: 0 not asked yet, 1 the kernels load, 2 no kernel image for its arch
  static std::vector<std::atomic<int>> state(c10::cuda::device_count());
  int known = state[index].load(std::memory_order_relaxed);
  if (known == 0) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, row_stats_kernel<float>);
    if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) {
      (void)cudaGetLastError();  // not a sticky error: clear it for the next CUDA call
      known = 2;
    } else {
      C10_CUDA_CHECK(err);
      known = 1;
    }
    state[index].store(known, std::memory_order_relaxed);
  }
  if (known == 2) {
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(index);
    TORCH_CHECK(false, "cuda:", index, " (", prop->name, "): ", arch_error(prop->major, prop->minor));
  }
}

void row_stats(const at::Tensor& d, const at::Tensor& t, double s, double ts, at::Tensor& m, at::Tensor& l,
               at::Tensor& pd, at::Tensor& tm, at::Tensor& tl, at::Tensor& td) {
  const int64_t R = d.size(0), N = d.size(1);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "psd_row_stats", [&] {
    row_stats_kernel<scalar_t><<<R, kThreads, 0, stream>>>(
        ptr<scalar_t>(d), ptr<scalar_t>(t), N, static_cast<scalar_t>(s), static_cast<scalar_t>(ts),
        ptr<scalar_t>(m), ptr<scalar_t>(l), ptr<scalar_t>(pd), ptr<scalar_t>(tm), ptr<scalar_t>(tl),
        ptr<scalar_t>(td));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void col_stats_update(const at::Tensor& d, const at::Tensor& t, double s, double ts, at::Tensor& cm,
                      at::Tensor& cl, at::Tensor& cpd, at::Tensor& ctm, at::Tensor& ctl, at::Tensor& ctd) {
  const int64_t R = d.size(0), N = d.size(1);
  const int64_t blocks = (N + kColW - 1) / kColW;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "psd_col_stats", [&] {
    col_stats_kernel<scalar_t><<<blocks, dim3(kColW, kRowT), 0, stream>>>(
        ptr<scalar_t>(d), ptr<scalar_t>(t), R, N, static_cast<scalar_t>(s), static_cast<scalar_t>(ts),
        ptr<scalar_t>(cm), ptr<scalar_t>(cl), ptr<scalar_t>(cpd), ptr<scalar_t>(ctm), ptr<scalar_t>(ctl),
        ptr<scalar_t>(ctd));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void form_grad(at::Tensor& d, const at::Tensor& t, double s, double ts, const at::Tensor& lse,
               const at::Tensor& tlse, const at::Tensor& rp, const at::Tensor& rr, const at::Tensor& clse,
               const at::Tensor& ctlse, const at::Tensor& cp, const at::Tensor& cr) {
  const int64_t total = d.numel();
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65536);
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool teacher = t.defined();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "psd_form_grad", [&] {
    form_grad_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        ptr<scalar_t>(d), ptr<scalar_t>(t), d.size(0), d.size(1), static_cast<scalar_t>(s),
        static_cast<scalar_t>(ts), ptr<scalar_t>(lse), teacher ? ptr<scalar_t>(tlse) : nullptr, ptr<scalar_t>(rp),
        teacher ? ptr<scalar_t>(rr) : nullptr, ptr<scalar_t>(clse), teacher ? ptr<scalar_t>(ctlse) : nullptr,
        ptr<scalar_t>(cp), teacher ? ptr<scalar_t>(cr) : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace psd
