// Per-sample SSL augmentation on the CPU (semantics: augment_reference in fastssl/ops/augment.py).
//
// One sample, output row by output row, every row a few 8-float vectors (GCC vector extensions) in L1:
//  * resize: antialiased bilinear, separable, with the flip and the 1/255 folded into the horizontal taps. Crops no
//    taller than the view: each source row is deinterleaved to planar floats and resampled horizontally once into
//    a ring holding the rows the vertical filter needs; the output row is one FMA sweep over them. Taller crops
//    filter the uint8 rows vertically first. The horizontal taps of 8 neighbouring columns are two loads and a
//    permute when they span at most 16 source columns (crops up to ~1.6x the view), gathers otherwise.
//  * the pointwise chain (jitter ops in the sample's order, grayscale) runs on that row, then solarize, normalise,
//    convert and store through out's strides. Without contrast and blur that is the whole op: one pass.
//  * contrast needs the mean gray of the view at its point of the chain: the first pass applies the ops before it,
//    stores the rows in an (out_h, C, out_w) float view (600 KiB for 224 x 224 RGB, L2-resident) and sums each
//    row's gray in double as it goes; a second pass over the view applies contrast and the ops after it.
//  * blur: the vertical Gaussian over reflected rows of the view, four output rows per sweep, then per row the
//    horizontal one over a reflect-padded copy (symmetric taps folded), then solarize, normalise, store. Taps whose
//    normalised weight is below 1e-7 are dropped and the rest renormalised, which moves a blurred value (in [0, 1])
//    by at most the dropped mass: 1.1e-7 at sigma = 2 with 23 taps (SimCLR's widest), less for smaller sigma, below
//    the float32 rounding of an output near 2 (1.2e-7). A sigma of 1 keeps 11 of 23 taps.
// Parallelism: whole samples per thread (dynamic schedule); the last B mod T samples are split into row bands over
// all threads, with barriers where a pass needs rows of other bands (the contrast mean, the vertical blur). Row sums
// are per row and added in row order, so the result does not depend on the thread count or the mode.
// Memory: one scratch block per thread (the view, the ring, the taps, a few rows) allocated once per call; no
// tensor is allocated.
// One thread of this 2-core AMD VM: ~0.33 ms of CPU time per SimCLR view (256x256 -> 224x224, fp32), of which
// resize ~0.13, jitter ~0.13 (hue most), blur ~0.27 at sigma 2 (in half of the views, sigma in (0.1, 2)).
#include "augment.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace fastssl {
namespace {

using at::Tensor;

// Columns of AugmentParams.packed() (fastssl/ops/augment.py).
constexpr int64_t kTop = 0, kLeft = 1, kCropH = 2, kCropW = 3, kFlip = 4, kJitter = 5, kOrder = 6, kGray = 10,
                  kSolarize = 11, kBlurSize = 12, kNumIntParams = 13;
constexpr int64_t kBrightnessF = 0, kContrastF = 1, kSaturationF = 2, kHueF = 3, kSigmaF = 4, kThresholdF = 5,
                  kNumFloatParams = 6;

// Jitter op codes of the packed order (torchvision's fn_idx), and grayscale after them.
enum OpCode : int { kBrightness = 0, kContrast = 1, kSaturation = 2, kHue = 3, kGrayscale = 4 };

constexpr float kLuma0 = 0.2989f, kLuma1 = 0.587f, kLuma2 = 0.114f;  // ITU-R 601-2, torchvision's rgb_to_grayscale
constexpr int64_t kLanes = 8;          // rows are padded to whole 8-float vectors
constexpr double kBlurTapCutoff = 1e-7;
// The vertical blur makes this many output rows per sweep over the view, loading each input row once for all of
// them: the one-row version was bound by L2 bandwidth (21 rows of the 600 KiB view read per output row).
constexpr int64_t kBlurRows = 4;
// Outputs at least this large are written with non-temporal stores: they cannot stay in cache for the consumer
// anyway, and skipping the read-for-ownership made 64 fp32 224 x 224 views (38.5 MB) ~10% faster on one thread.
constexpr int64_t kStreamBytes = int64_t{8} << 20;

using v8f = float __attribute__((vector_size(32)));
using v8i = std::int32_t __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4), may_alias));
typedef std::int32_t v8i_unaligned __attribute__((vector_size(32), aligned(4), may_alias));

inline v8f load8(const float* p) { return *reinterpret_cast<const v8f_unaligned*>(p); }
inline void store8(float* p, v8f x) { *reinterpret_cast<v8f_unaligned*>(p) = x; }
inline v8i load8i(const std::int32_t* p) { return *reinterpret_cast<const v8i_unaligned*>(p); }
inline v8f splat(float x) { return v8f{} + x; }
#ifdef __AVX__
// GCC keeps `a < b ? a : b` as compare + blend (it may not assume vminps's NaN rule) and has no vector floor.
inline v8f vmin(v8f a, v8f b) { return (v8f)_mm256_min_ps((__m256)a, (__m256)b); }
inline v8f vmax(v8f a, v8f b) { return (v8f)_mm256_max_ps((__m256)a, (__m256)b); }
inline v8f vfloor(v8f x) { return (v8f)_mm256_floor_ps((__m256)x); }
#else
inline v8f vmin(v8f a, v8f b) { return a < b ? a : b; }
inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
// floor for |x| < 2^31: truncate, then step down where truncation went up.
inline v8f vfloor(v8f x) {
  const v8f t = __builtin_convertvector(__builtin_convertvector(x, v8i), v8f);
  return t > x ? t - 1.0f : t;
}
#endif
inline v8f clamp01(v8f x) { return vmin(vmax(x, splat(0.0f)), splat(1.0f)); }

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// numpy's 'reflect' (mirror without repeating the edge), any distance out; period 2 (n - 1).
inline int64_t reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i >= n ? period - i : i;
}

// The widest antialiased bilinear filter of an axis: PyTorch's ceil(support) * 2 + 1.
int64_t max_resize_taps(int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  return static_cast<int64_t>(std::ceil(std::max(scale, 1.0))) * 2 + 1;
}

