"""Masking for masked image and language modelling: MAE's random masking and its patch and token gathers, BEiT's
block masks, BERT's 80/10/10 token corruption.

MAE (He et al., 2021) patchifies the whole image into a permuted (B, L, p*p*C) copy, embeds all L patches, then
gathers the K = L * (1 - mask_ratio) visible ones with an expanded index, and builds the decoder input by
concatenating mask tokens and gathering again. The fused ops here touch only what is needed:

    random_masking             one argsort of the noise and an inverse permutation by scatter (MAE sorts twice)
    patchify_gather            reads only the K visible patches straight from the (B, C, H, W) image, in MAE's
                               patchify order, optionally normalised per patch (MAE's norm_pix_loss target)
    gather_tokens              x[b, ids[b, k]] for (B, L, D) tokens, index_add in the backward
    unshuffle_with_mask_token  MAE's decoder input cat([visible, mask_tokens]) gathered by ids_restore, in one pass
    block_masking              BEiT's (Bao et al., 2021) block-wise mask with an exact masked count
    mask_tokens                BERT's (Devlin et al., 2019) 80/10/10 rule

The three gathers have a reference, a C++ kernel (csrc/masking.cpp) and a Triton kernel (kernels/masking.py),
registered as torch.library custom ops; the mask generators are single plain-PyTorch implementations (their cost
is O(B * L) indices, nothing next to the pixels).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from fastssl import _dispatch

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
NORM_PIX_EPS = 1e-6  # MAE: (target - mean) / (var + 1.e-6) ** .5

_dispatch.register("patchify_gather", (
    _dispatch.triton_backend("masking", DTYPES),
    _dispatch.cpp_backend("patchify_gather_forward", DTYPES),
    _dispatch.reference_backend(),
))
_dispatch.register("gather_tokens", (
    _dispatch.triton_backend("masking", DTYPES),
    _dispatch.cpp_backend("gather_tokens_forward", DTYPES),
    _dispatch.reference_backend(),
))
_dispatch.register("unshuffle_with_mask_token", (
    _dispatch.triton_backend("masking", DTYPES),
    _dispatch.cpp_backend("unshuffle_with_mask_token_forward", DTYPES),
    _dispatch.reference_backend(),
))


# ----------------------------------------------------------------------------------------------------------------
# References: the specification and the test oracle.
# ----------------------------------------------------------------------------------------------------------------


def random_masking_reference(noise: torch.Tensor, mask_ratio: float):
    """MAE's ``random_masking`` (models_mae.py) on given noise (B, L): two full argsorts.

    Returns ids_keep (B, K) int64 (kept patches in ascending noise), mask (B, L) float32 (1 = masked) and
    ids_restore (B, L) int64 (the position of each patch in the shuffled order).
    """
    batch, length = noise.shape
    num_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    mask = torch.ones(batch, length, device=noise.device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, mask, ids_restore


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """MAE's ``patchify``: (B, C, H, W) -> (B, L, p*p*C), element (i, j, c) of patch (hi, wi) at
    [hi * w + wi, i * p * C + j * C + c]. Reads and writes the whole image once (the einsum makes a permuted copy)."""
    batch, channels, height, width = images.shape
    p = patch_size
    h, w = height // p, width // p
    x = images.reshape(batch, channels, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(batch, h * w, p * p * channels)


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """MAE's norm_pix_loss target: per patch (x - mean) / sqrt(var + 1e-6), var unbiased (torch.var)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + NORM_PIX_EPS) ** 0.5


def patchify_gather_reference(images: torch.Tensor, patch_size: int, ids_keep: torch.Tensor,
                              normalize_pixels: bool = False) -> torch.Tensor:
    """(B, C, H, W) images, (B, K) ids -> (B, K, p*p*C) visible patches.

    Memory traffic: patchify reads and writes all B*C*H*W pixels, the gather reads an expanded int64 index of
    B*K*p*p*C entries (8 bytes per pixel gathered) and the K patches, and writes them: ~2 + 2.5 * K / L image
    passes in float32, against K / L read + K / L written for the fused kernels.
    """
    patches = patchify(images, patch_size)  # (B, L, n)
    index = ids_keep[:, :, None].expand(-1, -1, patches.shape[-1])  # (B, K, n)
    visible = torch.gather(patches, dim=1, index=index)  # (B, K, n)
    return normalize_patches(visible) if normalize_pixels else visible


