// Fused InfoNCE / NT-Xent on the CPU (math: notes/info_nce_kernel_contract.md).
//
// S = s Q K^T is computed tile by tile by our own register-blocked GEMM and folded into a log-sum-exp, so the
// N x M matrix never exists; the backward recomputes each tile (the FlashAttention idea). Extra memory is the fp32
// packed copies of the inputs, the fp32 gradient accumulators (O((N + M) D)) and one 96 x 96 tile per thread.
//
// How the work is laid out:
//  * micro-kernel: 6 x 16 fp32 outer products with FMA (BLIS Haswell shape: 12 accumulators, 2 B vectors and one
//    broadcast fill the 16 ymm registers), written with GCC vector extensions, so it compiles to AVX2 + FMA under
//    -march=native and to SSE (or scalar) code elsewhere without a second copy of the loops.
//  * operands packed once per call in 16-column panels (Columns, and the transposed panels of K) with the dim
//    zero-padded to a multiple of 16, so every GEMM stream is contiguous and no loop has a column tail.
//  * log-sum-exp: when |S| <= 40 is guaranteed (unit vectors, s <= 40) exp(S) is summed directly, one exp per
//    entry; otherwise an online max per row (and per column for NT-Xent) keeps exp in range.
//  * NT-Xent uses S = S^T: only tiles (I, J) with I <= J are computed, one tile updates the LSE of both blocks
//    (forward) and both gradients through W = P + P^T (backward), half the FLOPs of the general kernel. Tiles are
//    scheduled in round-robin rounds in which no two tiles share a block, so the updates need no locks and no
//    per-thread copies of the gradient.
//  * InfoNCE: the forward is parallel over row blocks; the backward pairs row block I with column block
//    (I + t) mod nbK in round t (a Latin square), so each tile updates dq_I and dk_J without races.
#include "info_nce.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace fastssl {
namespace {

using at::Tensor;

using v8f = float __attribute__((vector_size(32)));
using v8i = std::int32_t __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4), may_alias));

constexpr int64_t kLanes = 8;
constexpr int64_t kMR = 6;   // micro-kernel rows
constexpr int64_t kNR = 16;  // micro-kernel columns: two ymm vectors
// Tile side, a multiple of 6 and 16. A 96 x 96 fp32 tile (36 KiB) and the 96 x 128 operand blocks stay in the
// 1 MiB L2 of one core. 144 and 192 timed the same within the noise of the 2-core VM; 128 was ~10% slower (a
// 2-row micro-kernel tail).
constexpr int64_t kBlock = 96;
constexpr float kInf = std::numeric_limits<float>::infinity();