// Taps of F.interpolate(mode="bilinear", align_corners=False, antialias=True) along one axis (PyTorch's
// _compute_indices_min_size_weights_aa with the triangle filter), in double: output i reads source
// [start[i], start[i] + count[i]) with weights weight[i * stride + j] * gain. Zero weights at either end are dropped
// (they add exactly 0). Returns the largest count.
int64_t resize_taps(int64_t in_size, int64_t out_size, double gain, int64_t* start, int64_t* count, float* weight,
                    int64_t stride) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double support = scale >= 1.0 ? scale : 1.0;
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  int64_t widest = 0;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    const int64_t lo = std::max(static_cast<int64_t>(center - support + 0.5), int64_t{0});
    const int64_t hi = std::min(static_cast<int64_t>(center + support + 0.5), in_size);
    const auto filter = [&](int64_t j) {
      return std::max(0.0, 1.0 - std::abs((static_cast<double>(j + lo) - center + 0.5) * invscale));
    };
    double total = 0.0;
    for (int64_t j = 0; j < hi - lo; ++j) total += filter(j);
    int64_t first = 0, last = hi - lo;
    while (first < last && filter(first) == 0.0) ++first;
    while (last > first && filter(last - 1) == 0.0) --last;
    start[i] = lo + first;
    count[i] = last - first;
    for (int64_t j = first; j < last; ++j) {
      weight[i * stride + j - first] = static_cast<float>(filter(j) / total * gain);
    }
    widest = std::max(widest, count[i]);
  }
  return widest;
}

// torchvision's gaussian kernel of `size` taps, without the taps under kBlurTapCutoff (renormalised); returns the
// radius kept. weight has 2 * radius + 1 entries.
int64_t blur_taps(int64_t size, double sigma, float* weight) {
  const int64_t half = (size - 1) / 2;
  const auto pdf = [&](int64_t t) {
    const double x = static_cast<double>(t) / sigma;
    return std::exp(-0.5 * x * x);
  };
  double total = 0.0;
  for (int64_t t = -half; t <= half; ++t) total += pdf(t);
  int64_t radius = half;
  while (radius > 0 && pdf(radius) / total < kBlurTapCutoff) --radius;
  double kept = 0.0;
  for (int64_t t = -radius; t <= radius; ++t) kept += pdf(t);
  for (int64_t t = -radius; t <= radius; ++t) weight[t + radius] = static_cast<float>(pdf(t) / kept);
  return radius;
}

// ---------------------------------------------------------------------------------------------------------------
// Per-call sizes and per-thread scratch
// ---------------------------------------------------------------------------------------------------------------

struct Dims {
  int64_t channels, out_h, out_w;
  int64_t wp;             // out_w rounded up to a whole vector: the stride of every row buffer
  int64_t kh_bound;       // widest horizontal filter over the batch
  int64_t kv_bound;       // widest vertical filter over the batch
  int64_t source_stride;  // widest crop rounded up to a vector, plus the two vectors a permute window may read
  int64_t blur_size_max;  // largest blur kernel over the samples that blur
};

