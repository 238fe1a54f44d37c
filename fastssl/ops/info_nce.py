"""Fused contrastive losses: SimCLR NT-Xent, CLIP, and InfoNCE with arbitrary keys (MoCo's queue).

All three are one primitive: for query rows q_i and key rows k_j,

    loss_i = logsumexp_{j != exclude_i}(s * q_i . k_j) - s * q_i . k_{pos_i}

The references below build the (N, M) logit matrix; the fused backends tile it, keep an online log-sum-exp in
float32, and recompute the tiles in the backward from the saved log-sum-exp (the FlashAttention idea), so their
memory is O((N + M) * D). The kernels follow notes/info_nce_kernel_contract.md:
``csrc/info_nce.cpp`` (C++/OpenMP) and ``kernels/info_nce.py`` (Triton).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from fastssl import _dispatch

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CPP_DTYPES = FUSED_DTYPES + (torch.float64,)

# No CUDA C++ kernel: the Triton one is the GPU path (DESIGN.md: a .cu kernel only where it beats Triton).
BACKENDS = (
    _dispatch.triton_backend("info_nce", FUSED_DTYPES),
    _dispatch.cpp_backend("info_nce_forward", CPP_DTYPES),
    _dispatch.reference_backend(),
)
for _op in ("nt_xent", "info_nce", "clip_loss"):
    _dispatch.register(_op, BACKENDS)


# ----------------------------------------------------------------------------------------------------------------
# References: the specification and the test oracle. Each materialises the logit matrix.
# ----------------------------------------------------------------------------------------------------------------


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, normalize: bool = True):
    """SimCLR's NT-Xent (Chen et al., 2020) over the 2N views; reads 2N*D, writes and re-reads 4N^2 logits."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    if normalize:
        z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature  # (2N, 2N): the matrix the fused op never builds
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    twin = (torch.arange(2 * n, device=z.device) + n) % (2 * n)  # row i's positive is its other view
    return F.cross_entropy(logits, twin)


def info_nce_reference(query, keys, temperature: float = 0.07, positive_index=None, normalize: bool = True):
    """InfoNCE (van den Oord et al., 2018; MoCo: He et al., 2020): query (N, D) against keys (M, D)."""
    if normalize:
        query, keys = F.normalize(query, dim=1), F.normalize(keys, dim=1)
    logits = query @ keys.T / temperature  # (N, M)
    if positive_index is None:
        positive_index = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits, positive_index)


def clip_loss_reference(image_features, text_features, logit_scale, normalize: bool = True):
    """CLIP's symmetric loss (Radford et al., 2021), as open_clip computes it: mean of both directions."""
    if normalize:
        image_features, text_features = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    logits = logit_scale * image_features @ text_features.T  # (N, N) image -> text
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def contrastive_reference(q, k, scale, pos, exclude):
    """The general primitive in plain PyTorch (used by the distributed modules' reference path)."""
    logits = scale * (q @ k.T)  # (N, M)
    columns = torch.arange(k.shape[0], device=q.device)
    logits = logits.masked_fill(columns[None, :] == exclude[:, None], float("-inf"))
    return F.cross_entropy(logits, pos)


# ----------------------------------------------------------------------------------------------------------------
# The fused primitive as torch.library custom ops (torch.compile and opcheck see through them).
# ----------------------------------------------------------------------------------------------------------------


def _kernels(backend: str):
    if backend == "cpp":
        return _dispatch.extension()[0]
    if backend == "triton":
        return _dispatch.triton_module("info_nce")[0]
    raise ValueError(f"unknown fused backend {backend!r}")


