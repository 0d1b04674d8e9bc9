// The fused PSD loss: block driver, operator registration, Python module.
//
// Math and notation: docs/loss.md and docs/fused_algorithm.md. For rows x (M x D) and columns
// y (N x D), S = s x y^T, T = ts tx ty^T (or ts x y^T for a self teacher), and
//   l_i = lse_i - (1 - a_i) S_{i,c_i} - a_i sum_j R_ij S_ij
//   G_ij = g_i (P_ij - Q_ij) [+ g'_j (P'_ij - Q'_ij) for the column direction]
//   dx = s G y,  dy = s G^T x,  ds = sum_i g_i (E_P[d_i] - E_Q[d_i]) [+ columns].
//
// Algorithm (the same on CPU and CUDA; only the epilogues differ by device):
// rows are processed in blocks of R whose full score rows fit in a buffer of
// R x N (about 4 MB on CPU so it stays in cache, 256 MB on CUDA). For each block
// the dot products come from one GEMM (at::mm: MKL on CPU, cuBLAS on CUDA), the
// teacher's from a second one when it has its own embeddings, and the epilogues
// (psd_epilogue.h) turn them into statistics and the gradient tile G, which two
// more GEMMs multiply into dx and dy. On CPU each of these GEMMs is cut into
// independent single-threaded tiles that the threads take dynamically
// (psd_parallel.h: run_tasks).
//   one direction:        one sweep: statistics, G, dx, dy of each block at once;
//                         GEMMs: 3 (self teacher: scores, dx, dy) or 4 (separate
//                         teacher: + its scores), each M N D-sized.
//   symmetric (columns):  the column softmax needs every row first, so sweep 1
//                         computes row statistics and online column statistics,
//                         sweep 2 recomputes the dot products and forms one G
//                         for both directions, then dx and dy: 4 or 6 GEMMs in all.
// Extra memory: O(M + N) statistics, the R x N block buffers, fp32 copies of
// fp16/bf16 inputs and fp32 gradient accumulators (O((M + N) D)); never M x N.
// Blocks run one after another, each GEMM and epilogue using all threads; every
// output element of a GEMM tile comes from one BLAS call of a fixed shape and dy
// is accumulated block by block in a fixed order: repeated calls give identical
// results, whichever thread runs which tile.
// PSD_PROFILE=1 prints the time of each phase of a CPU call (GEMMs, epilogues).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>
#include <torch/extension.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <tuple>

#include "psd_checks.h"
#include "psd_epilogue.h"
#include "psd_parallel.h"
#include "psd_siglip_ops.h"

