"""Triton kernels for the fused per-sample SSL augmentation (fastssl.ops.augment; the spec is augment_reference).

    data (total,) uint8         PackedImages layout: image b is HWC at data[offsets[b]:], heights[b] x widths[b] x C
    int_params (B, 13) int64    AugmentParams.packed(): crop box, flip, jitter flag and order, grayscale, solarize,
    float_params (B, 6) float32   blur size; brightness, contrast, saturation, hue, blur sigma, solarize threshold
    mean, std (C,) float32
    out (B, C, out_h, out_w)    float32 / bfloat16 / float16, any strides (contiguous or channels_last)

Every sample reads its own parameter row inside the kernels: no host sync, no per-sample launch. Three launches,
each on a grid of (output tile, sample):

1. ``_contrast_partials_kernel``: contrast mixes every pixel with the mean gray of the whole view at that point
   of the chain, so a first pass computes the chain up to the contrast step (resize, flip, the jitter ops ordered
   before it) for each TILE_H x TILE_W tile and writes the tile's gray sum to partials (B, tiles). No atomics: the
   main kernel adds a sample's partials in a fixed order, so the result is deterministic. Samples whose jitter is
   off (or whose contrast factor is exactly 1) write 0 and skip the work.
2. ``_augment_kernel``: per output tile, the antialiased resize as a direct gather (a runtime loop over the
   tile's largest tap counts, each pixel's weight 0 past its own count, indices clamped so loads need no mask),
   flip, the four jitter ops in the sample's order, grayscale; then solarize + normalise into ``out``, or, for a
   sample with a blur, the pre-blur values into an fp32 scratch (B, C, out_h, out_w).
3. ``_blur_kernel``: for blurred samples only (the others exit at once), the separable Gaussian on a
   BLUR_TILE^2 tile as two banded (Toeplitz) matrix products built in registers, Y = X Gx then Z = Gy Y, over
   BLUR_K_BLOCK chunks of the (BLUR_TILE + k - 1)-wide halo loaded at reflected coordinates (so any kernel size
   and views smaller than the kernel work), then solarize + normalise into ``out``.

Napkin math (SimCLR: 256x256x3 uint8 sources, two 224x224x3 views, fp32 out; per view):
    out          224*224*3 * 4 B = 602 KB written (bf16: 301 KB); source <= 196 KB read -> ~0.8 MB, the floor:
                 0.24 us at the H100's ~3.35 TB/s, ~4M views/s.
    resize       crops are 72..256 px wide, scale 0.32..1.14, 2..3 taps per axis: <= 9 taps x 3 uint8 gathers per
                 pixel = 1.35M L1 lane-loads per view, ~0.2 us over 132 SMs at one warp-load per clock each.
    contrast     pass 1 redoes the resize for jittered samples (80% in SimCLR): +~0.2 us of gathers and at most one
                 more source read (196 KB: the batch's 50 MB of sources about fills the H100's 50 MB L2). Storing
                 the pre-contrast values instead would cost a 602 KB write + read per view.
    blur         scratch write + read 2 * 602 KB = 1.2 MB (0.36 us) for blurred views (50% in SimCLR); halo
                 re-reads ((32 + 22) / 32)^2 ~ 2.9x of the scratch come from L2. Toeplitz products at BLUR_TILE
                 32, k = 23 (a 64-wide padded halo): (64*64*32 + 32*64*32) MACs / 32^2 = 192 MACs per value, x3 for
                 tf32x3 -> 87M tensor-core MACs per view, ~0.35 us at the dense tf32 peak (~250 TMAC/s; these small
                 tiles run on mma.sync, which gets less), overlapping the scratch traffic. The band weights are
                 recomputed per chunk pair: ~10 exps per pixel, ~0.14 us of the SFUs. A direct 23-tap separable
                 blur would need the row pass's results across threads (shared memory Triton does not expose) or
                 23 loads per value per pass.
    total        ~0.45 us (no blur) to ~0.9 us (blur) per view -> ~1.4M views/s for SimCLR's mix, against the
                 issue's 1M target and a ResNet-50 step's ~4k views/s. Estimates, not measurements.
Why scratch rather than a fused halo: fusing the blur into pass 2 recomputes resize + jitter on the
(32 + 22)^2 / 32^2 ~ 2.9x halo area (4x after padding to powers of two) of every blurred tile, and a fixed halo
caps the kernel size; the scratch computes each pre-blur value once and takes any size. The scratch is allocated
for every sample (no host sync to count the blurred ones) but only blurred samples touch it.

fp32 accuracy: the contract allows 2x the fp32 reference's error + 1e-5 after normalisation (std ~0.22, so
~2e-6 before it). All math is fp32; the blur's products use tf32x3 (the ``BLUR_DOT_PRECISION`` knob): plain
tf32 rounds the weights to 10 bits (~5e-4), "ieee" runs on CUDA cores at ~1/8 of the tensor-core rate. The
interpreter's tl.dot is exact fp32, so the tests cannot see tf32x3's rounding; emulating it in numpy (hi/lo tf32
splits, the lo*lo term dropped) on 23-tap blurs with sigma 0.1..2 gave <= 1.5e-7 before normalisation.
Index math is int32 inside an image/view and int64 for the per-sample bases; an image's bytes and a view's
values must stay below 2^31 (checked on the host from the buffer sizes).
"""

