"""One script for a machine with a CUDA GPU: install, GPU tests, GPU benchmarks, a short training run, a summary last.

    python benchmarks/gpu_check.py --out DIR [--deadline-s 520] [--no-extension]
    python benchmarks/gpu_check.py --out DIR --no-extension --only-train --train-minutes 8 --deadline-s 590

The second form is issue 5's GPU quality bar in one call: install, `fastssl info`, then only the SimCLR run and
its kNN evaluation on the full CIFAR-10 splits (no tests, no benchmarks). The 2026-11-27 run found the data
there through `../shared/data`, as here; set FASTSSL_DATA where it lives elsewhere.

In order, each step with its own time limit, all inside --deadline-s (so that one call of a lent GPU fits):
  1. install (pip install --no-deps --no-build-isolation -e .; with --no-extension FASTSSL_NO_EXTENSION=1 skips
     the C++ extension, which the GPU paths do not use, saving minutes of compilation);
  2. the tests marked `gpu` (the Triton kernels on CUDA tensors against float64 references, the memory bound);
  3. optionally (--tune-budget-s > 0) the block-size sweep of the contrastive kernels (tune_info_nce.py);
  4. bench_contrastive.py on the GPU (fastssl's rows first, then eager and torch.compile);
  5. gpu_augment.py and bench_masking.py --device cuda;
  6. bench_method.py --method simclr on CIFAR-10 (bare model vs fastssl's fused path vs the reference path);
  7. `fastssl pretrain --method simclr --data cifar10` for whatever time is left (at most --train-minutes), with
     the kNN evaluation at the end.
DIR receives at most 8 files (gpu_check.log, the benchmark JSONs, the run's metrics.csv, summary.md); summary.md is
also printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log, timeout: float, env=None) -> tuple[int, str]:
    """Run cmd, echo and log its output, kill it after timeout seconds; (exit code, output)."""
    print("$", " ".join(cmd), flush=True)
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.time()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), start_new_session=True)
    except FileNotFoundError as exc:
        print(f"cannot run {cmd[0]}: {exc}", flush=True)
        return 127, ""
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
        proc.wait()
    finally:
        timed_out = not timer.is_alive() and proc.returncode != 0
        timer.cancel()
    if timed_out:
        print(f"timed out after {timeout:.0f} s", flush=True)
        lines.append(f"timed out after {timeout:.0f} s\n")
    log.flush()
    print(f"[exit {proc.returncode} after {time.time() - t0:.0f} s]", flush=True)
    return (124 if timed_out else proc.returncode), "".join(lines)


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

        def ratio(key, r=r):
            return f"{r[key]:.2f}x" if key in r else ""

        lines.append(
            f"| {r['op']} | {r['size']} | {r['D']} | {r['dtype']} | {r['impl']} | {r['median_ms']:.2f} "
            f"| {r['tflops']:.1f} | {r['pct_peak']:.1f} | {r['peak_extra_mib']:.1f} | {ratio('vs_eager')} "
            f"| {ratio('vs_compile')} |"
        )
    return "\n".join(lines) + "\n"


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run this on a GPU machine", file=sys.stderr)
        return 2
    t_start = time.time()
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--deadline-s", type=float, default=540.0, help="the whole script ends within this")
    parser.add_argument("--no-extension", action="store_true", help="install without the C++ extension")
    parser.add_argument("--skip-build", action="store_true", help="fastssl is already installed")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--tests-timeout-s", type=float, default=150.0)
    parser.add_argument("--tune-budget-s", type=float, default=0.0)
    parser.add_argument("--tune-clip", action="store_true", help="tune only the fused CLIP kernels (D = 256)")
    parser.add_argument("--bench-budget-s", type=float, default=110.0)
    parser.add_argument("--augment-budget-s", type=float, default=35.0)
    parser.add_argument("--masking-budget-s", type=float, default=25.0)
    parser.add_argument("--method-steps", type=int, default=20)
    parser.add_argument("--train-minutes", type=float, default=4.0, help="at most; 0 skips the training run")
    parser.add_argument("--train-batch-size", type=int, default=512)
    parser.add_argument("--only-train", action="store_true",
                        help="skip the GPU tests and every benchmark: install, info, then the training run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = t_start + args.deadline_s
    status, sections = {}, []

    def left() -> float:
        return deadline - time.time()

    def step(name: str, cmd: list[str], limit: float, env=None, tail: int = 0) -> str:
        limit = min(limit, left() - 5)
        if limit < 10:
            print(f"[{name}: skipped, {left():.0f} s left]", flush=True)
            status[name] = "skipped"
            return ""
        rc, text = run(cmd, log, limit, env)
        status[name] = rc
        if tail:
            sections.append(f"### {name} (exit {rc})\n\n{_tail(text, tail)}\n")
        return text

    py = sys.executable
    with open(args.out / "gpu_check.log", "w") as log:
        smi = step("nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total",
                                  "--format=csv"], 30)
        sections.append(f"### device\n\n{smi.strip()}\ntorch {torch.__version__}\n")
        if not args.skip_build:
            env = {"FASTSSL_NO_EXTENSION": "1"} if args.no_extension else {"MAX_JOBS": str(os.cpu_count() or 4)}
            step("install", [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
                 300, env)
        step("info", [py, "-m", "fastssl", "info"], 60, tail=30)
        if not (args.skip_tests or args.only_train):
            import importlib.util

            parallel = ["-n", "8"] if importlib.util.find_spec("xdist") else []  # Triton compiles on 8 cores
            step("gpu tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *parallel, "-m", "gpu", "tests"],
                 args.tests_timeout_s, tail=15)
        tuned = args.out / "triton_config.json"
        if args.tune_budget_s > 0 and not args.only_train:
            step("tune", [py, "benchmarks/tune_info_nce.py", "--budget-s", str(args.tune_budget_s), "--json",
                          str(tuned), *(["--clip"] if args.tune_clip else [])], args.tune_budget_s + 60, tail=10)
        if not args.only_train:
            json_path = args.out / "bench_contrastive.json"
            bench_cmd = [py, "benchmarks/bench_contrastive.py", "--device", "cuda", "--budget-s",
                         str(args.bench_budget_s), "--json", str(json_path)]
            if tuned.exists():
                bench_cmd += ["--triton-config", str(tuned)]
            step("contrastive", bench_cmd, args.bench_budget_s + 90)
            if json_path.exists():
                table = markdown(json.loads(json_path.read_text()))
                sections.append(f"### contrastive\n\n{table}")
            if args.augment_budget_s > 0:
                step("augment", [py, "benchmarks/gpu_augment.py", "--budget-s", str(args.augment_budget_s), "--json",
                                 str(args.out / "bench_augment.json")], args.augment_budget_s + 60, tail=14)
            if args.masking_budget_s > 0:
                step("masking", [py, "benchmarks/bench_masking.py", "--device", "cuda", "--budget-s",
                                 str(args.masking_budget_s), "--json", str(args.out / "bench_masking.json")],
                     args.masking_budget_s + 60, tail=14)
            step("method", [py, "benchmarks/bench_method.py", "--method", "simclr", "--data", "cifar10", "--device",
                            "cuda", "--batch-size", str(args.train_batch_size), "--steps", str(args.method_steps),
                            "--workers", "8"], 150, tail=6)
        eval_margin = 75.0
        minutes = min(args.train_minutes, (left() - eval_margin - 40) / 60)
        if args.train_minutes > 0 and minutes >= 0.5:
            run_dir = Path("/tmp/fastssl_gpu_simclr")
            step("train", [py, "-m", "fastssl", "pretrain", "--method", "simclr", "--data", "cifar10", "--device",
                           "cuda", "--batch-size", str(args.train_batch_size), "--budget-minutes", f"{minutes:.2f}",
                           "--out", str(run_dir), "--no-progress", "--log-every", "20"],
                 minutes * 60 + eval_margin + 30, tail=25)
            if (run_dir / "metrics.csv").exists():
                shutil.copy(run_dir / "metrics.csv", args.out / "train_metrics.csv")
        else:
            status["train"] = "skipped"
    summary = "\n".join(sections) + "\nstatus: " + ", ".join(f"{k}: {v}" for k, v in status.items()) + \
        f"\ntotal {time.time() - t_start:.0f} s\n"
    (args.out / "summary.md").write_text(summary)
    print("\n" + "=" * 40 + " summary\n" + summary, flush=True)
    return max((v for v in status.values() if isinstance(v, int)), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