namespace psd {

void row_stats(const at::Tensor& d, const at::Tensor& t, double s, double ts, at::Tensor& m, at::Tensor& l,
               at::Tensor& pd, at::Tensor& tm, at::Tensor& tl, at::Tensor& td) {
#ifdef PSD_WITH_CUDA
  if (d.is_cuda()) return cuda::row_stats(d, t, s, ts, m, l, pd, tm, tl, td);
#endif
  cpu::row_stats(d, t, s, ts, m, l, pd, tm, tl, td);
}

void col_stats_update(const at::Tensor& d, const at::Tensor& t, double s, double ts, at::Tensor& cm,
                      at::Tensor& cl, at::Tensor& cpd, at::Tensor& ctm, at::Tensor& ctl, at::Tensor& ctd) {
#ifdef PSD_WITH_CUDA
  if (d.is_cuda()) return cuda::col_stats_update(d, t, s, ts, cm, cl, cpd, ctm, ctl, ctd);
#endif
  cpu::col_stats_update(d, t, s, ts, cm, cl, cpd, ctm, ctl, ctd);
}

void form_grad(at::Tensor& d, const at::Tensor& t, double s, double ts, const at::Tensor& lse,
               const at::Tensor& tlse, const at::Tensor& rp, const at::Tensor& rr, const at::Tensor& clse,
               const at::Tensor& ctlse, const at::Tensor& cp, const at::Tensor& cr) {
#ifdef PSD_WITH_CUDA
  if (d.is_cuda()) return cuda::form_grad(d, t, s, ts, lse, tlse, rp, rr, clse, ctlse, cp, cr);
#endif
  cpu::form_grad(d, t, s, ts, lse, tlse, rp, rr, clse, ctlse, cp, cr);
}

namespace {

// PSD_PROFILE=1 in the environment: each CPU call prints its wall time per phase to
// stderr (ms). tick(phase) charges the time since the previous tick to `phase`.
enum Phase { kDots, kRowStats, kColStats, kGradEpilogue, kGradGemms, kOther, kPhases };

struct Profile {
  static bool enabled() {
    static const bool on = std::getenv("PSD_PROFILE") != nullptr;
    return on;
  }
  double ms[kPhases] = {0};
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void tick(Phase p) {
    const auto now = std::chrono::steady_clock::now();
    ms[p] += std::chrono::duration<double, std::milli>(now - last).count();
    last = now;
  }
  void print() const {
    std::fprintf(stderr, "psd profile ms: dots %.1f row_stats %.1f col_stats %.1f grad_epilogue %.1f "
                 "grad_gemms %.1f other %.1f\n", ms[kDots], ms[kRowStats], ms[kColStats], ms[kGradEpilogue],
                 ms[kGradGemms], ms[kOther]);
  }
};
thread_local Profile* g_profile = nullptr;  // set for the duration of one profiled call
inline void tick(Phase p) {
  if (g_profile) g_profile->tick(p);
}

using at::Tensor;
using c10::optional;

// Rows per block. CPU: ~4 MB of fp32 per buffer (256 rows of 4096 columns stay in
// cache), between 64 rows (so the dy GEMM's inner dimension stays efficient) and 256.
// Larger blocks gain little once the GEMMs are tiled (run_tasks) and cost memory:
// the two buffers are most of the extra memory at B = 4096. CUDA: up to 256 MB per buffer.
int64_t block_rows(const Tensor& x, int64_t M, int64_t N) {
  const int64_t n = std::max<int64_t>(N, 1);
  const int64_t rows = x.is_cuda() ? std::max<int64_t>(1, (int64_t(1) << 26) / n)
                                   : std::min<int64_t>(256, std::max<int64_t>(64, (int64_t(1) << 20) / n));
  return std::max<int64_t>(1, std::min(rows, M));
}

// CPU GEMMs are cut into independent tiles, each one single-threaded BLAS call,
// that the threads take from a shared counter (run_tasks). One multi-threaded BLAS
// call per block splits its work statically and waits for its slowest thread: on
// a 2-core EPYC shared with another busy process, 256-row blocks ran at 35-45
// GFLOP/s in all; single-threaded tiles run at 75-85 GFLOP/s each (B = 4096,
// D = 512), and 2 threads of tiles at ~150 GFLOP/s on a quiet machine. Every
// output element is still computed by one BLAS call of a fixed shape, so results
// do not depend on which thread ran which tile.
constexpr int64_t kColTile = 256;  // columns of a score tile (N-chunks of the dots and of dy)
constexpr int64_t kRowTile = 64;   // rows of a dx tile

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Inputs {
  Tensor x, y, tx, ty;  // contiguous, in the accumulation dtype
  Tensor alpha, labels, alpha_col;
  double s, ts;
  bool teacher_emb, teacher_stats, symmetric;
  int64_t M, N;
};

void check_vector(const Tensor& v, int64_t n, const char* name, const Tensor& x) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, name, " must have shape (", n, "), got ", v.sizes());
  TORCH_CHECK(v.device() == x.device(), name, " must be on ", x.device(), ", got ", v.device());
}

