// Masked-patch and masked-token gathers on the CPU (semantics: the references in fastssl/ops/masking.py).
//
// All of these are memory-bound copies, so the point is to touch each byte once:
//  * patchify_gather reads only the K visible patches straight from the image (MAE patchifies all L patches into
//    a permuted copy, then gathers K of them: 2 full passes over the image plus the gather). A patch row of p
//    pixels is p contiguous values per channel in NCHW (interleaved into MAE's (i, j, c) order on the way) and
//    p * C contiguous values in channels_last, which is already MAE's order: one memcpy per patch row.
//    normalize_pixels works on the patch while it is in L1: two passes for the mean and the unbiased variance
//    (double accumulators for float32/float64, float for the half types), one to write (x - mean) * rstd.
//  * patchify_gather's backward is parallel over (image, band of p rows): a band is a disjoint slice of the
//    gradient, so each task zeroes its band and adds the gradients of the kept patches that lie in it without
//    races or atomics (repeated ids accumulate), and B = 1 still has H / p tasks.
//  * the token gathers copy rows (memcpy when the rows are contiguous); their backwards are parallel over
//    (batch row, column chunk): a chunk accumulates the routed rows in an opmath buffer that stays in L2, then
//    writes every output row once, so the gradient is written once and never zero-filled first.
// Index arithmetic is int64 throughout; ids are range-checked before any access.
#include "masking.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastssl {
namespace {

using at::Tensor;

// normalize_pixels accumulates its statistics in double for float32 (the float64 reference is the yardstick and
// the op is memory-bound, so the wider type is free) and in float for bfloat16 / float16.
template <typename T>
using stats_t = std::conditional_t<std::is_same_v<T, float> || std::is_same_v<T, double>, double, float>;

constexpr double kNormEps = 1e-6;  // MAE: (target - mean) / (var + 1.e-6) ** .5
constexpr int64_t kLanes = 8;      // independent partial sums: breaks the add latency chain and vectorises
// Parallel grain: ~64 KiB of float32 per task keeps the OpenMP overhead small against the copies.
constexpr int64_t kGrainElements = 16384;

struct Strides4 {
  int64_t b, c, h, w;
};

// The geometry of one patchify call.
struct Patches {
  int64_t batch, channels, patch, grid_w, num_kept, patch_numel;
};

// The raw bits of a T: the copies move bit patterns, so one vectorised loop serves every dtype.
template <typename T>
using bits_t = std::conditional_t<sizeof(T) == 2, std::uint16_t,
                                  std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>;

constexpr int64_t kMaxPlanarPatch = 32 * 32;  // p * p of the planar staging buffer (patches up to 32 x 32)

// dst[e * 3 + c] = planar[c * n + e]: with the channel count a constant GCC vectorises the 3-way interleave.
template <typename U>
inline void interleave3(const U* __restrict planar, int64_t n, U* __restrict dst) {
  for (int64_t e = 0; e < n; ++e) {
    dst[e * 3 + 0] = planar[e];
    dst[e * 3 + 1] = planar[n + e];
    dst[e * 3 + 2] = planar[2 * n + e];
  }
}

// Copies patch `index` of one image (origin = &image[b, 0, 0, 0]) into dst in MAE's (i, j, c) order.
// Plane by plane: the p row segments of one plane are read one after another. Alternating between the planes
// (H * W values apart) row by row was 3x slower at 64 x 3 x 224 x 224 float32 (12.6 ms vs 4.2 ms, one thread,
// both with the scalar strided copy).
template <typename T>
inline void read_patch(const T* image, const Strides4& s, const Patches& g, int64_t index, T* dst) {
  const int64_t p = g.patch, C = g.channels;
  const T* origin = image + (index / g.grid_w) * p * s.h + (index % g.grid_w) * p * s.w;
  if ((C == 1 || s.c == 1) && s.w == C) {  // channels_last (or one channel): a patch row is already (j, c)-ordered
    for (int64_t i = 0; i < p; ++i) std::memcpy(dst + i * p * C, origin + i * s.h, sizeof(T) * p * C);
    return;
  }
  if (C == 3 && s.w == 1 && p * p <= kMaxPlanarPatch) {
    // RGB planes (NCHW): stage the patch planar in L1 with row memcpys, then interleave it with vector shuffles.
    // Against the scalar strided copy below (one thread, float32, ratio 0.75): 0.13 -> 0.04 ms at 4 x 3 x 224 x 224
    // (in cache), 4.2 -> 3.3 ms at 64 x 3 x 224 x 224 (from DRAM; channels_last, one memcpy per row: 1.1-1.5 ms).
    using U = bits_t<T>;
    alignas(64) U planar[3 * kMaxPlanarPatch];
    for (int64_t c = 0; c < 3; ++c) {
      for (int64_t i = 0; i < p; ++i) std::memcpy(planar + (c * p + i) * p, origin + c * s.c + i * s.h, sizeof(T) * p);
    }
    interleave3(planar, p * p, reinterpret_cast<U*>(dst));
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t i = 0; i < p; ++i) {
      T* row = dst + i * p * C + c;
      const T* src = origin + i * s.h + c * s.c;
      for (int64_t j = 0; j < p; ++j) row[j * C] = src[j * s.w];
    }
  }
}

