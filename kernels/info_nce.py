"""Triton kernels for the fused InfoNCE / NT-Xent losses (contract: notes/info_nce_kernel_contract.md).

FlashAttention-style: the (N, M) logit matrix S = scale * q @ k.T is never stored. The forward streams k
in column blocks and keeps an online log-sum-exp per row; the backward recomputes S tile by tile from the
saved lse.
Memory is O((N + M) * D); all pointer arithmetic is int64.

    q (N, D), k (M, D)   contiguous, float32 / bfloat16 / float16, same dtype
    pos, exclude (N,)    int64; exclude -1 means nothing excluded
    scale, coef          0-d float32 tensors on the same device, read inside the kernels (no host sync)
"""

import os

import torch
import triton
import triton.language as tl

# Module constants used inside @triton.jit must be tl.constexpr.
_LOG2E = tl.constexpr(1.4426950408889634)

# fp32 inputs: plain tf32 rounds the operands to a 10-bit mantissa (~5e-4 relative), far outside the "2x the
# fp32 PyTorch error" test rule. tf32x3 (a tf32 head and tail per operand, three tensor-core passes) keeps dq,
# dk and dscale within that rule; the forward's lse/loss at scale 100 come out 2-3 fp32 ulps off (up to 1.4x
# over the rule with a 1e-6 + 1 ulp atol, H100). "ieee" (fp32 FMAs) meets the rule but made the forward 3-6x
# slower on the H100 (2.5 ms vs 0.42 ms at N = M = 8192, D = 128), so tf32x3 it is.
FP32_DOT_PRECISION = "tf32x3"

# Tile rule. D is held whole, so tiles shrink as a row's bytes (BLOCK_D * element size) grow: q and k tiles
# of 32 KiB each in the forward, 16 KiB in the backward (its accumulators also hold BLOCK_D), 16 to 64 rows;
# deeper pipelining while rows are small. H100, Triton 3.6, N = M = 8192, D = 128, 4 warps:
#   bf16 64x64 tiles, 3 stages: fwd 0.118 ms (146 TFLOP/s), dq 0.119 ms, dk 0.154 ms (2 matmuls each, ~250
#   TFLOP/s); 128x64 with 8 warps: 0.196 / 0.193 / 0.129 ms; 2 stages: 1.3-1.6x slower. PyTorch eager fwd+bwd:
#   3.46 ms. fp32 (tf32x3): fwd 0.42 ms at 64x64, dq + dk 2.2 ms at 32x32 (64x64: 3.0 ms); eager 4.0 ms.
# Past _MAX_BLOCK_D even 16-row tiles overflow the H100's 227 KiB of shared memory (fp32 BLOCK_D 1024 asked
# for 256 KiB with 16x16 tiles and 1 stage; half BLOCK_D 2048 fits).
_FWD_TILE_BYTES = 32 * 1024
_BWD_TILE_BYTES = 16 * 1024
_MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
_MAX_BLOCK = 64
_MAX_BLOCK_D = {torch.float32: 512, torch.bfloat16: 2048, torch.float16: 2048}
_NUM_WARPS = 4


def max_dim(dtype):
    """The widest row (D) these kernels take in `dtype`; the dispatcher routes wider inputs elsewhere."""
    return _MAX_BLOCK_D[dtype]