Inputs prepare(const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& alpha, const Tensor& labels,
               const optional<Tensor>& alpha_col, const optional<Tensor>& teacher_x,
               const optional<Tensor>& teacher_y, const optional<Tensor>& teacher_scale) {
  const auto acc = check_embeddings(x, y);
  TORCH_CHECK(scale.numel() == 1, "scale must have one element, got ", scale.numel());
  Inputs in;
  in.M = x.size(0);
  in.N = y.size(0);
  in.x = x.to(acc).contiguous();
  in.y = y.to(acc).contiguous();
  check_vector(alpha, in.M, "alpha", x);
  check_vector(labels, in.M, "labels", x);
  TORCH_CHECK(labels.scalar_type() == at::kLong, "labels must be int64, got ", labels.scalar_type());
  in.alpha = alpha.to(acc);
  in.labels = labels;
  in.s = scale.item<double>();
  TORCH_CHECK(in.s > 0, "scale must be > 0, got ", in.s);
  in.symmetric = alpha_col.has_value();
  if (in.symmetric) {
    TORCH_CHECK(in.M == in.N, "the symmetric loss needs a square matrix, got ", in.M, " x ", in.N);
    check_vector(*alpha_col, in.N, "alpha_col", x);
    in.alpha_col = alpha_col->to(acc);
  }
  TORCH_CHECK(teacher_x.has_value() == teacher_y.has_value(), "teacher_x and teacher_y: give both or neither");
  in.teacher_emb = teacher_x.has_value();
  if (in.teacher_emb) {
    const Tensor& tx = *teacher_x;
    const Tensor& ty = *teacher_y;
    TORCH_CHECK(tx.dim() == 2 && tx.size(0) == in.M, "teacher_x must be ", in.M, " x D', got ", tx.sizes());
    TORCH_CHECK(ty.dim() == 2 && ty.size(0) == in.N && ty.size(1) == tx.size(1), "teacher_y must be ", in.N,
                " x ", tx.size(1), ", got ", ty.sizes());
    TORCH_CHECK(tx.device() == x.device() && ty.device() == x.device(), "teacher embeddings must be on ",
                x.device());
    in.tx = tx.to(acc).contiguous();
    in.ty = ty.to(acc).contiguous();
  }
  in.ts = in.s;
  if (teacher_scale.has_value()) {
    TORCH_CHECK(teacher_scale->numel() == 1, "teacher_scale must have one element");
    in.ts = teacher_scale->item<double>();
    TORCH_CHECK(in.ts > 0, "teacher_scale must be > 0, got ", in.ts);
  }
  // A self teacher at the student's scale has R = P: no teacher statistics at all.
  in.teacher_stats = in.teacher_emb || teacher_scale.has_value();
  return in;
}

struct Stats {
  Tensor m, l, pd, tm, tl, td;  // as in row_stats / col_stats_update
};

Stats new_stats(int64_t n, const at::TensorOptions& opts, bool teacher, double init_max) {
  Stats st;
  st.m = at::full({n}, init_max, opts);
  st.l = at::zeros({n}, opts);
  st.pd = at::zeros({n}, opts);
  if (teacher) {
    st.tm = at::full({n}, init_max, opts);
    st.tl = at::zeros({n}, opts);
    st.td = at::zeros({n}, opts);
  }
  return st;
}

Tensor slice(const Tensor& t, int64_t r0, int64_t r) { return t.defined() ? t.narrow(0, r0, r) : t; }

// Finished statistics of one direction: lse, teacher lse, E_P[d], E_R[d].
struct Finished {
  Tensor lse, tlse, epd, erd;
};

Finished finish(const Stats& st, bool teacher) {
  Finished f;
  f.lse = st.m + st.l.log();
  f.epd = st.pd / st.l;
  f.tlse = teacher ? st.tm + st.tl.log() : f.lse;
  f.erd = teacher ? st.td / st.tl : f.epd;
  return f;
}

class Driver {
 public:
  explicit Driver(const Inputs& in) : in_(in) {
    opts_ = in.x.options();
    R_ = block_rows(in.x, in.M, in.N);
    dbuf_ = at::empty({R_, in.N}, opts_);
    if (in.teacher_emb) tbuf_ = at::empty({R_, in.N}, opts_);
    rows_ = new_stats(in.M, opts_, in.teacher_stats, 0.0);
    dpos_ = at::empty({in.M}, opts_);
    if (in.symmetric) cols_ = new_stats(in.N, opts_, in.teacher_stats, -std::numeric_limits<double>::infinity());
  }

