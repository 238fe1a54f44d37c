"""Triton GPU kernels, one module per fused op (installed as fastssl.kernels)."""