inline v8f load8(const float* p) { return *reinterpret_cast<const v8f_unaligned*>(p); }
inline void store8(float* p, v8f x) { *reinterpret_cast<v8f_unaligned*>(p) = x; }
inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }
inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
inline float hsum(v8f x) { return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7])); }
inline float hmax(v8f x) {
  float m = x[0];
  for (int i = 1; i < kLanes; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// exp with the Cephes expf reduction and polynomial: max relative error 1.04e-7 measured over [-86.9, 88.7]. The
// clamps keep NaN (a comparison with NaN is false, so NaN passes through). Below -87 (-inf included) n = -126 makes
// the scale 2^(n-1) exactly 0, so exp(-inf) = 0 without a blend; values under 1.7e-38 are flushed to 0.
inline v8f exp8(v8f x) {
  x = x < splat(-87.33654f) ? splat(-87.33654f) : x;
  x = x > splat(88.72284f) ? splat(88.72284f) : x;
  const v8f round_magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const v8f n = (x * splat(1.44269504088896341f) + round_magic) - round_magic;
  v8f r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * (r * r) + r + splat(1.0f);
  // 2^n = 2^(n-1) * 2 keeps the biased exponent in range for n = 128 (x at the top of the float range).
  const v8i biased = (__builtin_convertvector(n, v8i) + 126) << 23;
  return p * (v8f)biased * splat(2.0f);
}

// x[i] = exp(x[i]) for i < n (per-row rescale factors; the tail goes through a padded copy).
void exp_array(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store8(x + i, exp8(load8(x + i)));
  if (i < n) {
    float tail[kLanes] = {};
    std::copy(x + i, x + n, tail);
    store8(tail, exp8(load8(tail)));
    std::copy(tail, tail + (n - i), x + i);
  }
}

// How the micro-kernel reads A(r, k), r < 6 rows, k < K:
//   kRows          A[r * lda + k]                            (the weight tile W)
//   kTransposed    A[k * lda + r]                            (W^T, read in place rather than copied)
//   kColumnPanels  A[(k / 16) * lda + r * 16 + k % 16]       (a Columns matrix; lda is its panel stride)
enum class ALayout { kRows, kTransposed, kColumnPanels };

// C[0:MR, 0:16] (+)= alpha * sum_k A(r, k) B[k * ldb + 0:16]. For kColumnPanels K is a multiple of 16.
template <int MR, ALayout kA, bool kAccumulate>
inline void micro_kernel(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict B, int64_t ldb,
                         float* __restrict C, int64_t ldc, float alpha) {
  v8f c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = v8f{};
  // One rank-1 update: a[r * a_stride] is A(r, k), b the row k of B.
  const auto rank1 = [&](const float* a, int64_t a_stride, const float* b) {
    const v8f b0 = load8(b), b1 = load8(b + kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const v8f x = splat(a[r * a_stride]);
      c0[r] += x * b0;
      c1[r] += x * b1;
    }
  };
  if constexpr (kA == ALayout::kColumnPanels) {
    for (int64_t k0 = 0; k0 < K; k0 += kNR) {
      const float* a = A + (k0 / kNR) * lda;
#pragma GCC unroll 4
      for (int64_t k = 0; k < kNR; ++k) rank1(a + k, kNR, B + (k0 + k) * ldb);
    }
  } else if constexpr (kA == ALayout::kRows) {
#pragma GCC unroll 4
    for (int64_t k = 0; k < K; ++k) rank1(A + k, lda, B + k * ldb);
  } else {
#pragma GCC unroll 4
    for (int64_t k = 0; k < K; ++k) rank1(A + k * lda, 1, B + k * ldb);
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
    if (kAccumulate) {
      store8(c, load8(c) + c0[r]);
      store8(c + kLanes, load8(c + kLanes) + c1[r]);
    } else {
      store8(c, splat(alpha) * c0[r]);
      store8(c + kLanes, splat(alpha) * c1[r]);
    }
  }
}

// A 16-column-panelled operand of gemm(): panel c starts at data + c * panel_stride, its rows ld apart.
struct Panels {
  float* data;
  int64_t ld, panel_stride;
};

// C (rows x 16 panels) (+)= alpha A B, row blocks of 6 (and one shorter tail) by 16-column panels.
template <ALayout kA, bool kAccumulate>
void gemm(int64_t rows, int64_t panels, int64_t K, const float* A, int64_t lda, Panels B, Panels C, float alpha) {
  const auto a_at = [&](int64_t r) {
    return A + (kA == ALayout::kRows ? r * lda : kA == ALayout::kTransposed ? r : r * kNR);
  };
  for (int64_t c = 0; c < panels; ++c) {
    const float* b = B.data + c * B.panel_stride;
    float* cc = C.data + c * C.panel_stride;
    int64_t r = 0;
    for (; r + kMR <= rows; r += kMR) {
      micro_kernel<kMR, kA, kAccumulate>(K, a_at(r), lda, b, B.ld, cc + r * C.ld, C.ld, alpha);
    }
    const float* a = a_at(r);
    float* ct = cc + r * C.ld;
    switch (rows - r) {
      case 5: micro_kernel<5, kA, kAccumulate>(K, a, lda, b, B.ld, ct, C.ld, alpha); break;
      case 4: micro_kernel<4, kA, kAccumulate>(K, a, lda, b, B.ld, ct, C.ld, alpha); break;
      case 3: micro_kernel<3, kA, kAccumulate>(K, a, lda, b, B.ld, ct, C.ld, alpha); break;
      case 2: micro_kernel<2, kA, kAccumulate>(K, a, lda, b, B.ld, ct, C.ld, alpha); break;
      case 1: micro_kernel<1, kA, kAccumulate>(K, a, lda, b, B.ld, ct, C.ld, alpha); break;
      default: break;
    }
  }
}

// An (n, d) fp32 matrix in "Columns" layout, 16-column panels stored one after the other, each (n, 16) row-major:
// element (i, j) at data[((j / 16) * n + i) * 16 + j % 16], columns past d zero. Every stream a GEMM reads or
// writes is then contiguous (a 6-row micro-tile of one panel is 384 consecutive bytes) where row-major rows are
// 512 B apart: with the blocks coming from L3, a single-core GEMM benchmark ran 57 GFLOP/s row-major, 80 here.
struct Columns {
  int64_t n = 0, d = 0, dp = 0;  // dp = round_up(d, 16)
  float* data = nullptr;
  Tensor buffer;

  Columns() = default;
  Columns(int64_t rows, int64_t dim, const at::TensorOptions& f32) : n(rows), d(dim), dp(round_up(dim, kNR)) {
    buffer = at::empty({dp / kNR, n, kNR}, f32);
    data = buffer.data_ptr<float>();
  }
  int64_t panel_stride() const { return n * kNR; }
  float& at(int64_t i, int64_t j) const { return data[((j / kNR) * n + i) * kNR + j % kNR]; }
  Panels rows_from(int64_t i0) const { return {data + i0 * kNR, kNR, panel_stride()}; }
};

// An embedding matrix, packed once per call: its Columns copy (the A operand of S = Q K^T, the B operand of the
// gradient GEMMs) and, where it is the K side of S, its transpose in 16-row panels, (ceil(n / 16), dp, 16) with
// rows past n zero (the B operand of S).
struct Packed {
  Columns cols;
  float* panels = nullptr;
  Tensor panel_buffer;

  Panels panels_from(int64_t j0) const { return {panels + j0 * cols.dp, kNR, cols.dp * kNR}; }
};

Packed allocate_packed(const Tensor& x, bool with_panels) {
  Packed p;
  const auto f32 = x.options().dtype(at::kFloat);
  p.cols = Columns(x.size(0), x.size(1), f32);
  if (with_panels) {
    p.panel_buffer = at::empty({ceil_div(p.cols.n, kNR), p.cols.dp, kNR}, f32);
    p.panels = p.panel_buffer.data_ptr<float>();
  }
  return p;
}

// Called inside the parallel region: the loops are work-shared and end in a barrier.
template <typename T>
void fill_packed_typed(const T* src, Packed& p) {
  const Columns& cols = p.cols;
  const int64_t n = cols.n, d = cols.d, dp = cols.dp;
#pragma omp for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < dp; ++j) cols.at(i, j) = j < d ? static_cast<float>(src[i * d + j]) : 0.0f;
  }
  if (p.panels != nullptr) {
#pragma omp for schedule(static)
    for (int64_t panel = 0; panel < ceil_div(n, kNR); ++panel) {
      float* out = p.panels + panel * dp * kNR;
      for (int64_t r = 0; r < kNR; ++r) {
        const int64_t i = panel * kNR + r;
        for (int64_t j = 0; j < dp; ++j) {
          out[j * kNR + r] = i < n && j < d ? static_cast<float>(src[i * d + j]) : 0.0f;
        }
      }
    }
  }
}

void fill_packed(const Tensor& x, Packed& p) {
  switch (x.scalar_type()) {
    case at::kFloat: fill_packed_typed(x.data_ptr<float>(), p); break;
    case at::kBFloat16: fill_packed_typed(x.data_ptr<at::BFloat16>(), p); break;
    case at::kHalf: fill_packed_typed(x.data_ptr<at::Half>(), p); break;
    default: break;  // rejected by check_embeddings before the parallel region
  }
}

void zero_columns(const Columns& a) {
#pragma omp for schedule(static)
  for (int64_t c = 0; c < a.dp / kNR; ++c) {
    std::fill(a.data + c * a.panel_stride(), a.data + (c + 1) * a.panel_stride(), 0.0f);
  }
}

// dot(row i of a, row j of b) in double.
double row_dot(const Columns& a, int64_t i, const Columns& b, int64_t j) {
  double acc = 0.0;
  for (int64_t c = 0; c < a.d; ++c) acc += static_cast<double>(a.at(i, c)) * b.at(j, c);
  return acc;
}

// row i of a -= mult * row j of b
void row_sub(const Columns& a, int64_t i, const Columns& b, int64_t j, float mult) {
  for (int64_t c = 0; c < a.d; ++c) a.at(i, c) -= mult * b.at(j, c);
}

template <typename T>
void write_out_typed(const Columns& g, float mult, T* out) {
#pragma omp for schedule(static)
  for (int64_t i = 0; i < g.n; ++i) {
    for (int64_t c = 0; c < g.d; ++c) out[i * g.d + c] = static_cast<T>(mult * g.at(i, c));
  }
}

// out (n, d) row-major in its dtype = mult * g.
void write_out(const Columns& g, float mult, Tensor& out) {
  switch (out.scalar_type()) {
    case at::kFloat: write_out_typed(g, mult, out.data_ptr<float>()); break;
    case at::kBFloat16: write_out_typed(g, mult, out.data_ptr<at::BFloat16>()); break;
    case at::kHalf: write_out_typed(g, mult, out.data_ptr<at::Half>()); break;
    default: break;
  }
}

// Per-thread workspace: one tile and the per-row / per-column vectors of the online log-sum-exp.
struct Workspace {
  static constexpr int64_t kVectors = 9;
  static constexpr int64_t kFloats = kBlock * kBlock + kVectors * kBlock;
  float* tile;
  float *row_max, *row_ref, *row_scale, *col_max, *col_ref, *col_scale, *col_sum;
  float *run_max, *run_sum;  // InfoNCE forward: the running state of the thread's row block

  Panels tile_view() const { return {tile, kBlock, kNR}; }

  explicit Workspace(float* base) : tile(base) {
    float* v = base + kBlock * kBlock;
    float** vectors[kVectors] = {&row_max, &row_ref, &row_scale, &col_max, &col_ref,
                                 &col_scale, &col_sum, &run_max, &run_sum};
    for (int64_t i = 0; i < kVectors; ++i) *vectors[i] = v + i * kBlock;
  }
};

// Sets the masked entries of a scaled tile to -inf: the padded columns [cols, cols_pad) and, per row, the column
// skipped(i) (the excluded one; < 0 when none falls in this tile).
template <typename Skipped>
void mask_tile(float* S, int64_t ld, int64_t rows, int64_t cols, int64_t cols_pad, Skipped skipped) {
  for (int64_t i = 0; i < rows; ++i) {
    std::fill(S + i * ld + cols, S + i * ld + cols_pad, -kInf);
    const int64_t j = skipped(i);
    if (j >= 0) S[i * ld + j] = -kInf;
  }
}

// The reference for exp() after a max update: the new max, or 0 while it is still -inf, so that the masked
// (-inf) entries give exp(-inf - 0) = 0 instead of NaN. scale = exp(old_max - ref) rescales the running sum.
inline void rescale_refs(float* state_max, const float* tile_max, float* ref, float* scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float old_max = state_max[i];
    const float new_max = old_max < tile_max[i] ? tile_max[i] : old_max;  // keeps a NaN state
    ref[i] = new_max == -kInf ? 0.0f : new_max;
    scale[i] = old_max - ref[i];
    state_max[i] = new_max;
  }
  exp_array(scale, n);
}

