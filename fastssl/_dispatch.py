"""Backend discovery and explicit dispatch (the xformers idea: backends declare what they accept and say why not).

Every fused op names its backends in priority order. For a call, each backend either accepts the inputs or
returns a one-line reason; ``backend="auto"`` takes the first that accepts, and forcing a backend that refuses
raises :class:`BackendUnavailableError` listing every backend's reason. When "auto" has to fall back to the
reference on a device that has a fast path, that is logged once per (op, reason).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

logger = logging.getLogger("fastssl")

BACKENDS = ("reference", "cpp", "triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this call; the message lists why for every backend."""


@functools.lru_cache(maxsize=None)
def extension() -> tuple[Optional[object], str]:
    """The compiled extension fastssl._C, or None and the reason it could not be imported."""
    try:
        module = importlib.import_module("fastssl._C")
    except ImportError as exc:
        reason = f"fastssl._C is not built ({exc}); run `pip install --no-build-isolation -e .`"
        warnings.warn(f"fastssl: {reason}. Ops fall back to the PyTorch reference.", RuntimeWarning, stacklevel=3)
        return None, reason
    return module, ""


@functools.lru_cache(maxsize=None)
def triton_module(name: str) -> tuple[Optional[object], str]:
    """fastssl.kernels.<name> (Triton), or None and the reason."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return None, f"triton is not installed ({exc})"
    try:
        return importlib.import_module(f"fastssl.kernels.{name}"), ""
    except ImportError as exc:
        return None, f"fastssl.kernels.{name} failed to import ({exc})"


def triton_interpreter() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels then run on CPU tensors (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cpu_native_bf16() -> tuple[bool, str]:
    """(whether this CPU does bf16 arithmetic in hardware, which instructions): AVX512-BF16 or AMX, the
    instructions oneDNN's bf16 convolutions and matmuls use. Without them torch emulates bf16 in fp32, slower
    than plain fp32."""
    try:
        if torch.cpu._is_amx_tile_supported():
            return True, "AMX"
        if torch.cpu._is_avx512_bf16_supported():
            return True, "AVX512-BF16"
    except AttributeError:  # private probes: a torch without them is treated as a CPU without native bf16
        return False, "this torch cannot probe the CPU's bf16 support"
    return False, "no AVX512-BF16 or AMX"


@dataclass(frozen=True)
class Backend:
    """One way to run an op: ``accepts(device, dtype, dim)`` returns "" when it can, else the reason it cannot
    (``dim`` is the row width of the op's inputs, or None when the question is about the machine alone)."""

    name: str
    accepts: Callable[[torch.device, torch.dtype, Optional[int]], str]


def cpp_backend(symbol: str, dtypes: Sequence[torch.dtype]) -> Backend:
    def accepts(device: torch.device, dtype: torch.dtype, dim: Optional[int] = None) -> str:
        module, reason = extension()
        if module is None:
            return reason
        if not hasattr(module, symbol):
            return f"fastssl._C has no {symbol} (rebuild the extension)"
        if device.type != "cpu":
            return f"the C++ kernel runs on CPU tensors, got {device.type}"
        if dtype not in dtypes:
            return f"the C++ kernel takes {_names(dtypes)}, got {dtype}"
        return ""

    return Backend("cpp", accepts)


def triton_backend(module_name: str, dtypes: Sequence[torch.dtype]) -> Backend:
    def accepts(device: torch.device, dtype: torch.dtype, dim: Optional[int] = None) -> str:
        module, reason = triton_module(module_name)
        if module is None:
            return reason
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
            return f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {device.type}"
        if dtype not in dtypes:
            return f"the Triton kernel takes {_names(dtypes)}, got {dtype}"
        if dim is not None and dim > module.max_dim(dtype):
            return f"the Triton kernel holds a row in shared memory: D <= {module.max_dim(dtype)} in {dtype}, got {dim}"
        return ""

    return Backend("triton", accepts)


def reference_backend() -> Backend:
    return Backend("reference", lambda device, dtype, dim=None: "")


# op name -> its backends in the order "auto" tries them; each ops module registers its ops at import.
OPS: dict[str, tuple[Backend, ...]] = {}


def register(op: str, backends: Sequence[Backend]) -> None:
    OPS[op] = tuple(backends)


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


@functools.lru_cache(maxsize=None)
def _log_fallback_once(op: str, reasons: str) -> None:
    logger.warning("fastssl.ops.%s: using the PyTorch reference (%s)", op, reasons)


# Under torch.compile the choice is made once, eagerly, at trace time: it depends only on constants (the device and
# dtype, which the compiled graph guards on anyway), and tracing into importlib would break the graph.
@torch.compiler.assume_constant_result
def select(op: str, backend: str, device: torch.device, dtype: torch.dtype, dim: Optional[int] = None) -> str:
    """Pick the backend of `op` for one call; raise if a forced one refuses, naming every backend's reason."""
    backends = OPS[op]
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}")
    declared = {b.name: b for b in backends}
    reasons = {name: declared[name].accepts(device, dtype, dim) if name in declared else f"{op} has no {name} backend"
               for name in BACKENDS}
    if backend != "auto":
        if reasons[backend]:
            listed = "; ".join(f"{name}: {why or 'available'}" for name, why in reasons.items())
            raise BackendUnavailableError(f"fastssl.ops.{op}: backend={backend!r} cannot run this call. {listed}")
        return backend
    for b in backends:
        # The Triton interpreter (CPU tensors under TRITON_INTERPRET=1) is for tests: only a forced backend uses it.
        if b.name == "triton" and device.type == "cpu":
            continue
        if not reasons[b.name]:
            if b.name == "reference" and device.type in ("cpu", "cuda"):
                fast = "; ".join(f"{n}: {reasons[n]}" for n in BACKENDS if n != "reference" and n in reasons)
                _log_fallback_once(op, fast)
            return b.name
    raise BackendUnavailableError(f"fastssl.ops.{op}: no backend accepts this call: {reasons}")


def availability(backends: Sequence[Backend], device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """backend name -> "" if it would run on (device, dtype), else the reason (for `fastssl info`)."""
    reasons = {b.name: b.accepts(device, dtype) for b in backends}
    return {name: reasons.get(name, "not implemented for this op") for name in BACKENDS}
