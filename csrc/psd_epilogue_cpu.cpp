// CPU epilogues of the fused PSD loss (declared in psd_epilogue.h).
//
// Each function makes one or two passes over an R x N block that stays in cache
// (the driver sizes R so a block is about 4 MB), computes exp() in 8-lane (fp32) or
// 4-lane (fp64) vectors written with GCC vector extensions, and runs rows (or
// column chunks) in parallel with run_tasks (psd_parallel.h): each task owns its
// rows (or columns), so results do not depend on the thread that ran it.
#include "psd_epilogue.h"
#include "psd_parallel.h"
#include "psd_vec.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace psd {
namespace cpu {
namespace {

// f(i0, i1) over [0, n) in pieces of `grain`, on all threads.
template <typename F>
void parallel_ranges(int64_t n, int64_t grain, const F& f) {
  run_tasks((n + grain - 1) / grain, [&](int64_t k) { f(k * grain, std::min(n, (k + 1) * grain)); });
}

// Rows per task: about 64K elements.
inline int64_t row_grain(int64_t N) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(N, 1)); }

template <typename T>
struct Lanes;

// fp32: 8 lanes, exp by psd_vec.h's polynomial (relative error about 2e-7).
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int n = 8;
  static inline V exp(V x) { return vec::exp(x); }
  static inline V splat(float v) { return V{} + v; }
};

// fp64 (used to prove the math in tests): 4 lanes, libm exp per lane.
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(32)));
  static constexpr int n = 4;
  static inline V exp(V x) { return vec::exp(x); }
  static inline V splat(double v) { return V{} + v; }
};

using namespace vec;  // Vec<T> (Lanes<T>::V), load, store, hsum
template <typename T>
inline Vec<T> vmax(Vec<T> a, Vec<T> b) { return a > b ? a : b; }
template <typename T>
inline T hmax(Vec<T> v) {
  T m = v[0];
  for (int k = 1; k < Lanes<T>::n; ++k) m = v[k] > m ? v[k] : m;
  return m;
}
// Scalar exp through the vector code, so tails round exactly like the body.
template <typename T>
inline T sexp(T x) { return Lanes<T>::exp(Lanes<T>::splat(x))[0]; }

template <typename T>
T row_max(const T* p, int64_t n) {
  constexpr int L = Lanes<T>::n;
  Vec<T> vm = Lanes<T>::splat(-std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + L <= n; j += L) vm = vmax<T>(vm, load(p + j));
  T m = hmax<T>(vm);
  for (; j < n; ++j) m = p[j] > m ? p[j] : m;
  return m;
}

// sum_j exp(c * v_j - m) and sum_j exp(c * v_j - m) * d_j over one row.
template <typename T>
void row_sums(const T* v, const T* d, int64_t n, T c, T m, T& l, T& wd) {
  constexpr int L = Lanes<T>::n;
  const Vec<T> vc = Lanes<T>::splat(c), vmx = Lanes<T>::splat(m);
  Vec<T> al = Lanes<T>::splat(0), aw = Lanes<T>::splat(0);
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    Vec<T> e = Lanes<T>::exp(vc * load(v + j) - vmx);
    al += e;
    aw += e * load(d + j);
  }
  T sl = hsum<T>(al), sw = hsum<T>(aw);
  for (; j < n; ++j) {
    T e = sexp<T>(c * v[j] - m);
    sl += e;
    sw += e * d[j];
  }
  l = sl;
  wd = sw;
}

template <typename T>
void row_stats_impl(const at::Tensor& d, const at::Tensor& t, T s, T ts, at::Tensor& m, at::Tensor& l,
                    at::Tensor& pd, at::Tensor& tm, at::Tensor& tl, at::Tensor& td) {
  const int64_t R = d.size(0), N = d.size(1);
  const T* dp = d.data_ptr<T>();
  const T* tp = t.defined() ? t.data_ptr<T>() : nullptr;
  T *mp = m.data_ptr<T>(), *lp = l.data_ptr<T>(), *pdp = pd.data_ptr<T>();
  T *tmp = tp ? tm.data_ptr<T>() : nullptr, *tlp = tp ? tl.data_ptr<T>() : nullptr;
  T* tdp = tp ? td.data_ptr<T>() : nullptr;
  parallel_ranges(R, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* di = dp + i * N;
      mp[i] = s * row_max(di, N);  // s > 0, so max_j S_ij = s * max_j d_ij
      row_sums(di, di, N, s, mp[i], lp[i], pdp[i]);
      if (tp) {
        const T* ti = tp + i * N;
        tmp[i] = ts * row_max(ti, N);
        row_sums(ti, di, N, ts, tmp[i], tlp[i], tdp[i]);
      }
    }
  });
}

