// The fused sigmoid (SigLIP) loss with PSD's soft targets: drivers and operator registration.
//
// Math and notation: docs/siglip_loss.md. For rows x (M x D) and columns y (N x D),
//   l_ij = s <x_i, y_j> + b,  q_ij = (1 - a_ij) [j = labels_i] + a_ij sigmoid(t_ij),
//   row_i = sum_j softplus(l_ij) - q_ij l_ij,   G_ij = w_i (sigmoid(l_ij) - q_ij),
//   dx = s G y,  dy = s G^T x,  ds = sum_ij G_ij d_ij,  db = sum_ij G_ij
// with row weights w (1/M or 1 for mean or sum, the upstream gradient for reduction none).
// A sigmoid has no row normaliser: a tile's loss and gradient are final as soon as its dot
// products exist, so one sweep gives the loss and every gradient.
//
// Executed FLOPs: the dot products 2 M N D, dx 2 M N D, dy 2 M N D (a separate teacher adds
// its 2 M N D'): 6 M N D (+ 2 M N D') for psd::siglip_forward_backward (mean and sum) and
// psd::siglip_backward; psd::siglip_forward (reduction none) does the dot products only.
//
// CPU: rows and columns are each cut into P slabs (P from M and N alone, never from the
// thread count). In round k = 0 .. P-1, task t takes row slab t and column slab (t + k) mod P:
// within a round no two tasks share a row or a column, so dx, dy and the per-row sums are
// written without races or per-thread copies, and after P rounds every (row, column) pair was
// visited once. A task walks its slab pair in tiles of at most 256 x 256: one single-threaded
// GEMM for the dot products (two with a separate teacher), the vectorised epilogue
// (psd_siglip_cpu.cpp) turning the tile into G in place, then dx_rows += s G y_cols and
// dy_cols += s G^T x_rows. Each dx, dy and row sum element gets its contributions in a fixed
// order, every GEMM has a fixed shape: results do not depend on the thread count.
// Extra memory: one scratch tile (two with a separate teacher) per running thread, (M,) row
// sums, the fp32 dx, dy accumulators (the gradients' own size) and fp32 copies of
// fp16/bf16 inputs. Never M x N.
//
// CUDA: row blocks of R rows (an R x N buffer of at most 256 MB), one after another on the
// current stream: a cuBLAS GEMM for the dot products (and the teacher's), the epilogue kernel
// (psd_siglip_cuda.cu, one thread block per row), then dx_blk = s G y and dy += s G^T x_blk.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "psd_checks.h"
#include "psd_epilogue.h"
#include "psd_parallel.h"
#include "psd_siglip.h"
#include "psd_siglip_ops.h"

namespace psd {
namespace {

using at::Tensor;
using c10::optional;
using siglip::Params;
using siglip::Teacher;
using siglip::Tile;

struct Inputs {
  Tensor x, y, tx, ty;            // contiguous, in the accumulation dtype
  Tensor alpha_rows, alpha_cols;  // contiguous, accumulation dtype
  Tensor labels;                  // contiguous int64
  Params p;
  int64_t M, N;
};

void check_vector(const Tensor& v, int64_t n, const char* name, const Tensor& x) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, name, " must have shape (", n, "), got ", v.sizes());
  TORCH_CHECK(v.device() == x.device(), name, " must be on ", x.device(), ", got ", v.device());
}

double scalar(const Tensor& v, const char* name) {
  TORCH_CHECK(v.numel() == 1, name, " must have one element, got ", v.numel());
  TORCH_CHECK(v.is_floating_point(), name, " must be a floating tensor, got ", v.scalar_type());
  return v.item<double>();
}

