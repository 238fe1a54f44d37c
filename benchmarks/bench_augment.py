"""Benchmark the per-sample augmentation op: views/s for the SimCLR pipeline, fastssl against the alternatives.

Napkin math. One 224x224 view reads at most its crop of a 256x256x3 uint8 source (196,608 B; on average the crop
covers about half of it) and writes 3 * 224 * 224 values: 602,112 B in float32, 301,056 B in bf16. The memory
floor is therefore about 0.5-0.8 MB per view: about 6 million views/s at 3 TB/s (H100) and, at the ~10 GB/s one
core pair of this CPU copies, about 13,000 views/s. The work is small by comparison: the resize touches ~4-16
source pixels per output value, the 23-tap separable blur ~46 multiply-adds per value on half the views, and the
hue rotation ~40 flops per pixel on 80% of them; the floor is memory on a GPU and compute on a 2-core CPU.

The pipeline (issue 3's "SimCLR pipeline"): 256x256 uint8 sources -> two 224x224 views with RandomResizedCrop
scale (0.08, 1), flip p = 0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8, grayscale p = 0.2, 23x23 Gaussian blur
sigma (0.1, 2) p = 0.5, solarize p = 0.2 (threshold 0.5), ImageNet normalisation, float32 out unless stated.

    CPU  `python benchmarks/bench_augment.py --device cpu` (also a pytest-benchmark entry): batch 64;
         reference (fastssl's per-sample PyTorch oracle, in float32), Kornia with per-sample parameters, cpp
         (fp32 and bf16, contiguous and channels_last). Parameter sampling is inside every timing.
    GPU  `python benchmarks/bench_augment.py --device cuda` runs benchmarks/gpu_augment.py: batch 256.

torch.compile of the reference is not timed: each sample's crop has its own shape, so it recompiles per sample.
torchvision does not import beside this torch build; Kornia (pinned in the `bench` extra) is the peer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = 256
VIEW = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def simclr_pipeline(out_dtype=torch.float32, channels_last=False):
    from fastssl.data import view_pipeline

    return view_pipeline("simclr", brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, solarize_p=0.2,
                         solarize_threshold=0.5, out_dtype=out_dtype, channels_last=channels_last)


def kornia_pipeline():
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomResizedCrop((VIEW, VIEW), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((23, 23), (0.1, 2.0), p=0.5),
        K.RandomSolarize(thresholds=0.0, additions=0.0, p=0.2),
        K.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD)),
    )


def view_bytes(out_dtype: torch.dtype) -> int:
    return SOURCE * SOURCE * 3 + 3 * VIEW * VIEW * torch.empty((), dtype=out_dtype).element_size()


def cpu_copy_gbps() -> float:
    """Read+write bandwidth of a 256 MiB copy on this machine (the memory floor's denominator)."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / min(times) / 1e9


def make_case(impl: str, batch: int, out_dtype: torch.dtype = torch.float32, channels_last: bool = False):
    """A closure producing the two views of one batch, and how many views it makes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, SOURCE, SOURCE, 3), dtype=torch.uint8, generator=g)
    if impl == "kornia":
        pipe = kornia_pipeline()

        def step():
            x = images.permute(0, 3, 1, 2).float().div_(255)  # Kornia takes float (B, C, H, W) in [0, 1]
            return [pipe(x), pipe(x)]
    else:
        pipe = simclr_pipeline(out_dtype, channels_last)

        def step():
            return pipe(images, generator=g, backend=impl)
    return step, 2 * batch


def time_case(impl: str, batch: int, reps: int, out_dtype=torch.float32, channels_last=False) -> dict:
    step, views = make_case(impl, batch, out_dtype, channels_last)
    step()  # warm-up (and Kornia's first-call setup)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    rate = views / seconds
    return {"impl": impl, "batch": batch, "views": views, "out_dtype": str(out_dtype).replace("torch.", ""),
            "channels_last": channels_last, "ms": 1e3 * seconds, "views_per_s": rate,
            "gbps": rate * view_bytes(out_dtype) / 1e9, "reps": reps}


def cpu_rows(batch: int, reps: int, impls) -> list[dict]:
    rows = [{"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
             "copy_gbps": cpu_copy_gbps()}]
    for impl in impls:
        if impl == "kornia":
            try:
                import kornia  # noqa: F401
            except ImportError as exc:
                rows.append({"impl": "kornia", "error": f"not installed ({exc})"})
                continue
        if impl == "reference":
            # The per-sample oracle takes seconds per batch: time 8 sources (16 views) once and scale.
            rows.append(time_case("reference", 8, 1))
        elif impl == "cpp":
            for out_dtype, channels_last in ((torch.float32, False), (torch.bfloat16, False),
                                             (torch.float32, True), (torch.bfloat16, True)):
                rows.append(time_case("cpp", batch, reps, out_dtype, channels_last))
        else:
            rows.append(time_case(impl, batch, reps))
    return rows


def markdown(rows: list[dict]) -> str:
    head = rows[0]
    lines = [f"CPU, {head['threads']} threads, torch {head['torch']}; measured copy bandwidth "
             f"{head['copy_gbps']:.1f} GB/s. SimCLR pipeline, {SOURCE}x{SOURCE} uint8 -> two {VIEW}x{VIEW} views; "
             "median wall time per batch, parameter sampling included.", "",
             "| impl | batch | out | layout | ms / batch | views/s | GB/s | vs Kornia | vs reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    rate = {r["impl"]: r["views_per_s"] for r in rows[1:] if "views_per_s" in r and r.get("out_dtype") == "float32"
            and not r.get("channels_last")}
    for r in rows[1:]:
        if "error" in r:
            lines.append(f"| {r['impl']} | | | | {r['error']} | | | | |")
            continue
        vs_k = f"{r['views_per_s'] / rate['kornia']:.1f}x" if "kornia" in rate else "-"
        vs_r = f"{r['views_per_s'] / rate['reference']:.0f}x" if "reference" in rate else "-"
        layout = "channels_last" if r["channels_last"] else "contiguous"
        lines.append(f"| {r['impl']} | {r['batch']} | {r['out_dtype']} | {layout} | {r['ms']:.1f} | "
                     f"{r['views_per_s']:,.0f} | {r['gbps']:.2f} | {vs_k} | {vs_r} |")
    return "\n".join(lines)


def test_bench_augment_cpu(benchmark):
    """pytest-benchmark entry (run with --benchmark-enable): the cpp backend, batch 16."""
    import pytest

    from fastssl import _dispatch

    if _dispatch.select("augment", "auto", torch.device("cpu"), torch.float32) != "cpp":
        pytest.skip("the cpp backend is not built")
    step, _ = make_case("cpp", 16)
    benchmark(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64, help="CPU batch (the GPU script uses 256)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--impls", nargs="*", default=["reference", "kornia", "cpp"])
    parser.add_argument("--budget-s", type=float, default=200.0, help="GPU: stop starting new cases after this")
    parser.add_argument("--json", type=Path, help="write all rows here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.device == "cuda":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gpu_augment import main as gpu_main

        sys.argv = [sys.argv[0], "--budget-s", str(args.budget_s)] + (["--json", str(args.json)] if args.json else [])
        raise SystemExit(gpu_main())
    rows = cpu_rows(args.batch, args.reps, args.impls)
    table = markdown(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table)


if __name__ == "__main__":
    main()
