"""fastssl.ops.nt_xent / info_nce / clip_loss: every backend against the float64 reference.

Tolerance (DESIGN.md): a backend's error against the float64 reference may be at most twice the error of the
reference computed in the input dtype, plus a small atol.
"""

import math

import pytest
import torch

import fastssl
from fastssl import _dispatch
from fastssl.ops import clip_loss, clip_loss_reference, info_nce, info_nce_reference, nt_xent, nt_xent_reference
from tests.conftest import assert_error_within, fused_backends, require_cpp, run_without_host_sync

FUSED = fused_backends("cpu")
ATOL = {torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 5e-4}
# The Triton interpreter is slow: it gets the small sizes.
SIZES = [(1, 1), (3, 7), (17, 128), (130, 130), (1823, 7), (1823, 128)]
SMALL_SIZES = [(1, 1), (3, 7), (17, 130), (130, 128)]


def _sizes(backend):
    return SMALL_SIZES if backend == "triton" else SIZES


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def _check_against_reference(fn, ref_fn, inputs, dtype, backend):
    """Loss and input gradients of `fn` vs the float64 reference, with the reference-in-dtype as the yardstick."""
    ins = [_leaf(t.to(dtype)) for t in inputs]
    out = fn(*ins, backend=backend)
    assert out.dtype == torch.float32 and out.dim() == 0
    grads = _grads(out, ins)
    ins64 = [_leaf(t.to(dtype).double()) for t in inputs]
    ref64 = ref_fn(*ins64)
    grads64 = _grads(ref64, ins64)
    ins_same = [_leaf(t.to(dtype)) for t in inputs]
    ref_same = ref_fn(*ins_same)
    grads_same = _grads(ref_same, ins_same)
    atol = ATOL[dtype]
    assert_error_within("loss", out, ref64, ref_same, atol * max(1.0, abs(ref64.item())))
    # Gradients scale like 1 / rows; a true gradient of 0 (D = 1: normalisation has no freedom) still carries
    # the rounding of the upstream gradient, so the atol is relative to that scale, not to the result.
    grad_scale = 1.0 / ins[0].shape[0]
    for i, (g, g64, gs) in enumerate(zip(grads, grads64, grads_same)):
        assert g.dtype == dtype and g.shape == ins[i].shape
        assert_error_within(f"grad[{i}]", g, g64, gs, atol * (g64.abs().max().item() + grad_scale))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nt_xent_matches_float64_reference(backend, dtype):
    for n, d in _sizes(backend):
        if dtype != torch.float32 and n == 1823 and d == 7:
            continue
        z1, z2 = torch.randn(n, d), torch.randn(n, d)
        temperature = 0.1 + 0.8 * torch.rand(()).item()
        _check_against_reference(
            lambda a, b, backend: nt_xent(a, b, temperature, backend=backend),
            lambda a, b: nt_xent_reference(a, b, temperature),
            [z1, z2], dtype, backend,
        )


@pytest.mark.parametrize("backend", [p for p in fused_backends("cpu", "nt_xent") if p.values[0] == "triton"])
@pytest.mark.parametrize("normalize", [True, False])
def test_nt_xent_symmetric_backward_equals_the_four_matmul_path(backend, normalize, monkeypatch):
    """The 2-matmul symmetric backward (taken by bf16 / fp16 inputs) against the renormalised 4-matmul path, both
    forced in fp32 on the same inputs, and against the float64 reference; 2N = 2 x 97 spans several tiles."""
    from fastssl.kernels import info_nce as kernels

    z1, z2 = torch.randn(97, 40), torch.randn(97, 40)
    if not normalize:
        z1, z2 = z1 / 5, z2 / 5
    results = {}
    for mode in ("always", "never"):
        monkeypatch.setattr(kernels, "NT_XENT_SYMMETRIC", mode)
        a, b = _leaf(z1), _leaf(z2)
        loss = nt_xent(a, b, 0.3, normalize=normalize, backend=backend)
        results[mode] = (loss, *_grads(loss, (a, b)))
    a, b = _leaf(z1.double()), _leaf(z2.double())
    ref = nt_xent_reference(a, b, 0.3) if normalize else _nt_xent_unnormalized(a, b, 0.3)
    grads64 = _grads(ref, (a, b))
    for got, four, g64 in zip(results["always"][1:], results["never"][1:], grads64):
        assert torch.allclose(got, four, rtol=1e-4, atol=1e-6 * g64.abs().max().item() + 1e-8)
        assert torch.allclose(got.double(), g64, rtol=1e-4, atol=1e-5 * g64.abs().max().item())
    assert torch.equal(results["always"][0], results["never"][0])  # the forward is shared
    monkeypatch.setattr(kernels, "NT_XENT_SYMMETRIC", "sometimes")
    with pytest.raises(ValueError, match="NT_XENT_SYMMETRIC"):
        nt_xent(_leaf(z1), _leaf(z2), 0.3, backend=backend).backward()