def gather_tokens_reference(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, D), (B, K) -> (B, K, D), MAE's ``torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, D))``.
    Reads the (B, K, D) int64 index and K rows, writes K rows."""
    return torch.gather(x, dim=1, index=ids[:, :, None].expand(-1, -1, x.shape[-1]))


def unshuffle_with_mask_token_reference(visible: torch.Tensor, mask_token: torch.Tensor,
                                        ids_restore: torch.Tensor) -> torch.Tensor:
    """MAE's decoder input: (B, K, D) visible tokens, (D,) mask token, (B, L) ids_restore -> (B, L, D).

    Writes the (B, L, D) concatenation, then reads it back through a (B, L, D) int64 index and writes the
    result: ~3 passes over B*L*D values plus the index, against one write for the fused kernels.
    """
    batch, num_visible, dim = visible.shape
    length = ids_restore.shape[1]
    mask_tokens = mask_token.reshape(1, 1, dim).expand(batch, length - num_visible, dim)
    x = torch.cat([visible, mask_tokens], dim=1)  # (B, L, D)
    return torch.gather(x, dim=1, index=ids_restore[:, :, None].expand(-1, -1, dim))


# ----------------------------------------------------------------------------------------------------------------
# The fused gathers as torch.library custom ops (torch.compile and opcheck see through them).
# ----------------------------------------------------------------------------------------------------------------


def _kernels(backend: str):
    if backend == "cpp":
        return _dispatch.extension()[0]
    if backend == "triton":
        return _dispatch.triton_module("masking")[0]
    raise ValueError(f"unknown fused backend {backend!r}")


@torch.library.custom_op("fastssl::patchify_gather", mutates_args=())
def _patchify_gather_op(images: torch.Tensor, ids_keep: torch.Tensor, patch_size: int, normalize: bool,
                        backend: str) -> torch.Tensor:
    return _kernels(backend).patchify_gather_forward(images, ids_keep, patch_size, normalize)


@_patchify_gather_op.register_fake
def _(images, ids_keep, patch_size, normalize, backend):
    return images.new_empty((images.shape[0], ids_keep.shape[1], patch_size * patch_size * images.shape[1]))


@torch.library.custom_op("fastssl::patchify_gather_backward", mutates_args=())
def _patchify_gather_backward_op(grad: torch.Tensor, images: torch.Tensor, ids_keep: torch.Tensor, patch_size: int,
                                 normalize: bool, backend: str) -> torch.Tensor:
    """The image gradient, laid out like ``torch.empty_like(images)`` (channels_last stays channels_last)."""
    return _kernels(backend).patchify_gather_backward(grad.contiguous(), images, ids_keep, patch_size, normalize)


@_patchify_gather_backward_op.register_fake
def _(grad, images, ids_keep, patch_size, normalize, backend):
    return torch.empty_like(images)


def _patchify_gather_setup(ctx, inputs, output):
    images, ids_keep, patch_size, normalize, backend = inputs
    ctx.save_for_backward(images, ids_keep)
    ctx.patch_size, ctx.normalize, ctx.backend = patch_size, normalize, backend


def _patchify_gather_autograd(ctx, grad):
    images, ids_keep = ctx.saved_tensors
    grad_images = _patchify_gather_backward_op(grad, images, ids_keep, ctx.patch_size, ctx.normalize, ctx.backend)
    return grad_images, None, None, None, None


_patchify_gather_op.register_autograd(_patchify_gather_autograd, setup_context=_patchify_gather_setup)


@torch.library.custom_op("fastssl::gather_tokens", mutates_args=())
def _gather_tokens_op(x: torch.Tensor, ids: torch.Tensor, backend: str) -> torch.Tensor:
    return _kernels(backend).gather_tokens_forward(x, ids)


@_gather_tokens_op.register_fake
def _(x, ids, backend):
    return x.new_empty((x.shape[0], ids.shape[1], x.shape[2]))


@torch.library.custom_op("fastssl::gather_tokens_backward", mutates_args=())
def _gather_tokens_backward_op(grad: torch.Tensor, ids: torch.Tensor, num_tokens: int, backend: str) -> torch.Tensor:
    return _kernels(backend).gather_tokens_backward(grad.contiguous(), ids, num_tokens)


@_gather_tokens_backward_op.register_fake
def _(grad, ids, num_tokens, backend):
    return grad.new_empty((grad.shape[0], num_tokens, grad.shape[2]))


def _gather_tokens_setup(ctx, inputs, output):
    x, ids, backend = inputs
    ctx.save_for_backward(ids)
    ctx.num_tokens, ctx.backend = x.shape[1], backend


def _gather_tokens_autograd(ctx, grad):
    (ids,) = ctx.saved_tensors
    return _gather_tokens_backward_op(grad, ids, ctx.num_tokens, ctx.backend), None, None


_gather_tokens_op.register_autograd(_gather_tokens_autograd, setup_context=_gather_tokens_setup)


@torch.library.custom_op("fastssl::unshuffle_with_mask_token", mutates_args=())
def _unshuffle_op(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                  backend: str) -> torch.Tensor:
    return _kernels(backend).unshuffle_with_mask_token_forward(visible, mask_token, ids_restore)


@_unshuffle_op.register_fake
def _(visible, mask_token, ids_restore, backend):
    return visible.new_empty((visible.shape[0], ids_restore.shape[1], visible.shape[2]))


@torch.library.custom_op("fastssl::unshuffle_with_mask_token_backward", mutates_args=())
def _unshuffle_backward_op(grad: torch.Tensor, ids_restore: torch.Tensor, num_visible: int,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels(backend).unshuffle_with_mask_token_backward(grad.contiguous(), ids_restore, num_visible)


@_unshuffle_backward_op.register_fake
def _(grad, ids_restore, num_visible, backend):
    return grad.new_empty((grad.shape[0], num_visible, grad.shape[2])), grad.new_empty((grad.shape[2],))


def _unshuffle_setup(ctx, inputs, output):
    visible, mask_token, ids_restore, backend = inputs
    ctx.save_for_backward(ids_restore)
    ctx.num_visible, ctx.backend = visible.shape[1], backend


def _unshuffle_autograd(ctx, grad):
    (ids_restore,) = ctx.saved_tensors
    grad_visible, grad_token = _unshuffle_backward_op(grad, ids_restore, ctx.num_visible, ctx.backend)
    return grad_visible, grad_token, None, None


_unshuffle_op.register_autograd(_unshuffle_autograd, setup_context=_unshuffle_setup)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks: every error names the argument.
# ----------------------------------------------------------------------------------------------------------------


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_mask_ratio(mask_ratio) -> float:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}")
    return float(mask_ratio)


def _check_floating(name: str, t, dims: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point (float32, bfloat16, float16 or float64), got {t.dtype}")


def _check_index(name: str, ids, batch: int, upper: int, device: torch.device, upper_name: str,
                 check_range: bool = True) -> torch.Tensor:
    """A (batch, K) integer tensor with values in [0, upper), returned as contiguous int64.

    The range check reads the indices' min and max back to the host: on a GPU that waits for every queued kernel.
    With ``check_range=False`` (indices the caller built, e.g. by ``random_masking``) a CUDA tensor is checked by
    an asynchronous device-side assertion instead (no wait; a bad index stops the process with a device-side
    assert rather than reading out of bounds), and a CPU tensor is still checked on the host (no queue to wait
    for)."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise ValueError(f"{name} must be an integer tensor (int64), got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, K), got shape {tuple(ids.shape)}")
    if ids.shape[0] != batch:
        raise ValueError(f"{name} has batch size {ids.shape[0]} but the data has {batch}")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but the data is on {device}")
    ids = ids.to(torch.int64).contiguous()
    if ids.numel() and not torch.compiler.is_compiling() and not check_range and ids.device.type == "cuda":
        torch._assert_async(((ids >= 0) & (ids < upper)).all(), f"{name} values must lie in [0, {upper})")
    elif ids.numel() and not torch.compiler.is_compiling():
        lo, hi = torch.stack(torch.aminmax(ids)).tolist()  # one host sync, not two
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} values must lie in [0, {upper}) ({upper_name}), got [{lo}, {hi}]")
    return ids


