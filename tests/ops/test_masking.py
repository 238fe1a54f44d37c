"""fastssl.ops masking: random / block / token masks, patchify_gather and the token gathers.

The gathers are exact copies, so every backend must equal the reference bit for bit (and MAE's own code, copied
below); only normalize_pixels and summed gradients round, and those follow DESIGN.md's tolerance rule: error
against the float64 reference at most twice the error of the reference computed in the same dtype, plus an atol.
Triton runs through the interpreter (TRITON_INTERPRET=1) on CPU tensors at small sizes.
"""

import math

import pytest
import torch

from fastssl import _dispatch
from fastssl.ops import (
    block_masking,
    gather_tokens,
    gather_tokens_reference,
    mask_tokens,
    patchify_gather,
    patchify_gather_reference,
    random_masking,
    unshuffle_with_mask_token,
    unshuffle_with_mask_token_reference,
)
from tests.conftest import (assert_error_within, fused_backends, host_sync_forbidden, require_cpp,
                            run_without_host_sync)

PATCH_FUSED = fused_backends("cpu", op="patchify_gather")
TOKEN_FUSED = fused_backends("cpu", op="gather_tokens")
UNSHUFFLE_FUSED = fused_backends("cpu", op="unshuffle_with_mask_token")
CPP_ONLY = [p for p in PATCH_FUSED if p.values[0] == "cpp"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 1e-4, torch.float64: 1e-12}
RATIOS = [0.0, 0.5, 0.75, 0.9]
# (B, C, H, W, p). The interpreter gets the small ones; patch 14 on 224 x 224 keeps B = 1.
IMAGE_SHAPES = [(2, 3, 32, 32, 4), (1, 1, 32, 32, 4), (3, 3, 48, 80, 16), (1, 1, 48, 80, 16), (1, 3, 224, 224, 14)]
SMALL_IMAGE_SHAPES = [(2, 3, 16, 16, 4), (1, 1, 16, 24, 8), (1, 3, 32, 48, 16)]


def _image_shapes(backend):
    return SMALL_IMAGE_SHAPES if backend == "triton" else IMAGE_SHAPES


# ----------------------------------------------------------------------------------------------------------------
# MAE's code (facebookresearch/mae, models_mae.py), generalised to C channels and H != W: the oracle.
# ----------------------------------------------------------------------------------------------------------------


def mae_random_masking(x, mask_ratio, noise):
    N, L, D = x.shape  # batch, length, dim
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore, ids_keep


def mae_patchify(imgs, p):
    h, w = imgs.shape[2] // p, imgs.shape[3] // p
    c = imgs.shape[1]
    x = imgs.reshape(shape=(imgs.shape[0], c, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * c))


def mae_norm_pix_target(target):
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1.0e-6) ** 0.5


def mae_decoder_unshuffle(x, mask_token, ids_restore):
    """x (N, 1 + K, D) with the class token first, as MAE's forward_decoder receives it."""
    mask_tokens = mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
    return torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # unshuffle


def _ids(batch, length, ratio, seed=0):
    return random_masking(batch, length, ratio, generator=torch.Generator().manual_seed(seed))


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


# ----------------------------------------------------------------------------------------------------------------
# random_masking
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, length", [(1, 1), (3, 196), (2, 17), (4, 256), (1, 49)])
@pytest.mark.parametrize("ratio", RATIOS)
def test_random_masking_equals_mae_on_the_same_noise(batch, length, ratio):
    noise = torch.rand(batch, length, generator=torch.Generator().manual_seed(length))
    x = torch.randn(batch, length, 5)
    x_masked, mae_mask, mae_restore, mae_keep = mae_random_masking(x, ratio, noise)
    ids_keep, mask, ids_restore = random_masking(batch, length, ratio, noise=noise)
    assert ids_keep.dtype == ids_restore.dtype == torch.int64 and mask.dtype == torch.float32
    assert ids_keep.shape == (batch, int(length * (1 - ratio))) and ids_keep.is_contiguous()
    assert torch.equal(ids_keep, mae_keep)  # same kept set, in the same (ascending noise) order
    assert torch.equal(ids_restore, mae_restore)
    assert torch.equal(mask, mae_mask)
    assert torch.equal(gather_tokens(x, ids_keep), x_masked)