  // Dot products of block [r0, r0 + r): d (and the teacher's t, or d itself).
  std::pair<Tensor, Tensor> dots(int64_t r0, int64_t r) {
    tick(kOther);
    Tensor d = dbuf_.narrow(0, 0, r);
    Tensor t;
    if (in_.teacher_emb) t = tbuf_.narrow(0, 0, r);
    if (in_.x.is_cuda()) {
      at::mm_out(d, in_.x.narrow(0, r0, r), in_.y.t());
      if (in_.teacher_emb) at::mm_out(t, in_.tx.narrow(0, r0, r), in_.ty.t());
    } else {
      // tiles of kColTile columns: d[:, c] = x_blk y_c^T (and t[:, c] = tx_blk ty_c^T)
      const int64_t nc = ceil_div(in_.N, kColTile);
      run_tasks(nc * (in_.teacher_emb ? 2 : 1), [&](int64_t k) {
        const bool teacher = k >= nc;
        const int64_t j0 = (k % nc) * kColTile, w = std::min(kColTile, in_.N - j0);
        Tensor out = (teacher ? t : d).narrow(1, j0, w);
        at::mm_out(out, (teacher ? in_.tx : in_.x).narrow(0, r0, r), (teacher ? in_.ty : in_.y).narrow(0, j0, w).t());
      });
    }
    if (!in_.teacher_emb && in_.teacher_stats) t = d;  // T = ts * d from the same dot products
    tick(kDots);
    return {d, t};
  }

  // The buffers as the last dots() call left them.
  std::pair<Tensor, Tensor> current(int64_t r) {
    Tensor d = dbuf_.narrow(0, 0, r);
    Tensor t = in_.teacher_emb ? tbuf_.narrow(0, 0, r) : (in_.teacher_stats ? d : Tensor());
    return {d, t};
  }

  void block_stats(const Tensor& d, const Tensor& t, int64_t r0, int64_t r) {
    Tensor m = slice(rows_.m, r0, r), l = slice(rows_.l, r0, r), pd = slice(rows_.pd, r0, r);
    Tensor tm = slice(rows_.tm, r0, r), tl = slice(rows_.tl, r0, r), td = slice(rows_.td, r0, r);
    tick(kOther);
    row_stats(d, t, in_.s, in_.ts, m, l, pd, tm, tl, td);
    tick(kRowStats);
    dpos_.narrow(0, r0, r).copy_(d.gather(1, in_.labels.narrow(0, r0, r).unsqueeze(1)).squeeze(1));
    tick(kOther);
    if (in_.symmetric) col_stats_update(d, t, in_.s, in_.ts, cols_.m, cols_.l, cols_.pd, cols_.tm, cols_.tl, cols_.td);
    tick(kColStats);
  }

  // Coefficients of P, R and the one-hot in G for one direction with upstream g:
  // separate or rescaled teacher: g P - g a R - g (1 - a) onehot;
  // self teacher at the same scale (R = P): g (1 - a) (P - onehot).
  std::tuple<Tensor, Tensor, Tensor> coefficients(const Tensor& g, const Tensor& a) const {
    Tensor pos = g * (1 - a);
    if (in_.teacher_stats) return {g, g * a, pos};
    return {pos, Tensor(), pos};
  }