def _check_images(images, patch_size) -> tuple[int, int]:
    """-> (L, n): the number of patches and the values per patch."""
    _check_floating("images", images, 4, "(B, C, H, W)")
    patch_size = _check_count("patch_size", patch_size)
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"images: H = {height} and W = {width} must be multiples of patch_size = {patch_size}")
    if batch == 0 or channels == 0 or height == 0 or width == 0:
        raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}")
    return (height // patch_size) * (width // patch_size), patch_size * patch_size * channels


# ----------------------------------------------------------------------------------------------------------------
# Mask generators (plain PyTorch: O(B * L) indices).
# ----------------------------------------------------------------------------------------------------------------


def _masking_from_order(ids_shuffle: torch.Tensor, num_keep: int):
    """(ids_keep, mask, ids_restore) from a per-row order of the patches, kept ones first."""
    batch, length = ids_shuffle.shape
    positions = torch.arange(length, device=ids_shuffle.device).expand(batch, length)
    # The inverse permutation by one scatter (MAE sorts a second time): ids_restore[b, ids_shuffle[b, i]] = i.
    ids_restore = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, positions)
    ids_keep = ids_shuffle[:, :num_keep].contiguous()
    mask = (ids_restore >= num_keep).to(torch.float32)
    return ids_keep, mask, ids_restore


