"""Triton kernels for MAE's masked-patch and masked-token gathers (semantics: fastssl/ops/masking.py).

Same functions and shapes as csrc/masking.cpp:

    patchify_gather_forward(images, ids, patch_size, normalize)         (B, C, H, W) -> (B, K, p*p*C)
    patchify_gather_backward(grad, images, ids, patch_size, normalize)  -> like torch.empty_like(images)
    gather_tokens_forward(x, ids)                                       (B, L, D) -> (B, K, D)
    gather_tokens_backward(grad, ids, num_tokens)                       -> (B, num_tokens, D)
    unshuffle_with_mask_token_forward(visible, mask_token, ids_restore) -> (B, L, D)
    unshuffle_with_mask_token_backward(grad, ids_restore, num_visible)  -> ((B, K, D), (D,))

Inputs (images, x, visible) may have any strides; ids are contiguous int64 in range (checked by the caller);
grads are contiguous. All pointer arithmetic is int64.

Structure: the forwards are one program per output patch or row (per column block of a row), a single read of
exactly the bytes they write. The backwards must sum where indices repeat (gather_tokens' index_add semantics,
and any ids a caller passes to patchify_gather), so they add with atomics into a zeroed float32 buffer (float64
for float64 inputs) that is then cast to the input dtype; for the usual unique ids every address is hit once, so
the atomics never contend. The mask token's gradient, a sum over all masked positions, is reduced in registers by
one program per (image, column block) that walks the L positions, so no atomic on it is contended either.
"""

import torch
import triton
import triton.language as tl

_NORM_EPS = tl.constexpr(1e-6)
# One program holds a whole patch (p*p*C values, padded to a power of two) in registers for the normalisation:
# 16 x 16 x 3 = 768 -> 1024 per program. 32768 is 64 x 64 x 8, far past any ViT patch.
_MAX_PATCH_NUMEL = 32768
_MAX_BLOCK_D = 1024  # token rows wider than this take several programs (a second grid axis)
_BLOCK_L = 32  # rows per step of the mask-token gradient loop
_NUM_WARPS = 4


def max_dim(dtype):
    """The largest patch (p * p * C values) the patchify kernels hold in one program; the dispatcher routes
    larger patches to another backend. The token kernels tile D and take any width."""
    return _MAX_PATCH_NUMEL