// Folds a scaled, masked tile S (rows x cols_pad) into the running (max, sum) of its rows and, when col_max_state is
// given, of its columns: the symmetric NT-Xent tile S_IJ is also S_JI^T, so one tile serves both blocks.
void lse_update(const float* S, int64_t ld, int64_t rows, int64_t cols_pad, float* row_max_state,
                float* row_sum_state, float* col_max_state, float* col_sum_state, Workspace& w) {
  const bool with_cols = col_max_state != nullptr;
  if (with_cols) std::fill(w.col_max, w.col_max + cols_pad, -kInf);
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = S + i * ld;
    v8f m = splat(-kInf);
    for (int64_t j = 0; j < cols_pad; j += kLanes) {
      const v8f x = load8(s + j);
      m = vmax(m, x);
      if (with_cols) store8(w.col_max + j, vmax(load8(w.col_max + j), x));
    }
    w.row_max[i] = hmax(m);
  }
  rescale_refs(row_max_state, w.row_max, w.row_ref, w.row_scale, rows);
  if (with_cols) {
    rescale_refs(col_max_state, w.col_max, w.col_ref, w.col_scale, cols_pad);
    std::fill(w.col_sum, w.col_sum + cols_pad, 0.0f);
  }
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = S + i * ld;
    const v8f ref = splat(w.row_ref[i]);
    v8f acc = v8f{};
    for (int64_t j = 0; j < cols_pad; j += kLanes) {
      const v8f x = load8(s + j);
      acc += exp8(x - ref);
      if (with_cols) store8(w.col_sum + j, load8(w.col_sum + j) + exp8(x - load8(w.col_ref + j)));
    }
    row_sum_state[i] = row_sum_state[i] * w.row_scale[i] + hsum(acc);
  }
  if (with_cols) {
    for (int64_t j = 0; j < cols_pad; ++j) col_sum_state[j] = col_sum_state[j] * w.col_scale[j] + w.col_sum[j];
  }
}