  // G for block [r0, r0 + r) into d, then dx_blk = s G y and dy += s G^T x_blk.
  // lse, tlse: the block's rows; rc, cc: coefficients of all rows and columns.
  void block_grad(const Tensor& d, const Tensor& t, int64_t r0, int64_t r, const Tensor& lse, const Tensor& tlse,
                  const Finished* cf, const std::tuple<Tensor, Tensor, Tensor>& rc,
                  const std::tuple<Tensor, Tensor, Tensor>* cc, Tensor& dx, Tensor& dy) {
    Tensor G = d;
    tick(kOther);
    form_grad(G, t, in_.s, in_.ts, lse, tlse, slice(std::get<0>(rc), r0, r),
              slice(std::get<1>(rc), r0, r), cf ? cf->lse : Tensor(), cf ? cf->tlse : Tensor(),
              cc ? std::get<0>(*cc) : Tensor(), cc ? std::get<1>(*cc) : Tensor());
    tick(kGradEpilogue);
    Tensor rpos = std::get<2>(rc).narrow(0, r0, r);
    if (in_.symmetric) {
      // both one-hots sit on the diagonal: row i's positive is column i and vice versa
      G.narrow(1, r0, r).diagonal().sub_(rpos + std::get<2>(*cc).narrow(0, r0, r));
    } else {
      G.scatter_add_(1, in_.labels.narrow(0, r0, r).unsqueeze(1), (-rpos).unsqueeze(1));
    }
    Tensor dxb = dx.narrow(0, r0, r);
    tick(kOther);
    Tensor xb = in_.x.narrow(0, r0, r);
    if (in_.x.is_cuda()) {
      at::addmm_out(dxb, dxb, G, in_.y, 0.0, in_.s);
      dy.addmm_(G.t(), xb, 1.0, in_.s);
      return;
    }
    // dx tiles of kRowTile rows and dy tiles of kColTile rows, all independent
    const int64_t nr = ceil_div(r, kRowTile), nc = ceil_div(in_.N, kColTile);
    run_tasks(nr + nc, [&](int64_t k) {
      if (k < nr) {
        const int64_t i0 = k * kRowTile, h = std::min(kRowTile, r - i0);
        Tensor out = dxb.narrow(0, i0, h);
        at::addmm_out(out, out, G.narrow(0, i0, h), in_.y, 0.0, in_.s);
      } else {
        const int64_t j0 = (k - nr) * kColTile, w = std::min(kColTile, in_.N - j0);
        Tensor out = dy.narrow(0, j0, w);
        at::addmm_out(out, out, G.narrow(1, j0, w).t(), xb, 1.0, in_.s);
      }
    });
    tick(kGradGemms);
  }

  // Loss and ds-per-unit-upstream of every row of one direction, from its statistics.
  static std::pair<Tensor, Tensor> row_losses(const Finished& f, const Tensor& dpos, const Tensor& a, double s) {
    Tensor loss = f.lse - s * ((1 - a) * dpos + a * f.erd);
    Tensor dsu = f.epd - (1 - a) * dpos - a * f.erd;
    return {loss, dsu};
  }