def test_random_masking_invariants():
    ids_keep, mask, ids_restore = _ids(64, 196, 0.75)
    assert ids_keep.shape == (64, 49) and mask.shape == ids_restore.shape == (64, 196)
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(196).expand(64, 196))  # a permutation
    assert torch.all(mask.sum(1) == 147)
    assert torch.all(mask.gather(1, ids_keep) == 0)
    assert torch.equal(ids_restore.gather(1, ids_keep), torch.arange(49).expand(64, 49))


def test_random_masking_is_uniform_per_patch():
    # Each patch is masked in a sample with probability exactly ratio, independently across samples:
    # its count over B samples is Binomial(B, ratio). 5 sigma with a fixed seed.
    batch, length, ratio = 4000, 16, 0.75
    _, mask, _ = _ids(batch, length, ratio, seed=123)
    counts = mask.sum(0).double()
    sigma = math.sqrt(batch * ratio * (1 - ratio))
    assert (counts - batch * ratio).abs().max() < 5 * sigma, counts
    # And over all L patches: Pearson's chi-square of the kept counts (15 dof; 99.99% quantile ~ 44.3).
    kept = batch - counts
    expected = batch * (1 - ratio)
    assert ((kept - expected) ** 2 / expected).sum() < 44.3


def test_random_masking_is_reproducible_from_a_generator():
    first = random_masking(8, 196, 0.75, generator=torch.Generator().manual_seed(7))
    second = random_masking(8, 196, 0.75, generator=torch.Generator().manual_seed(7))
    other = random_masking(8, 196, 0.75, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


# ----------------------------------------------------------------------------------------------------------------
# patchify_gather
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference"] + PATCH_FUSED)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_patchify_gather_equals_mae_exactly(backend, dtype):
    for i, (b, c, h, w, p) in enumerate(_image_shapes(backend)):
        images = torch.randn(b, c, h, w).to(dtype)
        length = (h // p) * (w // p)
        for ratio in RATIOS if backend != "triton" or i == 0 else [0.5]:
            ids_keep, _, _ = _ids(b, length, ratio, seed=i)
            expected = torch.gather(mae_patchify(images, p), 1, ids_keep.unsqueeze(-1).repeat(1, 1, p * p * c))
            out = patchify_gather(images, p, ids_keep, backend=backend)
            assert out.dtype == dtype and out.shape == expected.shape and out.is_contiguous()
            assert torch.equal(out, expected), (b, c, h, w, p, ratio)


@pytest.mark.parametrize("backend", PATCH_FUSED)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_patchify_gather_normalized_matches_float64_reference(backend, dtype):
    for i, (b, c, h, w, p) in enumerate(_image_shapes(backend)):
        # An offset and scale per image, as in real pixels: the mean must not cancel catastrophically.
        images = (3.0 * torch.randn(b, c, h, w) + 2.0).to(dtype)
        ids_keep, _, _ = _ids(b, (h // p) * (w // p), 0.75, seed=i)
        out = patchify_gather(images, p, ids_keep, normalize_pixels=True, backend=backend)
        ref64 = mae_norm_pix_target(patchify_gather_reference(images.double(), p, ids_keep))
        ref_same = patchify_gather_reference(images, p, ids_keep, normalize_pixels=True)
        assert out.dtype == dtype
        assert_error_within(f"normalized {(b, c, h, w, p)}", out, ref64, ref_same, ATOL[dtype] * 4)


@pytest.mark.parametrize("backend", ["reference"] + PATCH_FUSED)
@pytest.mark.parametrize("normalize", [False, True])
def test_patchify_gather_backward_matches_float64_reference(backend, normalize):
    for dtype in DTYPES:
        for i, (b, c, h, w, p) in enumerate(_image_shapes(backend)[:3]):
            images = (torch.randn(b, c, h, w) + 0.5).to(dtype)
            length = (h // p) * (w // p)
            ids_keep, _, _ = _ids(b, length, 0.5, seed=i)
            if i == 0:  # repeated ids accumulate
                ids_keep = torch.cat([ids_keep, ids_keep[:, :2]], dim=1)
            grad = torch.randn(b, ids_keep.shape[1], p * p * c).to(dtype)
            x = _leaf(images)
            (got,) = torch.autograd.grad(patchify_gather(x, p, ids_keep, normalize, backend=backend), x, grad)
            x64 = _leaf(images.double())
            (ref64,) = torch.autograd.grad(patchify_gather_reference(x64, p, ids_keep, normalize), x64, grad.double())
            x_same = _leaf(images)
            (ref_same,) = torch.autograd.grad(patchify_gather_reference(x_same, p, ids_keep, normalize), x_same, grad)
            assert got.dtype == dtype and got.shape == images.shape
            if not normalize and i > 0:  # unique ids: the gradient is a copy
                assert torch.equal(got, ref64.to(dtype))
            assert_error_within(f"grad {dtype} {(b, c, h, w, p)}", got, ref64, ref_same,
                                ATOL[dtype] * (1 + ref64.abs().max().item()))


@pytest.mark.parametrize("backend", ["reference"] + CPP_ONLY)
def test_patchify_gather_gradcheck_float64(backend):
    require_cpp()
    images = torch.randn(2, 2, 8, 12, dtype=torch.float64, requires_grad=True)
    ids_keep = torch.tensor([[0, 5, 3], [4, 4, 1]])  # a repeat in the second image
    for normalize in (False, True):
        assert torch.autograd.gradcheck(lambda x: patchify_gather(x, 4, ids_keep, normalize, backend=backend),
                                        (images,))


@pytest.mark.parametrize("backend", PATCH_FUSED)
def test_patchify_gather_non_contiguous_images(backend):
    base = torch.randn(2, 3, 24, 20)
    channels_last = base[:, :, :16, :16].contiguous(memory_format=torch.channels_last)
    cases = [channels_last, base[:, :, 4:20, 2:18], base.transpose(2, 3)[:, :, :16, :16], base[:, ::2, :16, :16]]
    for images in cases:
        assert not images.is_contiguous()
        ids_keep, _, _ = _ids(2, 16, 0.75)
        expected = patchify_gather_reference(images.contiguous(), 4, ids_keep)
        assert torch.equal(patchify_gather(images, 4, ids_keep, backend=backend), expected)
        for normalize in (False, True):
            x, x_ref = _leaf(images), _leaf(images.contiguous())
            out = patchify_gather(x, 4, ids_keep, normalize, backend=backend)
            grad = torch.randn_like(out)
            (got,) = torch.autograd.grad(out, x, grad)
            (expected_grad,) = torch.autograd.grad(patchify_gather_reference(x_ref, 4, ids_keep, normalize), x_ref,
                                                   grad)
            assert torch.allclose(got, expected_grad, atol=1e-5)
    # The image gradient keeps the input's layout.
    x = _leaf(channels_last)
    (got,) = torch.autograd.grad(patchify_gather(x, 4, ids_keep, backend=backend).sum(), x)
    assert got.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------------------------
# gather_tokens and unshuffle_with_mask_token
# ----------------------------------------------------------------------------------------------------------------

# (B, L, D): D = 1030 spans two Triton column blocks; L = 1000 makes the C++ backward split D into column chunks.
TOKEN_SHAPES = [(1, 1, 1), (2, 17, 3), (3, 196, 40), (1, 1000, 40), (1, 7, 1030)]
SMALL_TOKEN_SHAPES = [(1, 1, 1), (2, 17, 3), (1, 5, 1030)]


def _token_shapes(backend):
    return SMALL_TOKEN_SHAPES if backend == "triton" else TOKEN_SHAPES


@pytest.mark.parametrize("backend", ["reference"] + TOKEN_FUSED)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_gather_tokens_forward_exact_and_backward_index_add(backend, dtype):
    for b, length, d in _token_shapes(backend):
        x = torch.randn(b, length, d).to(dtype)
        for ratio in (0.0, 0.75):
            ids, _, _ = _ids(b, length, ratio, seed=length)
            if ids.shape[1] == 0:
                continue
            repeated = torch.cat([ids, ids[:, :1], ids[:, :1]], dim=1)  # index_add must sum these
            for index in (ids, repeated):
                xs = _leaf(x)
                out = gather_tokens(xs, index, backend=backend)
                assert torch.equal(out, gather_tokens_reference(x, index))
                grad = torch.randn(out.shape).to(dtype)
                (got,) = torch.autograd.grad(out, xs, grad)
                ref64 = torch.zeros(b, length, d, dtype=torch.float64).scatter_add_(
                    1, index[:, :, None].expand(-1, -1, d), grad.double())
                x_same = _leaf(x)
                (ref_same,) = torch.autograd.grad(gather_tokens_reference(x_same, index), x_same, grad)
                if index is ids:
                    assert torch.equal(got, ref64.to(dtype))
                assert_error_within("gather_tokens grad", got, ref64, ref_same, ATOL[dtype])


@pytest.mark.parametrize("backend", ["reference"] + UNSHUFFLE_FUSED)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_unshuffle_equals_mae_decoder_input(backend, dtype):
    for b, length, d in _token_shapes(backend):
        for ratio in (0.0, 0.9):
            ids_keep, _, ids_restore = _ids(b, length, ratio, seed=d)
            k = ids_keep.shape[1]
            x = torch.randn(b, 1 + k, d).to(dtype)  # class token first, as in MAE's decoder
            token = torch.randn(1, 1, d).to(dtype)  # MAE's nn.Parameter shape
            expected = mae_decoder_unshuffle(x, token, ids_restore)
            xs, ts = _leaf(x), _leaf(token)
            out = unshuffle_with_mask_token(xs[:, 1:], ts, ids_restore, backend=backend)  # a strided view
            assert torch.equal(out, expected)
            grad = torch.randn(out.shape).to(dtype)
            got = torch.autograd.grad(out, (xs, ts), grad)
            x64, t64 = _leaf(x.double()), _leaf(token.double())
            ref64 = torch.autograd.grad(mae_decoder_unshuffle(x64, t64, ids_restore), (x64, t64), grad.double())
            x_same, t_same = _leaf(x), _leaf(token)
            ref_same = torch.autograd.grad(mae_decoder_unshuffle(x_same, t_same, ids_restore), (x_same, t_same),
                                           grad)
            assert torch.equal(got[0], ref64[0].to(dtype))  # each visible token is used once: a copy
            assert got[1].shape == token.shape and got[1].dtype == dtype
            scale = 1 + ref64[1].abs().max().item()
            assert_error_within("d mask_token", got[1], ref64[1], ref_same[1], ATOL[dtype] * scale)


@pytest.mark.parametrize("backend", ["reference"] + UNSHUFFLE_FUSED)
def test_unshuffle_repeated_ids_and_a_float32_token_for_bf16_tokens(backend):
    visible = _leaf(torch.randn(2, 5, 24).to(torch.bfloat16))
    token = _leaf(torch.randn(24))  # an fp32 parameter under bf16 activations
    ids_restore = torch.tensor([[0, 0, 7, 4, 5, 1, 6, 4], [2, 6, 6, 3, 0, 1, 4, 4]])
    out = unshuffle_with_mask_token(visible, token, ids_restore, backend=backend)
    expected = unshuffle_with_mask_token_reference(visible.float(), token, ids_restore).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    grad = torch.randn(out.shape).to(torch.bfloat16)
    got = torch.autograd.grad(out, (visible, token), grad)
    v64, t64 = _leaf(visible.double()), _leaf(token.double())
    ref64 = torch.autograd.grad(unshuffle_with_mask_token_reference(v64, t64, ids_restore), (v64, t64), grad.double())
    assert got[1].dtype == torch.float32
    assert torch.allclose(got[0].double(), ref64[0], atol=2e-2, rtol=1e-2)  # bf16 sums of 2 rounded terms
    assert torch.allclose(got[1].double(), ref64[1], atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("backend", ["reference"] + CPP_ONLY)
def test_token_gathers_gradcheck_float64(backend):
    require_cpp()
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 3, 3, 6], [5, 1, 2, 0]])
    assert torch.autograd.gradcheck(lambda t: gather_tokens(t, ids, backend=backend), (x,))
    visible = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    token = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ids_restore = torch.tensor([[4, 0, 2, 6, 1, 3, 5], [1, 1, 5, 4, 0, 6, 2]])
    assert torch.autograd.gradcheck(lambda v, t: unshuffle_with_mask_token(v, t, ids_restore, backend=backend),
                                    (visible, token))


@pytest.mark.parametrize("backend", TOKEN_FUSED)
def test_token_gathers_non_contiguous_inputs(backend):
    base = torch.randn(3, 21, 40)
    ids, _, ids_restore = _ids(3, 20, 0.75)
    for x in (base[:, 1:], base[:, 1:, ::2], base.transpose(1, 2)[:, :20, :]):  # drop-cls slice, strided D, transposed
        assert not x.is_contiguous()
        assert torch.equal(gather_tokens(x, ids, backend=backend), gather_tokens_reference(x.contiguous(), ids))
        visible = x[:, :5]
        token = torch.randn(x.shape[2])
        assert torch.equal(unshuffle_with_mask_token(visible, token, ids_restore, backend=backend),
                           unshuffle_with_mask_token_reference(visible.contiguous(), token, ids_restore))


# ----------------------------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", PATCH_FUSED)
def test_opcheck(backend):
    from fastssl.ops.masking import _gather_tokens_op, _patchify_gather_op, _unshuffle_op

    ids_keep, _, ids_restore = _ids(2, 16, 0.5)
    images = torch.randn(2, 3, 16, 16, requires_grad=True)
    torch.library.opcheck(_patchify_gather_op, (images, ids_keep, 4, True, backend))
    torch.library.opcheck(_gather_tokens_op, (torch.randn(2, 16, 10, requires_grad=True), ids_keep, backend))
    torch.library.opcheck(_unshuffle_op, (torch.randn(2, 8, 10, requires_grad=True),
                                          torch.randn(10, requires_grad=True), ids_restore, backend))


@pytest.mark.parametrize("backend", CPP_ONLY)
def test_torch_compile_fullgraph_mae_step(backend, monkeypatch, tmp_path):
    # A fresh inductor cache: a cached backward graph survives a change of the custom op's schema.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()

    # Only the custom ops in the graph (forward and backward): every pointwise op would cost Inductor a C++
    # compile of several seconds here, and what is under test is the ops' registration, not Inductor's codegen.
    def step(images, tokens, token, ids_keep, ids_restore):
        target = patchify_gather(images, 4, ids_keep, normalize_pixels=True, backend=backend)
        visible = gather_tokens(tokens, ids_keep, backend=backend)
        return target, unshuffle_with_mask_token(visible, token, ids_restore, backend=backend)

    compiled = torch.compile(step, fullgraph=True)
    ids_keep, _, ids_restore = _ids(2, 16, 0.75)
    ins = [torch.randn(2, 3, 16, 16, requires_grad=True), torch.randn(2, 16, 8, requires_grad=True),
           torch.randn(1, 1, 8, requires_grad=True)]
    outs = compiled(*ins, ids_keep, ids_restore)
    expected = step(*ins, ids_keep, ids_restore)
    grads = [torch.randn_like(o) for o in expected]
    got = torch.autograd.grad(outs, ins, grads)
    want = torch.autograd.grad(expected, ins, grads)
    for o, e in zip(outs, expected):
        assert torch.equal(o, e)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-6, atol=1e-6)


def test_auto_picks_cpp_on_cpu_and_triton_refuses_huge_patches():
    require_cpp()
    assert _dispatch.select("patchify_gather", "auto", torch.device("cpu"), torch.float32, 768) == "cpp"
    assert _dispatch.select("gather_tokens", "auto", torch.device("cpu"), torch.bfloat16) == "cpp"
    with pytest.raises(_dispatch.BackendUnavailableError, match="triton"):
        patchify_gather(torch.randn(1, 3, 128, 128), 128, torch.zeros(1, 1, dtype=torch.int64), backend="triton")


# ----------------------------------------------------------------------------------------------------------------
# block_masking (BEiT)
# ----------------------------------------------------------------------------------------------------------------


def _masked_neighbours(mask, grid_h, grid_w):
    """Mean number of masked 4-neighbours of a masked cell."""
    grid = mask.reshape(-1, grid_h, grid_w)
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return (neighbours * grid).sum() / grid.sum()


@pytest.mark.parametrize("grid_h, grid_w, ratio", [(14, 14, 0.4), (14, 14, 0.75), (7, 9, 0.5), (14, 14, 0.0),
                                                   (2, 2, 0.5), (1, 1, 0.5)])
def test_block_masking_exact_count_and_triple(grid_h, grid_w, ratio):
    length = grid_h * grid_w
    target = int(ratio * length)
    ids_keep, mask, ids_restore = block_masking(32, grid_h, grid_w, ratio, generator=torch.Generator().manual_seed(1))
    assert ids_keep.shape == (32, length - target) and mask.shape == ids_restore.shape == (32, length)
    assert torch.all(mask.sum(1) == target)
    assert torch.all(mask.gather(1, ids_keep) == 0)
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(length).expand(32, length))
    assert torch.equal(mask, (ids_restore >= ids_keep.shape[1]).float())


def test_block_masks_are_blocky_and_random_masks_are_not():
    generator = torch.Generator().manual_seed(3)
    _, blocks, _ = block_masking(256, 14, 14, 0.4, generator=generator)
    _, scattered, _ = random_masking(256, 196, 0.4, generator=generator)
    # Uniform scattering gives ~ 4 * 0.4 * (edge effects) ~ 1.5 masked neighbours; BEiT's blocks give ~ 3.
    assert _masked_neighbours(blocks, 14, 14) > 2.5 > 1.7 > _masked_neighbours(scattered, 14, 14)
    # Every cell is masked sometimes (the corners too): no cell is starved by the block placement.
    assert torch.all(blocks.sum(0) > 0)


def test_block_masking_top_up_is_uniform_when_no_block_fits():
    # min_block = 50 on a 5 x 5 grid: no block of area >= 50 fits (h, w < 5), so every mask is the top-up alone,
    # which must then be uniform over the cells like random_masking.
    _, mask, _ = block_masking(3000, 5, 5, 0.6, min_block=50, generator=torch.Generator().manual_seed(5))
    assert torch.all(mask.sum(1) == 15)
    counts = mask.sum(0).double()
    sigma = math.sqrt(3000 * 0.6 * 0.4)
    assert (counts - 3000 * 0.6).abs().max() < 5 * sigma


def test_block_masking_is_reproducible_and_composes_with_patchify_gather():
    first = block_masking(4, 14, 14, 0.5, generator=torch.Generator().manual_seed(9))
    second = block_masking(4, 14, 14, 0.5, generator=torch.Generator().manual_seed(9))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    images = torch.randn(4, 3, 224, 224)
    visible = patchify_gather(images, 16, first[0])
    assert visible.shape == (4, 98, 768)
    assert torch.equal(visible, patchify_gather_reference(images, 16, first[0]))


# ----------------------------------------------------------------------------------------------------------------
# mask_tokens (BERT)
# ----------------------------------------------------------------------------------------------------------------


def test_mask_tokens_80_10_10_rule_within_binomial_bounds():
    vocab, mask_id, special = 1000, 3, (0, 1, 2)
    ids = torch.randint(5, vocab, (200, 512), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1], ids[:, -50:] = 1, 2, 0  # [CLS], [SEP] and padding
    masked, labels = mask_tokens(ids, vocab, mask_id, 0.15, special, generator=torch.Generator().manual_seed(1))
    assert masked.dtype == ids.dtype and masked.shape == ids.shape and labels.dtype == torch.int64
    selected = labels != -100
    assert not torch.any(selected & (ids < 3))  # special ids are never selected
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])

    def within(count, n, p):
        return abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p))

    n_selectable = int((ids >= 3).sum())
    n_selected = int(selected.sum())
    assert within(n_selected, n_selectable, 0.15)
    to_mask = int((masked[selected] == mask_id).sum())
    unchanged = int((masked[selected] == ids[selected]).sum())
    replaced = n_selected - to_mask - unchanged
    # A random replacement equals the original token with probability 1/V (counted as unchanged) and is the
    # mask id with probability 1/V (counted as masked); both are absorbed by the 5-sigma bounds.
    assert within(to_mask, n_selected, 0.8)
    assert within(unchanged, n_selected, 0.1 + 0.1 / vocab)
    assert within(replaced, n_selected, 0.1)
    assert masked.min() >= 0 and masked.max() < vocab
    # The random tokens are uniform over the vocabulary: their mean is close to (V - 1) / 2.
    swapped = masked[selected & (masked != mask_id) & (masked != ids)].double()
    assert abs(swapped.mean().item() - (vocab - 1) / 2) < 5 * (vocab / math.sqrt(12)) / math.sqrt(len(swapped))


