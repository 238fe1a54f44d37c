import contextlib
import os

import pytest
import torch

from fastssl import _dispatch

torch.set_num_threads(min(2, os.cpu_count() or 1))


# CI sets FASTSSL_REQUIRE_BACKENDS=cpp,triton so that a backend that failed to build fails the run instead of
# quietly skipping its tests.
REQUIRED = {b for b in os.environ.get("FASTSSL_REQUIRE_BACKENDS", "").split(",") if b}


def fused_backends(device: str = "cpu", op: str = "info_nce") -> list:
    """The fused backends of `op` that can run on `device` here; each test param is skipped (with the reason)
    otherwise."""
    params = []
    for name in ("cpp", "triton"):
        backend = next(b for b in _dispatch.OPS[op] if b.name == name)
        why = backend.accepts(torch.device(device), torch.float32)
        skip = bool(why) and name not in REQUIRED
        params.append(pytest.param(name, marks=pytest.mark.skipif(skip, reason=why)))
    return params


def require_cpp() -> None:
    """Skip a test that needs fastssl._C where it is not built; fail instead where CI requires the backend."""
    module, why = _dispatch.extension()
    if module is None:
        (pytest.fail if "cpp" in REQUIRED else pytest.skip)(why)


def assert_error_within(name, out, ref64, ref_same, atol, factor=2.0):
    """The op contract's tolerance: |out - ref64| <= factor * |ref_same - ref64| + atol, elementwise max."""
    out, ref64, ref_same = (t.detach().double() for t in (out, ref64, ref_same))
    err = (out - ref64).abs().max().item()
    ref_err = (ref_same - ref64).abs().max().item()
    assert err <= factor * ref_err + atol, (
        f"{name}: error {err:.3g} vs float64 > {factor} x reference error {ref_err:.3g} + atol {atol:.1g}"
    )


def run_without_host_sync(fn):
    """``fn()`` once (it compiles its kernels), then again with every synchronising CUDA call raising
    (``torch.cuda.set_sync_debug_mode("error")``): a training step must not drain the GPU's queue. Returns the
    second call's result."""
    fn()
    with host_sync_forbidden():
        return fn()


@contextlib.contextmanager
def host_sync_forbidden():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)