def random_masking(batch_size: int, num_patches: int, mask_ratio: float,
                   generator: Optional[torch.Generator] = None, device=None,
                   noise: Optional[torch.Tensor] = None):
    """MAE's per-sample random masking (He et al., 2021), with one sort instead of two.

    Keeps K = int(num_patches * (1 - mask_ratio)) patches per sample, a uniformly random subset: the K patches of
    smallest uniform noise. ``ids_restore`` is the inverse of the noise order, built by a scatter rather than a
    second argsort. Given the same ``noise`` the outputs equal MAE's exactly (ids_keep in ascending noise).

    Args:
        batch_size: B. num_patches: L. mask_ratio: fraction masked, in [0, 1).
        generator: torch.Generator for the noise (its device is the default device).
        device: where to put the outputs (default: the generator's device, else CPU).
        noise: optional (B, L) float noise to use instead of drawing it (tests, reproducing MAE); the outputs are
            then on its device and generator and device are not used.

    Returns:
        ids_keep (B, K) int64, mask (B, L) float32 with 1 = masked, ids_restore (B, L) int64. Example::

            >>> import torch, fastssl
            >>> images = torch.randn(8, 3, 224, 224)
            >>> ids_keep, mask, ids_restore = fastssl.ops.random_masking(8, 196, 0.75)
            >>> visible = fastssl.ops.patchify_gather(images, 16, ids_keep)
            >>> visible.shape, mask.sum(1).tolist() == [147] * 8  # 196 - 49 patches masked in every row
            (torch.Size([8, 49, 768]), True)
    """
    batch = _check_count("batch_size", batch_size)
    length = _check_count("num_patches", num_patches)
    mask_ratio = _check_mask_ratio(mask_ratio)
    num_keep = int(length * (1 - mask_ratio))
    if noise is None:
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.rand(batch, length, generator=generator, device=device)
    else:
        _check_floating("noise", noise, 2, "(B, L)")
        if tuple(noise.shape) != (batch, length):
            raise ValueError(f"noise must have shape ({batch}, {length}) = (batch_size, num_patches), "
                             f"got {tuple(noise.shape)}")
    return _masking_from_order(torch.argsort(noise, dim=1), num_keep)