// Carves typed, 64-byte-aligned arrays out of one block; with base == nullptr it only counts the bytes.
class Arena {
 public:
  explicit Arena(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t n) {
    used_ = round_up(used_, 64);
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += static_cast<int64_t>(sizeof(T)) * std::max<int64_t>(n, 1);
    return p;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

struct Scratch {
  float* view;             // (out_h, C, wp): the view between passes
  double* row_sums;        // (out_h,): sum of gray(x) over each row, for the contrast mean
  float* ring;             // (kv_bound, C, wp): horizontally resampled source rows
  int64_t* ring_rows;      // (kv_bound,): which source row each ring slot holds
  float* source;           // (C, source_stride): one source row of the crop, planar floats
  float* column_sum;       // (crop_w, C): vertically filtered source pixels, when that pass runs first
  int32_t* h_index;        // (kh_bound, wp): source column of tap j of output column x
  int32_t* h_base;         // (wp / 8,): first source column the 8 output columns from x = 8 i read
  int32_t* h_offset;       // (kh_bound, wp): h_index - h_base, when that is < 16 for every column
  float* h_weight;         // (kh_bound, wp)
  int64_t* h_start;        // (out_w,) ... the horizontal taps before the transpose
  int64_t* h_count;
  float* h_taps;           // (out_w, kh_bound)
  int64_t* v_start;        // (out_h,)
  int64_t* v_count;        // (out_h,)
  float* v_weight;         // (out_h, kv_bound)
  float* blur_weight;      // (kBlurRows - 1 zeros, blur_size_max, kBlurRows - 1 zeros)
  const float** blur_rows; // row pointers of the vertical blur and of the vertical resize
  float* row;              // (C, wp): an output row when it does not live in the view
  float* column_blur;      // (kBlurRows, C, wp): rows after the vertical blur
  float* padded;           // (wp + blur_size_max): one channel of that row, reflect-padded
  float* normalised;       // (C, wp)
  float* interleaved;      // (wp, C): a normalised row in channels_last order
  uint16_t* half_bits;     // (C, wp): a row converted to bfloat16 / float16

  Scratch(Arena& a, const Dims& d) {
    const int64_t c = d.channels, row_floats = c * d.wp;
    view = a.take<float>(d.out_h * row_floats);
    row_sums = a.take<double>(d.out_h);
    ring = a.take<float>(d.kv_bound * row_floats);
    ring_rows = a.take<int64_t>(d.kv_bound);
    source = a.take<float>(c * d.source_stride);
    column_sum = a.take<float>(c * d.source_stride);
    h_index = a.take<int32_t>(d.kh_bound * d.wp);
    h_base = a.take<int32_t>(d.wp / kLanes);
    h_offset = a.take<int32_t>(d.kh_bound * d.wp);
    h_weight = a.take<float>(d.kh_bound * d.wp);
    h_start = a.take<int64_t>(d.out_w);
    h_count = a.take<int64_t>(d.out_w);
    h_taps = a.take<float>(d.out_w * d.kh_bound);
    v_start = a.take<int64_t>(d.out_h);
    v_count = a.take<int64_t>(d.out_h);
    v_weight = a.take<float>(d.out_h * d.kv_bound);
    blur_weight = a.take<float>(d.blur_size_max + 2 * (kBlurRows - 1));
    blur_rows = a.take<const float*>(std::max(d.blur_size_max + kBlurRows - 1, d.kv_bound));
    row = a.take<float>(row_floats);
    column_blur = a.take<float>(kBlurRows * row_floats);
    padded = a.take<float>(d.wp + d.blur_size_max);
    normalised = a.take<float>(row_floats);
    interleaved = a.take<float>(row_floats);
    half_bits = a.take<uint16_t>(row_floats);
  }
};

int64_t scratch_bytes(const Dims& d) {
  Arena counter(nullptr);
  Scratch layout(counter, d);
  return round_up(counter.used(), 64);
}

// ---------------------------------------------------------------------------------------------------------------
// One sample's parameters and its derived plan
// ---------------------------------------------------------------------------------------------------------------

struct PointOp {
  int code;
  float factor;
};

struct Sample {
  const uint8_t* image;
  int64_t width;  // of the source image, in pixels
  int64_t top, left, crop_h, crop_w;
  bool flip, solarize;
  float threshold;
  // The pointwise chain split at contrast: ops[0, n_pre) before it, then contrast when has_contrast, then
  // ops[n_pre, n_ops). Grayscale is the last op when the sample has it.
  PointOp ops[5];
  int n_pre = 0, n_ops = 0;
  bool has_contrast = false;
  float contrast = 1.0f;
  float sigma;
  int64_t blur_size;
};

Sample read_sample(int64_t b, int64_t channels, const uint8_t* data, const int64_t* offsets, const int64_t* widths,
                   const int64_t* ip, const float* fp) {
  const int64_t* p = ip + b * kNumIntParams;
  const float* f = fp + b * kNumFloatParams;
  Sample s;
  s.image = data + offsets[b];
  s.width = widths[b];
  s.top = p[kTop];
  s.left = p[kLeft];
  s.crop_h = p[kCropH];
  s.crop_w = p[kCropW];
  s.flip = p[kFlip] != 0;
  s.solarize = p[kSolarize] != 0;
  s.threshold = f[kThresholdF];
  s.sigma = f[kSigmaF];
  s.blur_size = p[kBlurSize];
  if (p[kJitter] != 0) {
    for (int k = 0; k < 4; ++k) {
      const int code = static_cast<int>(p[kOrder + k]);
      if (code == kContrast) {
        s.has_contrast = true;
        s.contrast = f[kContrastF];
        s.n_pre = s.n_ops;
      } else if (code == kBrightness) {
        s.ops[s.n_ops++] = {kBrightness, f[kBrightnessF]};
      } else if (channels == 3) {  // saturation and hue leave one channel unchanged
        s.ops[s.n_ops++] = {code, f[code == kSaturation ? kSaturationF : kHueF]};
      }
    }
  }
  if (p[kGray] != 0 && channels == 3) s.ops[s.n_ops++] = {kGrayscale, 0.0f};
  if (!s.has_contrast) s.n_pre = s.n_ops;
  return s;
}

struct Plan {
  int64_t kh;           // taps per output column (zero-padded to the widest)
  bool h_local;         // every 8 output columns read a window of 16 source columns: permutes, not gathers
  bool vertical_first;  // the crop is taller than the view: filter rows before columns
  int64_t ring_slots;   // widest vertical filter
  int64_t blur_radius;  // -1: no blur
};

Plan make_plan(const Sample& s, const Dims& d, Scratch& w) {
  Plan plan;
  const int64_t kh = resize_taps(s.crop_w, d.out_w, 1.0 / 255.0, w.h_start, w.h_count, w.h_taps, d.kh_bound);
  plan.kh = kh;
  for (int64_t x = 0; x < d.wp; ++x) {
    // Columns past out_w repeat the last one with zero weights, so they stay inside its window.
    const int64_t xc = std::min(x, d.out_w - 1);
    const int64_t src = s.flip ? d.out_w - 1 - xc : xc;
    for (int64_t j = 0; j < kh; ++j) {
      const bool live = x < d.out_w && j < w.h_count[src];
      w.h_index[j * d.wp + x] = static_cast<int32_t>(w.h_start[src] + (j < w.h_count[src] ? j : 0));
      w.h_weight[j * d.wp + x] = live ? w.h_taps[src * d.kh_bound + j] : 0.0f;
    }
  }
  plan.h_local = true;
  for (int64_t x0 = 0; x0 < d.wp; x0 += kLanes) {
    int32_t lo = w.h_index[x0], hi = lo;
    for (int64_t j = 0; j < kh; ++j) {
      for (int64_t x = x0; x < x0 + kLanes; ++x) {
        lo = std::min(lo, w.h_index[j * d.wp + x]);
        hi = std::max(hi, w.h_index[j * d.wp + x]);
      }
    }
    plan.h_local = plan.h_local && hi - lo < 2 * kLanes;
    w.h_base[x0 / kLanes] = lo;
    for (int64_t j = 0; j < kh; ++j) {
      for (int64_t x = x0; x < x0 + kLanes; ++x) w.h_offset[j * d.wp + x] = w.h_index[j * d.wp + x] - lo;
    }
  }
  plan.ring_slots = resize_taps(s.crop_h, d.out_h, 1.0, w.v_start, w.v_count, w.v_weight, d.kv_bound);
  plan.vertical_first = s.crop_h > d.out_h;
  plan.blur_radius = -1;
  if (s.sigma > 0.0f) {
    std::fill(w.blur_weight, w.blur_weight + s.blur_size + 2 * (kBlurRows - 1), 0.0f);
    plan.blur_radius = blur_taps(s.blur_size, s.sigma, w.blur_weight + kBlurRows - 1);
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------------------------
// Row kernels. A row is C planes of wp floats, plane stride wp; lanes past out_w hold finite junk never stored.
// ---------------------------------------------------------------------------------------------------------------

// out[x0 : x0 + 8 V] = sum_t weight[t] * tap(t)[x0 : x0 + 8 V], V accumulators.
template <int V, typename Tap>
inline void fir_block(int64_t taps, const float* weight, Tap tap, float* out, int64_t x0) {
  v8f acc[V] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const v8f k = splat(weight[t]);
    const float* p = tap(t) + x0;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[v] += k * load8(p + v * kLanes);
  }
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) store8(out + x0 + v * kLanes, acc[v]);
}

// out[x] = sum_t weight[t] * tap(t)[x] for x < n (a multiple of 8). Eight accumulators per sweep over the taps
// cover the FMA latency (4 accumulators ran the 23-tap blur at half the speed).
template <typename Tap>
void fir(int64_t taps, const float* weight, Tap tap, float* out, int64_t n) {
  int64_t x = 0;
  for (; x + 8 * kLanes <= n; x += 8 * kLanes) fir_block<8>(taps, weight, tap, out, x);
  if (x + 4 * kLanes <= n) {
    fir_block<4>(taps, weight, tap, out, x);
    x += 4 * kLanes;
  }
  for (; x < n; x += kLanes) fir_block<1>(taps, weight, tap, out, x);
}

// The crop's row of interleaved pixels (uint8 or float) -> planar floats w.source (C, source_stride).
template <int C, typename T>
void deinterleave(const T* pixels, const Sample& s, const Dims& d, const Scratch& w) {
  for (int c = 0; c < C; ++c) {
    float* out = w.source + c * d.source_stride;
#pragma omp simd
    for (int64_t x = 0; x < s.crop_w; ++x) out[x] = static_cast<float>(pixels[x * C + c]);
  }
}

// The planar row in w.source, resampled horizontally (flip included) into dst (C, wp).
template <int C>
void resample_columns(const Dims& d, const Plan& plan, const Scratch& w, float* dst) {
  const int64_t stride = d.source_stride, wp = d.wp;
  const float* planar = w.source;
  if (plan.h_local) {
    // Two loads and a two-register permute per tap instead of a gather (slow on this AMD core): resizing a
    // 224 x 224 view went from 0.34 to 0.21 ms.
    for (int64_t x0 = 0; x0 < wp; x0 += kLanes) {
      const float* window = planar + w.h_base[x0 / kLanes];
      v8f lo[C], hi[C], acc[C];
      for (int c = 0; c < C; ++c) {
        lo[c] = load8(window + c * stride);
        hi[c] = load8(window + c * stride + kLanes);
        acc[c] = v8f{};
      }
      for (int64_t j = 0; j < plan.kh; ++j) {
        const v8i offset = load8i(w.h_offset + j * wp + x0);
        const v8f weight = load8(w.h_weight + j * wp + x0);
        for (int c = 0; c < C; ++c) acc[c] += weight * __builtin_shuffle(lo[c], hi[c], offset);
      }
      for (int c = 0; c < C; ++c) store8(dst + c * wp + x0, acc[c]);
    }
    return;
  }
  for (int c = 0; c < C; ++c) {
    const float* in = planar + c * stride;
    float* out = dst + c * wp;
    const int32_t* index = w.h_index;
    const float* weight = w.h_weight;
#pragma omp simd
    for (int64_t x = 0; x < wp; ++x) out[x] = weight[x] * in[index[x]];
    for (int64_t j = 1; j < plan.kh; ++j) {
      index = w.h_index + j * wp;
      weight = w.h_weight + j * wp;
#pragma omp simd
      for (int64_t x = 0; x < wp; ++x) out[x] += weight[x] * in[index[x]];
    }
  }
}

// Output row y of the resized (and flipped) crop into dst (C, wp).
// Crops no taller than the view: every source row is resampled horizontally once, into a ring that holds the rows
// the vertical filter needs, and the output row is one FMA sweep over those. Taller crops: the vertical filter
// runs first, on the uint8 rows (contiguous FMAs), so only out_h rows go through the horizontal taps (a 256 -> 8
// downscale took 0.26 ms per view the other way round).
template <int C>
void resize_row(const Sample& s, const Dims& d, const Plan& plan, Scratch& w, int64_t y, float* dst) {
  const int64_t wp = d.wp, row_floats = C * wp, start = w.v_start[y], count = w.v_count[y];
  const float* weights = w.v_weight + y * d.kv_bound;
  const auto source_row = [&](int64_t r) { return s.image + ((s.top + r) * s.width + s.left) * C; };
  if (plan.vertical_first) {
    const int64_t n = s.crop_w * C;
    float* acc = w.column_sum;
    const uint8_t* first = source_row(start);
    const float w0 = weights[0];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) acc[i] = w0 * static_cast<float>(first[i]);
    for (int64_t j = 1; j < count; ++j) {
      const uint8_t* pixels = source_row(start + j);
      const float wj = weights[j];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) acc[i] += wj * static_cast<float>(pixels[i]);
    }
    deinterleave<C>(acc, s, d, w);
    resample_columns<C>(d, plan, w, dst);
    return;
  }
  const float** rows = w.blur_rows;  // free until the blur pass
  for (int64_t j = 0; j < count; ++j) {
    const int64_t r = start + j, slot = r % plan.ring_slots;
    float* ring_row = w.ring + slot * row_floats;
    if (w.ring_rows[slot] != r) {
      deinterleave<C>(source_row(r), s, d, w);
      resample_columns<C>(d, plan, w, ring_row);
      w.ring_rows[slot] = r;
    }
    rows[j] = ring_row;
  }
  fir(count, weights, [&](int64_t j) { return rows[j]; }, dst, row_floats);
}