// image[patch `index`] += src (n values in MAE's order); the image gradient is written in the layout `s`.
template <typename T, typename A>
inline void add_patch(T* image, const Strides4& s, const Patches& g, int64_t index, const A* src) {
  const int64_t p = g.patch, C = g.channels;
  T* origin = image + (index / g.grid_w) * p * s.h + (index % g.grid_w) * p * s.w;
  for (int64_t i = 0; i < p; ++i) {
    const A* row = src + i * p * C;
    for (int64_t c = 0; c < C; ++c) {
      T* dst = origin + i * s.h + c * s.c;
      for (int64_t j = 0; j < p; ++j) dst[j * s.w] = static_cast<T>(static_cast<A>(dst[j * s.w]) + row[j * C + c]);
    }
  }
}

template <typename A, typename T>
inline A lane_sum(const T* x, int64_t n) {
  A lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += static_cast<A>(x[i + l]);
  }
  A total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  for (; i < n; ++i) total += static_cast<A>(x[i]);
  return total;
}

template <typename A, typename T>
inline A lane_sum_sq_dev(const T* x, int64_t n, A mean) {
  A lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const A d = static_cast<A>(x[i + l]) - mean;
      lanes[l] += d * d;
    }
  }
  A total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  for (; i < n; ++i) {
    const A d = static_cast<A>(x[i]) - mean;
    total += d * d;
  }
  return total;
}

// (mean, 1 / sqrt(unbiased var + eps)) of n >= 2 values.
template <typename A, typename T>
inline std::pair<A, A> patch_stats(const T* x, int64_t n) {
  const A mean = lane_sum<A>(x, n) / static_cast<A>(n);
  const A var = lane_sum_sq_dev<A>(x, n, mean) / static_cast<A>(n - 1);
  return {mean, A(1) / std::sqrt(var + static_cast<A>(kNormEps))};
}

Strides4 strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

void check_ids(const Tensor& ids, const char* name, int64_t batch, int64_t upper) {
  TORCH_CHECK(ids.device().is_cpu(), name, " must be a CPU tensor, got device ", ids.device());
  TORCH_CHECK(ids.scalar_type() == at::kLong, name, " must be int64, got ", ids.scalar_type());
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == batch, name, " must have shape (", batch, ", K), got ", ids.sizes());
  TORCH_CHECK(ids.is_contiguous(), name, " must be contiguous");
  const int64_t* v = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    TORCH_CHECK(v[i] >= 0 && v[i] < upper, name, " values must lie in [0, ", upper, "), got ", v[i], " at flat index ",
                i);
  }
}

void check_floating(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf, name,
              " must be float32, float64, bfloat16 or float16, got ", dtype);
}

