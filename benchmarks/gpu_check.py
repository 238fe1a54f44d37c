"""One script for a machine with a CUDA GPU: build, GPU tests, GPU benchmarks, a compact table last (< 8 min).

    python benchmarks/gpu_check.py --out DIR

Builds the extension in place (pip install --no-deps --no-build-isolation -e .), runs the tests marked `gpu`
(the Triton kernels on CUDA tensors against the float64 reference, and the memory bound), sweeps the Triton block
sizes of the contrastive kernels (benchmarks/tune_info_nce.py), runs benchmarks/bench_contrastive.py on the GPU
with the fastest configuration, then the augmentation and masking GPU benchmarks, and writes the logs, the JSON
rows and a Markdown table into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log, timeout: float) -> int:
    print("$", " ".join(cmd), flush=True)
    log.write(f"$ {' '.join(cmd)}\n")
    t0 = time.time()
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except FileNotFoundError as exc:
        print(f"cannot run {cmd[0]}: {exc}", flush=True)
        return 127
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        proc.wait(timeout=max(1.0, timeout - (time.time() - t0)))
    except subprocess.TimeoutExpired:
        proc.kill()
        print(f"timed out after {timeout:.0f} s", flush=True)
        return 124
    print(f"[exit {proc.returncode} after {time.time() - t0:.0f} s]", flush=True)
    return proc.returncode


def markdown(rows: list[dict]) -> str:
    head = rows[0]
    lines = [
        f"Device: {head['device']}, torch {head['torch']}; measured bf16 matmul peak "
        f"{head['peaks']['bf16_tflops']:.0f} TFLOP/s, copy {head['peaks']['copy_gbps']:.0f} GB/s. "
        "Forward + backward, median (CUDA events). TFLOP/s counts model FLOPs = 6 * rows * cols * D.",
        "",
        "| op | size | D | dtype | impl | ms | TFLOP/s | % bf16 peak | peak extra MiB | vs eager | vs compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows[1:]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['size']} | {r['D']} | {r['dtype']} | {r['impl']} | {r['error']} "
                         "| | | | | |")
            continue
        ratio = lambda k: f"{r[k]:.2f}x" if k in r else ""  # noqa: E731
        lines.append(
            f"| {r['op']} | {r['size']} | {r['D']} | {r['dtype']} | {r['impl']} | {r['median_ms']:.2f} "
            f"| {r['tflops']:.1f} | {r['pct_peak']:.1f} | {r['peak_extra_mib']:.1f} | {ratio('vs_eager')} "
            f"| {ratio('vs_compile')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run this on a GPU machine", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--bench-budget-s", type=float, default=150.0)
    parser.add_argument("--tune-budget-s", type=float, default=60.0)
    parser.add_argument("--augment-budget-s", type=float, default=60.0)
    parser.add_argument("--masking-budget-s", type=float, default=45.0)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    status = {}
    with open(args.out / "gpu_check.log", "w") as log:
        run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total",
             "--format=csv"], log, 30)
        if not args.skip_build:
            status["build"] = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                                   "--no-build-isolation", "-e", "."], log, 240)
        run([sys.executable, "-m", "fastssl", "info"], log, 60)
        if not args.skip_tests:
            status["gpu tests"] = run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "gpu", "tests"], log, 180)
        tuned = args.out / "triton_config.json"
        status["tune"] = run([sys.executable, "benchmarks/tune_info_nce.py", "--budget-s", str(args.tune_budget_s),
                              "--json", str(tuned)], log, args.tune_budget_s + 60)
        json_path = args.out / "bench_contrastive.json"
        bench_cmd = [sys.executable, "benchmarks/bench_contrastive.py", "--device", "cuda",
                     "--budget-s", str(args.bench_budget_s), "--json", str(json_path)]
        if tuned.exists():
            bench_cmd += ["--triton-config", str(tuned)]
        status["bench"] = run(bench_cmd, log, args.bench_budget_s + 120)
        status["augment"] = run([sys.executable, "benchmarks/gpu_augment.py", "--budget-s",
                                 str(args.augment_budget_s), "--json", str(args.out / "bench_augment.json")],
                                log, args.augment_budget_s + 90)
        status["masking"] = run([sys.executable, "benchmarks/bench_masking.py", "--device", "cuda", "--budget-s",
                                 str(args.masking_budget_s), "--json", str(args.out / "bench_masking.json")],
                                log, args.masking_budget_s + 60)
    if json_path.exists():
        table = markdown(json.loads(json_path.read_text()))
        (args.out / "bench_contrastive.md").write_text(table)
        print("\n" + table)
    print("status:", ", ".join(f"{k}: exit {v}" for k, v in status.items()))
    return max(status.values(), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