import importlib

import torch
import triton
import triton.language as tl

# The spec module (fastssl.ops.augment); "fastssl.ops.augment" as an attribute is the public function.
A = importlib.import_module("fastssl.ops.augment")

# Packed parameter columns (the spec's I_* and F_*), as constexprs for the kernels.
_I_TOP, _I_LEFT, _I_CROP_H, _I_CROP_W = (tl.constexpr(c) for c in (A.I_TOP, A.I_LEFT, A.I_CROP_H, A.I_CROP_W))
_I_FLIP, _I_JITTER, _I_ORDER = (tl.constexpr(c) for c in (A.I_FLIP, A.I_JITTER, A.I_ORDER))
_I_GRAY, _I_SOLARIZE, _I_BLUR_SIZE = (tl.constexpr(c) for c in (A.I_GRAY, A.I_SOLARIZE, A.I_BLUR_SIZE))
_F_BRIGHTNESS, _F_CONTRAST, _F_SATURATION, _F_HUE, _F_SIGMA, _F_THRESHOLD = (
    tl.constexpr(c) for c in (A.F_BRIGHTNESS, A.F_CONTRAST, A.F_SATURATION, A.F_HUE, A.F_SIGMA, A.F_THRESHOLD))
_NUM_INT = tl.constexpr(A.NUM_INT_PARAMS)
_NUM_FLOAT = tl.constexpr(A.NUM_FLOAT_PARAMS)
# Jitter op codes.
_BRIGHTNESS, _CONTRAST, _SATURATION = tl.constexpr(A.BRIGHTNESS), tl.constexpr(A.CONTRAST), tl.constexpr(A.SATURATION)
_LUMA_R, _LUMA_G, _LUMA_B = (tl.constexpr(c) for c in A.LUMA)

# Tuning knobs (a GPU session sweeps these; no timing chose them yet). Register counts are from compiling for sm_90
# without a GPU (Triton 3.9, cuobjdump --dump-resource-usage; the H100 machine's Triton 3.6 may differ).
# Resize tile of passes 1 and 2: 32 x 32 px, 4 px per thread per channel at 8 warps: 74 registers, no spills
# (4 warps: 123 registers, 16 warps per SM at most; 16 x 32 at 4 warps: 72).
TILE_H = 32
TILE_W = 32
NUM_WARPS = 8
# Blur tile and the K chunk of its Toeplitz products (tl.dot needs >= 16 on every side). A 23-tap kernel spans
# 32 + 22 = 54 -> 4 chunks of 16 (64, as 2 chunks of 32 would). K chunk 16: 168 registers, no spills at 4 or 8
# warps; K chunk 32: 255 registers and 80 B (4 warps) / 24 B (8 warps) of spills; 64: 1.3 KB of spills.
BLUR_TILE = 32
BLUR_K_BLOCK = 16
BLUR_NUM_WARPS = 4
# Chunk of the loop that sums a Gaussian kernel's taps for its normalisation.
KERNEL_SUM_BLOCK = 64
BLUR_DOT_PRECISION = "tf32x3"

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def max_dim(dtype):
    """The dispatcher's row-width limit; augment has no row held whole (images of any size tile), so none."""
    return 2**62