  // Returns loss_row, loss_col, dx, dy, ds (dx..ds undefined unless g_row is defined).
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run(const Tensor& g_row_in, const Tensor& g_col_in) {
    const bool want_grad = g_row_in.defined();
    const int64_t M = in_.M;
    Tensor dx, dy, g_row, g_col;
    std::tuple<Tensor, Tensor, Tensor> rc;
    if (want_grad) {
      dx = at::empty({M, in_.x.size(1)}, opts_);
      dy = at::zeros({in_.N, in_.x.size(1)}, opts_);
      g_row = g_row_in.to(opts_.dtype());
      rc = coefficients(g_row, in_.alpha);
    }
    Finished rf;
    if (want_grad && !in_.symmetric) {
      // one sweep: each block's rows are complete, so its gradient follows its statistics
      for (int64_t r0 = 0; r0 < M; r0 += R_) {
        const int64_t r = std::min(R_, M - r0);
        auto dt = dots(r0, r);
        block_stats(dt.first, dt.second, r0, r);
        Tensor lse = slice(rows_.m, r0, r) + slice(rows_.l, r0, r).log();
        Tensor tlse = in_.teacher_stats ? slice(rows_.tm, r0, r) + slice(rows_.tl, r0, r).log() : lse;
        block_grad(dt.first, dt.second, r0, r, lse, tlse, nullptr, rc, nullptr, dx, dy);
      }
      rf = finish(rows_, in_.teacher_stats);
    } else {
      for (int64_t r0 = 0; r0 < M; r0 += R_) {
        const int64_t r = std::min(R_, M - r0);
        auto dt = dots(r0, r);
        block_stats(dt.first, dt.second, r0, r);
      }
      rf = finish(rows_, in_.teacher_stats);
    }
    auto rl = row_losses(rf, dpos_, in_.alpha, in_.s);
    Tensor loss_col = at::empty({0}, opts_);
    Finished cf;
    std::tuple<Tensor, Tensor, Tensor> cc;
    std::pair<Tensor, Tensor> cl;
    if (in_.symmetric) {
      cf = finish(cols_, in_.teacher_stats);
      cl = row_losses(cf, dpos_, in_.alpha_col, in_.s);  // column j's positive is d_jj = dpos_j
      loss_col = cl.first;
    }
    if (!want_grad) return {rl.first, loss_col, Tensor(), Tensor(), Tensor()};
    Tensor ds = at::dot(g_row, rl.second);
    if (in_.symmetric) {
      g_col = g_col_in.to(opts_.dtype());
      cc = coefficients(g_col, in_.alpha_col);
      ds = ds + at::dot(g_col, cl.second);
      // Last block first: its dot products are still in the buffers from sweep 1.
      const int64_t last = (M - 1) / R_ * R_;
      for (int64_t r0 = last; r0 >= 0; r0 -= R_) {
        const int64_t r = std::min(R_, M - r0);
        auto dt = r0 == last ? current(r) : dots(r0, r);
        block_grad(dt.first, dt.second, r0, r, slice(rf.lse, r0, r), slice(rf.tlse, r0, r), &cf, rc, &cc, dx, dy);
      }
    }
    return {rl.first, loss_col, dx, dy, ds};
  }

 private:
  const Inputs& in_;
  at::TensorOptions opts_;
  int64_t R_;
  Tensor dbuf_, tbuf_, dpos_;
  Stats rows_, cols_;
};

using Result = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

Result run(const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& alpha, const Tensor& labels,
           const optional<Tensor>& alpha_col, const optional<Tensor>& teacher_x, const optional<Tensor>& teacher_y,
           const optional<Tensor>& teacher_scale, const Tensor& g_row, const optional<Tensor>& g_col) {
  c10::DeviceGuard guard(x.device());
#ifdef PSD_WITH_CUDA
  if (x.is_cuda()) cuda::check_arch(x.get_device());  // before any launch: a clear error on an unbuilt arch
#endif
  Inputs in = prepare(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale);
  if (g_row.defined()) {
    check_vector(g_row, in.M, "grad_row", x);
    TORCH_CHECK(g_col.has_value() == in.symmetric, "grad_col must be given exactly for the symmetric loss");
    if (in.symmetric) check_vector(*g_col, in.N, "grad_col", x);
  }
  Driver driver(in);
  if (!Profile::enabled() || x.is_cuda()) return driver.run(g_row, g_col.has_value() ? *g_col : Tensor());
  Profile profile;
  g_profile = &profile;
  struct Reset {
    ~Reset() { g_profile = nullptr; }
  } reset;
  Result r = driver.run(g_row, g_col.has_value() ? *g_col : Tensor());
  profile.tick(kOther);
  profile.print();
  return r;
}

// psd::forward: per-row losses (row direction; column direction or an empty tensor).
std::tuple<Tensor, Tensor> forward(const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& alpha,
                                   const Tensor& labels, const optional<Tensor>& alpha_col,
                                   const optional<Tensor>& teacher_x, const optional<Tensor>& teacher_y,
                                   const optional<Tensor>& teacher_scale) {
  auto r = run(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale, Tensor(), c10::nullopt);
  return {std::get<0>(r), std::get<1>(r)};
}