def _config(forward, dim, dtype):
    """(BLOCK_D, BLOCK_M, BLOCK_N, num_stages) for rows of `dim` elements of `dtype`: the rule above.

    The dq and dk kernels share theirs: the dk kernel relies on its S tiles being bit-identical to dq's.
    """
    block_d = triton.next_power_of_2(max(dim, _MIN_BLOCK))
    assert block_d <= _MAX_BLOCK_D[dtype], (
        f"dim {dim} is too large for the Triton info_nce kernels in {dtype} "
        f"(at most {_MAX_BLOCK_D[dtype]}): use another backend"
    )
    row_bytes = block_d * dtype.itemsize
    tile_bytes = _FWD_TILE_BYTES if forward else _BWD_TILE_BYTES
    block = min(_MAX_BLOCK, max(_MIN_BLOCK, tile_bytes // row_bytes))
    num_stages = 3 if row_bytes <= 256 else 2 if row_bytes <= 1024 else 1
    return block_d, block, block, num_stages


_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _dot_precision(dtype):
    # The precision flag only changes fp32 dots; half inputs always take the native tensor-core path.
    return FP32_DOT_PRECISION if dtype == torch.float32 else "tf32"


@triton.jit
def _mma(a, b, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # The Triton interpreter multiplies bfloat16 bit patterns in tl.dot (triton-lang/triton#11584), so under
    # it the operands go up to fp32 first; products of half-precision values are exact in fp32, so this
    # matches the GPU path up to summation order.
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _load_tile(ptr, rows, row_ok, dims, D):
    """(rows, dims) tile of a contiguous (*, D) matrix, zero where a row is masked off or a dim is >= D."""
    mask = row_ok[:, None] & (dims < D)[None, :]
    return tl.load(ptr + rows[:, None] * D + dims[None, :], mask=mask, other=0.0)


@triton.jit
def _cosines(q, k, rq, rk, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """rq_i * rk_j * (q . k^T) for a tile: the row scales are the inverse norms when the rows are normalised on
    the fly (contract v2) and exactly 1 otherwise. The dq and dk kernels call this with the same operands in the
    same order, so their S tiles stay bit-identical."""
    qk = _mma(q, tl.trans(k), DOT_PRECISION, UPCAST_DOT)
    return qk * rq[:, None] * rk[None, :]


@triton.jit
def _project(grad, x, rx, NORMALIZE: tl.constexpr):
    """The backward of x / ||x|| for a tile of rows: rx * (grad - x^ (x^ . grad)) with x^ = rx * x."""
    if NORMALIZE:
        x_hat = x.to(tl.float32) * rx[:, None]
        grad = rx[:, None] * (grad - x_hat * tl.sum(x_hat * grad, 1)[:, None])
    return grad


@triton.jit
def _info_nce_fwd_kernel(
    q_ptr, k_ptr, rq_ptr, rk_ptr, scale_ptr, pos_ptr, exclude_ptr, loss_ptr, lse_ptr,
    N, M, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """lse_i over the non-excluded columns and loss_i = lse_i - S_{i,pos_i}, for one block of BLOCK_M rows."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < N
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    q = _load_tile(q_ptr, rows, row_ok, dims, D)
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
    exclude = tl.load(exclude_ptr + rows, mask=row_ok, other=-1)
    scale = tl.load(scale_ptr)
    rq = tl.load(rq_ptr + rows, mask=row_ok, other=0.0)

    # Logits stay in natural units and go to base 2 (exp2 is the native instruction) only after the max is
    # subtracted: folding log2(e) into the scale rounds the large logit twice (1.7x PyTorch's fp32 lse error).
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    qk_pos = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, M, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < M
        k = _load_tile(k_ptr, cols, col_ok, dims, D)
        rk = tl.load(rk_ptr + cols, mask=col_ok, other=0.0)
        qk = _cosines(q, k, rq, rk, DOT_PRECISION, UPCAST_DOT)
        # where(), not a multiply by the one-hot: a NaN or inf elsewhere in the row must not leak into it.
        qk_pos += tl.sum(tl.where(cols[None, :] == pos[:, None], qk, 0.0), 1)
        keep = col_ok[None, :] & (cols[None, :] != exclude[:, None])
        s = tl.where(keep, qk * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row whose columns so far are all masked has m_new = -inf, and -inf - -inf would be NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2((m_i - m_safe) * _LOG2E) + tl.sum(tl.exp2((s - m_safe[:, None]) * _LOG2E), 1)
        m_i = m_new

    # NaN/inf logits reach l_i through exp2 (NaN, or inf - inf), so they propagate to lse and the loss.
    lse = m_i + tl.log(l_i)
    loss = lse - qk_pos * scale
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(loss_ptr + rows, loss, mask=row_ok)


# Why the backward renormalises P. lse is stored in fp32, and at CLIP-sized logits (scale 100, lse ~ 100)
# its rounding alone (half an ulp, ~4e-6) shifts every P_ij = exp(S_ij - lse_i) of the row by that relative
# amount: the rows of P no longer sum to 1, and dq/dk came out 3-7x less accurate than PyTorch's fp32
# backward (measured under the interpreter). So the backward measures r_i = sum_j P_ij (1 in exact
# arithmetic) and uses P_ij / r_i, the softmax of the fp32 logits, at the cost of one row sum and one
# multiply per element.


@triton.jit
def _info_nce_bwd_dq_kernel(
    q_ptr, k_ptr, rq_ptr, rk_ptr, scale_ptr, coef_ptr, pos_ptr, exclude_ptr, lse_ptr, inv_norm_ptr, dq_ptr,
    dscale_rows_ptr,
    N, M, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """dq_i = coef * s * sum_j G_ij k_j, the per-row partial sum_j G_ij (q_i . k_j) of dscale / coef, and
    inv_norm_i = 1 / r_i for the dk kernel.

    r_i is only known after the loop, so the loop accumulates the unnormalised G = P - onehot and the end
    applies the exact fix-up
        sum_j (P_ij / r_i - onehot_ij) x_j = (sum_j G_ij x_j) / r_i + (1 / r_i - 1) x_pos_i.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < N
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    q = _load_tile(q_ptr, rows, row_ok, dims, D)
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
    exclude = tl.load(exclude_ptr + rows, mask=row_ok, other=-1)
    # lse = +inf on padding rows makes their P exactly 0.
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
    scale = tl.load(scale_ptr)
    rq = tl.load(rq_ptr + rows, mask=row_ok, other=0.0)

    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    dscale_rows = tl.zeros((BLOCK_M,), tl.float32)
    norm = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, M, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < M
        k = _load_tile(k_ptr, cols, col_ok, dims, D)
        rk = tl.load(rk_ptr + cols, mask=col_ok, other=0.0)
        qk = _cosines(q, k, rq, rk, DOT_PRECISION, UPCAST_DOT)
        keep = col_ok[None, :] & (cols[None, :] != exclude[:, None])
        p = tl.where(keep, tl.exp2((qk * scale - lse[:, None]) * _LOG2E), 0.0)
        g = p - tl.where(cols[None, :] == pos[:, None], 1.0, 0.0)
        norm += tl.sum(p, 1)
        dscale_rows += tl.sum(g * qk, 1)
        g = g * rk[None, :]  # sum_j G_ij k^_j with k^_j = rk_j k_j: fold rk into G's columns
        acc += _mma(g.to(k.dtype), k, DOT_PRECISION, UPCAST_DOT)

    inv_norm = 1.0 / norm
    # The fix-up term is ~1e-6 of the result, so the positive pair's dot needs no tensor-core precision.
    k_pos = _load_tile(k_ptr, pos, row_ok, dims, D)
    k_pos = k_pos.to(tl.float32)
    qk_pos = tl.sum(q.to(tl.float32) * k_pos, 1)
    rk_pos = tl.load(rk_ptr + pos, mask=row_ok, other=0.0)
    k_pos = k_pos * rk_pos[:, None]
    qk_pos = qk_pos * rq * rk_pos
    acc = acc * inv_norm[:, None] + (inv_norm - 1.0)[:, None] * k_pos
    dscale_rows = dscale_rows * inv_norm + (inv_norm - 1.0) * qk_pos
    tl.store(inv_norm_ptr + rows, inv_norm, mask=row_ok)
    coef = tl.load(coef_ptr)
    out = _project(acc * (coef * scale), q, rq, NORMALIZE).to(dq_ptr.dtype.element_ty)
    tl.store(dq_ptr + rows[:, None] * D + dims[None, :], out, mask=row_ok[:, None] & (dims < D)[None, :])
    tl.store(dscale_rows_ptr + rows, dscale_rows, mask=row_ok)


@triton.jit
def _info_nce_bwd_dk_kernel(
    q_ptr, k_ptr, rq_ptr, rk_ptr, scale_ptr, coef_ptr, pos_ptr, exclude_ptr, lse_ptr, inv_norm_ptr, dk_ptr,
    N, M, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """dk_j = coef * s * sum_i G_ij q_i: one program per column block owns its dk rows, so no atomics."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    col_ok = cols < M
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    k = _load_tile(k_ptr, cols, col_ok, dims, D)
    rk = tl.load(rk_ptr + cols, mask=col_ok, other=0.0)  # this program's columns: loaded once, not per row block
    scale = tl.load(scale_ptr)

    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start in range(0, N, BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < N
        q = _load_tile(q_ptr, rows, row_ok, dims, D)
        pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
        exclude = tl.load(exclude_ptr + rows, mask=row_ok, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
        inv_norm = tl.load(inv_norm_ptr + rows, mask=row_ok, other=0.0)
        rq = tl.load(rq_ptr + rows, mask=row_ok, other=0.0)
        # Same operand order and tile shape as the dq kernel, so S is bit-identical there and the row norms
        # that kernel measured cancel this kernel's P errors (k @ q.T rounds differently: dk was 3-6x less
        # accurate).
        qk = _cosines(q, k, rq, rk, DOT_PRECISION, UPCAST_DOT)
        keep = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != exclude[:, None])
        p = tl.where(keep, tl.exp2((qk * scale - lse[:, None]) * _LOG2E), 0.0)
        g = p * inv_norm[:, None] - tl.where(cols[None, :] == pos[:, None], 1.0, 0.0)
        g = g * rq[:, None]  # sum_i G_ij q^_i with q^_i = rq_i q_i: fold rq into G's rows
        acc += _mma(tl.trans(g.to(q.dtype)), q, DOT_PRECISION, UPCAST_DOT)

    coef = tl.load(coef_ptr)
    out = _project(acc * (coef * scale), k, rk, NORMALIZE).to(dk_ptr.dtype.element_ty)
    tl.store(dk_ptr + cols[:, None] * D + dims[None, :], out, mask=col_ok[:, None] & (dims < D)[None, :])


# ----------------------------------------------------------------------------------------------------------------
# CLIP: both directions in one set of passes over S = scale * I T^T (N x N), six matmul-units instead of ten.
#
# The two directions as separate InfoNCE calls (image->text, text->image) cost 2 x (forward + dq + dk) = 10
# matmul-units of 2 N^2 D. Here: the row statistics (m_r, l_r) and column statistics (m_c, l_c) of S take one
# unit each, then one kernel per row block forms dI and one per column block forms dT from
#     G_ij = coef * (P^r_ij + P^c_ij - 2 [i == j]),  P^r = exp(S - m_r) / l_r,  P^c = exp(S - m_c) / l_c,
# two units each. Every kernel computes S through _cosines(I tile, T tile) with the same tile shape, so S is
# bit-identical in all four, and the statistics are kept as (max, sum) rather than one fp32 log-sum-exp: each
# P row (column) then sums to 1 within a few ulps, with no renormalisation pass (see the note above the dq
# kernel for what a rounded lse costs at CLIP's scale of 100).
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _clip_stats_kernel(
    i_ptr, t_ptr, ri_ptr, rt_ptr, scale_ptr, max_ptr, sum_ptr, diag_ptr,
    N, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BY_ROWS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Online (max, sum of exp) of S over the columns of a block of rows (BY_ROWS) or over the rows of a block
    of columns, and the block's diagonal cosines S_kk / scale (stored by the row pass only)."""
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    scale = tl.load(scale_ptr)
    if BY_ROWS:
        own = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        own_ok = own < N
        x = _load_tile(i_ptr, own, own_ok, dims, D)
        rx = tl.load(ri_ptr + own, mask=own_ok, other=0.0)
        m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_M,), tl.float32)
        diag = tl.zeros((BLOCK_M,), tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = cols < N
            y = _load_tile(t_ptr, cols, col_ok, dims, D)
            ry = tl.load(rt_ptr + cols, mask=col_ok, other=0.0)
            c = _cosines(x, y, rx, ry, DOT_PRECISION, UPCAST_DOT)
            diag += tl.sum(tl.where(cols[None, :] == own[:, None], c, 0.0), 1)
            s = tl.where(col_ok[None, :], c * scale, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l = l * tl.exp2((m - m_safe) * _LOG2E) + tl.sum(tl.exp2((s - m_safe[:, None]) * _LOG2E), 1)
            m = m_new
        tl.store(diag_ptr + own, diag, mask=own_ok)
    else:
        own = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        own_ok = own < N
        y = _load_tile(t_ptr, own, own_ok, dims, D)
        ry = tl.load(rt_ptr + own, mask=own_ok, other=0.0)
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_N,), tl.float32)
        for start in range(0, N, BLOCK_M):
            rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
            row_ok = rows < N
            x = _load_tile(i_ptr, rows, row_ok, dims, D)
            rx = tl.load(ri_ptr + rows, mask=row_ok, other=0.0)
            c = _cosines(x, y, rx, ry, DOT_PRECISION, UPCAST_DOT)
            s = tl.where(row_ok[:, None], c * scale, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l = l * tl.exp2((m - m_safe) * _LOG2E) + tl.sum(tl.exp2((s - m_safe[None, :]) * _LOG2E), 0)
            m = m_new
    tl.store(max_ptr + own, m, mask=own_ok)
    tl.store(sum_ptr + own, l, mask=own_ok)


@triton.jit
def _clip_grad_tile(c, scale, coef, rows, cols, mr, inv_lr, mc, inv_lc):
    """G = coef * (P^r + P^c - 2 [i == j]) for one tile of cosines c (padding rows/columns carry m = +inf)."""
    s = c * scale
    pr = tl.exp2((s - mr[:, None]) * _LOG2E) * inv_lr[:, None]
    pc = tl.exp2((s - mc[None, :]) * _LOG2E) * inv_lc[None, :]
    return coef * (pr + pc - tl.where(rows[:, None] == cols[None, :], 2.0, 0.0))


@triton.jit
def _clip_bwd_kernel(
    i_ptr, t_ptr, ri_ptr, rt_ptr, scale_ptr, coef_ptr, mr_ptr, lr_ptr, mc_ptr, lc_ptr, grad_ptr, dscale_ptr,
    N, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BY_ROWS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """BY_ROWS: dI_i = scale * sum_j G_ij T^_j and the row's sum_j G_ij c_ij (for dscale); else
    dT_j = scale * sum_i G_ij I^_i. One program owns its output rows: no atomics."""
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    scale = tl.load(scale_ptr)
    coef = tl.load(coef_ptr)
    if BY_ROWS:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        row_ok = rows < N
        x = _load_tile(i_ptr, rows, row_ok, dims, D)
        rx = tl.load(ri_ptr + rows, mask=row_ok, other=0.0)
        mr = tl.load(mr_ptr + rows, mask=row_ok, other=float("inf"))
        inv_lr = 1.0 / tl.load(lr_ptr + rows, mask=row_ok, other=1.0)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        dscale_rows = tl.zeros((BLOCK_M,), tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = cols < N
            y = _load_tile(t_ptr, cols, col_ok, dims, D)
            ry = tl.load(rt_ptr + cols, mask=col_ok, other=0.0)
            mc = tl.load(mc_ptr + cols, mask=col_ok, other=float("inf"))
            inv_lc = 1.0 / tl.load(lc_ptr + cols, mask=col_ok, other=1.0)
            c = _cosines(x, y, rx, ry, DOT_PRECISION, UPCAST_DOT)
            g = _clip_grad_tile(c, scale, coef, rows, cols, mr, inv_lr, mc, inv_lc)
            g = tl.where(col_ok[None, :], g, 0.0)
            dscale_rows += tl.sum(g * c, 1)
            acc += _mma((g * ry[None, :]).to(y.dtype), y, DOT_PRECISION, UPCAST_DOT)
        out = _project(acc * scale, x, rx, NORMALIZE).to(grad_ptr.dtype.element_ty)
        tl.store(grad_ptr + rows[:, None] * D + dims[None, :], out, mask=row_ok[:, None] & (dims < D)[None, :])
        tl.store(dscale_ptr + rows, dscale_rows, mask=row_ok)
    else:
        cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        y = _load_tile(t_ptr, cols, col_ok, dims, D)
        ry = tl.load(rt_ptr + cols, mask=col_ok, other=0.0)
        mc = tl.load(mc_ptr + cols, mask=col_ok, other=float("inf"))
        inv_lc = 1.0 / tl.load(lc_ptr + cols, mask=col_ok, other=1.0)
        acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        for start in range(0, N, BLOCK_M):
            rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
            row_ok = rows < N
            x = _load_tile(i_ptr, rows, row_ok, dims, D)
            rx = tl.load(ri_ptr + rows, mask=row_ok, other=0.0)
            mr = tl.load(mr_ptr + rows, mask=row_ok, other=float("inf"))
            inv_lr = 1.0 / tl.load(lr_ptr + rows, mask=row_ok, other=1.0)
            c = _cosines(x, y, rx, ry, DOT_PRECISION, UPCAST_DOT)
            g = _clip_grad_tile(c, scale, coef, rows, cols, mr, inv_lr, mc, inv_lc)
            g = tl.where(row_ok[:, None], g, 0.0)
            acc += _mma(tl.trans((g * rx[:, None]).to(x.dtype)), x, DOT_PRECISION, UPCAST_DOT)
        out = _project(acc * scale, y, ry, NORMALIZE).to(grad_ptr.dtype.element_ty)
        tl.store(grad_ptr + cols[:, None] * D + dims[None, :], out, mask=col_ok[:, None] & (dims < D)[None, :])


def _clip_launch(kernel, by_rows, image, *args, **constexprs):
    # The backward's tile rule for all four kernels: one tile shape keeps S bit-identical between them.
    block_d, block, _, num_stages = _config(False, image.shape[1], image.dtype)
    kernel[(triton.cdiv(image.shape[0], block),)](
        *args, **constexprs, BLOCK_M=block, BLOCK_N=block, BLOCK_D=block_d, BY_ROWS=by_rows,
        DOT_PRECISION=_dot_precision(image.dtype), UPCAST_DOT=_INTERPRETED,
        num_warps=_NUM_WARPS, num_stages=num_stages,
    )


def clip_forward(image, text, scale, normalize=False):
    """(loss (0-d float32), stats) for CLIP's symmetric loss over image (N, D) and text (N, D), positives on the
    diagonal; stats = (row max, row sum, column max, column sum), each (N,) float32, for clip_backward."""
    _check_embeddings(image=image, text=text)
    assert image.shape == text.shape, f"image {tuple(image.shape)} and text {tuple(text.shape)} must match"
    assert text.device == image.device, f"text is on {text.device}, image on {image.device}"
    _check_scalar("scale", scale, image.device)
    n, d = image.shape
    ri, rt = _row_scales(image, text, normalize)
    stats = [torch.empty(n, dtype=torch.float32, device=image.device) for _ in range(4)]
    diag = torch.empty(n, dtype=torch.float32, device=image.device)
    _clip_launch(_clip_stats_kernel, True, image, image, text, ri, rt, scale, stats[0], stats[1], diag, n, d)
    _clip_launch(_clip_stats_kernel, False, image, image, text, ri, rt, scale, stats[2], stats[3], diag, n, d)
    positive = diag * scale
    loss_rows = stats[0] + torch.log(stats[1]) - positive
    loss_cols = stats[2] + torch.log(stats[3]) - positive
    return (loss_rows.mean() + loss_cols.mean()) / 2, tuple(stats)


def clip_backward(image, text, scale, stats, coef, normalize=False):
    """d image, d text (input dtype) and dscale (0-d float32), given coef = dL/dS_ij's common factor
    grad / (2N)."""
    _check_scalar("coef", coef, image.device)
    n, d = image.shape
    ri, rt = _row_scales(image, text, normalize)
    d_image, d_text = torch.empty_like(image), torch.empty_like(text)
    dscale_rows = torch.empty(n, dtype=torch.float32, device=image.device)
    for by_rows, out in ((True, d_image), (False, d_text)):
        _clip_launch(_clip_bwd_kernel, by_rows, image, image, text, ri, rt, scale, coef, *stats, out, dscale_rows,
                     n, d, NORMALIZE=normalize)
    return d_image, d_text, dscale_rows.sum()


def _check_embeddings(**tensors):
    dtype = None
    for name, t in tensors.items():
        assert t.dim() == 2, f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}"
        assert t.is_contiguous(), f"{name} must be contiguous"
        assert t.dtype in (torch.float32, torch.bfloat16, torch.float16), (
            f"{name} must be float32, bfloat16 or float16, got {t.dtype}"
        )
        assert dtype is None or t.dtype == dtype, f"{name} has dtype {t.dtype}, expected {dtype}"
        assert t.shape[0] >= 1 and t.shape[1] >= 1, f"{name} must not be empty, got {tuple(t.shape)}"
        dtype = t.dtype


def _check_scalar(name, t, device):
    assert isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype == torch.float32 and t.device == device, (
        f"{name} must be a 0-d float32 tensor on {device}, got {t!r}"
    )


def _check_rows(name, t, n, dtype, device):
    assert t.shape == (n,) and t.dtype == dtype and t.is_contiguous() and t.device == device, (
        f"{name} must be a contiguous ({n},) {dtype} tensor on {device}, "
        f"got {tuple(t.shape)} {t.dtype} on {t.device}"
    )


def _check_info_nce_args(q, k, scale, pos, exclude):
    _check_embeddings(q=q, k=k)
    assert q.shape[1] == k.shape[1], f"q and k must have the same dim, got {q.shape[1]} and {k.shape[1]}"
    assert k.device == q.device, f"k is on {k.device}, q on {q.device}"
    _check_scalar("scale", scale, q.device)
    _check_rows("pos", pos, q.shape[0], torch.int64, q.device)
    _check_rows("exclude", exclude, q.shape[0], torch.int64, q.device)


def inverse_norms(x):
    """1 / max(||x_i||, 1e-12) per row in float32, as torch.nn.functional.normalize divides (O(rows))."""
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).clamp_min(1e-12).reciprocal()


def _row_scales(q, k, normalize):
    """Per-row scales the kernels multiply the logits by: inverse norms, or ones (exact) without normalisation."""
    if not normalize:
        ones = torch.ones(max(q.shape[0], k.shape[0]), dtype=torch.float32, device=q.device)
        return ones, ones
    rq = inverse_norms(q)
    return rq, (rq if k is q else inverse_norms(k))


def _launch(kernel, grid_rows, x, *args, **constexprs):
    """One program per block of rows (per block of columns for the dk kernel), with the backward's tiles unless
    the kernel is the forward's."""
    block_d, block_m, block_n, num_stages = _config(kernel is _info_nce_fwd_kernel, x.shape[1], x.dtype)
    block = block_n if kernel is _info_nce_bwd_dk_kernel else block_m
    kernel[(triton.cdiv(grid_rows, block),)](
        *args, **constexprs,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        DOT_PRECISION=_dot_precision(x.dtype), UPCAST_DOT=_INTERPRETED,
        num_warps=_NUM_WARPS, num_stages=num_stages,
    )


def info_nce_forward(q, k, scale, pos, exclude, normalize=False):
    """loss_rows (N,) float32, lse (N,) float32 for q (N, D) against k (M, D); see the module docstring.
    normalize=True L2-normalises the rows on the fly (contract v2) without a normalised copy."""
    _check_info_nce_args(q, k, scale, pos, exclude)
    (n, d), m = q.shape, k.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=q.device)
    lse = torch.empty(n, dtype=torch.float32, device=q.device)
    rq, rk = _row_scales(q, k, normalize)
    _launch(_info_nce_fwd_kernel, n, q, q, k, rq, rk, scale, pos, exclude, loss, lse, n, m, d)
    return loss, lse


def info_nce_backward(q, k, scale, pos, exclude, lse, coef, normalize=False, compute_dk=True):
    """dq (N, D), dk (M, D) in the input dtype and dscale (0-d float32), given coef = dL/dloss_i; with
    normalize=True the gradients are those of the raw rows (through the normalisation). compute_dk=False skips
    the dk kernel (keys that need no gradient) and returns dk = None."""
    _check_info_nce_args(q, k, scale, pos, exclude)
    _check_rows("lse", lse, q.shape[0], torch.float32, q.device)
    _check_scalar("coef", coef, q.device)
    (n, d), m = q.shape, k.shape[0]
    dq, dk = torch.empty_like(q), (torch.empty_like(k) if compute_dk else None)
    inv_norm = torch.empty(n, dtype=torch.float32, device=q.device)
    dscale_rows = torch.empty(n, dtype=torch.float32, device=q.device)
    rq, rk = _row_scales(q, k, normalize)
    _launch(_info_nce_bwd_dq_kernel, n, q, q, k, rq, rk, scale, coef, pos, exclude, lse, inv_norm, dq,
            dscale_rows, n, m, d, NORMALIZE=normalize)
    if compute_dk:
        _launch(_info_nce_bwd_dk_kernel, m, q, q, k, rq, rk, scale, coef, pos, exclude, lse, inv_norm, dk, n, m,
                d, NORMALIZE=normalize)
    return dq, dk, dscale_rows.sum() * coef


# ----------------------------------------------------------------------------------------------------------------
# NT-Xent's backward through the symmetry of S = scale * Z Z^T: 2 matmul-units instead of 4.
#
# dL/dz^_i = coef * scale * sum_j (G_ij + G_ji) z^_j with G = P - onehot. S_ji = S_ij, so one tile of S gives
# both P_ij = exp(S_ij - lse_i) and P_ji = exp(S_ij - lse_j), and a program that owns a block of rows forms its
# whole dz from one S tile and one matmul per column block: no atomics, no second pass, and the pair map is
# its own inverse (pos(pos(i)) = i), so the one-hot of G^T equals that of G. What it gives up is the row
# renormalisation of the 4-unit path (P_ji is built from lse_j, whose fp32 rounding the column sums of this
# tile cannot correct; see the note above the dq kernel): at fp32 and a large scale that costs accuracy, so it
# is the path for bfloat16 / float16 inputs (whose tolerance is orders of magnitude wider), and fp32 keeps the
# renormalised path unless NT_XENT_SYMMETRIC = "always".
# ----------------------------------------------------------------------------------------------------------------

NT_XENT_SYMMETRIC = "half"  # "half" (bf16/fp16 inputs) | "always" | "never": which inputs take the symmetric path


@triton.jit
def _nt_xent_bwd_sym_kernel(
    z_ptr, rz_ptr, scale_ptr, coef_ptr, lse_ptr, dz_ptr, dscale_rows_ptr,
    N2, D, HALF,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """dz_i = coef * s * sum_j (G_ij + G_ji) z^_j for one block of rows, and the per-row partial
    sum_j G_ij (z^_i . z^_j) of dscale / coef."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < N2
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    q = _load_tile(z_ptr, rows, row_ok, dims, D)
    pos = (rows + HALF) % N2
    lse_r = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))  # +inf: padding rows get P = 0
    rq = tl.load(rz_ptr + rows, mask=row_ok, other=0.0)
    scale = tl.load(scale_ptr)

    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    dscale_rows = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, N2, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N2
        k = _load_tile(z_ptr, cols, col_ok, dims, D)
        rk = tl.load(rz_ptr + cols, mask=col_ok, other=0.0)
        lse_c = tl.load(lse_ptr + cols, mask=col_ok, other=float("inf"))
        qk = _cosines(q, k, rq, rk, DOT_PRECISION, UPCAST_DOT)
        keep = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != rows[:, None])
        s = qk * scale
        p_r = tl.where(keep, tl.exp2((s - lse_r[:, None]) * _LOG2E), 0.0)
        p_c = tl.where(keep, tl.exp2((s - lse_c[None, :]) * _LOG2E), 0.0)
        onehot = tl.where(cols[None, :] == pos[:, None], 1.0, 0.0)
        dscale_rows += tl.sum((p_r - onehot) * qk, 1)
        g = (p_r + p_c - 2.0 * onehot) * rk[None, :]
        acc += _mma(g.to(k.dtype), k, DOT_PRECISION, UPCAST_DOT)

    coef = tl.load(coef_ptr)
    out = _project(acc * (coef * scale), q, rq, NORMALIZE).to(dz_ptr.dtype.element_ty)
    tl.store(dz_ptr + rows[:, None] * D + dims[None, :], out, mask=row_ok[:, None] & (dims < D)[None, :])
    tl.store(dscale_rows_ptr + rows, dscale_rows, mask=row_ok)


def _use_symmetric(dtype):
    if NT_XENT_SYMMETRIC not in ("half", "always", "never"):
        raise ValueError(f"NT_XENT_SYMMETRIC must be 'half', 'always' or 'never', got {NT_XENT_SYMMETRIC!r}")
    return NT_XENT_SYMMETRIC == "always" or (NT_XENT_SYMMETRIC == "half" and dtype != torch.float32)


def nt_xent_pairs(two_n, device):
    """pos_i = (i + N) mod 2N and exclude_i = i: a view's positive is the other view, and it skips itself."""
    rows = torch.arange(two_n, device=device)
    return (rows + two_n // 2) % two_n, rows


def _check_nt_xent_args(z, scale):
    _check_embeddings(z=z)
    assert z.shape[0] % 2 == 0, f"z must stack two views, (2N, D), got {tuple(z.shape)}"
    _check_scalar("scale", scale, z.device)


def nt_xent_forward(z, scale, normalize=False):
    """loss_rows (2N,) float32, lse (2N,) float32 for z (2N, D), both views stacked: q = k = z."""
    _check_nt_xent_args(z, scale)
    pos, exclude = nt_xent_pairs(z.shape[0], z.device)
    return info_nce_forward(z, z, scale, pos, exclude, normalize)


def nt_xent_backward(z, scale, lse, coef, normalize=False):
    """dz (2N, D) in z's dtype and dscale (0-d float32).

    bfloat16 / float16 inputs (NT_XENT_SYMMETRIC = "half"): one pass through the symmetry of S, 2 matmul-units
    (_nt_xent_bwd_sym_kernel). fp32: dq + dk of info_nce_backward with q = k = z, 4 units, with the row
    renormalisation that keeps fp32 within 2x PyTorch's error at scale 100 (the symmetric pass cannot
    renormalise row j's probabilities from a tile of row i's, and came out at 3x there under the interpreter).
    """
    _check_nt_xent_args(z, scale)
    if _use_symmetric(z.dtype):
        _check_rows("lse", lse, z.shape[0], torch.float32, z.device)
        _check_scalar("coef", coef, z.device)
        (two_n, d) = z.shape
        dz = torch.empty_like(z)
        dscale_rows = torch.empty(two_n, dtype=torch.float32, device=z.device)
        rz, _ = _row_scales(z, z, normalize)
        _launch(_nt_xent_bwd_sym_kernel, two_n, z, z, rz, scale, coef, lse, dz, dscale_rows, two_n, d, two_n // 2,
                NORMALIZE=normalize)
        return dz, dscale_rows.sum() * coef
    pos, exclude = nt_xent_pairs(z.shape[0], z.device)
    dq, dk, dscale = info_nce_backward(z, z, scale, pos, exclude, lse, coef, normalize)
    return dq.add_(dk), dscale