# ---------------------------------------------------------------------------------------------------------------
# Per-pixel pieces shared by the passes
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _axis_taps(o, out_size, crop_size):
    """PyTorch's antialiased bilinear taps (aten's _compute_weights_aa) of output coordinates ``o`` along one
    axis: (center, first source index, tap count, 1 / scale or 1). The weight of tap j of a coordinate is
    max(0, 1 - |(j + first - center + 0.5) * invscale|), normalised over its taps."""
    # `* 1.0`, not .to(): Triton passes an int argument equal to 1 as a constexpr, which has no .to().
    scale = crop_size.to(tl.float32) / (out_size * 1.0)
    support = tl.where(scale >= 1.0, scale, 1.0)
    invscale = tl.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = scale * (o.to(tl.float32) + 0.5)
    # C++'s int64_t() truncates toward zero; below 0 the max() clamps, where floor and truncation agree.
    first = tl.maximum((center - support + 0.5).to(tl.int32), 0)
    last = tl.minimum((center + support + 0.5).to(tl.int32), crop_size)
    return center, first, last - first, invscale


@triton.jit
def _tap_weight(j, first, center, invscale, count):
    w = tl.maximum(1.0 - tl.abs(((j + first).to(tl.float32) - center + 0.5) * invscale), 0.0)
    return tl.where(j < count, w, 0.0)


@triton.jit
def _resized_tile(data_ptr, offsets_ptr, heights_ptr, widths_ptr, int_row, b, ys, xs, OH, OW,
                  C: tl.constexpr, WIDE_DATA: tl.constexpr):
    """The resized (and flipped) crop at output rows ``ys`` x columns ``xs`` on the [0, 1] scale: r, g, b
    (TILE_H, TILE_W) fp32, all three the single channel when C = 1. Coordinates past the view are clamped (the
    callers mask them)."""
    top = tl.load(int_row + _I_TOP).to(tl.int32)
    left = tl.load(int_row + _I_LEFT).to(tl.int32)
    crop_h = tl.load(int_row + _I_CROP_H).to(tl.int32)
    crop_w = tl.load(int_row + _I_CROP_W).to(tl.int32)
    flip = tl.load(int_row + _I_FLIP)
    width = tl.load(widths_ptr + b).to(tl.int32)
    image = data_ptr + tl.load(offsets_ptr + b)

    y = tl.minimum(ys, OH - 1)
    x = tl.minimum(xs, OW - 1)
    x = tl.where(flip != 0, OW - 1 - x, x)
    cy, fy, ny, isy = _axis_taps(y, OH, crop_h)
    cx, fx, nx, isx = _axis_taps(x, OW, crop_w)
    # Normalisers first (1-D, cheap), so the 2-D loop is one multiply-add per tap and channel.
    rows_max = tl.max(ny, 0)
    cols_max = tl.max(nx, 0)
    sum_y = tl.zeros_like(cy)
    for j in range(rows_max):
        sum_y += _tap_weight(j, fy, cy, isy, ny)
    sum_x = tl.zeros_like(cx)
    for j in range(cols_max):
        sum_x += _tap_weight(j, fx, cx, isx, nx)

    acc_r = tl.zeros((ys.shape[0], xs.shape[0]), tl.float32)
    acc_g = tl.zeros((ys.shape[0], xs.shape[0]), tl.float32)
    acc_b = tl.zeros((ys.shape[0], xs.shape[0]), tl.float32)
    for ty in range(rows_max):
        wy = _tap_weight(ty, fy, cy, isy, ny)
        row = top + tl.minimum(fy + ty, crop_h - 1)
        if WIDE_DATA:
            row_off = row.to(tl.int64) * width * C
        else:
            row_off = row * width * C
        for tx in range(cols_max):
            wx = _tap_weight(tx, fx, cx, isx, nx)
            col = left + tl.minimum(fx + tx, crop_w - 1)
            w = wy[:, None] * wx[None, :]
            src = image + (row_off[:, None] + (col * C)[None, :])
            acc_r += w * tl.load(src).to(tl.float32)
            if C == 3:
                acc_g += w * tl.load(src + 1).to(tl.float32)
                acc_b += w * tl.load(src + 2).to(tl.float32)
    # total weight 0 cannot happen (the nearest tap has weight > 0); the guard keeps aten's "leave as is" anyway.
    total = sum_y[:, None] * sum_x[None, :]
    norm = 1.0 / (tl.where(total == 0.0, 1.0, total) * 255.0)
    if C == 3:
        return acc_r * norm, acc_g * norm, acc_b * norm
    else:
        v = acc_r * norm
        return v, v, v


