"""The `fastssl` command: `fastssl info` (what runs here and why not) and `fastssl bench` (benchmarks)."""

from __future__ import annotations

import argparse
import platform
import runpy
import sys
from pathlib import Path

import torch


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except Exception as exc:  # a broken optional dependency must not break `fastssl info`
        return f"not available ({type(exc).__name__}: {exc})"
    return getattr(module, "__version__", "unknown")


def info(out=sys.stdout) -> int:
    import fastssl
    from fastssl import _dispatch
    from fastssl.ops import OPS

    ext, ext_reason = _dispatch.extension()
    lines = [
        f"fastssl   {fastssl.__version__}",
        f"python    {platform.python_version()} ({sys.executable})",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'}; {torch.get_num_threads()} CPU threads)",
        f"triton    {_version('triton')}" + ("  [TRITON_INTERPRET=1]" if _dispatch.triton_interpreter() else ""),
        f"numpy     {_version('numpy')}",
        f"fastssl._C {getattr(ext, '__file__', None) or 'missing: ' + ext_reason}",
    ]
    if ext is not None:
        lines.append(f"           built with CUDA kernels: {bool(getattr(ext, 'with_cuda', False))}")
    devices = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU       {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)")
        devices.append(("cuda", torch.bfloat16))
    else:
        lines.append("GPU       none (torch.cuda.is_available() is False)")
    print("\n".join(lines), file=out)
    for device, dtype in devices:
        print(f"\nops on {device} ({str(dtype).replace('torch.', '')}): backend -> available, or why not", file=out)
        for op, backends in OPS.items():
            status = _dispatch.availability(backends, torch.device(device), dtype)
            auto = next((b.name for b in backends if not status[b.name]), "none")
            print(f"  {op}  (auto -> {auto})", file=out)
            for name, why in status.items():
                print(f"    {name:<10} {'yes' if not why else 'no: ' + why}", file=out)
    return 0


def bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"bench_{args.op}.py"
    if not script.exists():
        print(f"fastssl bench: {script} not found (benchmarks ship with the source tree, not the wheel)",
              file=sys.stderr)
        return 2
    sys.argv = [str(script)] + args.rest
    runpy.run_path(str(script), run_name="__main__")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastssl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, and which backend of each op runs here (and why not)")
    p_bench = sub.add_parser("bench", help="run benchmarks/bench_<op>.py (e.g. `fastssl bench contrastive`)")
    p_bench.add_argument("op", choices=["contrastive"], help="which benchmark")
    p_bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command == "bench":
        return bench(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