Patches check_patch_args(const Tensor& images, const Tensor& ids, int64_t patch_size, bool normalize) {
  check_floating(images, "images");
  TORCH_CHECK(images.dim() == 4, "images must have shape (B, C, H, W), got ", images.sizes());
  TORCH_CHECK(patch_size >= 1, "patch_size must be >= 1, got ", patch_size);
  const int64_t C = images.size(1), H = images.size(2), W = images.size(3);
  TORCH_CHECK(H % patch_size == 0 && W % patch_size == 0, "images: H = ", H, " and W = ", W,
              " must be multiples of patch_size = ", patch_size);
  const int64_t grid_w = W / patch_size, num_patches = (H / patch_size) * grid_w;
  check_ids(ids, "ids_keep", images.size(0), num_patches);
  const int64_t n = patch_size * patch_size * C;
  TORCH_CHECK(!normalize || n >= 2, "normalize_pixels needs at least 2 values per patch, got p * p * C = ", n);
  return {images.size(0), C, patch_size, grid_w, ids.size(1), n};
}

// Row scatter shared by both token backwards: grad row (b, s) (S rows of D) is added to out row
// (b, index[b, s]) when index < rows, else to overflow[b] (the mask token's per-image partial sum, when given).
template <typename T>
void scatter_rows(const T* grad, const int64_t* index, int64_t batch, int64_t S, int64_t D, int64_t rows, T* out,
                  at::opmath_type<T>* overflow) {
  using A = at::opmath_type<T>;
  // A column chunk's accumulator (rows x chunk) is sized to stay in L2 (<= 128 KiB), at least 16 columns wide.
  const int64_t chunk = std::min<int64_t>(D, std::max<int64_t>(16, (128 * 1024 / sizeof(A)) / std::max<int64_t>(rows, 1)));
  const int64_t chunks = (D + chunk - 1) / chunk;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>((S + rows) * chunk, 1));
  at::parallel_for(0, batch * chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(rows * chunk + chunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, d0 = (task % chunks) * chunk, width = std::min(chunk, D - d0);
      std::fill(acc.begin(), acc.end(), A(0));
      A* token = acc.data() + rows * chunk;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t target = index[b * S + s];
        const T* src = grad + (b * S + s) * D + d0;
        A* dst = target < rows ? acc.data() + target * chunk : token;
        for (int64_t j = 0; j < width; ++j) dst[j] += static_cast<A>(src[j]);
      }
      for (int64_t r = 0; r < rows; ++r) {
        T* dst = out + (b * rows + r) * D + d0;
        const A* src = acc.data() + r * chunk;
        for (int64_t j = 0; j < width; ++j) dst[j] = static_cast<T>(src[j]);
      }
      if (overflow != nullptr) std::copy(token, token + width, overflow + b * D + d0);
    }
  });
}

// out row r (of B * rows) = the row selected for it: src(r) -> pointer to its first element, `stride` apart.
template <typename T, typename Source>
void copy_rows(int64_t num_rows, int64_t D, int64_t stride, T* out, const Source& source) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(D, 1));
  at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* src = source(r);
      T* dst = out + r * D;
      if (stride == 1) {
        std::memcpy(dst, src, sizeof(T) * D);
      } else {
        for (int64_t j = 0; j < D; ++j) dst[j] = src[j * stride];
      }
    }
  });
}

}  // namespace

Tensor patchify_gather_forward(const Tensor& images, const Tensor& ids, int64_t patch_size, bool normalize) {
  const Patches g = check_patch_args(images, ids, patch_size, normalize);
  Tensor out = at::empty({g.batch, g.num_kept, g.patch_numel}, images.options());
  const Strides4 s = strides_of(images);
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / g.patch_numel);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, images.scalar_type(), "patchify_gather_forward", [&] {
    using A = stats_t<scalar_t>;
    const scalar_t* image = images.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.num_kept, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* patch = dst + r * g.patch_numel;
        read_patch(image + (r / g.num_kept) * s.b, s, g, id[r], patch);
        if (normalize) {
          const auto [mean, rstd] = patch_stats<A>(patch, g.patch_numel);
          for (int64_t i = 0; i < g.patch_numel; ++i) {
            patch[i] = static_cast<scalar_t>((static_cast<A>(patch[i]) - mean) * rstd);
          }
        }
      }
    });
  });
  return out;
}