// The direct path. When every |S_ij| <= c (c = |s| max|q_i| max|k_j| by Cauchy-Schwarz) and c <= kDirectBound,
// exp(S_ij) itself lies in [exp(-40), exp(40)] and a sum of 2^31 of them stays finite, so the log-sum-exp needs no
// reference at all: one exp per entry, no max pass, the same exp serves the row and (NT-Xent) the column of a tile,
// and no rounding from subtracting a reference. Unit vectors with s <= 40 (SimCLR / MoCo temperatures) take it;
// larger scales (CLIP's logit_scale goes to 100) take the online max.
constexpr float kDirectBound = 40.0f;

// row_sum[i] += sum_j exp(S_ij), and col_sum[j] += the same terms when col_sum is given. The column terms are
// summed per tile first (in the workspace): adding 96 rows straight into a running sum lost 4e-6 at 2N = 3646.
void direct_update(const float* S, int64_t ld, int64_t rows, int64_t cols_pad, float* row_sum, float* col_sum,
                   Workspace& w) {
  if (col_sum != nullptr) std::fill(w.col_sum, w.col_sum + cols_pad, 0.0f);
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = S + i * ld;
    v8f acc = v8f{};
    for (int64_t j = 0; j < cols_pad; j += kLanes) {
      const v8f e = exp8(load8(s + j));
      acc += e;
      if (col_sum != nullptr) store8(w.col_sum + j, load8(w.col_sum + j) + e);
    }
    row_sum[i] += hsum(acc);
  }
  if (col_sum != nullptr) {
    for (int64_t j = 0; j < cols_pad; ++j) col_sum[j] += w.col_sum[j];
  }
}

// How softmax_weights gets P from a raw dot product t:
//   kRows:       W = P, P_ij = exp(s t - lse_i)                          (InfoNCE)
//   kSymmetric:  W = P + P^T, P_ji = exp(s t - lse_j) as t is symmetric  (NT-Xent)
//   kSymmetricDirect: the same W with one exp, exp(s t) (a_i + a_j) with a_i = exp(-lse_i) (kDirectBound)
enum class Weights { kRows, kSymmetric, kSymmetricDirect };

// Turns a raw dot-product tile T (rows x cols_pad) into the weights in place and returns sum W_ij T_ij (the dscale
// term). row_param / col_param hold lse (a for kSymmetricDirect) of the tile's rows / columns. skipped(i) is
// zeroed. Padded columns need no mask: their T is 0 (no dscale) and the gradient GEMMs never read them.
template <Weights kMode, typename Skipped>
double softmax_weights(float* T, int64_t ld, int64_t rows, int64_t cols_pad, float s, const float* row_param,
                       const float* col_param, Skipped skipped) {
  double sum = 0.0;  // per row in float, across rows in double: a 96 x 96 float sum lost ~1e-5 at 2N = 3646
  const v8f sv = splat(s);
  for (int64_t i = 0; i < rows; ++i) {
    v8f acc = v8f{};
    float* t = T + i * ld;
    // Zeroing T there first keeps the skipped weight (exp(s |z_i|^2 - lse_i) on the NT-Xent diagonal can be ~1e6)
    // out of the float dscale sum, where subtracting it later would cancel catastrophically.
    const int64_t skip = skipped(i);
    if (skip >= 0) t[skip] = 0.0f;
    const v8f row = splat(row_param[i]);
    for (int64_t j = 0; j < cols_pad; j += kLanes) {
      const v8f x = load8(t + j);
      v8f weight;
      if constexpr (kMode == Weights::kRows) {
        weight = exp8(sv * x - row);
      } else if constexpr (kMode == Weights::kSymmetric) {
        weight = exp8(sv * x - row) + exp8(sv * x - load8(col_param + j));
      } else {
        weight = exp8(sv * x) * (row + load8(col_param + j));
      }
      acc += weight * x;
      store8(t + j, weight);
    }
    if (skip >= 0) t[skip] = 0.0f;
    sum += hsum(acc);
  }
  return sum;
}

// max_i |x_i|^2, +inf when one is not finite (which rules out the direct path). Called by every thread of the
// parallel region, which all get the same value; `slot` is shared and starts at 0.
float max_sq_norm(const Columns& x, float& slot) {
  float local = 0.0f;
#pragma omp for schedule(static) nowait
  for (int64_t i = 0; i < x.n; ++i) {
    float sq = 0.0f;
    for (int64_t c = 0; c < x.d; ++c) sq += x.at(i, c) * x.at(i, c);
    if (!(sq <= std::numeric_limits<float>::max())) sq = kInf;  // inf or NaN
    local = std::max(local, sq);
  }
#pragma omp critical(fastssl_max_sq_norm)
  slot = std::max(slot, local);
#pragma omp barrier
  return slot;
}

// Round-robin ("circle method") tournament over nb blocks: every round pairs each block with at most one other, so
// the tiles of a round touch disjoint blocks. With nb odd the block that sits out a round runs its diagonal tile
// (I, I) in that round; with nb even the diagonal tiles get one extra round. round_start[r] indexes tiles.
struct Schedule {
  std::vector<std::pair<int64_t, int64_t>> tiles;
  std::vector<int64_t> round_start;
};