Inputs prepare(const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& bias, const Tensor& alpha_rows,
               const Tensor& alpha_cols, const Tensor& labels, const optional<Tensor>& teacher_x,
               const optional<Tensor>& teacher_y, const optional<Tensor>& teacher_scale,
               const optional<Tensor>& teacher_bias) {
  const auto acc = check_embeddings(x, y);
  Inputs in;
  in.M = x.size(0);
  in.N = y.size(0);
  in.x = x.to(acc).contiguous();
  in.y = y.to(acc).contiguous();
  in.p.s = scalar(scale, "scale");
  TORCH_CHECK(in.p.s > 0, "scale must be > 0, got ", in.p.s);
  in.p.b = scalar(bias, "bias");
  check_vector(alpha_rows, in.M, "alpha_rows", x);
  check_vector(alpha_cols, in.N, "alpha_cols", x);
  in.alpha_rows = alpha_rows.to(acc).contiguous();
  in.alpha_cols = alpha_cols.to(acc).contiguous();
  check_vector(labels, in.M, "labels", x);
  TORCH_CHECK(labels.scalar_type() == at::kLong, "labels must be int64, got ", labels.scalar_type());
  const auto lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < in.N, "labels must lie in [0, ", in.N, "), got values in [", lo, ", ", hi, "]");
  in.labels = labels.contiguous();
  TORCH_CHECK(teacher_x.has_value() == teacher_y.has_value(), "teacher_x and teacher_y: give both or neither");
  in.p.ts = in.p.s;
  in.p.tb = in.p.b;
  if (teacher_scale.has_value()) {
    in.p.ts = scalar(*teacher_scale, "teacher_scale");
    TORCH_CHECK(in.p.ts > 0, "teacher_scale must be > 0, got ", in.p.ts);
  }
  if (teacher_bias.has_value()) in.p.tb = scalar(*teacher_bias, "teacher_bias");
  in.p.teacher = teacher_scale.has_value() || teacher_bias.has_value() ? Teacher::kScaled : Teacher::kSelf;
  if (teacher_x.has_value()) {
    const Tensor& tx = *teacher_x;
    const Tensor& ty = *teacher_y;
    TORCH_CHECK(tx.dim() == 2 && tx.size(0) == in.M, "teacher_x must be ", in.M, " x D', got ", tx.sizes());
    TORCH_CHECK(ty.dim() == 2 && ty.size(0) == in.N && ty.size(1) == tx.size(1), "teacher_y must be ", in.N,
                " x ", tx.size(1), ", got ", ty.sizes());
    TORCH_CHECK(tx.scalar_type() == x.scalar_type() && ty.scalar_type() == x.scalar_type(),
                "teacher_x and teacher_y must have x's dtype ", x.scalar_type(), ", got ", tx.scalar_type(), " and ",
                ty.scalar_type());
    TORCH_CHECK(tx.device() == x.device() && ty.device() == x.device(), "teacher_x and teacher_y must be on ",
                x.device());
    in.tx = tx.to(acc).contiguous();
    in.ty = ty.to(acc).contiguous();
    in.p.teacher = Teacher::kSeparate;
  }
  return in;
}

// What a sweep produces. loss_rows: (M,) sum_j e_ij (undefined without the loss); dx, dy and
// the per-row ds, db sums (undefined without weights).
struct Sweep {
  Tensor loss_rows, dx, dy, ds_rows, db_rows;
};

// ---- CPU -------------------------------------------------------------------------------------

constexpr int64_t kTileRows = 256;  // a tile: 256 x 256 fp32 = 256 KB, in L2 beside the operands' rows
constexpr int64_t kTileCols = 256;

// Slabs per side: about 256 rows and columns each, but at least 8 (up to min(M, N) / 32) so
// that a round has tasks for several threads, at most 64; at most min(M, N), so none is empty.
int64_t slab_count(int64_t M, int64_t N) {
  const int64_t n = std::min(M, N);
  const int64_t p = std::max((n + 255) / 256, std::min<int64_t>((n + 31) / 32, 8));
  return std::max<int64_t>(1, std::min<int64_t>({p, 64, n}));
}

// Scratch tiles handed to tasks: at most one per running thread exists.
class ScratchPool {
 public:
  ScratchPool(const at::TensorOptions& opts, int64_t numel) : opts_(opts), numel_(numel) {}
  Tensor acquire() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return at::empty({numel_}, opts_);
    Tensor t = free_.back();
    free_.pop_back();
    return t;
  }
  void release(Tensor t) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(t));
  }

 private:
  std::mutex mu_;
  at::TensorOptions opts_;
  int64_t numel_;
  std::vector<Tensor> free_;
};