@triton.jit
def _gray(r, g, b, C: tl.constexpr):
    if C == 3:
        return _LUMA_R * r + _LUMA_G * g + _LUMA_B * b
    else:
        return r


@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _hue_shift(r, g, b, shift):
    """torchvision's _rgb2hsv, h = (h + shift) mod 1 (torch.remainder), _hsv2rgb; as augment.py's reference."""
    maxc = tl.maximum(tl.maximum(r, g), b)
    minc = tl.minimum(tl.minimum(r, g), b)
    equal = maxc == minc
    chroma = maxc - minc
    s = chroma / tl.where(equal, 1.0, maxc)
    divisor = tl.where(equal, 1.0, chroma)
    rc = (maxc - r) / divisor
    gc = (maxc - g) / divisor
    bc = (maxc - b) / divisor
    h = (tl.where(maxc == r, bc - gc, 0.0) + tl.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
         + tl.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0))
    h = h / 6.0 + 1.0
    h = h - tl.floor(h)  # fmod(h, 1) of a positive h
    h = h + shift
    h = h - tl.floor(h)  # torch.remainder(h, 1): may round up to exactly 1.0, sector 6 -> 0 below, as torch
    v = maxc
    h6 = h * 6.0
    sector = tl.floor(h6)
    f = h6 - sector
    sector = tl.where(sector >= 6.0, sector - 6.0, sector)
    p = _clamp01(v * (1.0 - s))
    q = _clamp01(v * (1.0 - s * f))
    t = _clamp01(v * (1.0 - s * (1.0 - f)))
    # sector:   0  1  2  3  4  5
    # r         v  q  p  p  t  v
    # g         t  v  v  q  p  p
    # b         p  p  t  v  v  q
    r = tl.where(sector == 0.0, v, tl.where(sector == 1.0, q, tl.where(sector == 2.0, p,
                 tl.where(sector == 3.0, p, tl.where(sector == 4.0, t, v)))))
    g = tl.where(sector == 0.0, t, tl.where(sector == 1.0, v, tl.where(sector == 2.0, v,
                 tl.where(sector == 3.0, q, p))))
    b = tl.where(sector == 0.0, p, tl.where(sector == 1.0, p, tl.where(sector == 2.0, t,
                 tl.where(sector == 3.0, v, tl.where(sector == 4.0, v, q)))))
    return r, g, b