def _nt_xent_unnormalized(z1, z2, temperature):
    z = torch.cat([z1, z2])
    s = z @ z.T / temperature
    s.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    pos = (torch.arange(2 * n) + n) % (2 * n)
    return torch.nn.functional.cross_entropy(s, pos)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_info_nce_matches_float64_reference(backend, dtype):
    for n, d in _sizes(backend):
        m = n + int(torch.randint(1, 300, ()))  # keys = positives + a queue of negatives
        q, k = torch.randn(n, d), torch.randn(m, d)
        pos = torch.randint(0, m, (n,))
        _check_against_reference(
            lambda a, b, backend: info_nce(a, b, 0.07, positive_index=pos, backend=backend),
            lambda a, b: info_nce_reference(a, b, 0.07, positive_index=pos),
            [q, k], dtype, backend,
        )


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clip_loss_matches_float64_reference_including_logit_scale_grad(backend, dtype):
    for n, d in _sizes(backend):
        img, txt = torch.randn(n, d), torch.randn(n, d)
        scale = torch.tensor(math.exp(torch.rand(()).item() * math.log(100.0)))
        ins = [_leaf(img.to(dtype)), _leaf(txt.to(dtype)), _leaf(scale)]
        out = clip_loss(*ins, backend=backend)
        grads = _grads(out, ins)
        ins64 = [_leaf(img.to(dtype).double()), _leaf(txt.to(dtype).double()), _leaf(scale.double())]
        ref64 = clip_loss_reference(*ins64)
        grads64 = _grads(ref64, ins64)
        ins_same = [_leaf(img.to(dtype)), _leaf(txt.to(dtype)), _leaf(scale)]
        ref_same = clip_loss_reference(*ins_same)
        grads_same = _grads(ref_same, ins_same)
        atol = ATOL[dtype]
        assert_error_within("loss", out, ref64, ref_same, atol * max(1.0, ref64.item()))
        for name, g, g64, gs in zip(("d_image", "d_text", "d_logit_scale"), grads, grads64, grads_same):
            assert_error_within(name, g, g64, gs, atol * (g64.abs().max().item() + 1.0 / n))


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_non_contiguous_inputs(backend):
    base1, base2 = torch.randn(2, 130, 40), torch.randn(130, 80)
    z1, z2 = base1[1, :, ::2], base2[:, ::4]  # strided views, (130, 20) each
    assert not z1.is_contiguous() and not z2.is_contiguous()
    expected = nt_xent_reference(z1.double(), z2.double(), 0.3)
    assert torch.allclose(nt_xent(z1, z2, 0.3, backend=backend).double(), expected, atol=1e-5)
    keys = torch.randn(20, 300).t()  # transposed view
    assert not keys.is_contiguous()
    expected = info_nce_reference(z1.double(), keys.double(), 0.2)
    assert torch.allclose(info_nce(z1, keys, 0.2, backend=backend).double(), expected, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
@pytest.mark.parametrize("n", [1, 5, 64])
def test_all_equal_embeddings_give_log_2n_minus_1(backend, n):
    row = torch.randn(1, 33)
    z = row.expand(n, 33).contiguous()
    loss = nt_xent(z, z.clone(), temperature=0.2, backend=backend)
    assert abs(loss.item() - math.log(2 * n - 1)) < 1e-5


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_non_finite_embeddings_give_non_finite_loss(backend):
    for bad in (float("nan"), float("inf")):
        z1, z2 = torch.randn(9, 16), torch.randn(9, 16)
        z1[4, 3] = bad
        assert not torch.isfinite(nt_xent(z1, z2, backend=backend))
        assert not torch.isfinite(info_nce(z1, z2, backend=backend))
        assert not torch.isfinite(clip_loss(z1, z2, torch.tensor(10.0), backend=backend))
        # without normalisation too: inf must not turn into a finite number
        assert not torch.isfinite(nt_xent(z1, z2, normalize=False, backend=backend))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gradcheck_float64(backend):
    if backend == "cpp":
        require_cpp()
    z1 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.4, backend=backend), (z1, z2))
    keys = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([2, 0, 6])
    assert torch.autograd.gradcheck(
        lambda a, b: info_nce(a, b, 0.3, positive_index=pos, backend=backend), (z1, keys)
    )
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: clip_loss(a, b, s, backend=backend), (z1, z2, scale))
    assert torch.autograd.gradcheck(
        lambda a, b, s: clip_loss(a, b, s, normalize=False, backend=backend), (z1, z2, scale)
    )