template <typename T>
void sweep_cpu(const Inputs& in, const Tensor& w, Sweep& out) {
  const int64_t M = in.M, N = in.N, P = slab_count(M, N);
  const bool separate = in.p.teacher == Teacher::kSeparate, grad = w.defined();
  const int64_t tile = kTileRows * kTileCols;
  ScratchPool pool(in.x.options(), separate ? 2 * tile : tile);
  const T* ar = in.alpha_rows.data_ptr<T>();
  const T* ac = in.alpha_cols.data_ptr<T>();
  const int64_t* lab = in.labels.data_ptr<int64_t>();
  const T* wp = grad ? w.data_ptr<T>() : nullptr;
  T* lossp = out.loss_rows.defined() ? out.loss_rows.data_ptr<T>() : nullptr;
  T* dsp = grad ? out.ds_rows.data_ptr<T>() : nullptr;
  T* dbp = grad ? out.db_rows.data_ptr<T>() : nullptr;
  auto bound = [P](int64_t n, int64_t k) { return k * n / P; };
  for (int64_t k = 0; k < P; ++k) {
    run_tasks(P, [&](int64_t t) {
      SingleThreadedBlas blas;  // also when run_tasks runs inline: one GEMM shape, one result
      const int64_t c = (t + k) % P;
      const int64_t i_end = bound(M, t + 1), j_begin = bound(N, c), j_end = bound(N, c + 1);
      Tensor buf = pool.acquire();
      for (int64_t i0 = bound(M, t); i0 < i_end; i0 += kTileRows) {
        const int64_t h = std::min(kTileRows, i_end - i0);
        const Tensor xr = in.x.narrow(0, i0, h);
        for (int64_t j0 = j_begin; j0 < j_end; j0 += kTileCols) {
          const int64_t wd = std::min(kTileCols, j_end - j0);
          const Tensor yc = in.y.narrow(0, j0, wd);
          // reads: x_rows, y_cols (h + wd) x D; writes the h x wd tile
          Tensor d = buf.narrow(0, 0, h * wd).view({h, wd});
          at::mm_out(d, xr, yc.t());
          Tensor tt;
          if (separate) {
            tt = buf.narrow(0, tile, h * wd).view({h, wd});
            at::mm_out(tt, in.tx.narrow(0, i0, h), in.ty.narrow(0, j0, wd).t());
          }
          Tile<T> tl{d.data_ptr<T>(), separate ? tt.data_ptr<T>() : nullptr, h, wd, wd, ar + i0, ac + j0,
                     lab + i0, j0, wp ? wp + i0 : nullptr, lossp ? lossp + i0 : nullptr,
                     dsp ? dsp + i0 : nullptr, dbp ? dbp + i0 : nullptr};
          siglip::cpu::epilogue(in.p, tl);
          if (grad) {
            // dx_rows += s G y_cols, dy_cols += s G^T x_rows: this task alone owns both this round
            Tensor dxr = out.dx.narrow(0, i0, h), dyc = out.dy.narrow(0, j0, wd);
            at::addmm_out(dxr, dxr, d, yc, 1.0, in.p.s);
            at::addmm_out(dyc, dyc, d.t(), xr, 1.0, in.p.s);
          }
        }
      }
      pool.release(std::move(buf));
    });
  }
}

// ---- CUDA ------------------------------------------------------------------------------------

#ifdef PSD_WITH_CUDA
template <typename T>
void sweep_cuda(const Inputs& in, const Tensor& w, Sweep& out) {
  const int64_t M = in.M, N = in.N;
  const int64_t R = std::max<int64_t>(1, std::min<int64_t>(M, (int64_t(1) << 26) / N));  // <= 256 MB fp32
  const bool separate = in.p.teacher == Teacher::kSeparate, grad = w.defined();
  Tensor dbuf = at::empty({R, N}, in.x.options());
  Tensor tbuf = separate ? at::empty({R, N}, in.x.options()) : Tensor();
  for (int64_t r0 = 0; r0 < M; r0 += R) {
    const int64_t r = std::min(R, M - r0);
    const Tensor xb = in.x.narrow(0, r0, r);
    Tensor d = dbuf.narrow(0, 0, r);
    at::mm_out(d, xb, in.y.t());
    Tensor t;
    if (separate) {
      t = tbuf.narrow(0, 0, r);
      at::mm_out(t, in.tx.narrow(0, r0, r), in.ty.t());
    }
    Tile<T> tl{d.data_ptr<T>(), separate ? t.data_ptr<T>() : nullptr, r, N, N,
               in.alpha_rows.data_ptr<T>() + r0, in.alpha_cols.data_ptr<T>(), in.labels.data_ptr<int64_t>() + r0, 0,
               grad ? w.data_ptr<T>() + r0 : nullptr,
               out.loss_rows.defined() ? out.loss_rows.data_ptr<T>() + r0 : nullptr,
               grad ? out.ds_rows.data_ptr<T>() + r0 : nullptr, grad ? out.db_rows.data_ptr<T>() + r0 : nullptr};
    siglip::cuda::epilogue(in.p, tl);
    if (grad) {
      Tensor dxb = out.dx.narrow(0, r0, r);
      at::addmm_out(dxb, dxb, d, in.y, 0.0, in.p.s);
      out.dy.addmm_(d.t(), xb, 1.0, in.p.s);
    }
  }
}
#endif

