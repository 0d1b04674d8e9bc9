// CUDA epilogue of the fused sigmoid (SigLIP) loss (declared in psd_siglip.h).
//
// As for the softmax op (psd_epilogue_cuda.cu): cuBLAS computes the dot products and the
// gradient products of each row block (psd_siglip.cpp), and this one kernel does everything
// element-wise in between. One thread block per row of the block: its threads stride over the
// row's columns (a warp reads 32 consecutive columns: coalesced), read d (and the teacher's t)
// once, write G over d once, and reduce the row's sums of e, G d and G in registers, warp
// shuffles and shared memory. Per pair: one exp and one division for sigmoid(l), one log1p for
// the loss, one more exp and division for a teacher with logits of its own.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cuda_runtime.h>

#include "psd_siglip.h"

namespace psd::siglip::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }
__device__ __forceinline__ float dlog1p(float v) { return log1pf(v); }
__device__ __forceinline__ double dlog1p(double v) { return log1p(v); }

// sigmoid(v), and E = exp(-|v|) in e.
template <typename T>
__device__ __forceinline__ T sigmoid(T v, T& e) {
  e = dexp(-fabs(v));
  const T r = T(1) / (T(1) + e);
  return v < T(0) ? e * r : r;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sums three values over the thread block; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ void block_sum3(T& a, T& b, T& c) {
  __shared__ T sh[3][kWarps];
  a = warp_sum(a);
  b = warp_sum(b);
  c = warp_sum(c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
    sh[2][warp] = c;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? sh[0][lane] : T(0);
    b = lane < kWarps ? sh[1][lane] : T(0);
    c = lane < kWarps ? sh[2][lane] : T(0);
    a = warp_sum(a);
    b = warp_sum(b);
    c = warp_sum(c);
  }
}

template <typename T, Teacher K, bool kGrad, bool kLoss>
__global__ void __launch_bounds__(kThreads) siglip_kernel(Tile<T> tl, T s, T b, T ts, T tb) {
  const int64_t i = blockIdx.x;
  T* di = tl.d + i * tl.ld;
  const T* ti = K == Teacher::kSeparate ? tl.t + i * tl.ld : nullptr;
  const T alpha = tl.alpha_rows[i];
  const T w = kGrad ? tl.w[i] : T(0);
  const int64_t label = tl.labels[i] - tl.col0;
  T sum_e = 0, sum_gd = 0, sum_g = 0;
  for (int64_t j = threadIdx.x; j < tl.cols; j += kThreads) {
    const T d = di[j];
    const T l = s * d + b;
    T e;
    const T p = sigmoid(l, e);
    T sig = p;  // self teacher: sigmoid(t) = sigmoid(l)
    if (K != Teacher::kSelf) {
      T et;
      sig = sigmoid(ts * (K == Teacher::kScaled ? d : ti[j]) + tb, et);
    }
    const T a = (alpha + tl.alpha_cols[j]) * T(0.5);
    const T z = j == label ? T(1) : T(0);
    const T q = z + a * (sig - z);  // (1 - a) z + a sigmoid(t)
    if (kLoss) {
      const T lp = dlog1p(e);
      sum_e += (T(1) - q) * (fmax(l, T(0)) + lp) + q * (fmax(-l, T(0)) + lp);
    }
    if (kGrad) {
      const T g = w * (p - q);
      sum_gd += g * d;
      sum_g += g;
      di[j] = g;
    }
  }
  block_sum3(sum_e, sum_gd, sum_g);
  if (threadIdx.x == 0) {
    if (kLoss) tl.loss[i] += sum_e;
    if (kGrad) {
      tl.ds[i] += sum_gd;
      tl.db[i] += sum_g;
    }
  }
}

// One thread block per row of the tile, on the current stream, compiled per (teacher, grad, loss).
template <typename T>
void launch(const Params& p, const Tile<T>& tl) {
  auto stream = at::cuda::getCurrentCUDAStream();
  const T s = static_cast<T>(p.s), b = static_cast<T>(p.b), ts = static_cast<T>(p.ts), tb = static_cast<T>(p.tb);
  const dim3 grid(static_cast<unsigned>(tl.rows));
  with_case(p.teacher, tl.w != nullptr, tl.loss != nullptr, [&](auto k, auto grad, auto loss) {
    siglip_kernel<T, decltype(k)::value, decltype(grad)::value, decltype(loss)::value>
        <<<grid, kThreads, 0, stream>>>(tl, s, b, ts, tb);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void epilogue(const Params& p, const Tile<float>& tile) { launch(p, tile); }
void epilogue(const Params& p, const Tile<double>& tile) { launch(p, tile); }

}  // namespace psd::siglip::cuda
