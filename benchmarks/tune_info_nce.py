"""Sweep the Triton InfoNCE kernels' block sizes, warps and stages on the GPU at the target shapes.

    python benchmarks/tune_info_nce.py --json best.json

Times forward and backward separately (CUDA events, median) for each configuration at NT-Xent 2N = 32768,
D = 128 and CLIP N = 32768, D = 256 in bf16, prints a table, and writes the fastest configuration per head
dimension to --json; bench_contrastive.py --triton-config applies it. The knobs are the module constants of
kernels/info_nce.py, so the defaults there can be updated from this table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

KNOBS = ("_MAX_BLOCK", "_FWD_TILE_BYTES", "_BWD_TILE_BYTES", "_NUM_WARPS")


def apply_config(config: dict) -> None:
    from fastssl.kernels import info_nce as kernels

    for name, value in config.items():
        if name not in KNOBS:
            raise ValueError(f"unknown Triton config knob {name!r}; known: {KNOBS}")
        setattr(kernels, name, value)


def candidates():
    # Square tiles (the dq and dk kernels must share them); the stage count follows the module's row-size rule.
    for block, fwd_bytes, bwd_bytes, warps in itertools.product(
        (32, 64, 128), (16 << 10, 32 << 10, 64 << 10), (16 << 10, 32 << 10), (4, 8)
    ):
        yield {"_MAX_BLOCK": block, "_FWD_TILE_BYTES": fwd_bytes, "_BWD_TILE_BYTES": bwd_bytes, "_NUM_WARPS": warps}


def time_config(rows: int, dim: int) -> tuple[float, float]:
    from triton.testing import do_bench

    from fastssl.kernels import info_nce as kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(rows, dim, device="cuda", generator=g, dtype=torch.bfloat16)
    scale = torch.tensor(2.0, device="cuda")
    coef = torch.tensor(1.0 / rows, device="cuda")
    pos = (torch.arange(rows, device="cuda") + rows // 2) % rows
    exclude = torch.arange(rows, device="cuda")
    fwd = lambda: kernels.info_nce_forward(z, z, scale, pos, exclude, True)  # noqa: E731
    _, lse = fwd()
    bwd = lambda: kernels.info_nce_backward(z, z, scale, pos, exclude, lse, coef, True)  # noqa: E731
    return (do_bench(fwd, warmup=10, rep=60, return_mode="median"),
            do_bench(bwd, warmup=10, rep=60, return_mode="median"))


def clip_candidates():
    """The fused CLIP kernels use one tile for all four passes (the backward's rule): a short list at D = 256."""
    for bwd_bytes, warps in itertools.product((16 << 10, 32 << 10, 64 << 10), (4, 8)):
        yield {"_MAX_BLOCK": 128, "_BWD_TILE_BYTES": bwd_bytes, "_NUM_WARPS": warps}


def time_clip(rows: int, dim: int) -> tuple[float, float]:
    from triton.testing import do_bench

    from fastssl.kernels import info_nce as kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    image = torch.randn(rows, dim, device="cuda", generator=g, dtype=torch.bfloat16)
    text = torch.randn(rows, dim, device="cuda", generator=g, dtype=torch.bfloat16)
    scale = torch.tensor(14.3, device="cuda")
    coef = torch.tensor(1.0 / (2 * rows), device="cuda")
    fwd = lambda: kernels.clip_forward(image, text, scale, True)  # noqa: E731
    _, stats = fwd()
    bwd = lambda: kernels.clip_backward(image, text, scale, stats, coef, True)  # noqa: E731
    return (do_bench(fwd, warmup=10, rep=60, return_mode="median"),
            do_bench(bwd, warmup=10, rep=60, return_mode="median"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--budget-s", type=float, default=150.0)
    parser.add_argument("--clip", action="store_true", help="sweep the fused CLIP kernels at N = 32768, D = 256 only")
    args = parser.parse_args()
    from fastssl.kernels import info_nce as kernels

    defaults = {name: getattr(kernels, name) for name in KNOBS}
    best = {}
    if args.clip:
        start, results = time.time(), []
        for config in [defaults] + list(clip_candidates()):
            if time.time() - start > args.budget_s:
                print("tuning budget spent", flush=True)
                break
            apply_config({**defaults, **config})
            try:
                fwd_ms, bwd_ms = time_clip(32768, 256)
            except Exception as exc:  # noqa: BLE001 - out of shared memory / registers: not a candidate
                print(f"clip N=32768 D=256 {config}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            results.append((fwd_ms + bwd_ms, fwd_ms, bwd_ms, {**defaults, **config}))
            print(f"clip N=32768 D=256 {config}: fwd {fwd_ms:.3f} ms bwd {bwd_ms:.3f} ms "
                  f"(total {fwd_ms + bwd_ms:.3f})", flush=True)
        apply_config(defaults)
        if results:
            total, fwd_ms, bwd_ms, config = min(results, key=lambda r: r[0])
            print(f"best clip: {config} fwd {fwd_ms:.3f} bwd {bwd_ms:.3f} ms", flush=True)
            best["256"] = config
        if args.json:
            args.json.write_text(json.dumps(best, indent=1))
        return
    for rows, dim in ((32768, 128), (32768, 256)):
        results = []
        start = time.time()
        for config in [defaults] + list(candidates()):
            if time.time() - start > args.budget_s / 2:
                print("tuning budget spent", flush=True)
                break
            apply_config(config)
            try:
                fwd_ms, bwd_ms = time_config(rows, dim)
            except Exception as exc:  # out of shared memory / registers: not a candidate
                print(f"rows={rows} D={dim} {config}: {type(exc).__name__}", flush=True)
                continue
            results.append((fwd_ms + bwd_ms, fwd_ms, bwd_ms, config))
            tag = "default" if config is defaults else ""
            print(f"rows={rows} D={dim} {config}: fwd {fwd_ms:.3f} ms bwd {bwd_ms:.3f} ms {tag}", flush=True)
        apply_config(defaults)
        if results:
            total, fwd_ms, bwd_ms, config = min(results, key=lambda r: r[0])
            print(f"best at rows={rows} D={dim}: {config} fwd {fwd_ms:.3f} bwd {bwd_ms:.3f} ms", flush=True)
            best[str(dim)] = config
    if args.json:
        args.json.write_text(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
