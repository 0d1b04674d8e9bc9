// CPU epilogue of the fused sigmoid (SigLIP) loss (declared in psd_siglip.h).
//
// One pass over a tile the driver keeps in cache (at most 256 x 256), in 8-lane (fp32) or
// 4-lane (fp64) vectors written with GCC vector extensions (AVX2 + FMA where setup.py
// enables them). fp32 uses branch-free exp and log1p polynomials; fp64 (which proves the
// math in tests) calls libm per lane. A row's tail is run through the same vector code on a
// zero-padded copy, its padding lanes masked out, so every column rounds alike.
// Per pair (docs/siglip_loss.md, "Numerics"), with E = exp(-|l|):
//   softplus(l) = max(l, 0) + log1p(E),  softplus(-l) = max(-l, 0) + log1p(E)
//   sigmoid(l)  = 1 / (1 + E) for l >= 0,  E / (1 + E) for l < 0
// Reads the tile (and the teacher tile) once, writes G over it once.
#include "psd_siglip.h"

#include <cmath>
#include <cstring>

namespace psd {
namespace siglip {
namespace cpu {
namespace {

template <typename T>
struct Lanes;

template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t S;
  typedef S I __attribute__((vector_size(32)));  // the type of a comparison of two V
  static constexpr int n = 8;
  static inline V splat(float v) { return V{} + v; }
  static inline I iota() { return I{0, 1, 2, 3, 4, 5, 6, 7}; }
  // exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln2 / 2 (Cody-Waite), degree-7 polynomial:
  // relative error about 2e-7. Below -87 (and for -inf) it returns 0. The same as
  // psd_epilogue_cpu.cpp's, whose helpers are private to that file.
  static inline V exp(V x) {
    const V lo = splat(-87.0f), hi = splat(88.0f);
    V xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const V magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    V k = (xc * splat(1.44269504088896341f) + magic) - magic;
    V r = xc - k * splat(0.693359375f);
    r = r - k * splat(-2.12194440e-4f);
    V p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    I bits = (__builtin_convertvector(k, I) + 127) << 23;
    V scale;
    std::memcpy(&scale, &bits, sizeof(V));
    V res = p * scale;
    return x < lo ? splat(0.0f) : res;
  }
  // log1p(v) for v in [0, 1] (the only range the loss needs: v = exp(-|l|)). Cephes' logf
  // kernel on u = 1 + v without forming u: for u < sqrt 2 its reduced argument u - 1 is v
  // itself (exact, so tiny v keep full relative precision); above, u = 2 m with
  // m - 1 = (v - 1) / 2. log(1 + x) = x - x^2/2 + x^3 P(x), relative error about 1e-7.
  static inline V log1p(V v) {
    const auto big = v > splat(0.41421356237f);  // 1 + v > sqrt 2
    const V x = big ? (v - splat(1.0f)) * splat(0.5f) : v;
    const V k = big ? splat(1.0f) : splat(0.0f);
    const V z = x * x;
    V y = splat(7.0376836292e-2f);
    y = y * x + splat(-1.1514610310e-1f);
    y = y * x + splat(1.1676998740e-1f);
    y = y * x + splat(-1.2420140846e-1f);
    y = y * x + splat(1.4249322787e-1f);
    y = y * x + splat(-1.6668057665e-1f);
    y = y * x + splat(2.0000714765e-1f);
    y = y * x + splat(-2.4999993993e-1f);
    y = y * x + splat(3.3333331174e-1f);
    y = y * x * z;
    y = y + k * splat(-2.12194440e-4f) - splat(0.5f) * z;
    return x + y + k * splat(0.693359375f);
  }
};

template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t S;
  typedef S I __attribute__((vector_size(32)));
  static constexpr int n = 4;
  static inline V splat(double v) { return V{} + v; }
  static inline I iota() { return I{0, 1, 2, 3}; }
  static inline V exp(V x) {
    V r;
    for (int k = 0; k < n; ++k) r[k] = std::exp(x[k]);
    return r;
  }
  static inline V log1p(V x) {
    V r;
    for (int k = 0; k < n; ++k) r[k] = std::log1p(x[k]);
    return r;
  }
};

template <typename T>
using Vec = typename Lanes<T>::V;

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void store(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof(v)); }
template <typename T>
inline T hsum(Vec<T> v) {
  T a = 0;
  for (int k = 0; k < Lanes<T>::n; ++k) a += v[k];
  return a;
}

// sigmoid(v) and E = exp(-|v|) with one exp and one division.
template <typename T>
inline Vec<T> sigmoid(Vec<T> v, Vec<T>& e) {
  using LN = Lanes<T>;
  const Vec<T> zero = LN::splat(0), one = LN::splat(1);
  e = LN::exp(v < zero ? v : -v);
  const Vec<T> r = one / (one + e);
  return v < zero ? e * r : r;
}

// The vectors of one row of the tile, and its running sums.
template <typename T>
struct Row {
  Vec<T> s, b, ts, tb, alpha, w;  // splatted scalars: scale, bias, teacher's, alpha_rows_i, w_i
  typename Lanes<T>::I label;     // labels_i - col0 - j, compared with iota per vector
  Vec<T> loss, gd, g;             // sums of e, G d, G
};

// One vector of pairs: columns j .. j + n - 1 of row `r`, `valid` lanes counted (1 or 0).
template <typename T, Teacher K, bool kGrad, bool kLoss>
inline Vec<T> pairs(Row<T>& r, Vec<T> d, Vec<T> t, Vec<T> alpha_col, typename Lanes<T>::I lane, Vec<T> valid) {
  using LN = Lanes<T>;
  const Vec<T> zero = LN::splat(0), one = LN::splat(1);
  const Vec<T> l = r.s * d + r.b;
  Vec<T> e;
  const Vec<T> p = sigmoid<T>(l, e);
  Vec<T> sig;
  if constexpr (K == Teacher::kSelf) {
    sig = p;
  } else {
    Vec<T> et;
    sig = sigmoid<T>(r.ts * (K == Teacher::kScaled ? d : t) + r.tb, et);
  }
  const Vec<T> a = (r.alpha + alpha_col) * LN::splat(0.5);
  const Vec<T> z = lane == r.label ? one : zero;
  const Vec<T> q = z + a * (sig - z);  // (1 - a) z + a sigma~
  if constexpr (kLoss) {
    const Vec<T> lp = LN::log1p(e);
    const Vec<T> sp_pos = (l > zero ? l : zero) + lp;   // softplus(l)
    const Vec<T> sp_neg = (l < zero ? -l : zero) + lp;  // softplus(-l)
    r.loss += valid * ((one - q) * sp_pos + q * sp_neg);
  }
  if constexpr (kGrad) {
    const Vec<T> g = valid * r.w * (p - q);
    r.gd += g * d;
    r.g += g;
    return g;
  }
  return zero;
}

template <typename T, Teacher K, bool kGrad, bool kLoss>
void tile_impl(const Params& p, const Tile<T>& tl) {
  using LN = Lanes<T>;
  using I = typename LN::I;
  constexpr int L = LN::n;
  const Vec<T> zero = LN::splat(0), one = LN::splat(1);
  const I iota = LN::iota();
  const int64_t tail = tl.cols % L, body = tl.cols - tail;
  Vec<T> tail_valid = zero;
  for (int k = 0; k < tail; ++k) tail_valid[k] = 1;
  for (int64_t i = 0; i < tl.rows; ++i) {
    T* di = tl.d + i * tl.ld;
    const T* ti = tl.t ? tl.t + i * tl.ld : nullptr;
    Row<T> r;
    r.s = LN::splat(static_cast<T>(p.s));
    r.b = LN::splat(static_cast<T>(p.b));
    r.ts = LN::splat(static_cast<T>(p.ts));
    r.tb = LN::splat(static_cast<T>(p.tb));
    r.alpha = LN::splat(tl.alpha_rows[i]);
    r.w = LN::splat(kGrad ? tl.w[i] : T(0));
    // the positive's position relative to the tile, or -1 when it lies outside (fits the lanes' ints)
    const int64_t c = tl.labels[i] - tl.col0;
    r.label = I{} + static_cast<typename LN::S>(c >= 0 && c < tl.cols ? c : -1);
    r.loss = r.gd = r.g = zero;
    int64_t j = 0;
    for (; j < body; j += L) {
      const Vec<T> g = pairs<T, K, kGrad, kLoss>(r, load(di + j), ti ? load(ti + j) : zero,
                                                 load(tl.alpha_cols + j), iota + static_cast<typename LN::S>(j), one);
      if constexpr (kGrad) store(di + j, g);
    }
    if (tail) {
      // the same vector code on zero-padded copies; padding lanes have valid = 0
      T dv[L] = {}, tv[L] = {}, av[L] = {};
      std::memcpy(dv, di + j, tail * sizeof(T));
      if (ti) std::memcpy(tv, ti + j, tail * sizeof(T));
      std::memcpy(av, tl.alpha_cols + j, tail * sizeof(T));
      const Vec<T> g = pairs<T, K, kGrad, kLoss>(r, load(dv), load(tv), load(av), iota + static_cast<typename LN::S>(j),
                                                 tail_valid);
      if constexpr (kGrad) {
        store(dv, g);
        std::memcpy(di + j, dv, tail * sizeof(T));
      }
    }
    if constexpr (kLoss) tl.loss[i] += hsum<T>(r.loss);
    if constexpr (kGrad) {
      tl.ds[i] += hsum<T>(r.gd);
      tl.db[i] += hsum<T>(r.g);
    }
  }
}

template <typename T, Teacher K>
void dispatch_modes(const Params& p, const Tile<T>& tile) {
  const bool grad = tile.w != nullptr, loss = tile.loss != nullptr;
  if (grad && loss) return tile_impl<T, K, true, true>(p, tile);
  if (grad) return tile_impl<T, K, true, false>(p, tile);
  if (loss) return tile_impl<T, K, false, true>(p, tile);
}

template <typename T>
void dispatch(const Params& p, const Tile<T>& tile) {
  switch (p.teacher) {
    case Teacher::kSelf: return dispatch_modes<T, Teacher::kSelf>(p, tile);
    case Teacher::kScaled: return dispatch_modes<T, Teacher::kScaled>(p, tile);
    case Teacher::kSeparate: return dispatch_modes<T, Teacher::kSeparate>(p, tile);
  }
}

}  // namespace

void epilogue(const Params& p, const Tile<float>& tile) { dispatch(p, tile); }
void epilogue(const Params& p, const Tile<double>& tile) { dispatch(p, tile); }

}  // namespace cpu
}  // namespace siglip
}  // namespace psd