Schedule tournament(int64_t nb) {
  Schedule sch;
  const int64_t players = nb + (nb & 1);  // an odd count gets a phantom block `nb`: its partner sits out
  const int64_t ring = players - 1;
  for (int64_t round = 0; round < ring; ++round) {
    sch.round_start.push_back(static_cast<int64_t>(sch.tiles.size()));
    auto add = [&](int64_t a, int64_t b) {
      if (a == nb) a = b;
      if (b == nb) b = a;
      sch.tiles.emplace_back(std::min(a, b), std::max(a, b));
    };
    add(round, ring);
    for (int64_t k = 1; k < players / 2; ++k) add((round + k) % ring, (round - k + ring) % ring);
  }
  if ((nb & 1) == 0) {
    sch.round_start.push_back(static_cast<int64_t>(sch.tiles.size()));
    for (int64_t b = 0; b < nb; ++b) sch.tiles.emplace_back(b, b);
  }
  sch.round_start.push_back(static_cast<int64_t>(sch.tiles.size()));
  return sch;
}

void check_embeddings(const Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 2, name, " must have shape (rows, dim), got ", x.sizes());
  TORCH_CHECK(x.size(0) >= 1 && x.size(1) >= 1, name, " must have at least one row and one column, got ", x.sizes());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble, name,
              " must be float32, bfloat16, float16 or float64, got ", t);
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous (shape ", x.sizes(), ", strides ", x.strides(), ")");
}

void check_rows(const Tensor& x, const char* name, int64_t n, at::ScalarType dtype) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 1 && x.size(0) == n, name, " must have shape (", n, ",), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == dtype, name, " must be ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

void check_index(const Tensor& idx, const char* name, int64_t n, int64_t lo, int64_t hi) {
  check_rows(idx, name, n, at::kLong);
  const int64_t* v = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(v[i] >= lo && v[i] < hi, name, "[", i, "] = ", v[i], " is outside [", lo, ", ", hi, ")");
  }
}

void check_pair(const Tensor& q, const Tensor& k, const Tensor& pos, const Tensor& exclude) {
  check_embeddings(q, "q");
  check_embeddings(k, "k");
  TORCH_CHECK(k.scalar_type() == q.scalar_type(), "k must have the dtype of q (", q.scalar_type(), "), got ",
              k.scalar_type());
  TORCH_CHECK(k.size(1) == q.size(1), "k must have shape (M, ", q.size(1), ") to match q, got ", k.sizes());
  check_index(pos, "pos", q.size(0), 0, k.size(0));
  check_index(exclude, "exclude", q.size(0), -1, k.size(0));
}

// Row block of the InfoNCE kernels: kBlock, but small enough that every thread gets about four blocks (MoCo runs
// a few hundred queries against a long queue), a multiple of the micro-kernel height.
int64_t query_block(int64_t n, int64_t threads) {
  return std::min(kBlock, round_up(ceil_div(n, 4 * threads), kMR));
}

Tensor scratch_for(int threads, const Tensor& like) {
  return at::empty({threads, Workspace::kFloats}, like.options().dtype(at::kFloat));
}

// ---------------------------------------------------------------------------------------------------------------
// float64: a plain row-parallel path with the same math (online log-sum-exp, recompute in the backward), for
// gradcheck and for users who want double precision end to end. Three passes over the (N, M) pairs, no packing.
// ---------------------------------------------------------------------------------------------------------------

double dot_f64(const double* a, const double* b, int64_t d) {
  double acc = 0.0;
  for (int64_t t = 0; t < d; ++t) acc += a[t] * b[t];
  return acc;
}

std::tuple<Tensor, Tensor> info_nce_forward_f64(const Tensor& q, const Tensor& k, double s, const Tensor& pos,
                                                const Tensor& exclude) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  const double *qp = q.data_ptr<double>(), *kp = k.data_ptr<double>();
  const int64_t *pos_p = pos.data_ptr<int64_t>(), *exc_p = exclude.data_ptr<int64_t>();
  Tensor loss = at::empty({n}, q.options()), lse = at::empty({n}, q.options());
  double *loss_p = loss.data_ptr<double>(), *lse_p = lse.data_ptr<double>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double run_max = -std::numeric_limits<double>::infinity(), run_sum = 0.0, positive = 0.0;
      for (int64_t j = 0; j < m; ++j) {
        const double logit = s * dot_f64(qp + i * d, kp + j * d, d);
        if (j == pos_p[i]) positive = logit;
        if (j == exc_p[i]) continue;
        const double new_max = std::max(run_max, logit);
        const double safe_max = std::isinf(new_max) && new_max < 0 ? 0.0 : new_max;
        run_sum = run_sum * std::exp(run_max - safe_max) + std::exp(logit - safe_max);
        run_max = new_max;
      }
      lse_p[i] = run_max + std::log(run_sum);
      loss_p[i] = lse_p[i] - positive;
    }
  });
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> info_nce_backward_f64(const Tensor& q, const Tensor& k, double s,
                                                         const Tensor& pos, const Tensor& exclude,
                                                         const Tensor& lse, double coef, bool compute_dk) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  const double *qp = q.data_ptr<double>(), *kp = k.data_ptr<double>(), *lse_p = lse.data_ptr<double>();
  const int64_t *pos_p = pos.data_ptr<int64_t>(), *exc_p = exclude.data_ptr<int64_t>();
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dscale_rows = at::zeros({n}, q.options());
  double *dq_p = dq.data_ptr<double>(), *dk_p = dk.data_ptr<double>(), *ds_p = dscale_rows.data_ptr<double>();
  auto weight = [&](int64_t i, int64_t j, double dot) {  // G_ij = P_ij - [j == pos_i]
    const double p = j == exc_p[i] ? 0.0 : std::exp(s * dot - lse_p[i]);
    return p - (j == pos_p[i] ? 1.0 : 0.0);
  };
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {  // dq and dscale: rows own their outputs
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const double dot = dot_f64(qp + i * d, kp + j * d, d);
        const double g = weight(i, j, dot);
        ds_p[i] += g * dot;
        for (int64_t t = 0; t < d; ++t) dq_p[i * d + t] += coef * s * g * kp[j * d + t];
      }
    }
  });
  if (!compute_dk) return {dq, at::empty({0}, k.options()), dscale_rows.sum() * coef};
  at::parallel_for(0, m, 1, [&](int64_t begin, int64_t end) {  // dk: columns own their outputs
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t i = 0; i < n; ++i) {
        const double g = weight(i, j, dot_f64(qp + i * d, kp + j * d, d));
        for (int64_t t = 0; t < d; ++t) dk_p[j * d + t] += coef * s * g * qp[i * d + t];
      }
    }
  });
  return {dq, dk, dscale_rows.sum() * coef};
}

