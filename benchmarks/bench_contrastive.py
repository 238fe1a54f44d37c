"""Benchmark the fused contrastive losses against PyTorch eager and torch.compile (forward + backward).

Napkin math. For R query rows, C key rows and width D, one pass over the logit matrix is a matmul of 2*R*C*D
FLOPs. The minimum work of a loss and its gradient is three such matmuls (the logits, then dQ = G K and
dK = G^T Q): "model FLOPs" = 6*R*C*D, the number every TFLOP/s column below divides by. Tiled kernels recompute
the logits in the backward (FlashAttention): the general path does 5 passes; the C++ NT-Xent kernel uses the
symmetry of Z Z^T and does 4 half-size passes = 4*R*C*D. NT-Xent has R = C = 2N; CLIP has R = C = N (one logit
matrix, two softmax directions). The minimum bytes are O((R + C) * D): these losses are compute-bound at every
size here, so the floor is model FLOPs / the matmul peak measured in the same run.

    CPU  (pytest-benchmark or `python benchmarks/bench_contrastive.py --device cpu`): NT-Xent at 2N in
         {1024, 4096, 8192}, D = 128, fp32: reference eager, torch.compile(reference), cpp.
    GPU  (`python benchmarks/bench_contrastive.py --device cuda`): NT-Xent at 2N in {8192, 32768, 65536}, D = 128
         and CLIP at N in {8192, 32768, 65536}, D = 256, bf16 and fp32: eager, torch.compile, triton; CUDA events
         through triton.testing.do_bench (median). Peak extra memory = max_memory_allocated above the inputs
         and their gradients (which any implementation must hold).

CPU peak extra memory is measured in a fresh subprocess per case: glibc is told to mmap every allocation over
64 KiB (so freed memory leaves the RSS at once), the peak RSS is reset after a warm-up, and the growth of the
peak over the RSS with the inputs in place is reported.

No peer library is timed: lightly and open_clip pull torchvision (which does not import beside this torch build)
and Inf-CL is not installable offline; their published numbers are quoted in the README instead.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CPU_SIZES = (1024, 4096, 8192)
CPU_PEAK_GFLOPS = 200.0  # fp32 FMA peak of the 2-core AVX2 dev machine (issue 2); the GPU run measures its own


def model_flops(rows: int, cols: int, dim: int) -> float:
    return 6.0 * rows * cols * dim


# ------------------------------------------------------------------------------------------------------------
# Cases: each returns a closure that runs forward + backward once.
# ------------------------------------------------------------------------------------------------------------


def make_case(op: str, impl: str, size: int, dim: int, dtype: torch.dtype, device: str):
    import fastssl
    from fastssl.ops import clip_loss_reference, nt_xent_reference

    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size if op == "clip" else size // 2, dim, device=device, dtype=dtype, generator=g)
    b = torch.randn(a.shape, device=device, dtype=dtype, generator=g)
    a.requires_grad_(True)
    b.requires_grad_(True)
    scale = torch.tensor(14.3, device=device, requires_grad=True)
    if impl.startswith("triton"):
        from fastssl.kernels import info_nce as kernels

        # "triton4": NT-Xent's 4-matmul backward (dq + dk, renormalised), for comparison with the 2-matmul
        # symmetric one that "triton" takes for bf16 / fp16.
        kernels.NT_XENT_SYMMETRIC = "never" if impl == "triton4" else "half"
        impl = "triton"
    if op == "nt_xent":
        if impl in ("eager", "compile"):
            fn = lambda x, y, s: nt_xent_reference(x, y, 0.5)  # noqa: E731
        else:
            fn = lambda x, y, s: fastssl.ops.nt_xent(x, y, 0.5, backend=impl)  # noqa: E731
    else:
        if impl in ("eager", "compile"):
            fn = lambda x, y, s: clip_loss_reference(x, y, s)  # noqa: E731
        else:
            fn = lambda x, y, s: fastssl.ops.clip_loss(x, y, s, backend=impl)  # noqa: E731
    if impl == "compile":
        fn = torch.compile(fn)

    def step():
        a.grad = b.grad = scale.grad = None
        fn(a, b, scale).backward()

    return step


# ------------------------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_worker(impl: str, size: int, dim: int, reps: int) -> dict:
    """Runs in a fresh process: peak extra memory of one step, then the median time of `reps` steps."""
    torch.set_num_threads(int(os.environ.get("FASTSSL_BENCH_THREADS", "2")))
    step = make_case("nt_xent", impl, size, dim, torch.float32, "cpu")
    step()  # warm-up (and compile)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()
    peak_extra_mib = (_rss_kib("VmHWM") - base) / 1024
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "peak_extra_mib": peak_extra_mib}


def run_cpu_case(impl: str, size: int, dim: int, reps: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--worker", impl, str(size), str(dim), str(reps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_table(sizes, dim: int, reps: int, impls) -> list[dict]:
    rows = []
    for size in sizes:
        results = {impl: run_cpu_case(impl, size, dim, reps) for impl in impls}
        for impl, r in results.items():
            row = {"op": "nt_xent", "2N": size, "D": dim, "impl": impl, **r}
            if "median_ms" in r:
                row["gflops"] = model_flops(size, size, dim) / (r["median_ms"] * 1e6)
                for base in ("eager", "compile"):
                    if base != impl and "median_ms" in results.get(base, {}):
                        row[f"vs_{base}"] = results[base]["median_ms"] / r["median_ms"]
            rows.append(row)
            print(_cpu_line(row), flush=True)
    return rows


def _cpu_line(row: dict) -> str:
    if "error" in row:
        return f"nt_xent 2N={row['2N']:>6} D={row['D']} {row['impl']:<8} ERROR {row['error']}"
    ratios = "  ".join(f"{k}={row[k]:.2f}x" for k in ("vs_eager", "vs_compile") if k in row)
    return (f"nt_xent 2N={row['2N']:>6} D={row['D']} {row['impl']:<8} {row['median_ms']:9.1f} ms "
            f"{row['gflops']:7.1f} GFLOP/s (model)  peak +{row['peak_extra_mib']:8.1f} MiB  {ratios}")


# ------------------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------------------


def gpu_peaks() -> dict:
    """Measured ceilings of this card: bf16 matmul TFLOP/s and device-to-device copy GB/s."""
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    x = torch.empty(2**30 // 4, device="cuda", dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    ms_copy = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return {"bf16_tflops": 2 * 8192**3 / (ms * 1e9), "copy_gbps": 2 * x.numel() * 4 / (ms_copy * 1e6)}


_TRITON_DEFAULTS: dict = {}


def gpu_case(op: str, impl: str, size: int, dim: int, dtype: torch.dtype, triton_config=None) -> dict:
    from triton.testing import do_bench

    if impl.startswith("triton") and triton_config:
        from tune_info_nce import KNOBS, apply_config

        from fastssl.kernels import info_nce as kernels

        defaults = _TRITON_DEFAULTS.setdefault("knobs", {k: getattr(kernels, k) for k in KNOBS})
        apply_config({**defaults, **triton_config.get(str(dim), {})})  # a dim without a tuned entry: defaults

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    try:
        step = make_case(op, impl, size, dim, dtype, "cuda")
        inputs = torch.cuda.memory_allocated() - base
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base - 2 * inputs  # beyond the inputs and their gradients
        ms = do_bench(step, warmup=25, rep=200, return_mode="median")
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"error": "OOM"}
    except Exception as exc:  # noqa: BLE001 - one failing case must not cost a GPU session the other rows
        torch.cuda.empty_cache()
        return {"error": f"failed: {type(exc).__name__}: {str(exc)[:200]}"}
    return {"median_ms": ms, "tflops": model_flops(size, size, dim) / (ms * 1e9), "peak_extra_mib": peak / 2**20}


def gpu_table(cases, impls, dtypes, budget_s: float, triton_config=None) -> list[dict]:
    """Every case of the first impl (fastssl's, by default triton) first, then the baselines, so that a spent budget
    cuts the baselines (torch.compile pays a compilation per shape) rather than fastssl's rows."""
    t_start = time.time()
    peaks = gpu_peaks()
    print(f"GPU {torch.cuda.get_device_name()}: bf16 matmul {peaks['bf16_tflops']:.0f} TFLOP/s, "
          f"copy {peaks['copy_gbps']:.0f} GB/s (measured)", flush=True)
    head = {"peaks": peaks, "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results: dict[tuple, dict] = {}
    order = sorted(impls, key=lambda i: not (i.startswith("triton") or i == "cuda"))
    spent = False
    for impl in order:
        for dtype in dtypes:
            for op, size, dim in cases:
                if impl == "triton4" and (op != "nt_xent" or dtype == torch.float32):
                    continue  # the same kernels as "triton" there
                if time.time() - t_start > budget_s:
                    spent = True
                    break
                r = gpu_case(op, impl, size, dim, dtype, triton_config)
                row = {"op": op, "size": size, "D": dim, "dtype": str(dtype).replace("torch.", ""), "impl": impl, **r}
                if "median_ms" in row:
                    row["pct_peak"] = 100 * row["tflops"] / peaks["bf16_tflops"]
                results[(op, size, dim, row["dtype"], impl)] = row
                print(_gpu_line(row), flush=True)
    if spent:
        print(f"budget of {budget_s:.0f} s spent: skipped the remaining cases", flush=True)
    rows = [head]
    for dtype in dtypes:
        for op, size, dim in cases:
            for impl in impls:
                row = results.get((op, size, dim, str(dtype).replace("torch.", ""), impl))
                if row is None:
                    continue
                for base in ("eager", "compile"):
                    other = results.get((op, size, dim, row["dtype"], base))
                    if base != impl and other and "median_ms" in other and "median_ms" in row:
                        row[f"vs_{base}"] = other["median_ms"] / row["median_ms"]
                rows.append(row)
    return rows


def _gpu_line(row: dict) -> str:
    head = f"{row['op']:<8} {'2N' if row['op'] == 'nt_xent' else 'N'}={row['size']:>6} D={row['D']:<4} {row['dtype']:<9}"
    if "error" in row:
        return f"{head} {row['impl']:<8} {row['error']}"
    ratios = "  ".join(f"{k}={row[k]:.2f}x" for k in ("vs_eager", "vs_compile") if k in row)
    return (f"{head} {row['impl']:<8} {row['median_ms']:8.2f} ms {row['tflops']:6.1f} TFLOP/s "
            f"({row['pct_peak']:4.1f}% of bf16 peak)  peak +{row['peak_extra_mib']:9.1f} MiB  {ratios}")


# ------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (CPU): pytest benchmarks/bench_contrastive.py --benchmark-enable
# ------------------------------------------------------------------------------------------------------------


def _pytest_params():
    import pytest

    return pytest.mark.parametrize("impl", ["eager", "compile", "cpp"]), pytest.mark.parametrize("size", CPU_SIZES)


try:
    _impl_param, _size_param = _pytest_params()

    @_impl_param
    @_size_param
    def test_cpu_nt_xent_forward_backward(benchmark, impl, size):
        torch.set_num_threads(2)
        step = make_case("nt_xent", impl, size, 128, torch.float32, "cpu")
        step()
        benchmark.extra_info["model_gflop"] = model_flops(size, size, 128) / 1e9
        benchmark.pedantic(step, rounds=3, iterations=1)
except ImportError:  # pytest is only needed for the pytest-benchmark entry point
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="*", help="CPU: 2N values (default 1024 4096 8192)")
    parser.add_argument("--impls", nargs="*", help="default: eager compile cpp (CPU); eager compile triton triton4 (GPU; triton4: NT-Xent with the 4-matmul backward)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"])
    parser.add_argument("--budget-s", type=float, default=300.0, help="GPU: stop starting new cases after this")
    parser.add_argument("--json", type=Path, help="write all rows here")
    parser.add_argument("--triton-config", type=Path, help="GPU: JSON from tune_info_nce.py (per head dim)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, size, dim, reps = args.worker
        print(json.dumps(cpu_worker(impl, int(size), int(dim), int(reps))))
        return
    if args.device == "cpu":
        print(f"CPU {os.cpu_count()} cores, torch {torch.__version__}; fp32, forward+backward, median of {args.reps}")
        rows = cpu_table(args.sizes or CPU_SIZES, 128, args.reps, args.impls or ["eager", "compile", "cpp"])
    else:
        cases = [("nt_xent", s, 128) for s in (8192, 32768, 65536)] + [("clip", s, 256) for s in (8192, 32768, 65536)]
        config = json.loads(args.triton_config.read_text()) if args.triton_config else None
        rows = gpu_table(cases, args.impls or ["eager", "compile", "triton", "triton4"],
                         [getattr(torch, d) for d in args.dtypes], args.budget_s, config)
        if config:
            rows[0]["triton_config"] = config
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
