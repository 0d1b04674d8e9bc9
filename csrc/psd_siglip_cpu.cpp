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
#include "psd_vec.h"

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
  static inline V exp(V x) { return vec::exp(x); }  // psd_vec.h
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
  static inline V exp(V x) { return vec::exp(x); }
  static inline V log1p(V x) {
    V r;
    for (int k = 0; k < n; ++k) r[k] = std::log1p(x[k]);
    return r;
  }
};

using namespace vec;  // Vec<T> (Lanes<T>::V), load, store, hsum

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

template <typename T>
void dispatch(const Params& p, const Tile<T>& tile) {
  with_case(p.teacher, tile.w != nullptr, tile.loss != nullptr, [&](auto k, auto grad, auto loss) {
    tile_impl<T, decltype(k)::value, decltype(grad)::value, decltype(loss)::value>(p, tile);
  });
}

}  // namespace

void epilogue(const Params& p, const Tile<float>& tile) { dispatch(p, tile); }
void epilogue(const Params& p, const Tile<double>& tile) { dispatch(p, tile); }

}  // namespace cpu
}  // namespace siglip
}  // namespace psd