@pytest.mark.parametrize("backend", FUSED)
def test_opcheck(backend):
    from fastssl.ops.info_nce import _info_nce_fused, _nt_xent_fused

    q = torch.randn(14, 9).requires_grad_(True)
    k = torch.randn(21, 9).requires_grad_(True)
    scale = torch.tensor(5.0, requires_grad=True)
    pos = torch.randint(0, 21, (14,))
    exclude = torch.where(torch.rand(14) < 0.5, -1, (pos + 1) % 21)
    for normalize in (False, True):
        torch.library.opcheck(_info_nce_fused, (q, k, scale, pos, exclude, normalize, backend))
        torch.library.opcheck(_nt_xent_fused, (q, torch.tensor(2.0), normalize, backend))


@pytest.mark.parametrize("backend", [p for p in FUSED if p.values[0] == "cpp"])
def test_torch_compile_fullgraph(backend, monkeypatch, tmp_path):
    # A fresh inductor cache: a cached backward graph survives a change of the custom op's schema.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()

    def step(z1, z2, img, txt, scale):
        return nt_xent(z1, z2, 0.5, backend=backend) + clip_loss(img, txt, scale, backend=backend)

    compiled = torch.compile(step, fullgraph=True)
    ins = [torch.randn(37, 24, requires_grad=True) for _ in range(4)] + [torch.tensor(9.0, requires_grad=True)]
    out = compiled(*ins)
    out.backward()
    got = [t.grad.clone() for t in ins]
    for t in ins:
        t.grad = None
    expected = step(*ins)
    expected.backward()
    assert torch.allclose(out, expected, atol=1e-6)
    for g, t in zip(got, ins):
        assert torch.allclose(g, t.grad, atol=1e-6)


@pytest.mark.parametrize("backend", [p for p in FUSED if p.values[0] == "cpp"])
def test_int64_indexing_more_than_2_to_31_logits(backend):
    # 46341^2 > 2^31 similarity pairs: any int32 flat index over the (N, M) grid would overflow.
    n = 46341
    q = torch.randn(n, 1)
    k = torch.randn(n, 1)
    loss = info_nce(q, k, 0.5, normalize=False, backend=backend)
    # Closed form for D = 1 without normalisation: logits are outer products, computed row by row in float64.
    qd, kd = q.double().squeeze(1), k.double().squeeze(1)
    total = 0.0
    for chunk in torch.arange(n).split(4096):
        logits = torch.outer(qd[chunk], kd) / 0.5
        total += (torch.logsumexp(logits, dim=1) - logits[torch.arange(len(chunk)), chunk]).sum().item()
    assert abs(loss.item() - total / n) < 1e-4 * max(1.0, abs(total / n))