std::pair<Tensor, Tensor> nt_xent_pairs(const Tensor& z) {
  const int64_t rows = z.size(0);
  Tensor exclude = at::arange(rows, z.options().dtype(at::kLong));
  return {(exclude + rows / 2).remainder(rows), exclude};
}

}  // namespace

std::tuple<Tensor, Tensor> info_nce_forward(const Tensor& q, const Tensor& k, double scale, const Tensor& pos,
                                            const Tensor& exclude) {
  check_pair(q, k, pos, exclude);
  if (q.scalar_type() == at::kDouble) return info_nce_forward_f64(q, k, scale, pos, exclude);
  const int64_t n = q.size(0), m = k.size(0);
  const float s = static_cast<float>(scale);
  const int threads = at::get_num_threads();
  Packed qp = allocate_packed(q, false);
  Packed kp = allocate_packed(k, true);
  const Columns &qc = qp.cols, &kc = kp.cols;
  Tensor scratch = scratch_for(threads, q);
  Tensor loss = at::empty({n}, q.options().dtype(at::kFloat));
  Tensor lse = at::empty({n}, q.options().dtype(at::kFloat));
  const int64_t* pos_p = pos.data_ptr<int64_t>();
  const int64_t* exc_p = exclude.data_ptr<int64_t>();
  float* loss_p = loss.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  const int64_t dp = qc.dp, bq = query_block(n, threads), nbq = ceil_div(n, bq), nbk = ceil_div(m, kBlock);
  float q_sq = 0.0f, k_sq = 0.0f;

#pragma omp parallel num_threads(threads)
  {
    Workspace w(scratch.data_ptr<float>() + omp_get_thread_num() * Workspace::kFloats);
    fill_packed(q, qp);
    fill_packed(k, kp);
    const float q_max_sq = max_sq_norm(qc, q_sq);  // two statements: every thread must meet the loops in order
    const float k_max_sq = max_sq_norm(kc, k_sq);
    const float c = std::abs(s) * std::sqrt(q_max_sq * k_max_sq);
    const bool direct = c <= kDirectBound;
#pragma omp for schedule(dynamic, 1)
    for (int64_t bi = 0; bi < nbq; ++bi) {
      const int64_t i0 = bi * bq, rows = std::min(bq, n - i0);
      std::fill(w.run_max, w.run_max + rows, direct ? 0.0f : -kInf);
      std::fill(w.run_sum, w.run_sum + rows, 0.0f);
      for (int64_t bj = 0; bj < nbk; ++bj) {
        const int64_t j0 = bj * kBlock, cols = std::min(kBlock, m - j0), cols_pad = round_up(cols, kNR);
        gemm<ALayout::kColumnPanels, false>(rows, cols_pad / kNR, dp, qc.data + i0 * kNR, qc.panel_stride(),
                                            kp.panels_from(j0), w.tile_view(), s);
        mask_tile(w.tile, kBlock, rows, cols, cols_pad, [&](int64_t i) {
          const int64_t j = exc_p[i0 + i] - j0;
          return j < cols ? j : int64_t{-1};
        });
        if (direct) {
          direct_update(w.tile, kBlock, rows, cols_pad, w.run_sum, nullptr, w);
        } else {
          lse_update(w.tile, kBlock, rows, cols_pad, w.run_max, w.run_sum, nullptr, nullptr, w);
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t r = i0 + i;
        lse_p[r] = static_cast<float>(w.run_max[i] + std::log(static_cast<double>(w.run_sum[i])));
        loss_p[r] = lse_p[r] - static_cast<float>(s * row_dot(qc, r, kc, pos_p[r]));
      }
    }
  }
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> info_nce_backward(const Tensor& q, const Tensor& k, double scale,
                                                     const Tensor& pos, const Tensor& exclude, const Tensor& lse,
                                                     double coef, bool compute_dk) {
  check_pair(q, k, pos, exclude);
  if (q.scalar_type() == at::kDouble) {
    check_rows(lse, "lse", q.size(0), at::kDouble);
    return info_nce_backward_f64(q, k, scale, pos, exclude, lse, coef, compute_dk);
  }
  check_rows(lse, "lse", q.size(0), at::kFloat);
  const int64_t n = q.size(0), m = k.size(0);
  const float s = static_cast<float>(scale);
  const int threads = at::get_num_threads();
  const auto f32 = q.options().dtype(at::kFloat);
  Packed qp = allocate_packed(q, false);
  Packed kp = allocate_packed(k, true);
  const Columns &qc = qp.cols, &kc = kp.cols;
  // Keys that need no gradient (MoCo's momentum keys and queue) skip the dK GEMM, its scatter and its M x D buffer.
  const Columns gq(n, q.size(1), f32), gk = compute_dk ? Columns(m, k.size(1), f32) : Columns();
  Tensor dq = at::empty_like(q), dk = compute_dk ? at::empty_like(k) : at::empty({0}, k.options());
  Tensor scratch = scratch_for(threads, q);
  const int64_t* pos_p = pos.data_ptr<int64_t>();
  const int64_t* exc_p = exclude.data_ptr<int64_t>();
  const float* lse_p = lse.data_ptr<float>();
  const int64_t dp = qc.dp, bq = query_block(n, threads), nbq = ceil_div(n, bq), nbk = ceil_div(m, kBlock);
  // Latin square: in round t, tile (I, (I + t) mod nbk) for every I (or the transpose when nbq > nbk), so the tiles
  // of a round have distinct row blocks and distinct column blocks.
  const bool by_query = nbq <= nbk;
  const int64_t rounds = by_query ? nbk : nbq, per_round = by_query ? nbq : nbk;
  double sum_wt = 0.0, sum_pos = 0.0;

#pragma omp parallel num_threads(threads)
  {
    Workspace w(scratch.data_ptr<float>() + omp_get_thread_num() * Workspace::kFloats);
    fill_packed(q, qp);
    fill_packed(k, kp);
    zero_columns(gq);
    if (compute_dk) zero_columns(gk);
    double local_wt = 0.0, local_pos = 0.0;
    for (int64_t t = 0; t < rounds; ++t) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < per_round; ++u) {
        const int64_t bi = by_query ? u : (u + t) % nbq, bj = by_query ? (u + t) % nbk : u;
        const int64_t i0 = bi * bq, rows = std::min(bq, n - i0);
        const int64_t j0 = bj * kBlock, cols = std::min(kBlock, m - j0), cols_pad = round_up(cols, kNR);
        gemm<ALayout::kColumnPanels, false>(rows, cols_pad / kNR, dp, qc.data + i0 * kNR, qc.panel_stride(),
                                            kp.panels_from(j0), w.tile_view(), 1.0f);
        local_wt += softmax_weights<Weights::kRows>(w.tile, kBlock, rows, cols_pad, s, lse_p + i0, nullptr,
                                                    [&](int64_t i) {
                                                      const int64_t j = exc_p[i0 + i] - j0;
                                                      return j < cols ? j : int64_t{-1};
                                                    });
        gemm<ALayout::kRows, true>(rows, dp / kNR, cols, w.tile, kBlock, kc.rows_from(j0), gq.rows_from(i0),
                                   1.0f);
        if (compute_dk) {
          gemm<ALayout::kTransposed, true>(cols, dp / kNR, rows, w.tile, kBlock, qc.rows_from(i0),
                                           gk.rows_from(j0), 1.0f);
        }
      }
    }
    // The -onehot(pos) part of G: dq_i -= k_pos_i, dk_pos_i -= q_i (a scatter: pos may repeat, so one thread).
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      row_sub(gq, i, kc, pos_p[i], 1.0f);
      local_pos += row_dot(qc, i, kc, pos_p[i]);
    }
    if (compute_dk) {
#pragma omp single
      for (int64_t i = 0; i < n; ++i) row_sub(gk, pos_p[i], qc, i, 1.0f);
    }
    write_out(gq, static_cast<float>(coef * scale), dq);
    if (compute_dk) write_out(gk, static_cast<float>(coef * scale), dk);
#pragma omp atomic
    sum_wt += local_wt;
#pragma omp atomic
    sum_pos += local_pos;
  }
  Tensor dscale = at::full({}, static_cast<float>(coef * (sum_wt - sum_pos)), f32);
  return {dq, dk, dscale};
}