Tensor patchify_gather_backward(const Tensor& grad, const Tensor& images, const Tensor& ids, int64_t patch_size,
                                bool normalize) {
  const Patches g = check_patch_args(images, ids, patch_size, normalize);
  TORCH_CHECK(grad.scalar_type() == images.scalar_type(), "grad must have the images' dtype ", images.scalar_type(),
              ", got ", grad.scalar_type());
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == g.batch && grad.size(1) == g.num_kept &&
                  grad.size(2) == g.patch_numel,
              "grad must have shape (", g.batch, ", ", g.num_kept, ", ", g.patch_numel, "), got ", grad.sizes());
  TORCH_CHECK(grad.is_contiguous(), "grad must be contiguous");
  Tensor grad_images = at::empty_like(images);
  const Strides4 in = strides_of(images), out = strides_of(grad_images);
  const int64_t H = images.size(2), W = images.size(3), grid_h = H / g.patch, n = g.patch_numel;
  const int64_t* id = ids.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, images.scalar_type(), "patchify_gather_backward", [&] {
    using A = stats_t<scalar_t>;
    const scalar_t* image = images.data_ptr<scalar_t>();
    const scalar_t* dy = grad.data_ptr<scalar_t>();
    scalar_t* dx = grad_images.data_ptr<scalar_t>();
    // Task (b, band): rows [band * p, band * p + p) of image b, every channel.
    const int64_t band_grain = std::max<int64_t>(1, kGrainElements / (g.channels * g.patch * W));
    at::parallel_for(0, g.batch * grid_h, band_grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> pixels(normalize ? n : 0);
      std::vector<A> patch_grad(n);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / grid_h, band = task % grid_h;
        scalar_t* dx_b = dx + b * out.b;
        for (int64_t c = 0; c < g.channels; ++c) {
          for (int64_t row = band * g.patch; row < (band + 1) * g.patch; ++row) {
            scalar_t* line = dx_b + c * out.c + row * out.h;
            if (out.w == 1) {
              std::fill(line, line + W, scalar_t(0));
            } else {
              for (int64_t col = 0; col < W; ++col) line[col * out.w] = scalar_t(0);
            }
          }
        }
        for (int64_t k = 0; k < g.num_kept; ++k) {
          const int64_t index = id[b * g.num_kept + k];
          if (index / g.grid_w != band) continue;
          const scalar_t* dy_k = dy + (b * g.num_kept + k) * n;
          if (!normalize) {
            for (int64_t i = 0; i < n; ++i) patch_grad[i] = static_cast<A>(dy_k[i]);
          } else {
            // y = (x - mean) * rstd with the unbiased variance:
            // dx = rstd * (dy - mean(dy) - y * sum(dy * y) / (n - 1)).
            read_patch(image + b * in.b, in, g, index, pixels.data());
            const auto [mean, rstd] = patch_stats<A>(pixels.data(), n);
            A sum_dy = 0, sum_dy_y = 0;
            for (int64_t i = 0; i < n; ++i) {
              const A y = (static_cast<A>(pixels[i]) - mean) * rstd, d = static_cast<A>(dy_k[i]);
              patch_grad[i] = y;
              sum_dy += d;
              sum_dy_y += d * y;
            }
            const A mean_dy = sum_dy / static_cast<A>(n), coef = sum_dy_y / static_cast<A>(n - 1);
            for (int64_t i = 0; i < n; ++i) {
              patch_grad[i] = rstd * (static_cast<A>(dy_k[i]) - mean_dy - patch_grad[i] * coef);
            }
          }
          add_patch(dx_b, out, g, index, patch_grad.data());
        }
      }
    });
  });
  return grad_images;
}

Tensor gather_tokens_forward(const Tensor& x, const Tensor& ids) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() == 3, "x must have shape (B, L, D), got ", x.sizes());
  check_ids(ids, "ids", x.size(0), x.size(1));
  const int64_t K = ids.size(1), D = x.size(2);
  Tensor out = at::empty({x.size(0), K, D}, x.options());
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t sb = x.stride(0), sl = x.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gather_tokens_forward", [&] {
    const scalar_t* base = x.data_ptr<scalar_t>();
    copy_rows(out.size(0) * K, D, x.stride(2), out.data_ptr<scalar_t>(),
              [&](int64_t r) { return base + (r / K) * sb + id[r] * sl; });
  });
  return out;
}