// Columns are processed in chunks of kChunk, rows streamed top to bottom: each row
// contributes kChunk contiguous values, the chunk's running sums live on the stack.
constexpr int64_t kChunk = 64;

// Online update of one column chunk [j0, j0 + w) with the block's values c * v:
// max, then rescaled sum of exp(c v - max) and of exp(c v - max) * d.
template <typename T>
void col_chunk(const T* v, const T* d, int64_t R, int64_t N, int64_t j0, int64_t w, T c,
               T* cm, T* cl, T* cw) {
  constexpr int L = Lanes<T>::n;
  constexpr int64_t NV = kChunk / L;
  const int64_t nv = w / L;  // full vectors in this chunk; the rest is scalar
  const Vec<T> vc = Lanes<T>::splat(c);
  Vec<T> bm[NV], al[NV], aw[NV];
  T sm[kChunk], sl[kChunk], sw[kChunk];
  for (int64_t k = 0; k < nv; ++k) bm[k] = Lanes<T>::splat(-std::numeric_limits<T>::infinity());
  for (int64_t k = nv * L; k < w; ++k) sm[k] = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < R; ++i) {
    const T* vi = v + i * N + j0;
    for (int64_t k = 0; k < nv; ++k) bm[k] = vmax<T>(bm[k], load(vi + k * L));
    for (int64_t k = nv * L; k < w; ++k) sm[k] = vi[k] > sm[k] ? vi[k] : sm[k];
  }
  // new max = max(old max, c * block max); old sums rescaled by exp(old - new)
  for (int64_t k = 0; k < nv; ++k) {
    Vec<T> old = load(cm + j0 + k * L);
    Vec<T> nm = vmax<T>(old, vc * bm[k]);
    Vec<T> f = Lanes<T>::exp(old - nm);
    bm[k] = nm;
    al[k] = load(cl + j0 + k * L) * f;
    aw[k] = load(cw + j0 + k * L) * f;
  }
  for (int64_t k = nv * L; k < w; ++k) {
    T old = cm[j0 + k];
    T nm = c * sm[k] > old ? c * sm[k] : old;
    T f = sexp<T>(old - nm);
    sm[k] = nm;
    sl[k] = cl[j0 + k] * f;
    sw[k] = cw[j0 + k] * f;
  }
  for (int64_t i = 0; i < R; ++i) {
    const T* vi = v + i * N + j0;
    const T* di = d + i * N + j0;
    for (int64_t k = 0; k < nv; ++k) {
      Vec<T> e = Lanes<T>::exp(vc * load(vi + k * L) - bm[k]);
      al[k] += e;
      aw[k] += e * load(di + k * L);
    }
    for (int64_t k = nv * L; k < w; ++k) {
      T e = sexp<T>(c * vi[k] - sm[k]);
      sl[k] += e;
      sw[k] += e * di[k];
    }
  }
  for (int64_t k = 0; k < nv; ++k) {
    store(cm + j0 + k * L, bm[k]);
    store(cl + j0 + k * L, al[k]);
    store(cw + j0 + k * L, aw[k]);
  }
  for (int64_t k = nv * L; k < w; ++k) {
    cm[j0 + k] = sm[k];
    cl[j0 + k] = sl[k];
    cw[j0 + k] = sw[k];
  }
}

template <typename T>
void col_stats_impl(const at::Tensor& d, const at::Tensor& t, T s, T ts, at::Tensor& cm, at::Tensor& cl,
                    at::Tensor& cpd, at::Tensor& ctm, at::Tensor& ctl, at::Tensor& ctd) {
  const int64_t R = d.size(0), N = d.size(1);
  const T* dp = d.data_ptr<T>();
  const T* tp = t.defined() ? t.data_ptr<T>() : nullptr;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  parallel_ranges(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kChunk, w = std::min(kChunk, N - j0);
      col_chunk<T>(dp, dp, R, N, j0, w, s, cm.data_ptr<T>(), cl.data_ptr<T>(), cpd.data_ptr<T>());
      if (tp) col_chunk<T>(tp, dp, R, N, j0, w, ts, ctm.data_ptr<T>(), ctl.data_ptr<T>(), ctd.data_ptr<T>());
    }
  });
}