@triton.jit
def _jitter_op(op, r, g, b, float_row, mean_gray, C: tl.constexpr):
    """One colour-jitter op by its code (0 brightness, 1 contrast, 2 saturation, 3 hue); ``op`` is a
    program-level scalar, so each branch is uniform across the program."""
    if op == _BRIGHTNESS:
        f = tl.load(float_row + _F_BRIGHTNESS)
        r = _clamp01(f * r)
        g = _clamp01(f * g)
        b = _clamp01(f * b)
    elif op == _CONTRAST:
        f = tl.load(float_row + _F_CONTRAST)
        bias = (1.0 - f) * mean_gray
        r = _clamp01(f * r + bias)
        g = _clamp01(f * g + bias)
        b = _clamp01(f * b + bias)
    elif op == _SATURATION:
        if C == 3:
            f = tl.load(float_row + _F_SATURATION)
            gray = (1.0 - f) * _gray(r, g, b, C)
            r = _clamp01(f * r + gray)
            g = _clamp01(f * g + gray)
            b = _clamp01(f * b + gray)
    else:
        if C == 3:
            r, g, b = _hue_shift(r, g, b, tl.load(float_row + _F_HUE))
    return r, g, b


@triton.jit
def _store_view(out_ptr, mean_ptr, std_ptr, int_row, float_row, b, ys, xs, OH, OW, out_sb, out_sc, out_sh,
                out_sw, r, g, bl, C: tl.constexpr):
    """Solarize, normalise, cast and store a (len(ys), len(xs)) tile of sample b."""
    solarize = tl.load(int_row + _I_SOLARIZE) != 0
    threshold = tl.load(float_row + _F_THRESHOLD)
    mask = (ys < OH)[:, None] & (xs < OW)[None, :]
    base = out_ptr + b.to(tl.int64) * out_sb
    offs = ys[:, None] * out_sh + xs[None, :] * out_sw
    dtype = out_ptr.dtype.element_ty
    r = tl.where(solarize & (r >= threshold), 1.0 - r, r)
    tl.store(base + offs, ((r - tl.load(mean_ptr)) / tl.load(std_ptr)).to(dtype), mask=mask)
    if C == 3:
        g = tl.where(solarize & (g >= threshold), 1.0 - g, g)
        bl = tl.where(solarize & (bl >= threshold), 1.0 - bl, bl)
        tl.store(base + out_sc + offs, ((g - tl.load(mean_ptr + 1)) / tl.load(std_ptr + 1)).to(dtype), mask=mask)
        tl.store(base + 2 * out_sc + offs, ((bl - tl.load(mean_ptr + 2)) / tl.load(std_ptr + 2)).to(dtype),
                 mask=mask)


