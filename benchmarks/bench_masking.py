"""Benchmark MAE's masking front end: random mask + patchify + gather of the visible patches.

Napkin math (B images of C x H x W, patch p, L = H W / p^2 patches, K = int(L (1 - ratio)) kept, n = p^2 C values
per patch, s bytes per value). The op's output is the (B, K, n) visible patches, so its minimum traffic is

    read the K visible patches of the image + write them = 2 * B * K * n * s bytes

(the mask itself is O(B L) indices: 64 x 196 int64 = 100 KB, noise next to the pixels). At B = 64, 224 x 224, p = 16,
ratio 0.75, float32: K = 49, n = 768, so 2 * 64 * 49 * 768 * 4 = 19.3 MB. Every "GB/s" below is this minimum over
the measured time ("effective" bandwidth), whatever an implementation really moves. MAE's path moves much more:

    noise -> argsort -> argsort (ids_restore)            O(B L log L), ~0.2 MB
    patchify: reshape + einsum into a permuted copy     read B C H W s + write B C H W s = 77 MB
    gather with an expanded int64 index (B, K, n)       write + read the index 19.3 MB, read 9.6 MB, write 9.6 MB
                                                        ~135 MB in all, 7x the minimum

so on bandwidth alone the fused op can be ~7x faster than MAE's path, more where MAE's 38.5 MB temporary costs
page faults (fresh allocations that large come straight from mmap). The GPU encoder-input comparison adds the patch embedding, a (n -> 768)
matmul: 2 * B * L * n * 768 FLOPs forward and as many for the weight gradient when all L patches are embedded
(MAE's PatchEmbed, then the gather), the same with K for L when only the visible ones are (fastssl:
patchify_gather, then a Linear on those): 4x fewer FLOPs at ratio 0.75.

    CPU  `python benchmarks/bench_masking.py --device cpu` (or `pytest benchmarks/bench_masking.py
         --benchmark-enable`): B = 64, 224 x 224, p = 16, ratio 0.75, fp32: MAE's reference path, torch.compile of
         it, and fastssl.ops.random_masking + patchify_gather (cpp, NCHW and channels_last images). Median of
         --reps after a warm-up, in this process (no subprocess).
    GPU  `python benchmarks/bench_masking.py --device cuda`: B = 256, bf16: the same three paths with Triton
         (triton.testing.do_bench), with and without normalize_pixels, and the encoder input "gather visible
         patches then embed only those" vs "embed all patches (conv) then gather", forward + backward into the
         embedding weights. Rows print as JSON lines, then a Markdown table; benchmarks/gpu_check.py-style scripts
         import gpu_rows(budget_s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

PATCH, SIZE, RATIO, EMBED_DIM = 16, 224, 0.75, 768


def mae_masked_patches(images: torch.Tensor, mask_ratio: float, normalize_pixels: bool = False):
    """MAE's path (models_mae.py): noise, two argsorts, full patchify (reshape + einsum), gather with an expanded
    index. Returns the (B, K, n) visible patches and ids_restore."""
    batch, channels, height, width = images.shape
    h, w = height // PATCH, width // PATCH
    length = h * w
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(batch, length, device=images.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = images.reshape(batch, channels, h, PATCH, w, PATCH)
    x = torch.einsum("nchpwq->nhwpqc", x).reshape(batch, length, PATCH * PATCH * channels)
    if normalize_pixels:
        mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
        x = (x - mean) / (var + 1.0e-6) ** 0.5
    visible = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[-1]))
    return visible, ids_restore


def fastssl_masked_patches(images: torch.Tensor, mask_ratio: float, normalize_pixels: bool = False,
                           backend: str = "auto"):
    import fastssl

    batch, _, height, width = images.shape
    ids_keep, _, ids_restore = fastssl.ops.random_masking(batch, (height // PATCH) * (width // PATCH), mask_ratio,
                                                          device=images.device)
    return fastssl.ops.patchify_gather(images, PATCH, ids_keep, normalize_pixels, backend=backend), ids_restore


def min_bytes(batch: int, channels: int, dtype: torch.dtype) -> int:
    length = (SIZE // PATCH) ** 2
    return 2 * batch * int(length * (1 - RATIO)) * PATCH * PATCH * channels * dtype.itemsize


def make_case(impl: str, batch: int, dtype: torch.dtype, device: str, normalize_pixels: bool = False):
    """A closure running one mask + patchify + gather of a fixed batch with `impl`."""
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch, 3, SIZE, SIZE, device=device, generator=g).to(dtype)
    if impl == "cpp-channels-last":
        images = images.contiguous(memory_format=torch.channels_last)
    if impl in ("reference", "compile"):
        fn = lambda x: mae_masked_patches(x, RATIO, normalize_pixels)  # noqa: E731
        if impl == "compile":
            fn = torch.compile(fn)
    else:
        backend = "cpp" if impl.startswith("cpp") else impl
        fn = lambda x: fastssl_masked_patches(x, RATIO, normalize_pixels, backend)  # noqa: E731
    return lambda: fn(images)


# ------------------------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------------------------


def median_ms(step, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def cpu_copy_gbps(nbytes: int = 256 * 2**20) -> float:
    """A measured ceiling: read + write GB/s of a large preallocated copy (beyond the caches, no page faults)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), reps=9)
    return 2 * nbytes / (ms * 1e6)