def block_masking(batch_size: int, grid_h: int, grid_w: int, mask_ratio: float, min_block: int = 16,
                  aspect: Sequence[float] = (0.3, 1 / 0.3), generator: Optional[torch.Generator] = None):
    """BEiT's block-wise masking (Bao et al., 2021, "BEiT: BERT Pre-Training of Image Transformers", Algorithm 1;
    the MaskingGenerator of microsoft/unilm), as used by BEiT and SimMIM-style pretraining.

    Per sample, with target M = int(mask_ratio * L) masked patches of the grid_h x grid_w grid (L = grid_h *
    grid_w), repeat while fewer than M are masked:
      * up to 10 attempts: area s ~ U(min_block, remaining) with remaining = M - masked, aspect r log-uniform in
        ``aspect``, block h = round(sqrt(s * r)), w = round(sqrt(s / r)); if h < grid_h and w < grid_w, place it at
        a uniform random top-left corner and mask its cells when the number of newly masked cells is in
        (0, remaining] (cells already masked do not count); stop the attempts at the first success;
      * if all 10 attempts fail, stop.
    BEiT returns the mask as it stands then, so its count can fall short of M. Here the shortfall is topped up with
    uniformly random unmasked cells, so every sample has exactly M masked patches (the blocks never overshoot),
    and the result is the same triple as ``random_masking``: ids_keep lists the unmasked patches in random order.

    Args:
        batch_size: B. grid_h, grid_w: the patch grid (14 x 14 for a 224 image with 16-pixel patches).
        mask_ratio: in [0, 1). min_block: BEiT's min_num_patches (16). aspect: (min, max) block aspect ratio.
        generator: CPU torch.Generator for reproducible masks.

    Returns:
        ids_keep (B, L - M) int64, mask (B, L) float32 with 1 = masked, ids_restore (B, L) int64, on the CPU.
        Example::

            >>> import torch, fastssl
            >>> generator = torch.Generator().manual_seed(0)
            >>> ids_keep, mask, ids_restore = fastssl.ops.block_masking(4, 14, 14, 0.4, generator=generator)
            >>> ids_keep.shape, mask.sum(1).tolist()  # int(0.4 * 196) = 78 masked patches in every row
            (torch.Size([4, 118]), [78.0, 78.0, 78.0, 78.0])
    """
    batch = _check_count("batch_size", batch_size)
    height, width = _check_count("grid_h", grid_h), _check_count("grid_w", grid_w)
    mask_ratio = _check_mask_ratio(mask_ratio)
    min_block = _check_count("min_block", min_block)
    if (len(aspect) != 2 or not all(isinstance(a, (int, float)) and math.isfinite(a) and a > 0 for a in aspect)
            or aspect[0] > aspect[1]):
        raise ValueError(f"aspect must be (min, max) with 0 < min <= max, got {aspect!r}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator (the block loop runs on the CPU), got {generator.device}")
    length = height * width
    target = int(mask_ratio * length)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    blocks = np.zeros((batch, height, width), dtype=bool)
    for b in range(batch):
        uniforms = _UniformStream(generator)
        grid, masked = blocks[b], 0
        while masked < target:
            delta = _place_block(grid, target - masked, min_block, log_aspect, uniforms)
            if delta == 0:
                break
            masked += delta
    # Order the cells: unmasked ones by uniform noise first, the block-masked ones after them. The first L - M are
    # kept, so the unmasked cells that fall past L - M are the uniformly random top-up.
    noise = torch.rand(batch, length, generator=generator)
    key = noise + 2.0 * torch.from_numpy(blocks.reshape(batch, length))
    return _masking_from_order(torch.argsort(key, dim=1), length - target)


class _UniformStream:
    """U(0, 1) draws from a torch.Generator, fetched 256 at a time (one torch call per block loop, not per draw)."""

    def __init__(self, generator: Optional[torch.Generator]):
        self.generator, self.values, self.next = generator, [], 0

    def __call__(self) -> float:
        if self.next == len(self.values):
            self.values, self.next = torch.rand(256, generator=self.generator, dtype=torch.float64).tolist(), 0
        self.next += 1
        return self.values[self.next - 1]


def _place_block(grid: np.ndarray, remaining: int, min_block: int, log_aspect, uniform) -> int:
    """BEiT's MaskingGenerator._mask: up to 10 attempts to mask one rectangle; returns the cells newly masked."""
    height, width = grid.shape
    for _ in range(10):
        area = min_block + (remaining - min_block) * uniform()  # random.uniform(min_num_patches, max_mask_patches)
        ratio = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * uniform())
        h = int(round(math.sqrt(area * ratio)))
        w = int(round(math.sqrt(area / ratio)))
        if w < width and h < height:
            top = min(int(uniform() * (height - h + 1)), height - h)  # random.randint(0, height - h)
            left = min(int(uniform() * (width - w + 1)), width - w)
            cells = grid[top:top + h, left:left + w]
            new = h * w - int(cells.sum())
            if 0 < new <= remaining:
                cells[...] = True
                return new
    return 0