def _scalar_arg(backend: str, value: torch.Tensor):
    # The C++ kernel reads a double; the Triton kernels read a 0-d device tensor so that no host sync happens.
    return float(value) if backend == "cpp" else value.detach().to(torch.float32).reshape(())


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    # Loss and log-sum-exp are float32 (the accumulation type) except on the float64 path.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# Normalisation. The Triton kernels normalise rows on the fly from their inverse norms (contract v2), so no
# normalised copy exists. The C++ kernel takes unit rows: for it the op normalises inside the custom op (a float32
# copy that lives for the call only; the kernel packs into float32 anyway) and applies the Jacobian of
# x / ||x|| to the gradients afterwards.


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x if x.dtype == torch.float64 else x.float(), dim=1)


def _through_normalize(grad_unit: torch.Tensor, x: torch.Tensor, x_unit: torch.Tensor) -> torch.Tensor:
    """Backward of x / max(||x||, eps): r * (g - x^ (x^ . g)) with r = 1 / max(||x||, eps)."""
    inv_norm = torch.linalg.vector_norm(x, dim=1, dtype=x_unit.dtype).clamp_min(1e-12).reciprocal()
    grad_unit = grad_unit.to(x_unit.dtype)
    radial = (grad_unit * x_unit).sum(dim=1, keepdim=True)
    return (inv_norm[:, None] * (grad_unit - x_unit * radial)).to(x.dtype)


def _fused_forward(backend, q, k, scale, pos, exclude, normalize):
    kernels = _kernels(backend)
    if backend == "triton":
        return kernels.info_nce_forward(q, k, _scalar_arg(backend, scale), pos, exclude, normalize)
    if normalize:
        q, k = _unit_rows(q), _unit_rows(k)
    return kernels.info_nce_forward(q, k, _scalar_arg(backend, scale), pos, exclude)


def _fused_backward(backend, q, k, scale, pos, exclude, lse, coef, normalize, compute_dk):
    kernels = _kernels(backend)
    scale_arg, coef_arg = _scalar_arg(backend, scale), _scalar_arg(backend, coef)
    if backend == "triton":
        return kernels.info_nce_backward(q, k, scale_arg, pos, exclude, lse, coef_arg, normalize, compute_dk)
    if not normalize:
        return kernels.info_nce_backward(q, k, scale_arg, pos, exclude, lse, coef_arg, compute_dk)
    q_unit, k_unit = _unit_rows(q), _unit_rows(k)
    dq, dk, dscale = kernels.info_nce_backward(q_unit, k_unit, scale_arg, pos, exclude, lse, coef_arg, compute_dk)
    dk = _through_normalize(dk, k, k_unit) if compute_dk else dk
    return _through_normalize(dq, q, q_unit), dk, dscale