template <typename T>
void form_grad_impl(at::Tensor& d, const at::Tensor& t, T s, T ts, const at::Tensor& lse, const at::Tensor& tlse,
                    const at::Tensor& rp, const at::Tensor& rr, const at::Tensor& clse, const at::Tensor& ctlse,
                    const at::Tensor& cp, const at::Tensor& cr) {
  constexpr int L = Lanes<T>::n;
  const int64_t R = d.size(0), N = d.size(1);
  T* dp = d.data_ptr<T>();
  const T* tp = t.defined() ? t.data_ptr<T>() : nullptr;  // may alias dp: read before write
  const T* lsep = lse.data_ptr<T>();
  const T* rpp = rp.data_ptr<T>();
  const T* tlsep = tp ? tlse.data_ptr<T>() : nullptr;
  const T* rrp = tp ? rr.data_ptr<T>() : nullptr;
  const bool col = cp.defined();
  const T* clsep = col ? clse.data_ptr<T>() : nullptr;
  const T* cpp = col ? cp.data_ptr<T>() : nullptr;
  const T* ctlsep = col && tp ? ctlse.data_ptr<T>() : nullptr;
  const T* crp = col && tp ? cr.data_ptr<T>() : nullptr;
  parallel_ranges(R, row_grain(N), [&](int64_t r0, int64_t r1) {
    const Vec<T> vs = Lanes<T>::splat(s), vts = Lanes<T>::splat(ts);
    for (int64_t i = r0; i < r1; ++i) {
      T* gi = dp + i * N;
      const T* ti = tp ? tp + i * N : nullptr;
      const Vec<T> vlse = Lanes<T>::splat(lsep[i]), vrp = Lanes<T>::splat(rpp[i]);
      const Vec<T> vtlse = Lanes<T>::splat(tp ? tlsep[i] : 0), vrr = Lanes<T>::splat(tp ? rrp[i] : 0);
      int64_t j = 0;
      for (; j + L <= N; j += L) {
        const Vec<T> sd = vs * load(gi + j);
        Vec<T> g = vrp * Lanes<T>::exp(sd - vlse);
        Vec<T> st{};
        if (ti) {
          st = vts * load(ti + j);
          g -= vrr * Lanes<T>::exp(st - vtlse);
        }
        if (col) {
          g += load(cpp + j) * Lanes<T>::exp(sd - load(clsep + j));
          if (ti) g -= load(crp + j) * Lanes<T>::exp(st - load(ctlsep + j));
        }
        store(gi + j, g);
      }
      for (; j < N; ++j) {
        const T sd = s * gi[j];
        T g = rpp[i] * sexp<T>(sd - lsep[i]);
        T st = 0;
        if (ti) {
          st = ts * ti[j];
          g -= rrp[i] * sexp<T>(st - tlsep[i]);
        }
        if (col) {
          g += cpp[j] * sexp<T>(sd - clsep[j]);
          if (ti) g -= crp[j] * sexp<T>(st - ctlsep[j]);
        }
        gi[j] = g;
      }
    }
  });
}

}  // namespace

void row_stats(const at::Tensor& d, const at::Tensor& t, double s, double ts, at::Tensor& m, at::Tensor& l,
               at::Tensor& pd, at::Tensor& tm, at::Tensor& tl, at::Tensor& td) {
  if (d.scalar_type() == at::kDouble) {
    row_stats_impl<double>(d, t, s, ts, m, l, pd, tm, tl, td);
  } else {
    row_stats_impl<float>(d, t, static_cast<float>(s), static_cast<float>(ts), m, l, pd, tm, tl, td);
  }
}

void col_stats_update(const at::Tensor& d, const at::Tensor& t, double s, double ts, at::Tensor& cm,
                      at::Tensor& cl, at::Tensor& cpd, at::Tensor& ctm, at::Tensor& ctl, at::Tensor& ctd) {
  if (d.scalar_type() == at::kDouble) {
    col_stats_impl<double>(d, t, s, ts, cm, cl, cpd, ctm, ctl, ctd);
  } else {
    col_stats_impl<float>(d, t, static_cast<float>(s), static_cast<float>(ts), cm, cl, cpd, ctm, ctl, ctd);
  }
}

void form_grad(at::Tensor& d, const at::Tensor& t, double s, double ts, const at::Tensor& lse,
               const at::Tensor& tlse, const at::Tensor& rp, const at::Tensor& rr, const at::Tensor& clse,
               const at::Tensor& ctlse, const at::Tensor& cp, const at::Tensor& cr) {
  if (d.scalar_type() == at::kDouble) {
    form_grad_impl<double>(d, t, s, ts, lse, tlse, rp, rr, clse, ctlse, cp, cr);
  } else {
    form_grad_impl<float>(d, t, static_cast<float>(s), static_cast<float>(ts), lse, tlse, rp, rr, clse, ctlse,
                          cp, cr);
  }
}

}  // namespace cpu
}  // namespace psd