std::tuple<Tensor, Tensor> nt_xent_forward(const Tensor& z, double scale) {
  check_embeddings(z, "z");
  TORCH_CHECK(z.size(0) % 2 == 0, "z must have shape (2N, dim) with the two views stacked, got ", z.sizes());
  if (z.scalar_type() == at::kDouble) {
    const auto [pos, exclude] = nt_xent_pairs(z);
    return info_nce_forward_f64(z, z, scale, pos, exclude);
  }
  const int64_t n = z.size(0), half = n / 2;
  const float s = static_cast<float>(scale);
  const int threads = at::get_num_threads();
  const auto f32 = z.options().dtype(at::kFloat);
  Packed zp = allocate_packed(z, true);
  const Columns& zc = zp.cols;
  const int64_t dp = zc.dp, nb = ceil_div(n, kBlock);
  // The running (max, sum) per row; the column update writes whole 16-wide panels, so pad to the block grid.
  Tensor state = at::empty({2, nb * kBlock}, f32);
  Tensor scratch = scratch_for(threads, z);
  Tensor loss = at::empty({n}, f32);
  Tensor lse = at::empty({n}, f32);
  float* run_max = state.data_ptr<float>();
  float* run_sum = run_max + nb * kBlock;
  float* loss_p = loss.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  const Schedule sch = tournament(nb);
  float z_sq = 0.0f;

#pragma omp parallel num_threads(threads)
  {
    Workspace w(scratch.data_ptr<float>() + omp_get_thread_num() * Workspace::kFloats);
    fill_packed(z, zp);
    const float c = std::abs(s) * max_sq_norm(zc, z_sq);
    const bool direct = c <= kDirectBound;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nb * kBlock; ++i) {
      run_max[i] = direct ? 0.0f : -kInf;
      run_sum[i] = 0.0f;
    }
    for (size_t r = 0; r + 1 < sch.round_start.size(); ++r) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = sch.round_start[r]; t < sch.round_start[r + 1]; ++t) {
        const auto [bi, bj] = sch.tiles[t];
        const int64_t i0 = bi * kBlock, rows = std::min(kBlock, n - i0);
        const int64_t j0 = bj * kBlock, cols = std::min(kBlock, n - j0), cols_pad = round_up(cols, kNR);
        const bool diagonal = bi == bj;
        gemm<ALayout::kColumnPanels, false>(rows, cols_pad / kNR, dp, zc.data + i0 * kNR, zc.panel_stride(),
                                            zp.panels_from(j0), w.tile_view(), s);
        mask_tile(w.tile, kBlock, rows, cols, cols_pad, [&](int64_t i) { return diagonal ? i : int64_t{-1}; });
        if (direct) {
          direct_update(w.tile, kBlock, rows, cols_pad, run_sum + i0, diagonal ? nullptr : run_sum + j0, w);
        } else {
          lse_update(w.tile, kBlock, rows, cols_pad, run_max + i0, run_sum + i0, diagonal ? nullptr : run_max + j0,
                     run_sum + j0, w);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      lse_p[i] = static_cast<float>(run_max[i] + std::log(static_cast<double>(run_sum[i])));
      loss_p[i] = lse_p[i] - static_cast<float>(s * row_dot(zc, i, zc, i < half ? i + half : i - half));
    }
  }
  return {loss, lse};
}

