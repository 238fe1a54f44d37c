"""fastssl: fused kernels and a trainer for self-supervised learning in PyTorch."""

__version__ = "0.1.0"

from fastssl import nn, ops  # noqa: E402
from fastssl._dispatch import BackendUnavailableError  # noqa: E402

__all__ = ["BackendUnavailableError", "nn", "ops", "__version__"]