@triton.jit
def _tile_coords(tile, tiles_w, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    ys = (tile // tiles_w) * TILE_H + tl.arange(0, TILE_H)
    xs = (tile % tiles_w) * TILE_W + tl.arange(0, TILE_W)
    return ys, xs


# ---------------------------------------------------------------------------------------------------------------
# The three passes
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _contrast_partials_kernel(data_ptr, offsets_ptr, heights_ptr, widths_ptr, int_ptr, float_ptr, partials_ptr,
                              OH, OW, tiles_w, n_tiles,
                              C: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                              WIDE_DATA: tl.constexpr):
    """partials[b, tile] = sum over the tile's view pixels of gray(x), x = the chain up to the contrast op."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    int_row = int_ptr + b * _NUM_INT
    float_row = float_ptr + b * _NUM_FLOAT
    contrast = tl.load(float_row + _F_CONTRAST)
    out = partials_ptr + b.to(tl.int64) * n_tiles + tile
    if (tl.load(int_row + _I_JITTER) != 0) & (contrast != 1.0):
        ys, xs = _tile_coords(tile, tiles_w, TILE_H, TILE_W)
        r, g, bl = _resized_tile(data_ptr, offsets_ptr, heights_ptr, widths_ptr, int_row, b, ys, xs, OH, OW,
                                 C, WIDE_DATA)
        before = True  # still before the contrast op in the sample's order
        for k in tl.static_range(4):
            op = tl.load(int_row + _I_ORDER + k)
            before = before & (op != _CONTRAST)
            if before:
                r, g, bl = _jitter_op(op, r, g, bl, float_row, 0.0, C)
        inside = (ys < OH)[:, None] & (xs < OW)[None, :]
        tl.store(out, tl.sum(tl.sum(tl.where(inside, _gray(r, g, bl, C), 0.0), 1), 0))
    else:
        tl.store(out, 0.0)


@triton.jit
def _augment_kernel(data_ptr, offsets_ptr, heights_ptr, widths_ptr, int_ptr, float_ptr, mean_ptr, std_ptr,
                    partials_ptr, scratch_ptr, out_ptr, OH, OW, tiles_w, n_tiles, out_sb, out_sc, out_sh, out_sw,
                    C: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, PARTIALS_BLOCK: tl.constexpr,
                    WIDE_DATA: tl.constexpr):
    """Resize, flip, jitter, grayscale of one tile; then solarize + normalise into out, or the pre-blur values
    into scratch (B, C, OH, OW) fp32 when the sample has a blur."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    int_row = int_ptr + b * _NUM_INT
    float_row = float_ptr + b * _NUM_FLOAT
    ys, xs = _tile_coords(tile, tiles_w, TILE_H, TILE_W)
    r, g, bl = _resized_tile(data_ptr, offsets_ptr, heights_ptr, widths_ptr, int_row, b, ys, xs, OH, OW, C,
                             WIDE_DATA)
    if tl.load(int_row + _I_JITTER) != 0:
        # The same fixed-order sum in every program of the sample: deterministic and identical across tiles.
        tiles = tl.arange(0, PARTIALS_BLOCK)
        partials = tl.load(partials_ptr + b.to(tl.int64) * n_tiles + tiles, mask=tiles < n_tiles, other=0.0)
        mean_gray = tl.sum(partials, 0) / (OH * OW * 1.0)
        for k in tl.static_range(4):
            r, g, bl = _jitter_op(tl.load(int_row + _I_ORDER + k), r, g, bl, float_row, mean_gray, C)
    if tl.load(int_row + _I_GRAY) != 0:
        gray = _gray(r, g, bl, C)
        r = gray
        g = gray
        bl = gray
    if tl.load(float_row + _F_SIGMA) > 0.0:
        mask = (ys < OH)[:, None] & (xs < OW)[None, :]
        view = scratch_ptr + b.to(tl.int64) * (C * OH * OW)
        offs = ys[:, None] * OW + xs[None, :]
        tl.store(view + offs, r, mask=mask)
        if C == 3:
            tl.store(view + OH * OW + offs, g, mask=mask)
            tl.store(view + 2 * OH * OW + offs, bl, mask=mask)
    else:
        _store_view(out_ptr, mean_ptr, std_ptr, int_row, float_row, b, ys, xs, OH, OW, out_sb, out_sc, out_sh,
                    out_sw, r, g, bl, C)


@triton.jit
def _reflect(i, n):
    """Mirror indices into [0, n) without repeating the edge, any distance out (period 2(n - 1); n = 1 -> 0).
    The explicit fix-up makes % agree between C's truncating and numpy's flooring remainder (the interpreter)."""
    period = tl.maximum(2 * (n - 1), 1)
    m = i % period
    m = tl.where(m < 0, m + period, m)
    return tl.where(m >= n, period - m, m)


@triton.jit
def _gaussian(d, half, sigma, inv_sum):
    """Normalised Gaussian weight of integer offsets d (0 outside [-half, half])."""
    t = d.to(tl.float32) / sigma
    return tl.where((d >= -half) & (d <= half), tl.exp(-0.5 * t * t) * inv_sum, 0.0)


@triton.jit
def _blur_kernel(scratch_ptr, int_ptr, float_ptr, mean_ptr, std_ptr, out_ptr, OH, OW, tiles_w,
                 out_sb, out_sc, out_sh, out_sw,
                 C: tl.constexpr, BLUR_TILE: tl.constexpr, K_BLOCK: tl.constexpr, KERNEL_SUM_BLOCK: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """Separable Gaussian blur (reflect padding) of one BLUR_TILE^2 tile of a blurred sample's scratch, then
    solarize + normalise into out. The rows pass is X (rows, cols) @ Gx (cols, BLUR_TILE) with the banded
    Gx[j, x] = g(j - half - x), the columns pass Gy (BLUR_TILE, rows) @ Y; both over K_BLOCK chunks of the
    BLUR_TILE + 2 * half halo, which is loaded at reflected coordinates."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    int_row = int_ptr + b * _NUM_INT
    float_row = float_ptr + b * _NUM_FLOAT
    sigma = tl.load(float_row + _F_SIGMA)
    if sigma > 0.0:
        size = tl.load(int_row + _I_BLUR_SIZE).to(tl.int32)
        half = (size - 1) // 2
        taps = tl.arange(0, KERNEL_SUM_BLOCK)
        total = tl.zeros((KERNEL_SUM_BLOCK,), tl.float32)
        for start in range(0, size, KERNEL_SUM_BLOCK):
            d = start + taps
            total += tl.where(d < size, _gaussian(d - half, half, sigma, 1.0), 0.0)
        inv_sum = 1.0 / tl.sum(total, 0)

        ys, xs = _tile_coords(tile, tiles_w, BLUR_TILE, BLUR_TILE)
        y0 = (tile // tiles_w) * BLUR_TILE
        x0 = (tile % tiles_w) * BLUR_TILE
        out_idx = tl.arange(0, BLUR_TILE)
        k_idx = tl.arange(0, K_BLOCK)
        span = BLUR_TILE + 2 * half
        view = scratch_ptr + b.to(tl.int64) * (C * OH * OW)
        acc_r = tl.zeros((BLUR_TILE, BLUR_TILE), tl.float32)
        acc_g = tl.zeros((BLUR_TILE, BLUR_TILE), tl.float32)
        acc_b = tl.zeros((BLUR_TILE, BLUR_TILE), tl.float32)
        for row_start in range(0, span, K_BLOCK):
            rows = _reflect(y0 - half + row_start + k_idx, OH)
            part_r = tl.zeros((K_BLOCK, BLUR_TILE), tl.float32)
            part_g = tl.zeros((K_BLOCK, BLUR_TILE), tl.float32)
            part_b = tl.zeros((K_BLOCK, BLUR_TILE), tl.float32)
            for col_start in range(0, span, K_BLOCK):
                cols = _reflect(x0 - half + col_start + k_idx, OW)
                gx = _gaussian((col_start + k_idx)[:, None] - half - out_idx[None, :], half, sigma, inv_sum)
                src = view + rows[:, None] * OW + cols[None, :]
                part_r += tl.dot(tl.load(src), gx, input_precision=DOT_PRECISION)
                if C == 3:
                    part_g += tl.dot(tl.load(src + OH * OW), gx, input_precision=DOT_PRECISION)
                    part_b += tl.dot(tl.load(src + 2 * OH * OW), gx, input_precision=DOT_PRECISION)
            gy = _gaussian((row_start + k_idx)[None, :] - half - out_idx[:, None], half, sigma, inv_sum)
            acc_r += tl.dot(gy, part_r, input_precision=DOT_PRECISION)
            if C == 3:
                acc_g += tl.dot(gy, part_g, input_precision=DOT_PRECISION)
                acc_b += tl.dot(gy, part_b, input_precision=DOT_PRECISION)
        if C == 3:
            _store_view(out_ptr, mean_ptr, std_ptr, int_row, float_row, b, ys, xs, OH, OW, out_sb, out_sc,
                        out_sh, out_sw, acc_r, acc_g, acc_b, C)
        else:
            _store_view(out_ptr, mean_ptr, std_ptr, int_row, float_row, b, ys, xs, OH, OW, out_sb, out_sc,
                        out_sh, out_sw, acc_r, acc_r, acc_r, C)


# ---------------------------------------------------------------------------------------------------------------
# Host wrapper
# ---------------------------------------------------------------------------------------------------------------


def _check_args(data, offsets, heights, widths, channels, int_params, float_params, mean, std, out):
    device = data.device
    batch = offsets.shape[0]
    expected = {
        "data": (data, torch.uint8, None), "offsets": (offsets, torch.int64, (batch,)),
        "heights": (heights, torch.int64, (batch,)), "widths": (widths, torch.int64, (batch,)),
        "int_params": (int_params, torch.int64, (batch, A.NUM_INT_PARAMS)),
        "float_params": (float_params, torch.float32, (batch, A.NUM_FLOAT_PARAMS)),
        "mean": (mean, torch.float32, (channels,)), "std": (std, torch.float32, (channels,)),
    }
    for name, (t, dtype, shape) in expected.items():
        assert t.dtype == dtype and t.device == device and t.is_contiguous(), (
            f"{name} must be a contiguous {dtype} tensor on {device}, got {t.dtype} on {t.device}"
        )
        assert shape is None or tuple(t.shape) == shape, f"{name} must have shape {shape}, got {tuple(t.shape)}"
    assert channels in (1, 3), f"channels must be 1 or 3, got {channels}"
    assert out.device == device and out.dtype in _OUT_DTYPES, (
        f"out must be float32, bfloat16 or float16 on {device}, got {out.dtype} on {out.device}"
    )
    assert out.dim() == 4 and tuple(out.shape[:2]) == (batch, channels), (
        f"out must be (B={batch}, C={channels}, out_h, out_w), got {tuple(out.shape)}"
    )
    # Samples run on grid axis 1 (CUDA allows 65535 there); tiles on axis 0, so that consecutive programs share a
    # sample's source in the caches.
    assert batch <= 65535, f"batch of {batch} images: at most 65535 per call (split the batch)"
    assert channels * out.shape[2] * out.shape[3] < 2**31, f"out: a view of {tuple(out.shape[1:])} is too large"
    assert max(out.stride()[1:]) * max(out.shape[1:]) < 2**31, "out: strides too large for int32 tile offsets"


def augment(data, offsets, heights, widths, channels, int_params, float_params, mean, std, out):
    """Write the augmented views of the packed images into ``out`` (B, C, out_h, out_w); see the module
    docstring for the layouts. Three launches, no host synchronisation."""
    _check_args(data, offsets, heights, widths, channels, int_params, float_params, mean, std, out)
    batch = offsets.shape[0]
    out_h, out_w = out.shape[2], out.shape[3]
    device = data.device
    # An image's byte offsets are int32 unless the whole buffer could hold one past 2^31.
    wide = data.numel() >= 2**31
    tiles_w = triton.cdiv(out_w, TILE_W)
    n_tiles = triton.cdiv(out_h, TILE_H) * tiles_w
    partials = torch.empty(batch, n_tiles, dtype=torch.float32, device=device)
    scratch = torch.empty(batch, channels, out_h, out_w, dtype=torch.float32, device=device)
    images = (data, offsets, heights, widths)
    strides = out.stride()
    _contrast_partials_kernel[(n_tiles, batch)](
        *images, int_params, float_params, partials, out_h, out_w, tiles_w, n_tiles,
        C=channels, TILE_H=TILE_H, TILE_W=TILE_W, WIDE_DATA=wide, num_warps=NUM_WARPS,
    )
    _augment_kernel[(n_tiles, batch)](
        *images, int_params, float_params, mean, std, partials, scratch, out, out_h, out_w, tiles_w, n_tiles,
        *strides, C=channels, TILE_H=TILE_H, TILE_W=TILE_W, PARTIALS_BLOCK=triton.next_power_of_2(n_tiles),
        WIDE_DATA=wide, num_warps=NUM_WARPS,
    )
    blur_tiles_w = triton.cdiv(out_w, BLUR_TILE)
    _blur_kernel[(triton.cdiv(out_h, BLUR_TILE) * blur_tiles_w, batch)](
        scratch, int_params, float_params, mean, std, out, out_h, out_w, blur_tiles_w, *strides,
        C=channels, BLUR_TILE=BLUR_TILE, K_BLOCK=BLUR_K_BLOCK, KERNEL_SUM_BLOCK=KERNEL_SUM_BLOCK,
        DOT_PRECISION=BLUR_DOT_PRECISION, num_warps=BLUR_NUM_WARPS,
    )