@torch.library.custom_op("fastssl::info_nce_fused", mutates_args=())
def _info_nce_fused(
    q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, pos: torch.Tensor, exclude: torch.Tensor,
    normalize: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    loss_rows, lse = _fused_forward(backend, q, k, scale, pos, exclude, normalize)
    return loss_rows.mean(), lse


@_info_nce_fused.register_fake
def _(q, k, scale, pos, exclude, normalize, backend):
    return q.new_empty((), dtype=_stats_dtype(q)), q.new_empty((q.shape[0],), dtype=_stats_dtype(q))


@torch.library.custom_op("fastssl::info_nce_fused_backward", mutates_args=())
def _info_nce_fused_backward(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, pos: torch.Tensor,
    exclude: torch.Tensor, lse: torch.Tensor, normalize: bool, compute_dk: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dk is skipped (returned empty) when the keys need no gradient: MoCo's keys are a momentum encoder's
    output and a queue, and on the GPU the dk kernel is half of the backward."""
    coef = grad / q.shape[0]  # d(mean)/d(loss_i)
    dq, dk, dscale = _fused_backward(backend, q, k, scale, pos, exclude, lse, coef, normalize, compute_dk)
    dk = dk if compute_dk else k.new_empty((0,))
    return dq, dk, dscale.reshape(()).to(scale.dtype)


@_info_nce_fused_backward.register_fake
def _(grad, q, k, scale, pos, exclude, lse, normalize, compute_dk, backend):
    dk = torch.empty_like(k) if compute_dk else k.new_empty((0,))
    return torch.empty_like(q), dk, torch.empty_like(scale)


def _info_nce_setup(ctx, inputs, output):
    q, k, scale, pos, exclude, normalize, backend = inputs
    ctx.save_for_backward(q, k, scale, pos, exclude, output[1])
    ctx.normalize, ctx.backend = normalize, backend


def _info_nce_backward(ctx, grad_loss, grad_lse):
    q, k, scale, pos, exclude, lse = ctx.saved_tensors
    compute_dk = ctx.needs_input_grad[1]
    dq, dk, dscale = _info_nce_fused_backward(grad_loss, q, k, scale, pos, exclude, lse, ctx.normalize,
                                              compute_dk, ctx.backend)
    return dq, dk if compute_dk else None, dscale, None, None, None, None


_info_nce_fused.register_autograd(_info_nce_backward, setup_context=_info_nce_setup)


@torch.library.custom_op("fastssl::nt_xent_fused", mutates_args=())
def _nt_xent_fused(
    z: torch.Tensor, scale: torch.Tensor, normalize: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    kernels = _kernels(backend)
    if backend == "triton":
        loss_rows, lse = kernels.nt_xent_forward(z, _scalar_arg(backend, scale), normalize)
    else:
        loss_rows, lse = kernels.nt_xent_forward(_unit_rows(z) if normalize else z, _scalar_arg(backend, scale))
    return loss_rows.mean(), lse


@_nt_xent_fused.register_fake
def _(z, scale, normalize, backend):
    return z.new_empty((), dtype=_stats_dtype(z)), z.new_empty((z.shape[0],), dtype=_stats_dtype(z))


@torch.library.custom_op("fastssl::nt_xent_fused_backward", mutates_args=())
def _nt_xent_fused_backward(
    grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, lse: torch.Tensor, normalize: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    kernels = _kernels(backend)
    scale_arg, coef_arg = _scalar_arg(backend, scale), _scalar_arg(backend, grad / z.shape[0])
    if backend == "triton":
        dz, dscale = kernels.nt_xent_backward(z, scale_arg, lse, coef_arg, normalize)
    elif normalize:
        z_unit = _unit_rows(z)
        dz_unit, dscale = kernels.nt_xent_backward(z_unit, scale_arg, lse, coef_arg)
        dz = _through_normalize(dz_unit, z, z_unit)
    else:
        dz, dscale = kernels.nt_xent_backward(z, scale_arg, lse, coef_arg)
    return dz, dscale.reshape(()).to(scale.dtype)


@_nt_xent_fused_backward.register_fake
def _(grad, z, scale, lse, normalize, backend):
    return torch.empty_like(z), torch.empty_like(scale)


def _nt_xent_setup(ctx, inputs, output):
    z, scale, normalize, backend = inputs
    ctx.save_for_backward(z, scale, output[1])
    ctx.normalize, ctx.backend = normalize, backend


def _nt_xent_backward(ctx, grad_loss, grad_lse):
    z, scale, lse = ctx.saved_tensors
    dz, dscale = _nt_xent_fused_backward(grad_loss, z, scale, lse, ctx.normalize, ctx.backend)
    return dz, dscale, None, None


_nt_xent_fused.register_autograd(_nt_xent_backward, setup_context=_nt_xent_setup)


@torch.library.custom_op("fastssl::clip_fused", mutates_args=())
def _clip_fused(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, normalize: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both CLIP directions in one set of passes (Triton): the loss and the row/column (max, sum) statistics
    that the backward reuses (kernels/info_nce.py, clip_forward)."""
    loss, stats = _kernels(backend).clip_forward(image, text, _scalar_arg(backend, scale), normalize)
    return (loss, *stats)


@_clip_fused.register_fake
def _(image, text, scale, normalize, backend):
    n = image.shape[0]
    return (image.new_empty((), dtype=torch.float32),
            *(image.new_empty((n,), dtype=torch.float32) for _ in range(4)))


@torch.library.custom_op("fastssl::clip_fused_backward", mutates_args=())
def _clip_fused_backward(
    grad: torch.Tensor, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, row_max: torch.Tensor,
    row_sum: torch.Tensor, col_max: torch.Tensor, col_sum: torch.Tensor, normalize: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    coef = (grad / (2 * image.shape[0])).to(torch.float32)  # each direction is a mean over N rows, halved
    d_image, d_text, dscale = _kernels(backend).clip_backward(
        image, text, _scalar_arg(backend, scale), (row_max, row_sum, col_max, col_sum), coef, normalize)
    return d_image, d_text, dscale.reshape(()).to(scale.dtype)


@_clip_fused_backward.register_fake
def _(grad, image, text, scale, row_max, row_sum, col_max, col_sum, normalize, backend):
    return torch.empty_like(image), torch.empty_like(text), torch.empty_like(scale)


def _clip_setup(ctx, inputs, output):
    image, text, scale, normalize, backend = inputs
    ctx.save_for_backward(image, text, scale, *output[1:])
    ctx.normalize, ctx.backend = normalize, backend


def _clip_backward(ctx, grad_loss, *grad_stats):
    image, text, scale, *stats = ctx.saved_tensors
    d_image, d_text, dscale = _clip_fused_backward(grad_loss, image, text, scale, *stats, ctx.normalize,
                                                   ctx.backend)
    return d_image, d_text, dscale, None, None


_clip_fused.register_autograd(_clip_backward, setup_context=_clip_setup)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks: every error names the argument.
# ----------------------------------------------------------------------------------------------------------------


def _check_embeddings(**named: torch.Tensor) -> None:
    items = list(named.items())
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point (float32, bfloat16 or float16), got {t.dtype}")
        if t.shape[0] == 0:
            raise ValueError(f"{name} must have at least one row (N >= 1), got shape {tuple(t.shape)}")
        if t.shape[1] == 0:
            raise ValueError(f"{name} must have at least one column (D >= 1), got shape {tuple(t.shape)}")
    (first_name, first), rest = items[0], items[1:]
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.shape[1] != first.shape[1]:
            raise ValueError(f"{name} has D={t.shape[1]} but {first_name} has D={first.shape[1]}")


def _check_temperature(temperature) -> float:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a positive finite number, got a tensor of shape {temperature.shape}")
        temperature = float(temperature)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def _scale_tensor(value: float, like: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.full((), value, dtype=dtype, device=like.device)


# ----------------------------------------------------------------------------------------------------------------
# Public ops.
# ----------------------------------------------------------------------------------------------------------------


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, normalize: bool = True,
            backend: str = "auto") -> torch.Tensor:
    """SimCLR's NT-Xent loss without the (2N, 2N) similarity matrix.

    Args:
        z1, z2: (N, D) embeddings of two views of the same N samples (float32, bfloat16 or float16).
        temperature: softmax temperature tau > 0 (SimCLR's default 0.5).
        normalize: L2-normalise the rows first (cosine similarity), as SimCLR does.
        backend: "auto", "reference", "cpp", "triton" or "cuda".

    Returns:
        0-d float32 tensor: the mean over the 2N views of ``-log softmax`` of each view's twin among the other
        2N - 1 views. Example::

            >>> import math, torch, fastssl
            >>> z1, z2 = torch.randn(256, 128), torch.randn(256, 128)
            >>> loss = fastssl.ops.nt_xent(z1, z2, temperature=0.5)
            >>> loss.shape, loss.dtype
            (torch.Size([]), torch.float32)
            >>> z = torch.ones(4, 8)  # all 2N = 8 views equal: the twin ties with 6 negatives, loss = log 7
            >>> round(fastssl.ops.nt_xent(z, z).item(), 4), round(math.log(7), 4)
            (1.9459, 1.9459)
    """
    _check_embeddings(z1=z1, z2=z2)
    if z1.shape[0] != z2.shape[0]:
        raise ValueError(f"z1 and z2 must have the same N, got {z1.shape[0]} and {z2.shape[0]}")
    temperature = _check_temperature(temperature)
    chosen = _dispatch.select("nt_xent", backend, z1.device, z1.dtype, z1.shape[1])
    if chosen == "reference":
        return nt_xent_reference(z1, z2, temperature, normalize).to(_stats_dtype(z1))
    z = torch.cat([z1, z2])  # (2N, D)
    return _nt_xent_fused(z, _scale_tensor(1.0 / temperature, z), normalize, chosen)[0]


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07,
             positive_index: Optional[torch.Tensor] = None, normalize: bool = True,
             backend: str = "auto") -> torch.Tensor:
    """InfoNCE of N queries against M keys without the (N, M) logit matrix.

    Row i's positive is ``keys[positive_index[i]]`` (default ``keys[i]``); every other key is a negative.
    MoCo is ``keys = torch.cat([positive_keys, queue])``.

    Args:
        query: (N, D). keys: (M, D), same dtype and device.
        temperature: tau > 0 (MoCo's default 0.07).
        positive_index: optional (N,) integer tensor with values in [0, M).
        normalize: L2-normalise query and keys first.

    Returns:
        0-d float32 tensor, the mean cross-entropy over the N queries. Example::

            >>> import torch, fastssl
            >>> q, k, queue = torch.randn(256, 128), torch.randn(256, 128), torch.randn(4096, 128)
            >>> loss = fastssl.ops.info_nce(q, torch.cat([k, queue]), temperature=0.07)  # row i's positive: k[i]
            >>> loss.shape
            torch.Size([])
            >>> keys = torch.ones(10, 5)  # all keys equal: every logit ties, loss = log M = log 10
            >>> round(fastssl.ops.info_nce(torch.randn(3, 5), keys).item(), 4)
            2.3026
    """
    _check_embeddings(query=query, keys=keys)
    temperature = _check_temperature(temperature)
    n, m = query.shape[0], keys.shape[0]
    pos = _check_positive_index(positive_index, n, m, query.device)
    chosen = _dispatch.select("info_nce", backend, query.device, query.dtype, query.shape[1])
    if chosen == "reference":
        return info_nce_reference(query, keys, temperature, pos, normalize).to(_stats_dtype(query))
    exclude = torch.full((n,), -1, dtype=torch.int64, device=query.device)
    return _info_nce_fused(query.contiguous(), keys.contiguous(), _scale_tensor(1.0 / temperature, query),
                           pos, exclude, normalize, chosen)[0]


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: Union[torch.Tensor, float], normalize: bool = True,
              backend: str = "auto") -> torch.Tensor:
    """CLIP's symmetric contrastive loss without the (N, N) logit matrix.

    Args:
        image_features, text_features: (N, D) paired embeddings; pair i is the positive on the diagonal.
        logit_scale: 0-d tensor used as a multiplier, already exponentiated as open_clip passes it
            (``model.logit_scale.exp()``); it receives a gradient.
        normalize: L2-normalise both sides first.

    Returns:
        0-d float32 tensor: (CE(image -> text) + CE(text -> image)) / 2. Example::

            >>> import torch, fastssl
            >>> img, txt = torch.randn(512, 256), torch.randn(512, 256)
            >>> logit_scale = torch.tensor(100.0, requires_grad=True)  # already exponentiated
            >>> loss = fastssl.ops.clip_loss(img, txt, logit_scale)
            >>> loss.backward()
            >>> logit_scale.grad.shape
            torch.Size([])
    """
    _check_embeddings(image_features=image_features, text_features=text_features)
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"image_features and text_features must have the same N, got {image_features.shape[0]} "
            f"and {text_features.shape[0]}"
        )
    logit_scale = _check_logit_scale(logit_scale, image_features.device)
    chosen = _dispatch.select("clip_loss", backend, image_features.device, image_features.dtype,
                                image_features.shape[1])
    if chosen == "reference":
        return clip_loss_reference(image_features, text_features, logit_scale, normalize).to(
            _stats_dtype(image_features))
    return clip_loss_core(image_features.contiguous(), text_features.contiguous(), logit_scale,
                          torch.arange(image_features.shape[0], device=image_features.device), normalize, chosen)