Tensor gather_tokens_backward(const Tensor& grad, const Tensor& ids, int64_t num_tokens) {
  check_floating(grad, "grad");
  TORCH_CHECK(grad.dim() == 3 && grad.is_contiguous(), "grad must be a contiguous (B, K, D) tensor, got ",
              grad.sizes());
  check_ids(ids, "ids", grad.size(0), num_tokens);
  TORCH_CHECK(ids.size(1) == grad.size(1), "ids must have K = ", grad.size(1), " columns, got ", ids.size(1));
  const int64_t B = grad.size(0), K = grad.size(1), D = grad.size(2);
  Tensor grad_x = at::empty({B, num_tokens, D}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "gather_tokens_backward", [&] {
    scatter_rows<scalar_t>(grad.data_ptr<scalar_t>(), ids.data_ptr<int64_t>(), B, K, D, num_tokens,
                           grad_x.data_ptr<scalar_t>(), nullptr);
  });
  return grad_x;
}

Tensor unshuffle_with_mask_token_forward(const Tensor& visible, const Tensor& mask_token,
                                         const Tensor& ids_restore) {
  check_floating(visible, "visible");
  TORCH_CHECK(visible.dim() == 3, "visible must have shape (B, K, D), got ", visible.sizes());
  const int64_t B = visible.size(0), K = visible.size(1), D = visible.size(2);
  TORCH_CHECK(mask_token.dim() == 1 && mask_token.size(0) == D && mask_token.is_contiguous() &&
                  mask_token.scalar_type() == visible.scalar_type(),
              "mask_token must be a contiguous (", D, ",) tensor of dtype ", visible.scalar_type(), ", got ",
              mask_token.sizes(), " ", mask_token.scalar_type());
  TORCH_CHECK(ids_restore.dim() == 2, "ids_restore must have shape (B, L), got ", ids_restore.sizes());
  check_ids(ids_restore, "ids_restore", B, ids_restore.size(1));
  const int64_t L = ids_restore.size(1);
  Tensor out = at::empty({B, L, D}, visible.options());
  const int64_t* id = ids_restore.data_ptr<int64_t>();
  const int64_t sb = visible.stride(0), sk = visible.stride(1), sd = visible.stride(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, visible.scalar_type(), "unshuffle_forward", [&] {
    const scalar_t* base = visible.data_ptr<scalar_t>();
    const scalar_t* token = mask_token.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(D, 1));
    at::parallel_for(0, B * L, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t source = id[r];
        scalar_t* row = dst + r * D;
        if (source >= K) {
          std::memcpy(row, token, sizeof(scalar_t) * D);
        } else if (sd == 1) {
          std::memcpy(row, base + (r / L) * sb + source * sk, sizeof(scalar_t) * D);
        } else {
          const scalar_t* src = base + (r / L) * sb + source * sk;
          for (int64_t j = 0; j < D; ++j) row[j] = src[j * sd];
        }
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> unshuffle_with_mask_token_backward(const Tensor& grad, const Tensor& ids_restore,
                                                              int64_t num_visible) {
  check_floating(grad, "grad");
  TORCH_CHECK(grad.dim() == 3 && grad.is_contiguous(), "grad must be a contiguous (B, L, D) tensor, got ",
              grad.sizes());
  const int64_t B = grad.size(0), L = grad.size(1), D = grad.size(2);
  check_ids(ids_restore, "ids_restore", B, L);
  TORCH_CHECK(ids_restore.size(1) == L, "ids_restore must have L = ", L, " columns, got ", ids_restore.size(1));
  TORCH_CHECK(num_visible >= 0 && num_visible <= L, "num_visible must lie in [0, ", L, "], got ", num_visible);
  Tensor grad_visible = at::empty({B, num_visible, D}, grad.options());
  const auto opmath = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor token_partial = at::empty({B, D}, grad.options().dtype(opmath));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "unshuffle_backward", [&] {
    scatter_rows<scalar_t>(grad.data_ptr<scalar_t>(), ids_restore.data_ptr<int64_t>(), B, L, D, num_visible,
                           grad_visible.data_ptr<scalar_t>(), token_partial.data_ptr<at::opmath_type<scalar_t>>());
  });
  return {grad_visible, token_partial.sum(0).to(grad.scalar_type())};
}

}  // namespace fastssl