def test_backend_errors_list_reasons():
    z = torch.randn(4, 8)
    with pytest.raises(fastssl.BackendUnavailableError,
                       match="reference: available; cpp: .*cuda: nt_xent has no cuda backend"):
        nt_xent(z, z, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        nt_xent(z, z, backend="fast")


BAD_INPUTS = [
    (lambda: nt_xent(torch.randn(4), torch.randn(4)), "z1 must be 2-D"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(5, 8)), "same N"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(4, 9)), "z2 has D=9"),
    (lambda: nt_xent(torch.randn(0, 8), torch.randn(0, 8)), "z1 must have at least one row"),
    (lambda: nt_xent(torch.randn(4, 0), torch.randn(4, 0)), "z1 must have at least one column"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(4, 8), temperature=0.0), "temperature"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(4, 8), temperature=-1.0), "temperature"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(4, 8), temperature=float("nan")), "temperature"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(4, 8), temperature=float("inf")), "temperature"),
    (lambda: nt_xent(torch.randint(0, 9, (4, 8)), torch.randint(0, 9, (4, 8))), "z1 must be floating point"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(4, 8).double()), "z2 has dtype"),
    (lambda: nt_xent(torch.randn(4, 8), torch.randn(4, 8, device="meta")), "z2 is on meta"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(3, 8)), "M >= N"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(6, 8), positive_index=torch.tensor([0, 1, 2, 6])),
     "positive_index values must lie in"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(6, 8), positive_index=torch.tensor([0, 1, -1, 2])),
     "positive_index values must lie in"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(6, 8), positive_index=torch.tensor([0, 1])),
     "positive_index must have shape"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(6, 8), positive_index=torch.zeros(4)),
     "positive_index must be an integer tensor"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(6, 8, dtype=torch.float16)), "keys has dtype"),
    (lambda: clip_loss(torch.randn(4, 8), torch.randn(5, 8), torch.tensor(1.0)), "same N"),
    (lambda: clip_loss(torch.randn(4, 8), torch.randn(4, 8), torch.ones(2)), "logit_scale must be a 0-d"),
    (lambda: clip_loss(torch.randn(4, 8), torch.randn(4, 8), float("nan")), "logit_scale"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------------------------------------------
# On a CUDA GPU (benchmarks/gpu_check.py runs these with `-m gpu`).
# ----------------------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, d", [(1, 1), (17, 7), (130, 130), (1823, 128), (4099, 256)])
def test_triton_on_cuda_matches_float64_reference(dtype, n, d):
    z1, z2 = torch.randn(n, d, device="cuda"), torch.randn(n, d, device="cuda")
    _check_against_reference(
        lambda a, b, backend: nt_xent(a, b, 0.2, backend=backend),
        lambda a, b: nt_xent_reference(a, b, 0.2),
        [z1, z2], dtype, "triton",
    )
    keys = torch.randn(n + 77, d, device="cuda")
    pos = torch.randint(0, n + 77, (n,), device="cuda")
    _check_against_reference(
        lambda a, b, backend: info_nce(a, b, 0.07, positive_index=pos, backend=backend),
        lambda a, b: info_nce_reference(a, b, 0.07, positive_index=pos),
        [z1, keys], dtype, "triton",
    )
    scale = torch.tensor(50.0, device="cuda")
    _check_against_reference(
        lambda a, b, backend: clip_loss(a, b, scale, backend=backend),
        lambda a, b: clip_loss_reference(a, b, scale),
        [z1, z2], dtype, "triton",
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op", ["nt_xent", "clip_loss"])
def test_triton_on_cuda_memory_is_linear_in_batch(op):
    """2N = 32768 views: the (2N, 2N) logits alone would be 2 GiB in bf16; the fused op stays O(N * D)."""
    n, d = (16384, 128) if op == "nt_xent" else (32768, 256)
    a = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    scale = torch.tensor(20.0, device="cuda", requires_grad=True)
    inputs_and_grads = 2 * (a.numel() + b.numel()) * a.element_size()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = nt_xent(a, b, 0.5, backend="triton") if op == "nt_xent" else clip_loss(a, b, scale, backend="triton")
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - inputs_and_grads
    assert extra <= 64 * 2**20, f"peak extra memory {extra / 2**20:.1f} MiB > 64 MiB"


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_normalization_matches_float64_reference(backend, dtype):
    n, d = 37, 20
    z1, z2 = 0.3 * torch.randn(n, d), 0.3 * torch.randn(n, d)
    keys = 0.3 * torch.randn(n + 50, d)
    _check_against_reference(
        lambda a, b, backend: nt_xent(a, b, 0.5, normalize=False, backend=backend),
        lambda a, b: nt_xent_reference(a, b, 0.5, normalize=False),
        [z1, z2], dtype, backend,
    )
    _check_against_reference(
        lambda a, b, backend: info_nce(a, b, 0.2, normalize=False, backend=backend),
        lambda a, b: info_nce_reference(a, b, 0.2, normalize=False),
        [z1, keys], dtype, backend,
    )
    scale = torch.tensor(3.0)
    _check_against_reference(
        lambda a, b, backend: clip_loss(a, b, scale, normalize=False, backend=backend),
        lambda a, b: clip_loss_reference(a, b, scale, normalize=False),
        [z1, z2], dtype, backend,
    )


@pytest.mark.parametrize("backend", [p for p in FUSED if p.values[0] == "triton"])
def test_triton_refuses_rows_wider_than_its_tiles_with_a_reason(backend):
    z = torch.randn(4, 1024)  # fp32 rows of 4 KiB do not fit the kernel's shared-memory tiles
    with pytest.raises(fastssl.BackendUnavailableError, match=r"triton: .*D <= 512"):
        nt_xent(z, z.clone(), backend=backend)
    assert _dispatch.select("nt_xent", "auto", torch.device("cpu"), torch.float32, 1024) in ("cpp", "reference")


@pytest.mark.parametrize("backend", FUSED)
def test_keys_without_grad_skip_dk_and_keep_dq(backend):
    """MoCo: the keys (momentum encoder + queue) need no gradient, so the fused backward skips dK."""
    q = torch.randn(23, 16, requires_grad=True)
    keys = torch.randn(90, 16)
    pos = torch.randint(0, 90, (23,))
    info_nce(q, keys, 0.2, positive_index=pos, backend=backend).backward()
    dq_without = q.grad.clone()
    q.grad = None
    keys.requires_grad_(True)
    info_nce(q, keys, 0.2, positive_index=pos, backend=backend).backward()
    torch.testing.assert_close(dq_without, q.grad)
    assert keys.grad is not None
    from fastssl.ops.info_nce import _info_nce_fused

    exclude = torch.full((23,), -1)
    torch.library.opcheck(_info_nce_fused, (q, keys.detach(), torch.tensor(5.0), pos, exclude, True, backend))


_PEAK_SCRIPT = r"""
import ctypes, sys, torch
from pathlib import Path
import fastssl

def rss(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

torch.set_num_threads(2)
op, n = sys.argv[1], int(sys.argv[2])
a = torch.randn(n, 128, requires_grad=True)
b = torch.randn(n, 128, requires_grad=True)
def step():
    a.grad = b.grad = None
    loss = fastssl.ops.nt_xent(a, b, backend="cpp") if op == "nt_xent" else \
        fastssl.ops.clip_loss(a, b, torch.tensor(50.0), backend="cpp")
    loss.backward()
step()
ctypes.CDLL("libc.so.6").malloc_trim(0)
base = rss("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
step()
print(rss("VmHWM") - base)
"""


@pytest.mark.parametrize("op", ["nt_xent", "clip_loss"])
def test_cpp_peak_memory_is_linear_not_quadratic(op):
    """2N = 8192 views: the logit matrix alone would be 256 MiB in fp32; the C++ path must stay O(N * D)."""
    import os
    import subprocess
    import sys

    require_cpp()
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed blocks leave the RSS at once
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, op, "4096"], env=env, capture_output=True,
                         text=True, check=True)
    peak_mib = float(out.stdout.strip().splitlines()[-1])
    assert peak_mib < 32, f"peak extra memory {peak_mib:.1f} MiB (the N x N logits would be 256 MiB)"


@pytest.mark.gpu
@needs_cuda
def test_triton_nt_xent_and_clip_never_make_the_host_wait():
    """Forward and backward of the fused losses make no synchronising CUDA call (a training step must not drain
    the GPU's queue)."""
    a = torch.randn(300, 128, device="cuda", requires_grad=True)
    b = torch.randn(300, 128, device="cuda", requires_grad=True)
    scale = torch.tensor(14.0, device="cuda", requires_grad=True)

    def step():
        loss = nt_xent(a, b, 0.5, backend="triton") + clip_loss(a, b, scale, backend="triton")
        loss.backward()
        return loss

    loss = run_without_host_sync(step)
    assert torch.isfinite(loss).item() and torch.isfinite(a.grad).all().item()
