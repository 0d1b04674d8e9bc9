// 32-byte vectors (GCC vector extensions: AVX2 + FMA where setup.py enables them) of float (8
// lanes) and double (4 lanes): unaligned loads and stores, and exp(). Shared by the CPU epilogues
// of the softmax loss (psd_epilogue_cpu.cpp) and of the sigmoid loss (psd_siglip_cpu.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace psd {
namespace vec {

typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef double D4 __attribute__((vector_size(32)));

inline F8 splat(float v) { return F8{} + v; }

template <typename T>
struct Vector;
template <>
struct Vector<float> { typedef F8 type; };
template <>
struct Vector<double> { typedef D4 type; };
template <typename T>
using Vec = typename Vector<T>::type;

template <typename T>
inline typename Vector<T>::type load(const T* p) {
  typename Vector<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void store(T* p, typename Vector<T>::type v) { std::memcpy(p, &v, sizeof(v)); }
// The sum of the lanes, in lane order.
template <typename T>
inline T hsum(typename Vector<T>::type v) {
  T a = 0;
  for (int k = 0; k < static_cast<int>(sizeof(v) / sizeof(T)); ++k) a += v[k];
  return a;
}

// fp32, 8 lanes: a branch-free exp with Cody-Waite range reduction exp(x) = 2^k exp(r),
// k = round(x / ln 2), |r| <= ln2 / 2, and a degree-7 polynomial for exp(r) (relative error
// about 2e-7, i.e. 2 ulp). Below -87 (and for -inf) it returns 0.
inline F8 exp(F8 x) {
  const F8 lo = splat(-87.0f), hi = splat(88.0f);
  F8 xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const F8 magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  F8 k = (xc * splat(1.44269504088896341f) + magic) - magic;
  F8 r = xc - k * splat(0.693359375f);
  r = r - k * splat(-2.12194440e-4f);
  F8 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  I8 bits = (__builtin_convertvector(k, I8) + 127) << 23;
  F8 scale;
  std::memcpy(&scale, &bits, sizeof(F8));
  F8 res = p * scale;
  return x < lo ? splat(0.0f) : res;  // underflow and exp(-inf) give 0
}

// fp64, 4 lanes (used to prove the math in tests): libm per lane.
inline D4 exp(D4 x) {
  D4 r;
  for (int k = 0; k < 4; ++k) r[k] = std::exp(x[k]);
  return r;
}

}  // namespace vec
}  // namespace psd