// One sweep: the loss rows when want_loss, the gradients for row weights w when defined.
Sweep sweep(const Inputs& in, const Tensor& w_in, bool want_loss) {
  const auto opts = in.x.options();
  Sweep out;
  Tensor w;
  if (want_loss) out.loss_rows = at::zeros({in.M}, opts);
  if (w_in.defined()) {
    w = w_in.to(opts.dtype()).contiguous();
    const int64_t D = in.x.size(1);
    out.dx = in.x.is_cuda() ? at::empty({in.M, D}, opts) : at::zeros({in.M, D}, opts);
    out.dy = at::zeros({in.N, D}, opts);
    out.ds_rows = at::zeros({in.M}, opts);
    out.db_rows = at::zeros({in.M}, opts);
  }
  const bool fp64 = in.x.scalar_type() == at::kDouble;
#ifdef PSD_WITH_CUDA
  if (in.x.is_cuda()) {
    fp64 ? sweep_cuda<double>(in, w, out) : sweep_cuda<float>(in, w, out);
    return out;
  }
#endif
  fp64 ? sweep_cpu<double>(in, w, out) : sweep_cpu<float>(in, w, out);
  return out;
}

#define PSD_SIGLIP_PASS \
  x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale, teacher_bias

Inputs checked(PSD_SIGLIP_PARAMS) {
#ifdef PSD_WITH_CUDA
  // before any launch: a clear error on an unbuilt arch (the softmax kernels of this build have the same archs)
  if (x.is_cuda()) cuda::check_arch(x.get_device());
#endif
  return prepare(PSD_SIGLIP_PASS);
}

}  // namespace

// psd::siglip_forward: the per-row losses row_i = sum_j e_ij, (M,), fp32 (fp64 for fp64 inputs).
// The dot products (and the teacher's) only: 2 M N D (+ 2 M N D').
Tensor siglip_forward(PSD_SIGLIP_PARAMS) {
  c10::DeviceGuard guard(x.device());
  const Inputs in = checked(PSD_SIGLIP_PASS);
  return sweep(in, Tensor(), true).loss_rows;
}

// psd::siglip_backward: dx, dy (input dtypes), ds, db (accumulation dtype) for per-row upstream
// gradients grad_rows: recomputes the dot products, no loss.
std::tuple<Tensor, Tensor, Tensor, Tensor> siglip_backward(PSD_SIGLIP_PARAMS, const Tensor& grad_rows) {
  c10::DeviceGuard guard(x.device());
  const Inputs in = checked(PSD_SIGLIP_PASS);
  check_vector(grad_rows, in.M, "grad_rows", x);
  Sweep r = sweep(in, grad_rows, false);
  return {r.dx.to(x.scalar_type()), r.dy.to(y.scalar_type()), r.ds_rows.sum(), r.db_rows.sum()};
}

// psd::siglip_forward_backward: the weighted loss sum_i w_i row_i and its gradients in one sweep
// (mean and sum reductions: w = 1/M or 1).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> siglip_forward_backward(PSD_SIGLIP_PARAMS,
                                                                           const Tensor& weight_rows) {
  c10::DeviceGuard guard(x.device());
  const Inputs in = checked(PSD_SIGLIP_PASS);
  check_vector(weight_rows, in.M, "weight_rows", x);
  Sweep r = sweep(in, weight_rows, true);
  Tensor loss = at::dot(r.loss_rows, weight_rows.to(r.loss_rows.scalar_type()));
  return {loss, r.dx.to(x.scalar_type()), r.dy.to(y.scalar_type()), r.ds_rows.sum(), r.db_rows.sum()};
}

}  // namespace psd