def mask_tokens(input_ids: torch.Tensor, vocab_size: int, mask_token_id: int, mask_prob: float = 0.15,
                special_ids: Sequence[int] = (), generator: Optional[torch.Generator] = None):
    """BERT's masked-language-model corruption (Devlin et al., 2019), as Hugging Face's
    DataCollatorForLanguageModeling applies it.

    Each position is selected independently with probability ``mask_prob`` (never one whose id is in
    ``special_ids``). Of the selected positions, 80% become ``mask_token_id``, 10% a uniformly random token in
    [0, vocab_size) and 10% keep their token.

    Args:
        input_ids: integer tensor of any shape, e.g. (B, T). vocab_size: V > 0. mask_token_id: the [MASK] id.
        mask_prob: selection probability in [0, 1]. special_ids: ids never selected ([CLS], [SEP], padding).
        generator: a torch.Generator on input_ids' device.

    Returns:
        masked_ids (same shape and dtype as input_ids) and labels (int64): the original id at selected
        positions, -100 (cross_entropy's ignore_index) elsewhere. Example::

            >>> import torch, fastssl
            >>> ids = torch.randint(0, 65, (4, 128))
            >>> masked, labels = fastssl.ops.mask_tokens(ids, 65, mask_token_id=65,
            ...                                          generator=torch.Generator().manual_seed(0))
            >>> selected = labels != -100
            >>> bool((labels[selected] == ids[selected]).all()), bool((masked[~selected] == ids[~selected]).all())
            (True, True)
    """
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    vocab_size = _check_count("vocab_size", vocab_size)
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, (int, np.integer)):
        raise ValueError(f"mask_token_id must be an integer, got {mask_token_id!r}")
    if isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float)) or not 0 <= mask_prob <= 1:
        raise ValueError(f"mask_prob must be a number in [0, 1], got {mask_prob!r}")
    device = input_ids.device
    selectable = torch.ones_like(input_ids, dtype=torch.bool)
    if len(special_ids):
        selectable = ~torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=device))
    selected = (torch.rand(input_ids.shape, generator=generator, device=device) < mask_prob) & selectable
    labels = torch.where(selected, input_ids.to(torch.int64), -100)
    # One uniform per position splits the selected ones: [0, 0.8) mask, [0.8, 0.9) random token, [0.9, 1) keep.
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device,
                                  dtype=input_ids.dtype)
    masked_ids = torch.where(selected & (action < 0.8), torch.as_tensor(mask_token_id, dtype=input_ids.dtype,
                                                                          device=device), input_ids)
    masked_ids = torch.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, masked_ids)
    return masked_ids, labels


# ----------------------------------------------------------------------------------------------------------------
# Public gathers.
# ----------------------------------------------------------------------------------------------------------------


def patchify_gather(images: torch.Tensor, patch_size: int, ids_keep: torch.Tensor, normalize_pixels: bool = False,
                    backend: str = "auto", check_range: bool = True) -> torch.Tensor:
    """The visible patches of MAE, read straight from the images: ``patchify(images)[b, ids_keep[b, k]]``.

    Args:
        images: (B, C, H, W) float32, bfloat16, float16 or float64, any strides (channels_last is the fast layout
            for the C++ kernel: a patch row is then one contiguous copy).
        patch_size: p; H and W must be multiples of it. Patch (hi, wi) has index hi * (W / p) + wi.
        ids_keep: (B, K) integer indices in [0, L), L = (H / p) * (W / p), e.g. from ``random_masking``. Any
            index set works (e.g. the masked patches, to gather MAE's loss targets); repeats are allowed.
        normalize_pixels: per patch (x - mean) / sqrt(var + 1e-6) with the unbiased variance, MAE's
            norm_pix_loss target.
        backend: "auto", "reference", "cpp" or "triton".
        check_range: check on the host that every index lies in [0, L) (an error naming the argument). On a GPU
            that is a host sync per call; pass False for indices built in range (``random_masking``'s) to check
            them with an asynchronous device-side assertion instead.

    Returns:
        (B, K, p*p*C) in the images' dtype, element (i, j, c) of a patch at i*p*C + j*C + c (MAE's order);
        differentiable with respect to images. Example::

            >>> import torch, fastssl
            >>> ids_keep, mask, ids_restore = fastssl.ops.random_masking(8, 196, 0.75)
            >>> fastssl.ops.patchify_gather(torch.randn(8, 3, 224, 224), 16, ids_keep).shape
            torch.Size([8, 49, 768])
    """
    length, numel = _check_images(images, patch_size)
    ids_keep = _check_index("ids_keep", ids_keep, images.shape[0], length, images.device,
                            "L = (H / patch_size) * (W / patch_size)", check_range)
    if normalize_pixels and numel < 2:
        raise ValueError(f"normalize_pixels needs at least 2 values per patch (patch_size^2 * C), got {numel}")
    chosen = _dispatch.select("patchify_gather", backend, images.device, images.dtype, numel)
    if chosen == "reference":
        return patchify_gather_reference(images, patch_size, ids_keep, normalize_pixels)
    return _patchify_gather_op(images, ids_keep, int(patch_size), bool(normalize_pixels), chosen)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor, backend: str = "auto", check_range: bool = True) -> torch.Tensor:
    """Rows of x by index: out[b, k] = x[b, ids[b, k]] (MAE's encoder keeps its visible tokens this way).

    Args:
        x: (B, L, D) float tokens, any strides (a slice like ``x[:, 1:]`` that drops a class token is not copied).
        ids: (B, K) integer indices in [0, L); repeats are allowed (the backward sums them, like index_add).
        check_range: as in :func:`patchify_gather` (False: no host sync on a GPU).

    Returns:
        (B, K, D) in x's dtype. Example::

            >>> import torch, fastssl
            >>> tokens = torch.randn(8, 196, 384)
            >>> ids_keep, mask, ids_restore = fastssl.ops.random_masking(8, 196, 0.75)
            >>> fastssl.ops.gather_tokens(tokens, ids_keep).shape  # (B, L, D) -> (B, K, D)
            torch.Size([8, 49, 384])
    """
    _check_floating("x", x, 3, "(B, L, D)")
    ids = _check_index("ids", ids, x.shape[0], x.shape[1], x.device, "L = x.shape[1]", check_range)
    chosen = _dispatch.select("gather_tokens", backend, x.device, x.dtype)
    if chosen == "reference":
        return gather_tokens_reference(x, ids)
    return _gather_tokens_op(x, ids, chosen)