std::tuple<Tensor, Tensor> nt_xent_backward(const Tensor& z, double scale, const Tensor& lse, double coef) {
  check_embeddings(z, "z");
  TORCH_CHECK(z.size(0) % 2 == 0, "z must have shape (2N, dim) with the two views stacked, got ", z.sizes());
  if (z.scalar_type() == at::kDouble) {
    check_rows(lse, "lse", z.size(0), at::kDouble);
    const auto [pos, exclude] = nt_xent_pairs(z);
    auto [dq, dk, dscale] = info_nce_backward_f64(z, z, scale, pos, exclude, lse, coef, true);
    return {dq.add_(dk), dscale};
  }
  check_rows(lse, "lse", z.size(0), at::kFloat);
  const int64_t n = z.size(0), half = n / 2;
  const float s = static_cast<float>(scale);
  const int threads = at::get_num_threads();
  const auto f32 = z.options().dtype(at::kFloat);
  Packed zp = allocate_packed(z, true);
  const Columns& zc = zp.cols;
  const Columns gz(n, z.size(1), f32);
  Tensor dz = at::empty_like(z);
  const int64_t dp = zc.dp, nb = ceil_div(n, kBlock);
  // Per-row parameter of the weights over the block grid: lse (+inf past n, so P_ji = 0 for the padded columns of
  // the last block), or a_i = exp(-lse_i) (0 past n) on the direct path.
  Tensor row_param = at::empty({nb * kBlock}, f32);
  Tensor scratch = scratch_for(threads, z);
  const float* lse_p = lse.data_ptr<float>();
  float* param = row_param.data_ptr<float>();
  const Schedule sch = tournament(nb);
  // exp(s t) (a_i + a_j) <= 2 exp(c - lse_min) stays finite for lse_min >= c - 2 kDirectBound; the forward's lse
  // is >= -c, but lse is an input here.
  float lse_min = kInf;
  for (int64_t i = 0; i < n; ++i) lse_min = lse_p[i] < lse_min ? lse_p[i] : lse_min;
  double sum_wt = 0.0, sum_pos = 0.0;
  float z_sq = 0.0f;

#pragma omp parallel num_threads(threads)
  {
    Workspace w(scratch.data_ptr<float>() + omp_get_thread_num() * Workspace::kFloats);
    fill_packed(z, zp);
    zero_columns(gz);
    const float c = std::abs(s) * max_sq_norm(zc, z_sq);
    const bool direct = c <= kDirectBound && c - lse_min <= 2.0f * kDirectBound;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nb * kBlock; ++i) {
      if (direct) {
        param[i] = i < n ? static_cast<float>(std::exp(-static_cast<double>(lse_p[i]))) : 0.0f;
      } else {
        param[i] = i < n ? lse_p[i] : kInf;
      }
    }
    double local_wt = 0.0, local_pos = 0.0;
    for (size_t r = 0; r + 1 < sch.round_start.size(); ++r) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = sch.round_start[r]; t < sch.round_start[r + 1]; ++t) {
        const auto [bi, bj] = sch.tiles[t];
        const int64_t i0 = bi * kBlock, rows = std::min(kBlock, n - i0);
        const int64_t j0 = bj * kBlock, cols = std::min(kBlock, n - j0), cols_pad = round_up(cols, kNR);
        const bool diagonal = bi == bj;
        gemm<ALayout::kColumnPanels, false>(rows, cols_pad / kNR, dp, zc.data + i0 * kNR, zc.panel_stride(),
                                            zp.panels_from(j0), w.tile_view(), 1.0f);
        const auto skipped = [&](int64_t i) { return diagonal ? i : int64_t{-1}; };
        const double wt =
            direct ? softmax_weights<Weights::kSymmetricDirect>(w.tile, kBlock, rows, cols_pad, s, param + i0,
                                                                param + j0, skipped)
                   : softmax_weights<Weights::kSymmetric>(w.tile, kBlock, rows, cols_pad, s, param + i0, param + j0,
                                                          skipped);
        // A diagonal tile holds both (i, j) and (j, i): W = P + P^T counts each pair's dscale term twice.
        local_wt += diagonal ? 0.5 * wt : wt;
        gemm<ALayout::kRows, true>(rows, dp / kNR, cols, w.tile, kBlock, zc.rows_from(j0), gz.rows_from(i0),
                                   1.0f);
        if (!diagonal) {
          gemm<ALayout::kTransposed, true>(cols, dp / kNR, rows, w.tile, kBlock, zc.rows_from(i0),
                                           gz.rows_from(j0), 1.0f);
        }
      }
    }
    // -onehot(pos) enters dz twice (dq and dk parts): pos is its own inverse.
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = i < half ? i + half : i - half;
      row_sub(gz, i, zc, p, 2.0f);
      local_pos += row_dot(zc, i, zc, p);
    }
    write_out(gz, static_cast<float>(coef * scale), dz);
#pragma omp atomic
    sum_wt += local_wt;
#pragma omp atomic
    sum_pos += local_pos;
  }
  Tensor dscale = at::full({}, static_cast<float>(coef * (sum_wt - sum_pos)), f32);
  return {dz, dscale};
}

}  // namespace fastssl