template <int C>
inline float gray_at(const float* row, int64_t wp, int64_t x) {
  if constexpr (C == 1) {
    return row[x];
  } else {
    return kLuma0 * row[x] + kLuma1 * row[wp + x] + kLuma2 * row[2 * wp + x];
  }
}

// torchvision's adjust_hue on one row: _rgb2hsv, h = (h + shift) mod 1, _hsv2rgb, branch-free on 8 pixels at a
// time (selects instead of the reference's masks and gather).
void hue_row(float* r, float* g, float* b, int64_t wp, float shift) {
  const v8f one = splat(1.0f);
  for (int64_t x = 0; x < wp; x += kLanes) {
    const v8f red = load8(r + x), green = load8(g + x), blue = load8(b + x);
    const v8f maxc = vmax(vmax(red, green), blue), minc = vmin(vmin(red, green), blue);
    const v8i equal = maxc == minc;
    const v8f chroma = maxc - minc;
    const v8f sat = chroma / (equal ? one : maxc);
    const v8f inv = one / (equal ? one : chroma);
    const v8f rc = (maxc - red) * inv, gc = (maxc - green) * inv, bc = (maxc - blue) * inv;
    v8f h = maxc == red ? bc - gc : (maxc == green ? 2.0f + rc - bc : 4.0f + gc - rc);
    h = h * (1.0f / 6.0f) + 1.0f;  // in [5/6, 11/6], so fmod(h, 1) = h - floor(h)
    h -= vfloor(h);
    h += shift;
    h -= vfloor(h);  // torch.remainder(h, 1)
    const v8f h6 = h * 6.0f;
    v8f sector = vfloor(h6);
    const v8f f = h6 - sector;
    sector = sector >= 6.0f ? splat(0.0f) : sector;  // h rounded up to 1: sector 0 with f = 0 is the same colour
    const v8f v = maxc;
    const v8f p = clamp01(v * (one - sat));
    const v8f q = clamp01(v * (one - sat * f));
    const v8f t = clamp01(v * (one - sat * (one - f)));
    const v8i s0 = sector == 0.0f, s1 = sector == 1.0f, s2 = sector == 2.0f, s3 = sector == 3.0f,
              s4 = sector == 4.0f, s5 = sector == 5.0f;
    store8(r + x, (s0 | s5) ? v : s1 ? q : s4 ? t : p);
    store8(g + x, (s1 | s2) ? v : s0 ? t : s3 ? q : p);
    store8(b + x, (s3 | s4) ? v : s2 ? t : s5 ? q : p);
  }
}