def unshuffle_with_mask_token(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                              backend: str = "auto", check_range: bool = True) -> torch.Tensor:
    """MAE's decoder input in one pass: out[b, l] = visible[b, r] if r = ids_restore[b, l] < K, else mask_token.

    Equals ``torch.gather(torch.cat([visible, mask_tokens], 1), 1, ids_restore[..., None].expand(-1, -1, D))``.

    Args:
        visible: (B, K, D) float decoder tokens of the kept patches (any strides, e.g. ``x[:, 1:]``).
        mask_token: (D,) or MAE's (1, 1, D) parameter; cast to visible's dtype (differentiably).
        ids_restore: (B, L) integer indices in [0, L), e.g. from ``random_masking``.
        check_range: as in :func:`patchify_gather` (False: no host sync on a GPU).

    Returns:
        (B, L, D) in visible's dtype; gradients flow to visible and to mask_token (the sum over masked positions).
        Example::

            >>> import torch, fastssl
            >>> ids_keep, mask, ids_restore = fastssl.ops.random_masking(8, 196, 0.75)
            >>> visible, mask_token = torch.randn(8, 49, 512), torch.zeros(512)
            >>> out = fastssl.ops.unshuffle_with_mask_token(visible, mask_token, ids_restore)
            >>> out.shape, bool((out[mask.bool()] == 0).all())  # mask tokens where mask is 1
            (torch.Size([8, 196, 512]), True)
    """
    _check_floating("visible", visible, 3, "(B, K, D)")
    batch, num_visible, dim = visible.shape
    if not isinstance(mask_token, torch.Tensor) or not mask_token.is_floating_point():
        raise ValueError(f"mask_token must be a floating-point tensor, got {getattr(mask_token, 'dtype', mask_token)!r}")
    if mask_token.numel() != dim or mask_token.dim() == 0 or any(s != 1 for s in mask_token.shape[:-1]):
        raise ValueError(f"mask_token must have shape ({dim},) or (1, 1, {dim}) (D of visible), "
                         f"got {tuple(mask_token.shape)}")
    if mask_token.device != visible.device:
        raise ValueError(f"mask_token is on {mask_token.device} but visible is on {visible.device}")
    if not isinstance(ids_restore, torch.Tensor) or ids_restore.dim() != 2:
        raise ValueError(f"ids_restore must be a 2-D (B, L) tensor, got {getattr(ids_restore, 'shape', ids_restore)}")
    length = ids_restore.shape[1]
    if length < num_visible:
        raise ValueError(f"ids_restore has L = {length} columns, fewer than the K = {num_visible} visible tokens")
    ids_restore = _check_index("ids_restore", ids_restore, batch, length, visible.device, "L = ids_restore.shape[1]",
                               check_range)
    token = mask_token.reshape(dim).to(visible.dtype)
    chosen = _dispatch.select("unshuffle_with_mask_token", backend, visible.device, visible.dtype)
    if chosen == "reference":
        return unshuffle_with_mask_token_reference(visible, token, ids_restore)
    return _unshuffle_op(visible, token.contiguous(), ids_restore, chosen)