def _accumulator_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def _patch_offsets(ids_ptr, row, K, grid_w, s_b, s_c, s_h, s_w, numel, P: tl.constexpr, C: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Offsets into a (B, C, H, W) tensor of strides s_* of the values of patch ids[row] of image row // K, in
    MAE's (i, j, c) order, and the mask of the valid lanes."""
    index = tl.load(ids_ptr + row)
    hi, wi = index // grid_w, index % grid_w
    e = tl.arange(0, BLOCK).to(tl.int64)
    i, j, c = e // (P * C), (e // C) % P, e % C
    offsets = (row // K) * s_b + c * s_c + (hi * P + i) * s_h + (wi * P + j) * s_w
    return offsets, e < numel


@triton.jit
def _normalized(x, valid, numel):
    """(x - mean) / sqrt(unbiased var + eps) over the valid lanes, and 1 / sqrt(var + eps)."""
    mean = tl.sum(x, 0) / numel
    centered = tl.where(valid, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 0) / (numel - 1) + _NORM_EPS)
    return centered * rstd, rstd


@triton.jit
def _patchify_gather_fwd_kernel(
    images_ptr, ids_ptr, out_ptr, K, grid_w, s_b, s_c, s_h, s_w, numel,
    P: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * K + k
    offsets, valid = _patch_offsets(ids_ptr, row, K, grid_w, s_b, s_c, s_h, s_w, numel, P, C, BLOCK)
    x = tl.load(images_ptr + offsets, mask=valid, other=0.0)
    if NORMALIZE:
        y, _ = _normalized(x.to(ACC), valid, numel)
        x = y.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * numel + tl.arange(0, BLOCK), x, mask=valid)


@triton.jit
def _patchify_gather_bwd_kernel(
    grad_ptr, images_ptr, ids_ptr, dimages_ptr, K, grid_w, s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w, numel,
    P: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK)
    g = tl.load(grad_ptr + row * numel + e, mask=e < numel, other=0.0).to(ACC)
    if NORMALIZE:
        # y = (x - mean) * rstd, unbiased var: dx = rstd * (dy - mean(dy) - y * sum(dy * y) / (n - 1)).
        offsets, valid = _patch_offsets(ids_ptr, row, K, grid_w, s_b, s_c, s_h, s_w, numel, P, C, BLOCK)
        x = tl.load(images_ptr + offsets, mask=valid, other=0.0).to(ACC)
        y, rstd = _normalized(x, valid, numel)
        g = rstd * (g - tl.sum(g, 0) / numel - y * (tl.sum(g * y, 0) / (numel - 1)))
    offsets, valid = _patch_offsets(ids_ptr, row, K, grid_w, d_b, d_c, d_h, d_w, numel, P, C, BLOCK)
    tl.atomic_add(dimages_ptr + offsets, g, mask=valid, sem="relaxed")


@triton.jit
def _gather_rows_fwd_kernel(x_ptr, ids_ptr, out_ptr, K, D, s_b, s_l, s_d, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * K + k
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    valid = cols < D
    source = tl.load(ids_ptr + row)
    values = tl.load(x_ptr + (row // K) * s_b + source * s_l + cols * s_d, mask=valid)
    tl.store(out_ptr + row * D + cols, values, mask=valid)


@triton.jit
def _gather_rows_bwd_kernel(grad_ptr, ids_ptr, dx_ptr, K, L, D, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    valid = cols < D
    target = tl.load(ids_ptr + row)
    g = tl.load(grad_ptr + row * D + cols, mask=valid, other=0.0).to(dx_ptr.dtype.element_ty)
    tl.atomic_add(dx_ptr + ((row // K) * L + target) * D + cols, g, mask=valid, sem="relaxed")


@triton.jit
def _unshuffle_fwd_kernel(visible_ptr, token_ptr, ids_ptr, out_ptr, L, K, D, s_b, s_k, s_d, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * L + l
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    valid = cols < D
    source = tl.load(ids_ptr + row) + tl.zeros_like(cols)  # a vector, so that the load masks below are vectors
    is_visible = source < K
    from_visible = tl.load(visible_ptr + (row // L) * s_b + source * s_k + cols * s_d, mask=valid & is_visible,
                           other=0.0)
    from_token = tl.load(token_ptr + cols, mask=valid & (source >= K), other=0.0)
    tl.store(out_ptr + row * D + cols, tl.where(is_visible, from_visible, from_token), mask=valid)


@triton.jit
def _unshuffle_bwd_kernel(grad_ptr, ids_ptr, dvisible_ptr, token_partial_ptr, L, K, D,
                          BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    token = tl.zeros((BLOCK_D,), dtype=dvisible_ptr.dtype.element_ty)
    for start in range(0, L, BLOCK_L):
        positions = start + tl.arange(0, BLOCK_L).to(tl.int64)
        row_ok = positions < L
        source = tl.load(ids_ptr + b * L + positions, mask=row_ok, other=0)
        tile_ok = row_ok[:, None] & col_ok[None, :]
        g = tl.load(grad_ptr + (b * L + positions)[:, None] * D + cols[None, :], mask=tile_ok, other=0.0)
        g = g.to(dvisible_ptr.dtype.element_ty)
        is_visible = (source < K)[:, None]
        tl.atomic_add(dvisible_ptr + (b * K + source)[:, None] * D + cols[None, :], g, mask=tile_ok & is_visible,
                      sem="relaxed")
        token += tl.sum(tl.where(is_visible, 0.0, g), 0)
    tl.store(token_partial_ptr + b * D + cols, token, mask=col_ok)


# ----------------------------------------------------------------------------------------------------------------
# Launchers.
# ----------------------------------------------------------------------------------------------------------------


def _tl_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _patch_geometry(images, ids, patch_size):
    assert images.dim() == 4, f"images must be (B, C, H, W), got {tuple(images.shape)}"
    batch, channels, height, width = images.shape
    assert height % patch_size == 0 and width % patch_size == 0, "H and W must be multiples of patch_size"
    assert ids.dtype == torch.int64 and ids.is_contiguous() and ids.dim() == 2 and ids.shape[0] == batch, (
        f"ids must be a contiguous (B, K) int64 tensor, got {tuple(ids.shape)} {ids.dtype}"
    )
    numel = patch_size * patch_size * channels
    assert numel <= _MAX_PATCH_NUMEL, f"p*p*C = {numel} > {_MAX_PATCH_NUMEL}: use another backend"
    return batch, channels, width // patch_size, ids.shape[1], numel


def _block_d(dim):
    return min(_MAX_BLOCK_D, triton.next_power_of_2(max(dim, 1)))


def patchify_gather_forward(images, ids, patch_size, normalize):
    batch, channels, grid_w, num_kept, numel = _patch_geometry(images, ids, patch_size)
    out = torch.empty(batch, num_kept, numel, dtype=images.dtype, device=images.device)
    if out.numel():
        _patchify_gather_fwd_kernel[(batch * num_kept,)](
            images, ids, out, num_kept, grid_w, *images.stride(), numel,
            P=patch_size, C=channels, BLOCK=triton.next_power_of_2(numel), NORMALIZE=normalize,
            ACC=_tl_dtype(images.dtype), num_warps=_NUM_WARPS,
        )
    return out


def patchify_gather_backward(grad, images, ids, patch_size, normalize):
    batch, channels, grid_w, num_kept, numel = _patch_geometry(images, ids, patch_size)
    assert grad.shape == (batch, num_kept, numel) and grad.is_contiguous(), "grad must be contiguous (B, K, n)"
    acc_dtype = _accumulator_dtype(images.dtype)
    grad_images = torch.zeros_like(images, dtype=acc_dtype)  # empty_like's layout: channels_last stays so
    if grad.numel():
        _patchify_gather_bwd_kernel[(batch * num_kept,)](
            grad, images, ids, grad_images, num_kept, grid_w, *images.stride(), *grad_images.stride(), numel,
            P=patch_size, C=channels, BLOCK=triton.next_power_of_2(numel), NORMALIZE=normalize,
            ACC=_tl_dtype(images.dtype), num_warps=_NUM_WARPS,
        )
    return grad_images.to(images.dtype)


def gather_tokens_forward(x, ids):
    assert x.dim() == 3 and ids.dim() == 2 and ids.shape[0] == x.shape[0] and ids.dtype == torch.int64
    batch, _, dim = x.shape
    num_kept = ids.shape[1]
    out = torch.empty(batch, num_kept, dim, dtype=x.dtype, device=x.device)
    if out.numel():
        block_d = _block_d(dim)
        _gather_rows_fwd_kernel[(batch * num_kept, triton.cdiv(dim, block_d))](
            x, ids, out, num_kept, dim, *x.stride(), BLOCK_D=block_d, num_warps=_NUM_WARPS,
        )
    return out


def gather_tokens_backward(grad, ids, num_tokens):
    assert grad.dim() == 3 and grad.is_contiguous() and ids.shape == grad.shape[:2] and ids.dtype == torch.int64
    batch, num_kept, dim = grad.shape
    grad_x = torch.zeros(batch, num_tokens, dim, dtype=_accumulator_dtype(grad.dtype), device=grad.device)
    if grad.numel():
        block_d = _block_d(dim)
        _gather_rows_bwd_kernel[(batch * num_kept, triton.cdiv(dim, block_d))](
            grad, ids, grad_x, num_kept, num_tokens, dim, BLOCK_D=block_d, num_warps=_NUM_WARPS,
        )
    return grad_x.to(grad.dtype)


def unshuffle_with_mask_token_forward(visible, mask_token, ids_restore):
    assert visible.dim() == 3 and mask_token.shape == visible.shape[2:] and mask_token.is_contiguous()
    assert ids_restore.dim() == 2 and ids_restore.shape[0] == visible.shape[0] and ids_restore.dtype == torch.int64
    batch, num_visible, dim = visible.shape
    length = ids_restore.shape[1]
    out = torch.empty(batch, length, dim, dtype=visible.dtype, device=visible.device)
    if out.numel():
        block_d = _block_d(dim)
        _unshuffle_fwd_kernel[(batch * length, triton.cdiv(dim, block_d))](
            visible, mask_token, ids_restore, out, length, num_visible, dim, *visible.stride(),
            BLOCK_D=block_d, num_warps=_NUM_WARPS,
        )
    return out


def unshuffle_with_mask_token_backward(grad, ids_restore, num_visible):
    assert grad.dim() == 3 and grad.is_contiguous() and ids_restore.shape == grad.shape[:2]
    batch, length, dim = grad.shape
    acc_dtype = _accumulator_dtype(grad.dtype)
    grad_visible = torch.zeros(batch, num_visible, dim, dtype=acc_dtype, device=grad.device)
    token_partial = torch.zeros(batch, dim, dtype=acc_dtype, device=grad.device)
    if grad.numel():
        block_d = min(128, _block_d(dim))  # a (BLOCK_L, BLOCK_D) tile per step of the loop over L
        _unshuffle_bwd_kernel[(batch, triton.cdiv(dim, block_d))](
            grad, ids_restore, grad_visible, token_partial, length, num_visible, dim,
            BLOCK_L=_BLOCK_L, BLOCK_D=block_d, num_warps=_NUM_WARPS,
        )
    return grad_visible.to(grad.dtype), token_partial.sum(0).to(grad.dtype)