inline v8f gray8(v8f r, v8f g, v8f b) { return kLuma0 * r + kLuma1 * g + kLuma2 * b; }

template <int C>
void apply_op(const PointOp& op, float* row, int64_t wp) {
  const float k = op.factor;
  float* r = row;
  float* g = row + wp;
  float* b = row + 2 * wp;
  switch (op.code) {
    case kBrightness:
      for (int64_t i = 0; i < C * wp; i += kLanes) store8(row + i, clamp01(k * load8(row + i)));
      break;
    case kSaturation:
      if constexpr (C == 3) {
        for (int64_t x = 0; x < wp; x += kLanes) {
          const v8f red = load8(r + x), green = load8(g + x), blue = load8(b + x);
          const v8f gray = (1.0f - k) * gray8(red, green, blue);
          store8(r + x, clamp01(k * red + gray));
          store8(g + x, clamp01(k * green + gray));
          store8(b + x, clamp01(k * blue + gray));
        }
      }
      break;
    case kHue:
      if constexpr (C == 3) hue_row(r, g, b, wp, k);
      break;
    case kGrayscale:
      if constexpr (C == 3) {
        for (int64_t x = 0; x < wp; x += kLanes) {
          const v8f gray = gray8(load8(r + x), load8(g + x), load8(b + x));
          store8(r + x, gray);
          store8(g + x, gray);
          store8(b + x, gray);
        }
      }
      break;
    default:
      break;
  }
}

template <int C>
void apply_contrast(float* row, int64_t wp, float factor, float mean) {
  const float offset = (1.0f - factor) * mean;
  for (int64_t i = 0; i < C * wp; i += kLanes) store8(row + i, clamp01(factor * load8(row + i) + offset));
}

template <int C>
double gray_sum(const float* row, int64_t wp, int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t x = 0; x < n; ++x) sum += static_cast<double>(gray_at<C>(row, wp, x));
  return sum;
}

// out[r][x0 : x0 + 8 V] for the R output rows r: sum over input rows i of weight[i - r] * rows[i][x0 : ...]
// (weight is zero outside the taps, so every input row feeds every accumulator without a branch).
template <int R, int V>
inline void blur_block(const float* const* rows, int64_t inputs, const float* weight, float* out, int64_t out_stride,
                       int64_t x0) {
  v8f acc[R][V] = {};
  for (int64_t i = 0; i < inputs; ++i) {
    v8f in[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) in[v] = load8(rows[i] + x0 + v * kLanes);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const v8f k = splat(weight[i - r]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] += k * in[v];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) store8(out + r * out_stride + x0 + v * kLanes, acc[r][v]);
  }
}

// Vertical Gaussian (reflect-padded) of output rows y .. y + R - 1 of the view into w.column_blur (R, C, wp).
template <int C, int R>
void blur_columns(const Dims& d, const Plan& plan, Scratch& w, int64_t y) {
  const int64_t n = C * d.wp, radius = plan.blur_radius, inputs = 2 * radius + R;
  const float** rows = w.blur_rows;
  for (int64_t i = 0; i < inputs; ++i) rows[i] = w.view + reflect(y - radius + i, d.out_h) * n;
  const float* weight = w.blur_weight + kBlurRows - 1;
  int64_t x = 0;
  for (; x + 2 * kLanes <= n; x += 2 * kLanes) blur_block<R, 2>(rows, inputs, weight, w.column_blur, n, x);
  if (x < n) blur_block<R, 1>(rows, inputs, weight, w.column_blur, n, x);
}