def cpu_rows(batch: int, reps: int, impls) -> list[dict]:
    peak = cpu_copy_gbps()
    print(f"CPU {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"measured copy {peak:.1f} GB/s (256 MiB, read + write)", flush=True)
    rows = []
    nbytes = min_bytes(batch, 3, torch.float32)
    for impl in impls:
        t0 = time.perf_counter()
        step = make_case(impl, batch, torch.float32, "cpu")
        ms = median_ms(step, reps)
        row = {"device": "cpu", "batch": batch, "dtype": "float32", "impl": impl, "median_ms": ms,
               "gbps": nbytes / (ms * 1e6), "pct_copy": 100 * nbytes / (ms * 1e6) / peak,
               "wall_s_with_warmup": time.perf_counter() - t0}
        rows.append(row)
    base = {r["impl"]: r["median_ms"] for r in rows}
    for row in rows:
        for ref in ("reference", "compile"):
            if ref in base and ref != row["impl"]:
                row[f"vs_{ref}"] = base[ref] / row["median_ms"]
        print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    ratios = "  ".join(f"{k}={row[k]:.2f}x" for k in ("vs_reference", "vs_compile") if k in row)
    what = row.get("case", "mask+patchify+gather")
    return (f"{what:<28} B={row['batch']:<4} {row['dtype']:<8} {row['impl']:<18} {row['median_ms']:9.3f} ms "
            f"{row['gbps']:7.2f} GB/s effective ({row['pct_copy']:5.1f}% of copy)  {ratios}")


# ------------------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------------------


def gpu_copy_gbps() -> float:
    from triton.testing import do_bench

    x = torch.empty(2**30 // 4, device="cuda", dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() * 4 / (ms * 1e6)


def make_embed_case(order: str, batch: int, dtype: torch.dtype):
    """Encoder input, forward + backward into the embedding weights.

    gather-then-embed: patchify_gather the K visible patches, Linear(n, 768) on those (B K n 768 MACs).
    embed-then-gather: MAE's PatchEmbed (a stride-p conv on all L patches), then gather the K visible tokens.
    """
    import fastssl

    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(batch, 3, SIZE, SIZE, device="cuda", generator=g).to(dtype)
    numel = PATCH * PATCH * 3
    length = (SIZE // PATCH) ** 2
    linear = torch.nn.Linear(numel, EMBED_DIM, device="cuda", dtype=dtype)
    conv = torch.nn.Conv2d(3, EMBED_DIM, PATCH, stride=PATCH, device="cuda", dtype=dtype)

    def gather_then_embed():
        ids_keep, _, _ = fastssl.ops.random_masking(batch, length, RATIO, device="cuda")
        tokens = linear(fastssl.ops.patchify_gather(images, PATCH, ids_keep, backend="triton"))
        tokens.sum().backward()

    def embed_then_gather():
        ids_keep, _, _ = fastssl.ops.random_masking(batch, length, RATIO, device="cuda")
        tokens = conv(images).flatten(2).transpose(1, 2)  # (B, L, 768)
        visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).repeat(1, 1, EMBED_DIM))
        visible.sum().backward()

    flops = 2 * 2 * batch * (length if order == "embed-then-gather" else int(length * (1 - RATIO))) * numel * EMBED_DIM
    return (gather_then_embed if order == "gather-then-embed" else embed_then_gather), flops


def gpu_rows(budget_s: float, batch: int = 256, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """All GPU rows (dicts), printed as JSON lines as they come; stops starting new cases after budget_s."""
    from triton.testing import do_bench

    t_start = time.time()
    peak = gpu_copy_gbps()
    head = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_gbps": peak}
    print(json.dumps(head), flush=True)
    rows = []
    dtype_name = str(dtype).replace("torch.", "")
    nbytes = min_bytes(batch, 3, dtype)
    for normalize in (False, True):
        case = "mask+patchify+gather" + (" (norm)" if normalize else "")
        results = {}
        for impl in ("reference", "compile", "triton"):
            if time.time() - t_start > budget_s:
                print(json.dumps({"skipped": f"budget of {budget_s:.0f} s spent"}), flush=True)
                return [head] + rows
            step = make_case(impl, batch, dtype, "cuda", normalize)
            step()
            ms = do_bench(step, warmup=25, rep=200, return_mode="median")
            results[impl] = ms
            row = {"case": case, "batch": batch, "dtype": dtype_name, "impl": impl, "median_ms": ms,
                   "gbps": nbytes / (ms * 1e6), "pct_copy": 100 * nbytes / (ms * 1e6) / peak}
            for ref in ("reference", "compile"):
                if ref in results and ref != impl:
                    row[f"vs_{ref}"] = results[ref] / ms
            rows.append(row)
            print(json.dumps(row), flush=True)
    results = {}
    for order in ("embed-then-gather", "gather-then-embed"):
        if time.time() - t_start > budget_s:
            break
        step, flops = make_embed_case(order, batch, dtype)
        step()
        ms = do_bench(step, warmup=10, rep=100, return_mode="median")
        results[order] = ms
        row = {"case": "encoder input fwd+bwd", "batch": batch, "dtype": dtype_name, "impl": order, "median_ms": ms,
               "tflops": flops / (ms * 1e9)}
        if order == "gather-then-embed" and "embed-then-gather" in results:
            row["vs_embed_then_gather"] = results["embed-then-gather"] / ms
        rows.append(row)
        print(json.dumps(row), flush=True)
    return [head] + rows


def markdown(rows: list[dict]) -> str:
    lines = ["| case | B | dtype | impl | ms | GB/s effective | % of copy | TFLOP/s | vs reference | vs compile |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "impl" not in r:
            continue

        def cell(key, fmt):
            return format(r[key], fmt) if key in r else ""

        vs_ref = cell("vs_reference", ".2f") or cell("vs_embed_then_gather", ".2f")
        lines.append(f"| {r.get('case', 'mask+patchify+gather')} | {r['batch']} | {r['dtype']} | {r['impl']} "
                     f"| {r['median_ms']:.3f} | {cell('gbps', '.1f')} | {cell('pct_copy', '.1f')} "
                     f"| {cell('tflops', '.1f')} | {vs_ref + 'x' if vs_ref else ''} "
                     f"| {cell('vs_compile', '.2f') + 'x' if 'vs_compile' in r else ''} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry point (CPU): pytest benchmarks/bench_masking.py --benchmark-enable
# ------------------------------------------------------------------------------------------------------------

try:
    import pytest

    @pytest.mark.parametrize("impl", ["reference", "compile", "cpp", "cpp-channels-last"])
    def test_cpu_mask_patchify_gather(benchmark, impl):
        torch.set_num_threads(2)
        step = make_case(impl, 64, torch.float32, "cpu")
        step()
        benchmark.extra_info["min_bytes"] = min_bytes(64, 3, torch.float32)
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
except ImportError:  # pytest is only needed for the pytest-benchmark entry point
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default 64 (CPU), 256 (GPU)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--impls", nargs="*", default=["reference", "compile", "cpp", "cpp-channels-last"],
                        help="CPU implementations to time")
    parser.add_argument("--budget-s", type=float, default=120.0, help="GPU: stop starting new cases after this")
    parser.add_argument("--json", help="write all rows here")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("FASTSSL_BENCH_THREADS", "2")))
        rows = cpu_rows(args.batch or 64, args.reps, args.impls)
    else:
        rows = gpu_rows(args.budget_s, args.batch or 256)
    print()
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
