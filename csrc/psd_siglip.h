// The element-wise epilogue of the fused sigmoid (SigLIP) loss, one implementation per device.
//
// Math: docs/siglip_loss.md. The driver (psd_siglip.cpp) computes a tile of dot products
// d = x_rows y_cols^T (and, with a separate teacher, t = tx_rows ty_cols^T) with BLAS or cuBLAS;
// the epilogue turns the tile, pair by pair, into
//   l = s d + b,  sigma~ = sigmoid(teacher logit),  a = (alpha_rows_i + alpha_cols_j) / 2,
//   q = (1 - a) z + a sigma~  (z = [j = labels_i]),
//   e = (1 - q) softplus(l) + q softplus(-l)     (summed per row: the loss)
//   G = w_i (sigmoid(l) - q)                       (written over d: the gradient tile)
// and per-row sums of e, G d and G (the loss, ds and db of each row), all in the accumulation
// dtype (float32, float64 for float64 inputs). A pair costs two exps (one without a teacher
// of its own logits), one log1p (loss only) and one or two divisions; nothing else is stored.
#pragma once

#include <cstdint>
#include <type_traits>

namespace psd {
namespace siglip {

// Whose logits the soft target's sigmoid reads.
enum class Teacher : int {
  kSelf = 0,      // t = l: the student's own logits (sigmoid(t) = sigmoid(l), no extra exp)
  kScaled = 1,    // t = ts d + tb: the same dot products at another scale and/or bias
  kSeparate = 2,  // t = ts <tx_i, ty_j> + tb: the tile's second buffer
};

// f(std::integral_constant<Teacher, k>{}) for the runtime teacher case k: the epilogues are compiled
// once per case (CPU and CUDA alike).
template <typename F>
inline void with_teacher(Teacher teacher, F&& f) {
  switch (teacher) {
    case Teacher::kSelf: return f(std::integral_constant<Teacher, Teacher::kSelf>{});
    case Teacher::kScaled: return f(std::integral_constant<Teacher, Teacher::kScaled>{});
    case Teacher::kSeparate: return f(std::integral_constant<Teacher, Teacher::kSeparate>{});
  }
}

// f(teacher, grad, loss) with each as a compile-time constant (std::integral_constant): the
// teacher case, whether the tile forms G (w set) and whether it sums the loss (loss set).
template <typename F>
inline void with_case(Teacher teacher, bool grad, bool loss, F&& f) {
  with_teacher(teacher, [&](auto k) {
    if (grad && loss) return f(k, std::true_type{}, std::true_type{});
    if (grad) return f(k, std::true_type{}, std::false_type{});
    if (loss) return f(k, std::false_type{}, std::true_type{});
  });
}

struct Params {
  double s, b;    // student: l = s d + b
  double ts, tb;  // teacher scale and bias (kScaled, kSeparate)
  Teacher teacher;
};

// One rows x cols tile, row-major with leading dimension ld. Pointers into the caller's
// buffers (host memory on CPU, device memory on CUDA), already offset to the tile.
template <typename T>
struct Tile {
  T* d;                    // dot products; overwritten by G when w is set
  const T* t;              // teacher dot products (kSeparate), else nullptr
  int64_t rows, cols, ld;
  const T* alpha_rows;     // (rows,)
  const T* alpha_cols;     // (cols,)
  const int64_t* labels;   // (rows,) positive column of each row, in the full matrix's columns
  int64_t col0;            // the tile's first column in the full matrix
  const T* w;              // (rows,) row weights: G is formed and ds, db summed; nullptr: no gradient
  T* loss;                 // (rows,) += sum_j e_ij, or nullptr: no loss (a backward)
  T* ds;                   // (rows,) += sum_j G_ij d_ij (with w)
  T* db;                   // (rows,) += sum_j G_ij      (with w)
};

namespace cpu {
// One call per tile, on the calling thread (the driver runs tiles in parallel).
void epilogue(const Params& p, const Tile<float>& tile);
void epilogue(const Params& p, const Tile<double>& tile);
}  // namespace cpu

#ifdef PSD_WITH_CUDA
namespace cuda {
// One thread block per row of the tile, on the current stream.
void epilogue(const Params& p, const Tile<float>& tile);
void epilogue(const Params& p, const Tile<double>& tile);
}  // namespace cuda
#endif

}  // namespace siglip
}  // namespace psd