// out[x0 : x0 + 8 V] = sum_t weight[t] * pad[x0 + t : ...] for a symmetric kernel of 2 radius + 1 taps, folded:
// one FMA per pair of taps (the Gaussian is exactly symmetric: exp(-(t/s)^2/2) does not see the sign of t).
template <int V>
inline void symmetric_block(int64_t radius, const float* weight, const float* pad, float* out, int64_t x0) {
  v8f acc[V];
  const v8f centre = splat(weight[radius]);
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) acc[v] = centre * load8(pad + x0 + v * kLanes + radius);
  for (int64_t t = 0; t < radius; ++t) {
    const v8f k = splat(weight[t]);
    const float* left = pad + x0 + t;
    const float* right = pad + x0 + 2 * radius - t;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[v] += k * (load8(left + v * kLanes) + load8(right + v * kLanes));
  }
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) store8(out + x0 + v * kLanes, acc[v]);
}

// Horizontal Gaussian (reflect-padded) of one vertically blurred row (C, wp) into dst (C, wp).
template <int C>
void blur_row(const Dims& d, const Plan& plan, Scratch& w, const float* columns, float* dst) {
  const int64_t wp = d.wp, n = d.out_w, radius = plan.blur_radius;
  const float* weight = w.blur_weight + kBlurRows - 1;
  for (int c = 0; c < C; ++c) {
    const float* col = columns + c * wp;
    float* pad = w.padded;
    std::memcpy(pad + radius, col, sizeof(float) * n);
    for (int64_t i = 0; i < radius; ++i) {
      pad[i] = col[reflect(i - radius, n)];
      pad[radius + n + i] = col[reflect(n + i, n)];
    }
    std::fill(pad + n + 2 * radius, pad + wp + 2 * radius, 0.0f);
    float* out = dst + c * wp;
    int64_t x = 0;
    for (; x + 4 * kLanes <= wp; x += 4 * kLanes) symmetric_block<4>(radius, weight, pad, out, x);
    for (; x < wp; x += kLanes) symmetric_block<1>(radius, weight, pad, out, x);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Store: solarize, normalise, convert, write through out's strides
// ---------------------------------------------------------------------------------------------------------------

struct Output {
  char* data;
  int64_t sb, sc, sh, sw;  // element strides
  const float* mean;
  const float* inv_std;
  bool stream;  // non-temporal stores (out >= kStreamBytes)
};

// dst[0:bytes] = src[0:bytes]; with `stream`, 32-byte non-temporal stores where dst is aligned for them.
inline void copy_out(void* dst, const void* src, int64_t bytes, bool stream) {
#ifdef __AVX__
  if (stream && (reinterpret_cast<uintptr_t>(dst) & 31) == 0) {
    char* d = static_cast<char*>(dst);
    const char* s = static_cast<const char*>(src);
    int64_t i = 0;
    for (; i + 32 <= bytes; i += 32) {
      const __m256i chunk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
      _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), chunk);
    }
    std::memcpy(d + i, s + i, bytes - i);
    return;
  }
#endif
  std::memcpy(dst, src, bytes);
}

inline uint16_t bfloat16_bits(float v) {  // round to nearest even (no NaN reaches here)
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <typename T>
inline T to_out(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    return T(bfloat16_bits(v), T::from_bits());
  } else {
    return T(v);
  }
}

// dst[0:n] = src[0:n] converted to T, through `bits` (scratch for 16-bit types); src holds whole vectors past n.
template <typename T>
void write_contiguous(T* dst, const float* src, int64_t n, uint16_t* bits, bool stream) {
  if constexpr (std::is_same_v<T, float>) {
    copy_out(dst, src, sizeof(float) * n, stream);
    return;
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) bits[i] = bfloat16_bits(src[i]);
  } else {
    int64_t i = 0;
#ifdef __F16C__
    for (; i < n; i += kLanes) {  // src and bits hold whole vectors
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(bits + i), h);
    }
#endif
    for (; i < n; ++i) bits[i] = T(src[i]).x;
  }
  copy_out(dst, bits, sizeof(uint16_t) * n, stream);
}

// (r, g, b) planes of 8 pixels -> 24 interleaved floats r0 g0 b0 r1 g1 b1 ...
inline void interleave3(v8f r, v8f g, v8f b, float* out) {
  store8(out, __builtin_shuffle(__builtin_shuffle(r, g, v8i{0, 8, 0, 1, 9, 0, 2, 10}), b,
                                v8i{0, 1, 8, 3, 4, 9, 6, 7}));
  store8(out + kLanes, __builtin_shuffle(__builtin_shuffle(r, g, v8i{0, 3, 11, 0, 4, 12, 0, 5}), b,
                                         v8i{10, 1, 2, 11, 4, 5, 12, 7}));
  store8(out + 2 * kLanes, __builtin_shuffle(__builtin_shuffle(r, g, v8i{13, 0, 6, 14, 0, 7, 15, 0}), b,
                                             v8i{0, 13, 2, 3, 14, 5, 6, 15}));
}