def clip_loss_core(image, text, scale, pos, normalize: bool, backend: str, image_keys=None, text_keys=None):
    """Both CLIP directions on the fused primitive. For a distributed batch, queries are this rank's rows and
    the keys are every rank's rows (pos holds each local row's global index)."""
    if backend == "triton" and image_keys is None and text_keys is None:
        return _clip_fused(image, text, scale, normalize, backend)[0].to(_stats_dtype(image))
    image_keys = text if image_keys is None else image_keys
    text_keys = image if text_keys is None else text_keys
    exclude = torch.full((image.shape[0],), -1, dtype=torch.int64, device=image.device)
    i2t = info_nce_core(image, image_keys, scale, pos, exclude, normalize, backend)
    t2i = info_nce_core(text, text_keys, scale, pos, exclude, normalize, backend)
    return (i2t + t2i) / 2


def info_nce_core(q, k, scale, pos, exclude, normalize: bool, backend: str):
    """The general primitive (used by clip_loss and by fastssl.nn for the distributed losses)."""
    if backend == "reference":
        if normalize:
            q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        return contrastive_reference(q, k, scale, pos, exclude)
    return _info_nce_fused(q.contiguous(), k.contiguous(), scale, pos, exclude, normalize, backend)[0]


def _check_positive_index(positive_index, n: int, m: int, device: torch.device) -> torch.Tensor:
    if positive_index is None:
        if m < n:
            raise ValueError(f"positive_index=None pairs query i with keys[i], so keys needs M >= N; got N={n}, M={m}")
        return torch.arange(n, device=device)
    if not isinstance(positive_index, torch.Tensor):
        positive_index = torch.as_tensor(positive_index)
    if positive_index.dtype.is_floating_point or positive_index.dtype == torch.bool or positive_index.is_complex():
        raise ValueError(f"positive_index must be an integer tensor, got {positive_index.dtype}")
    if positive_index.shape != (n,):
        raise ValueError(f"positive_index must have shape ({n},), got {tuple(positive_index.shape)}")
    if positive_index.device != device:
        raise ValueError(f"positive_index is on {positive_index.device} but query is on {device}")
    positive_index = positive_index.to(torch.int64)
    if not torch.compiler.is_compiling():
        lo, hi = torch.stack(torch.aminmax(positive_index)).tolist()  # one host sync, not two
        if lo < 0 or hi >= m:
            raise ValueError(f"positive_index values must lie in [0, {m}) (M = number of keys), got [{lo}, {hi}]")
    return positive_index


def _check_logit_scale(logit_scale, device: torch.device) -> torch.Tensor:
    if not isinstance(logit_scale, torch.Tensor):
        if not isinstance(logit_scale, (int, float)) or not math.isfinite(logit_scale):
            raise ValueError(f"logit_scale must be a 0-d tensor or a finite number, got {logit_scale!r}")
        return torch.full((), float(logit_scale), dtype=torch.float32, device=device)
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a 0-d tensor, got shape {tuple(logit_scale.shape)}")
    if not logit_scale.is_floating_point():
        raise ValueError(f"logit_scale must be floating point, got {logit_scale.dtype}")
    if logit_scale.device != device:
        raise ValueError(f"logit_scale is on {logit_scale.device} but image_features is on {device}")
    return logit_scale.reshape(())