def test_mask_tokens_is_reproducible_and_handles_edge_probabilities():
    ids = torch.randint(0, 50, (4, 30), dtype=torch.int32)
    a = mask_tokens(ids, 50, 49, generator=torch.Generator().manual_seed(2))
    b = mask_tokens(ids, 50, 49, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].dtype == torch.int32
    masked, labels = mask_tokens(ids, 50, 49, mask_prob=0.0)
    assert torch.equal(masked, ids) and torch.all(labels == -100)
    _, labels = mask_tokens(ids, 50, 49, mask_prob=1.0, special_ids=(7,))
    assert torch.equal(labels != -100, ids != 7)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs: every error is a ValueError naming the argument.
# ----------------------------------------------------------------------------------------------------------------

_IDS = torch.zeros(2, 4, dtype=torch.int64)
BAD_INPUTS = [
    (lambda: random_masking(2, 16, 1.0), "mask_ratio"),
    (lambda: random_masking(2, 16, -0.1), "mask_ratio"),
    (lambda: random_masking(2, 16, float("nan")), "mask_ratio"),
    (lambda: random_masking(0, 16, 0.5), "batch_size"),
    (lambda: random_masking(2, 0, 0.5), "num_patches"),
    (lambda: random_masking(2, 16, 0.5, noise=torch.rand(2, 15)), "noise must have shape"),
    (lambda: random_masking(2, 16, 0.5, noise=torch.zeros(2, 16, dtype=torch.int64)), "noise must be floating"),
    (lambda: patchify_gather(torch.randn(2, 3, 30, 32), 4, _IDS), "images: H = 30"),
    (lambda: patchify_gather(torch.randn(2, 3, 32, 32), 0, _IDS), "patch_size"),
    (lambda: patchify_gather(torch.randn(3, 32, 32), 4, _IDS), "images must be 4-D"),
    (lambda: patchify_gather(torch.randint(0, 9, (2, 3, 32, 32)), 4, _IDS), "images must be floating point"),
    (lambda: patchify_gather(torch.randn(2, 3, 32, 32), 4, _IDS + 64), r"ids_keep values must lie in \[0, 64\)"),
    (lambda: patchify_gather(torch.randn(2, 3, 32, 32), 4, _IDS - 1), "ids_keep values must lie in"),
    (lambda: patchify_gather(torch.randn(2, 3, 32, 32), 4, _IDS.float()), "ids_keep must be an integer tensor"),
    (lambda: patchify_gather(torch.randn(2, 3, 32, 32), 4, _IDS[0]), "ids_keep must be 2-D"),
    (lambda: patchify_gather(torch.randn(3, 3, 32, 32), 4, _IDS), "ids_keep has batch size 2"),
    (lambda: patchify_gather(torch.randn(2, 1, 4, 4), 1, _IDS, normalize_pixels=True), "normalize_pixels"),
    (lambda: gather_tokens(torch.randn(2, 8), _IDS), "x must be 3-D"),
    (lambda: gather_tokens(torch.randn(2, 8, 4), _IDS + 8), "ids values must lie in"),
    (lambda: gather_tokens(torch.randn(3, 8, 4), _IDS), "ids has batch size 2"),
    (lambda: gather_tokens(torch.randn(2, 8, 4), _IDS.bool()), "ids must be an integer tensor"),
    (lambda: gather_tokens(torch.randn(2, 8, 4), _IDS.to("meta")), "ids is on meta"),
    (lambda: unshuffle_with_mask_token(torch.randn(2, 3, 4), torch.randn(5), _IDS), "mask_token must have shape"),
    (lambda: unshuffle_with_mask_token(torch.randn(2, 3, 4), torch.ones(4, dtype=torch.int64), _IDS),
     "mask_token must be a floating-point"),
    (lambda: unshuffle_with_mask_token(torch.randn(2, 3, 4), torch.randn(4), _IDS + 4), "ids_restore values"),
    (lambda: unshuffle_with_mask_token(torch.randn(2, 5, 4), torch.randn(4), _IDS), "ids_restore has L = 4"),
    (lambda: unshuffle_with_mask_token(torch.randn(1, 3, 4), torch.randn(4), _IDS), "ids_restore has batch size"),
    (lambda: unshuffle_with_mask_token(torch.randn(2, 3, 4), torch.randn(4), _IDS[0]), "ids_restore must be a 2-D"),
    (lambda: block_masking(2, 14, 14, 1.0), "mask_ratio"),
    (lambda: block_masking(2, 0, 14, 0.5), "grid_h"),
    (lambda: block_masking(2, 14, 14, 0.5, min_block=0), "min_block"),
    (lambda: block_masking(2, 14, 14, 0.5, aspect=(3.0, 0.3)), "aspect"),
    (lambda: mask_tokens(torch.rand(2, 8), 10, 3), "input_ids must be an integer tensor"),
    (lambda: mask_tokens(torch.zeros(2, 8, dtype=torch.int64), 0, 3), "vocab_size"),
    (lambda: mask_tokens(torch.zeros(2, 8, dtype=torch.int64), 10, 3, mask_prob=1.5), "mask_prob"),
    (lambda: mask_tokens(torch.zeros(2, 8, dtype=torch.int64), 10, 3.0), "mask_token_id"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_check_range_false_still_checks_cpu_indices_on_the_host():
    """check_range=False only changes how CUDA indices are checked (no host sync); CPU indices keep the error."""
    with pytest.raises(ValueError, match="ids_keep values must lie in"):
        patchify_gather(torch.randn(2, 3, 32, 32), 4, _IDS + 64, check_range=False)
    with pytest.raises(ValueError, match="ids values must lie in"):
        gather_tokens(torch.randn(2, 8, 4), _IDS - 1, check_range=False)
    with pytest.raises(ValueError, match="ids_restore values"):
        unshuffle_with_mask_token(torch.randn(2, 3, 4), torch.randn(4), _IDS + 4, check_range=False)


# ----------------------------------------------------------------------------------------------------------------
# On a CUDA GPU (benchmarks/gpu_check.py runs these with `-m gpu`): Triton at the real sizes.
# ----------------------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_on_cuda_matches_reference_at_mae_sizes(dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(64, 3, 224, 224, device="cuda", generator=generator).to(dtype)
    ids_keep, _, ids_restore = random_masking(64, 196, 0.75, generator=generator)
    assert torch.equal(patchify_gather(images, 16, ids_keep, backend="triton"),
                       patchify_gather_reference(images, 16, ids_keep))
    out = patchify_gather(images, 16, ids_keep, normalize_pixels=True, backend="triton")
    ref64 = patchify_gather_reference(images.double(), 16, ids_keep, normalize_pixels=True)
    ref_same = patchify_gather_reference(images, 16, ids_keep, normalize_pixels=True)
    assert_error_within("normalized", out, ref64, ref_same, ATOL[dtype] * 4)
    x = _leaf(images)
    grad = torch.randn(out.shape, device="cuda").to(dtype)
    (got,) = torch.autograd.grad(patchify_gather(x, 16, ids_keep, True, backend="triton"), x, grad)
    x64 = _leaf(images.double())
    (g64,) = torch.autograd.grad(patchify_gather_reference(x64, 16, ids_keep, True), x64, grad.double())
    xs = _leaf(images)
    (gs,) = torch.autograd.grad(patchify_gather_reference(xs, 16, ids_keep, True), xs, grad)
    assert_error_within("d images", got, g64, gs, ATOL[dtype] * (1 + g64.abs().max().item()))
    tokens = _leaf(torch.randn(64, 197, 1024, device="cuda").to(dtype))
    visible = gather_tokens(tokens[:, 1:], ids_keep, backend="triton")
    assert torch.equal(visible, gather_tokens_reference(tokens[:, 1:], ids_keep))
    token = _leaf(torch.randn(1, 1, 1024, device="cuda").to(dtype))
    decoded = unshuffle_with_mask_token(visible, token, ids_restore, backend="triton")
    assert torch.equal(decoded, unshuffle_with_mask_token_reference(visible, token.reshape(-1), ids_restore))
    grad = torch.randn(decoded.shape, device="cuda").to(dtype)
    d_tokens, d_token = torch.autograd.grad(decoded, (tokens, token), grad)
    # visible[b, r] is tokens[b, 1 + ids_keep[b, r]] and lands at position ids_keep[b, r] of the decoder input.
    rows = ids_keep[:, :, None].expand(-1, -1, 1024)
    assert torch.equal(d_tokens[:, 1:].gather(1, rows), grad.gather(1, rows))
    expected_token = (grad.double() * (ids_restore >= 49)[:, :, None]).sum((0, 1))
    assert torch.allclose(d_token.reshape(-1).double(), expected_token, rtol=2e-2, atol=2e-2 * math.sqrt(64 * 147))


@pytest.mark.gpu
@needs_cuda
def test_unchecked_gathers_never_make_the_host_wait():
    """With check_range=False (MAE's indices from random_masking) the gathers and their backward make no
    synchronising CUDA call; the default check reads the range back (one sync), which the debug mode reports."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(16, 3, 32, 32, device="cuda", generator=generator, requires_grad=True)
    token = torch.randn(48, device="cuda", requires_grad=True)

    def step():
        ids_keep, _, ids_restore = random_masking(16, 64, 0.75, generator=generator)
        visible = patchify_gather(images, 4, ids_keep, backend="triton", check_range=False)
        kept = gather_tokens(visible, ids_keep[:, :8] % 16, backend="triton", check_range=False)
        decoded = unshuffle_with_mask_token(visible, token, ids_restore, backend="triton", check_range=False)
        (decoded.sum() + kept.sum()).backward()
        return ids_keep

    ids_keep = run_without_host_sync(step)
    with host_sync_forbidden(), pytest.raises(RuntimeError, match="synchroniz"):
        patchify_gather(images, 4, ids_keep, backend="triton")
    assert torch.isfinite(images.grad).all().item()