template <typename T, int C>
void store_row(const Sample& s, const Dims& d, Scratch& w, const Output& o, int64_t b, int64_t y, const float* row) {
  const int64_t wp = d.wp, n = d.out_w;
  float* norm = w.normalised;
  const v8f threshold = splat(s.solarize ? s.threshold : 2.0f);  // values never reach 2: no solarize
  for (int c = 0; c < C; ++c) {
    const v8f mean = splat(o.mean[c]), inv_std = splat(o.inv_std[c]);
    const float* in = row + c * wp;
    float* out = norm + c * wp;
    for (int64_t x = 0; x < wp; x += kLanes) {
      const v8f v = load8(in + x);
      store8(out + x, ((v >= threshold ? 1.0f - v : v) - mean) * inv_std);
    }
  }
  T* base = reinterpret_cast<T*>(o.data) + b * o.sb + y * o.sh;
  if (o.sw == 1) {
    for (int c = 0; c < C; ++c) write_contiguous(base + c * o.sc, norm + c * wp, n, w.half_bits, o.stream);
  } else if (C == 3 && o.sc == 1 && o.sw == 3) {
    float* pixels = w.interleaved;
    for (int64_t x = 0; x < wp; x += kLanes) {
      interleave3(load8(norm + x), load8(norm + wp + x), load8(norm + 2 * wp + x), pixels + 3 * x);
    }
    write_contiguous(base, pixels, 3 * n, w.half_bits, o.stream);
  } else {
    for (int c = 0; c < C; ++c) {
      for (int64_t x = 0; x < n; ++x) base[c * o.sc + x * o.sw] = to_out<T>(norm[c * wp + x]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// One sample on band tid of team row bands; team == 1 is the whole sample on one thread. In a band, every thread
// of the team calls this with the same sample (same passes, same barriers) and `view`, `row_sums` are shared.
// Bands are whole groups of kBlurRows rows, so each row goes through the same vertical-blur block (4 rows, or 1
// at the bottom) whatever the team: the two blocks may round differently in the last bit, and the output must not
// depend on the thread count.
// ---------------------------------------------------------------------------------------------------------------

template <typename T, int C>
void run_sample(const Sample& s, const Dims& d, Scratch& w, float* view, double* row_sums, const Output& o,
                int64_t b, int tid, int team) {
  const Plan plan = make_plan(s, d, w);
  const int64_t wp = d.wp, row_floats = C * wp;
  const int64_t groups = (d.out_h + kBlurRows - 1) / kBlurRows;
  const int64_t y0 = std::min(d.out_h, groups * tid / team * kBlurRows);
  const int64_t y1 = std::min(d.out_h, groups * (tid + 1) / team * kBlurRows);
  const bool blur = plan.blur_radius >= 0;
  const bool direct = !s.has_contrast && !blur;
  w.view = view;
  std::fill(w.ring_rows, w.ring_rows + plan.ring_slots, int64_t{-1});
  for (int64_t y = y0; y < y1; ++y) {
    float* row = direct ? w.row : view + y * row_floats;
    resize_row<C>(s, d, plan, w, y, row);
    for (int k = 0; k < s.n_pre; ++k) apply_op<C>(s.ops[k], row, wp);
    if (s.has_contrast) row_sums[y] = gray_sum<C>(row, wp, d.out_w);
    if (direct) store_row<T, C>(s, d, w, o, b, y, row);
  }
  if (s.has_contrast) {
    if (team > 1) {
#pragma omp barrier
    }
    double total = 0.0;
    for (int64_t y = 0; y < d.out_h; ++y) total += row_sums[y];
    const float mean = static_cast<float>(total / static_cast<double>(d.out_h * d.out_w));
    for (int64_t y = y0; y < y1; ++y) {
      float* row = view + y * row_floats;
      apply_contrast<C>(row, wp, s.contrast, mean);
      for (int k = s.n_pre; k < s.n_ops; ++k) apply_op<C>(s.ops[k], row, wp);
      if (!blur) store_row<T, C>(s, d, w, o, b, y, row);
    }
  }
  if (blur) {
    if (team > 1) {
#pragma omp barrier
    }
    for (int64_t y = y0; y < y1;) {
      const int64_t rows = y + kBlurRows <= y1 ? kBlurRows : 1;
      if (rows == kBlurRows) {
        blur_columns<C, kBlurRows>(d, plan, w, y);
      } else {
        blur_columns<C, 1>(d, plan, w, y);
      }
      for (int64_t r = 0; r < rows; ++r, ++y) {
        blur_row<C>(d, plan, w, w.column_blur + r * C * d.wp, w.row);
        store_row<T, C>(s, d, w, o, b, y, w.row);
      }
    }
  }
  if (team > 1) {  // the next sample overwrites the shared view
#pragma omp barrier
  }
}

template <typename T, int C>
void run_batch(const Dims& d, int64_t batch, int threads, const std::vector<Sample>& samples, const Output& o) {
  const int64_t per_thread = scratch_bytes(d);
  std::unique_ptr<char[]> block(new char[per_thread * threads + 64]);
  char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<int64_t>(block.get()), 64));
  // Whole samples per thread while every thread gets one; the rest in row bands over the whole team.
  const int64_t whole = threads > 1 ? batch / threads * threads : batch;
  float* shared_view = nullptr;
  double* shared_sums = nullptr;
  {
    Arena a(base);
    Scratch first(a, d);
    shared_view = first.view;
    shared_sums = first.row_sums;
  }
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
    Arena a(base + tid * per_thread);
    Scratch w(a, d);
    float* own_view = w.view;
    // The permute window may load up to 15 floats past a crop row; they are never selected, but keep them defined.
    std::fill(w.source, w.source + C * d.source_stride, 0.0f);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < whole; ++b) run_sample<T, C>(samples[b], d, w, own_view, w.row_sums, o, b, 0, 1);
    for (int64_t b = whole; b < batch; ++b) {
      run_sample<T, C>(samples[b], d, w, shared_view, shared_sums, o, b, tid, team);
    }
#ifdef __AVX__
    if (o.stream) _mm_sfence();  // order the non-temporal stores before the region ends
#endif
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------------------------

void check_vector(const Tensor& x, const char* name, int64_t n, at::ScalarType dtype) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 1 && x.size(0) == n, name, " must have shape (", n, ",), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == dtype, name, " must be ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

void check_matrix(const Tensor& x, const char* name, int64_t rows, int64_t cols, at::ScalarType dtype) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 2 && x.size(0) == rows && x.size(1) == cols, name, " must have shape (", rows, ", ", cols,
              "), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == dtype, name, " must be ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

// Values that would make the kernel read outside its buffers (the Python layer checks them all with clearer words).
void check_sample(int64_t b, int64_t channels, int64_t total, const int64_t* offsets, const int64_t* heights,
                  const int64_t* widths, const int64_t* ip, const float* fp) {
  const int64_t* p = ip + b * kNumIntParams;
  const int64_t h = heights[b], w = widths[b];
  TORCH_CHECK(h >= 1 && w >= 1, "heights/widths: image ", b, " is ", h, "x", w, "; every image needs at least 1x1");
  TORCH_CHECK(offsets[b] >= 0 && offsets[b] + h * w * channels <= total, "offsets: image ", b,
              " runs past the end of data (", total, " bytes)");
  TORCH_CHECK(p[kTop] >= 0 && p[kLeft] >= 0 && p[kCropH] >= 1 && p[kCropW] >= 1 && p[kTop] + p[kCropH] <= h &&
                  p[kLeft] + p[kCropW] <= w,
              "int_params: crop box (", p[kTop], ", ", p[kLeft], ", ", p[kCropH], ", ", p[kCropW], ") of sample ",
              b, " is not inside its ", h, "x", w, " image");
  int seen = 0;
  for (int k = 0; k < 4; ++k) {
    const int64_t code = p[kOrder + k];
    TORCH_CHECK(code >= 0 && code < 4 && !(seen & (1 << code)), "int_params: jitter order of sample ", b,
                " is not a permutation of 0..3");
    seen |= 1 << code;
  }
  const float sigma = fp[b * kNumFloatParams + kSigmaF];
  TORCH_CHECK(std::isfinite(sigma) && sigma >= 0.0f, "float_params: blur sigma of sample ", b, " must be >= 0, got ",
              sigma);
  TORCH_CHECK(sigma == 0.0f || (p[kBlurSize] >= 1 && p[kBlurSize] % 2 == 1), "int_params: blur size of sample ", b,
              " must be odd and >= 1, got ", p[kBlurSize]);
}

}  // namespace

void augment(const Tensor& data, const Tensor& offsets, const Tensor& heights, const Tensor& widths,
             int64_t channels, const Tensor& int_params, const Tensor& float_params, const Tensor& mean,
             const Tensor& std_dev, Tensor out) {
  TORCH_CHECK(channels == 1 || channels == 3, "channels must be 1 or 3, got ", channels);
  TORCH_CHECK(data.device().is_cpu(), "data must be a CPU tensor, got device ", data.device());
  TORCH_CHECK(data.dim() == 1 && data.scalar_type() == at::kByte && data.is_contiguous(),
              "data must be a contiguous flat uint8 tensor, got ", data.scalar_type(), " ", data.sizes());
  TORCH_CHECK(offsets.dim() == 1, "offsets must have shape (B,), got ", offsets.sizes());
  const int64_t batch = offsets.size(0);
  TORCH_CHECK(batch >= 1, "offsets: empty batch");
  check_vector(offsets, "offsets", batch, at::kLong);
  check_vector(heights, "heights", batch, at::kLong);
  check_vector(widths, "widths", batch, at::kLong);
  check_matrix(int_params, "int_params", batch, kNumIntParams, at::kLong);
  check_matrix(float_params, "float_params", batch, kNumFloatParams, at::kFloat);
  check_vector(mean, "mean", channels, at::kFloat);
  check_vector(std_dev, "std", channels, at::kFloat);
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor, got device ", out.device());
  TORCH_CHECK(out.dim() == 4 && out.size(0) == batch && out.size(1) == channels && out.size(2) >= 1 &&
                  out.size(3) >= 1,
              "out must have shape (", batch, ", ", channels, ", out_h, out_w), got ", out.sizes());
  const auto out_dtype = out.scalar_type();
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
              "out must be float32, bfloat16 or float16, got ", out_dtype);
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes,
              "out must not have elements that share memory (strides ", out.strides(), ")");

  const uint8_t* data_p = data.data_ptr<uint8_t>();
  const int64_t* off_p = offsets.data_ptr<int64_t>();
  const int64_t* h_p = heights.data_ptr<int64_t>();
  const int64_t* w_p = widths.data_ptr<int64_t>();
  const int64_t* ip = int_params.data_ptr<int64_t>();
  const float* fp = float_params.data_ptr<float>();

  Dims d;
  d.channels = channels;
  d.out_h = out.size(2);
  d.out_w = out.size(3);
  d.wp = round_up(d.out_w, kLanes);
  d.kh_bound = d.kv_bound = 1;
  d.source_stride = 3 * kLanes;
  d.blur_size_max = 1;
  std::vector<Sample> samples;
  samples.reserve(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    check_sample(b, channels, data.numel(), off_p, h_p, w_p, ip, fp);
    samples.push_back(read_sample(b, channels, data_p, off_p, w_p, ip, fp));
    const Sample& s = samples.back();
    d.kh_bound = std::max(d.kh_bound, max_resize_taps(s.crop_w, d.out_w));
    d.kv_bound = std::max(d.kv_bound, max_resize_taps(s.crop_h, d.out_h));
    d.source_stride = std::max(d.source_stride, round_up(s.crop_w, kLanes) + 2 * kLanes);
    if (s.sigma > 0.0f) d.blur_size_max = std::max(d.blur_size_max, s.blur_size);
  }
  TORCH_CHECK(d.source_stride < (int64_t{1} << 31), "int_params: crops wider than 2^31 pixels are not supported");

  float inv_std[3];
  const float* std_p = std_dev.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    TORCH_CHECK(std_p[c] != 0.0f, "std: contains 0 at channel ", c);
    inv_std[c] = 1.0f / std_p[c];
  }
  const Output o{static_cast<char*>(out.data_ptr()), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
                 mean.data_ptr<float>(), inv_std, out.numel() * out.element_size() >= kStreamBytes};
  const int threads = std::max(1, at::get_num_threads());

  if (out_dtype == at::kFloat) {
    channels == 3 ? run_batch<float, 3>(d, batch, threads, samples, o)
                  : run_batch<float, 1>(d, batch, threads, samples, o);
  } else if (out_dtype == at::kBFloat16) {
    channels == 3 ? run_batch<at::BFloat16, 3>(d, batch, threads, samples, o)
                  : run_batch<at::BFloat16, 1>(d, batch, threads, samples, o);
  } else {
    channels == 3 ? run_batch<at::Half, 3>(d, batch, threads, samples, o)
                  : run_batch<at::Half, 1>(d, batch, threads, samples, o);
  }
}

}  // namespace fastssl