// psd::backward: gradients for per-row upstream gradients (recomputes the statistics).
std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& x, const Tensor& y, const Tensor& scale,
                                            const Tensor& alpha, const Tensor& labels,
                                            const optional<Tensor>& alpha_col, const optional<Tensor>& teacher_x,
                                            const optional<Tensor>& teacher_y,
                                            const optional<Tensor>& teacher_scale, const Tensor& grad_row,
                                            const optional<Tensor>& grad_col) {
  auto r = run(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale, grad_row, grad_col);
  return {std::get<2>(r).to(x.scalar_type()), std::get<3>(r).to(y.scalar_type()), std::get<4>(r)};
}

// psd::forward_backward: the weighted loss sum_i w_i l_i (+ sum_j w'_j l'_j) and its
// gradients in one pass; mean and sum reductions use it (w = 1/M or 1).
std::tuple<Tensor, Tensor, Tensor, Tensor> forward_backward(
    const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& alpha, const Tensor& labels,
    const optional<Tensor>& alpha_col, const optional<Tensor>& teacher_x, const optional<Tensor>& teacher_y,
    const optional<Tensor>& teacher_scale, const Tensor& weight_row, const optional<Tensor>& weight_col) {
  auto r = run(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale, weight_row, weight_col);
  Tensor loss = at::dot(std::get<0>(r), weight_row.to(std::get<0>(r).scalar_type()));
  if (weight_col.has_value()) loss = loss + at::dot(std::get<1>(r), weight_col->to(std::get<1>(r).scalar_type()));
  return {loss, std::get<2>(r).to(x.scalar_type()), std::get<3>(r).to(y.scalar_type()), std::get<4>(r)};
}

}  // namespace

#define PSD_ARGS                                                                                     \
  "Tensor x, Tensor y, Tensor scale, Tensor alpha, Tensor labels, Tensor? alpha_col, Tensor? teacher_x, " \
  "Tensor? teacher_y, Tensor? teacher_scale"

// Every psd op: the softmax loss's (here) and the sigmoid loss's (psd_siglip.cpp), each with one
// driver for CPU and CUDA tensors.
TORCH_LIBRARY(psd, m) {
  m.def("forward(" PSD_ARGS ") -> (Tensor, Tensor)");
  m.def("backward(" PSD_ARGS ", Tensor grad_row, Tensor? grad_col) -> (Tensor, Tensor, Tensor)");
  m.def("forward_backward(" PSD_ARGS ", Tensor weight_row, Tensor? weight_col) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("siglip_forward(" PSD_SIGLIP_ARGS ") -> Tensor");
  m.def("siglip_backward(" PSD_SIGLIP_ARGS ", Tensor grad_rows) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("siglip_forward_backward(" PSD_SIGLIP_ARGS ", Tensor weight_rows) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

template <typename Library>
void define_kernels(Library& m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("forward_backward", &forward_backward);
  m.impl("siglip_forward", &siglip_forward);
  m.impl("siglip_backward", &siglip_backward);
  m.impl("siglip_forward_backward", &siglip_forward_backward);
}

TORCH_LIBRARY_IMPL(psd, CPU, m) { define_kernels(m); }
#ifdef PSD_WITH_CUDA
TORCH_LIBRARY_IMPL(psd, CUDA, m) { define_kernels(m); }
#endif

}  // namespace psd

#define PSD_STR2(x) #x
#define PSD_STR(x) PSD_STR2(x)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "psd_kernels._C: fused PSD loss ops (torch.ops.psd.*); see psd_kernels/backends/cpp.py";
  // setup.py passes its build record (JSON) hex-encoded, prefixed by 'x', as one macro token.
  m.def("build_record_hex", [] { return std::string(PSD_STR(PSD_BUILD_RECORD_HEX)); });
#ifdef PSD_WITH_CUDA
  m.def("cuda_archs", &psd::cuda::compiled_archs,
        "the archs the CUDA kernels were compiled for, compute capability x 10 (e.g. [80, 90, 100])");
  m.def("cuda_arch_error", &psd::cuda::arch_error, pybind11::arg("major"), pybind11::arg("minor"),
        "the error a CUDA call raises on a GPU of compute capability major.minor without a kernel image");
#endif
  m.def("cuda_built", [] {
#ifdef PSD_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
