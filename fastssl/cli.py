"""The `fastssl` command (also `python -m fastssl`). `fastssl COMMAND --help` explains each command's options.

examples:
    fastssl pretrain --method simclr --data cifar10 --out runs/simclr --budget-minutes 15
    fastssl eval --checkpoint runs/simclr/last.pt --data cifar10
    fastssl finetune --checkpoint runs/simclr/last.pt --data cifar10 --label-fraction 0.1
    fastssl pretrain --method gpt --budget-minutes 2 && fastssl sample --checkpoint runs/gpt/last.pt --prompt ROMEO:
    fastssl info
    fastssl bench contrastive|augment|masking [args]
    fastssl bench --method simclr --data cifar10
"""

from __future__ import annotations

import argparse
import os
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


def _cpu_bf16_line() -> str:
    from fastssl import _dispatch

    native, how = _dispatch.cpu_native_bf16()
    if native:
        return f"native ({how}): pretrain --amp auto trains ResNet backbones in bf16 on this CPU"
    return f"emulated ({how}): pretrain --amp auto trains in fp32 on this CPU"


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
        f"CPU bf16  {_cpu_bf16_line()}",
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


BENCH_OPS = ("contrastive", "augment", "masking")


def bench(argv: list[str]) -> int:
    """`fastssl bench OP [args]` runs benchmarks/bench_<OP>.py; `fastssl bench --method M [args]` runs
    benchmarks/bench_method.py. The arguments after OP (or all of them with --method) go to the script."""
    if argv and argv[0] in BENCH_OPS:
        name, rest = argv[0], argv[1:]
    elif "--method" in argv or any(a.startswith("--method=") for a in argv):
        name, rest = "method", argv
    else:
        print(f"usage: fastssl bench {{{','.join(BENCH_OPS)}}} [args] | fastssl bench --method M [--data D] [args]",
              file=sys.stderr)
        return 2 if argv not in ([], ["-h"], ["--help"]) else 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"bench_{name}.py"
    if not script.exists():
        print(f"fastssl bench: {script} not found (benchmarks ship with the source tree, not the wheel)",
              file=sys.stderr)
        return 2
    sys.argv = [str(script)] + rest
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def _key_values(pairs, flag: str) -> dict:
    values = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"{flag}: expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        values[key.strip()] = _parse_value(value)
    return values


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that paragraphs of indented lines (the examples) keep their lines as written."""

    def _fill_text(self, text, width, indent):
        paragraphs = text.strip("\n").split("\n\n")
        return "\n\n".join(
            "\n".join(indent + line for line in paragraph.splitlines())
            if any(line.startswith("    ") for line in paragraph.splitlines())
            else super(_HelpFormatter, self)._fill_text(paragraph, width, indent)
            for paragraph in paragraphs
        )


def _pretrain_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="train a backbone with an SSL method", formatter_class=_HelpFormatter,
        epilog="examples:\n"
               "    fastssl pretrain --method simclr --data cifar10 --budget-minutes 15\n"
               "    fastssl pretrain --method byol --data mnist --max-steps 2000 --batch-size 512 --device cuda\n"
               "    fastssl pretrain --method moco_v2 --lr 0.1 --method-arg temperature=0.1 --out runs/moco\n"
               "    fastssl pretrain --config runs/moco/config.yaml --resume   # continue runs/moco/last.pt\n"
               "    torchrun --nproc_per_node=4 -m fastssl pretrain --method simclr --device cuda",
        description="Pretrain a backbone with a self-supervised method. Writes OUT/last.pt (atomically, every "
                    "--checkpoint-every steps and at the end), OUT/metrics.csv, OUT/loss.png and OUT/config.yaml. "
                    "Options given on the command line override --config, which overrides the defaults.")
    p.add_argument("--method", help="one of fastssl.methods.METHODS (`fastssl info` lists them; default simclr)")
    p.add_argument("--data", help="image methods: cifar10 | mnist | a .npz with x (and y) | an image folder; text "
                                  "methods: shakespeare | shakespeare_complete | a .txt or .txt.gz file (default: "
                                  "the method's, cifar10 or shakespeare)")
    p.add_argument("--out", help="output folder (default runs/<method>)")
    p.add_argument("--backbone", help="resnet18 | resnet50 | vit_tiny | vit_small (default: the method's)")
    p.add_argument("--epochs", type=int, help="epochs over the training split (default 100)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps; 0 writes the untrained model")
    p.add_argument("--budget-minutes", type=float, help="stop after this wall time; the lr schedule is fitted to it")
    p.add_argument("--batch-size", type=int, help="global batch, summed over processes (default: the method's, "
                                                  "256 for image methods)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto (cuda when available)")
    p.add_argument("--seed", type=int, help="seeds the weights, the data order and every augmentation (default 0)")
    p.add_argument("--resume", action="store_true", help="continue bit-exactly from OUT/last.pt")
    p.add_argument("--config", help="a YAML file of TrainConfig options (see fastssl/train/config.py)")
    p.add_argument("--lr", type=float, help="base lr at batch 256, scaled with the batch by the method's rule; default: the method's")
    p.add_argument("--optimizer", choices=["sgd", "lars", "adamw"], help="default: the method's")
    p.add_argument("--weight-decay", type=float, help="default: the method's")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], help="mixed precision (auto: bf16 on CUDA, and on CPUs with AVX512-BF16 or AMX for ResNet backbones; `fastssl info` says which)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--log-every", type=int, help="steps between metrics.csv rows (default 10)")
    p.add_argument("--profile", action="store_true", default=None,
                   help="write OUT/trace.json (torch.profiler) and print a step-time breakdown")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--no-eval", dest="eval_at_end", action="store_false", default=None,
                   help="skip the evaluation at the end (kNN; clip adds zero-shot accuracy; text methods: "
                        "their validation metrics)")
    p.add_argument("--method-arg", action="append", metavar="KEY=VALUE",
                   help="a method hyper-parameter, e.g. temperature=0.2 (repeatable)")
    p.add_argument("--backbone-arg", action="append", metavar="KEY=VALUE",
                   help="a backbone option, e.g. width=0.5 (repeatable)")
    p.add_argument("--view-arg", action="append", metavar="KEY=VALUE",
                   help="a view-pipeline override, e.g. size=96 (repeatable)")


def pretrain(args: argparse.Namespace) -> int:
    from fastssl.train import TrainConfig, Trainer

    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    direct = {"method": "method", "data": "data", "out": "out", "backbone": "backbone", "epochs": "epochs",
              "max_steps": "max_steps", "budget_minutes": "budget_minutes", "batch_size": "batch_size",
              "device": "device", "seed": "seed", "lr": "lr", "optimizer": "optimizer",
              "weight_decay": "weight_decay", "amp": "amp", "compile": "compile", "grad_accum": "grad_accum",
              "checkpoint_every": "checkpoint_every", "log_every": "log_every", "profile": "profile",
              "progress": "progress", "eval_at_end": "eval_at_end"}
    changes = {field: getattr(args, arg) for arg, field in direct.items() if getattr(args, arg) is not None}
    if args.resume:
        changes["resume"] = True
    for flag, field in (("method_arg", "method_args"), ("backbone_arg", "backbone_args"),
                        ("view_arg", "view_args")):
        extra = _key_values(getattr(args, flag), "--" + flag.replace("_", "-"))
        if extra:
            changes[field] = {**getattr(cfg, field), **extra}
    cfg = cfg.replace(**changes)
    if args.out is None and not args.config:
        cfg = cfg.replace(out=f"runs/{cfg.method}")
    try:
        summary = Trainer(cfg).run()
    except ValueError as exc:
        print(f"fastssl pretrain: {exc}", file=sys.stderr)
        return 2
    if cfg.eval_at_end and summary.get("step", 0) > 0 and os.environ.get("RANK", "0") == "0":
        from fastssl.eval.evaluate import evaluate_checkpoint

        evaluate_checkpoint(summary["checkpoint"], cfg.data, linear=False)
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="kNN and linear-probe accuracy of a checkpoint's backbone", formatter_class=_HelpFormatter,
        epilog="examples:\n"
               "    fastssl eval --checkpoint runs/simclr/last.pt\n"
               "    fastssl eval --checkpoint runs/simclr/last.pt --train-limit 10000 --test-limit 2000\n"
               "    fastssl eval --checkpoint runs/gpt/last.pt   # text: validation bits per character",
        description="Evaluate the frozen backbone of a pretraining checkpoint: weighted kNN (k = 20, T = 0.07) and "
                    "a linear probe (weight decay chosen on a held-out split of the training set), both on the "
                    "test split. Prints `feature_erank: <float>` (the effective rank of the test embeddings: how many "
                    "directions they use; 1 or 2 after a collapse), `knn_top1: <float>` and `linear_top1: <float>` "
                    "and writes a PNG of a 2-D PCA projection of the test embeddings next to the checkpoint. "
                    "clip also prints `zero_shot_top1: <float>`. Text methods print their metrics on the validation split instead: "
                    "gpt `val_bits_per_char` and `unigram_bits_per_char`, mlm `masked_accuracy`, "
                    "`majority_accuracy`, `masked_loss` and `unigram_loss`.")
    p.add_argument("--checkpoint", required=True, help="a fastssl checkpoint, e.g. runs/simclr/last.pt")
    p.add_argument("--data", help="the labelled dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--train-limit", type=int, help="use only the first N training images as the kNN bank / "
                                                   "probe training set (a seeded random subset)")
    p.add_argument("--test-limit", type=int, help="use only N test images (a seeded random subset)")
    p.add_argument("--no-linear", dest="linear", action="store_false", help="kNN only")
    p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch (default 512)")


def evaluate(args: argparse.Namespace) -> int:
    from fastssl.eval.evaluate import evaluate_checkpoint

    try:
        evaluate_checkpoint(args.checkpoint, args.data, device=args.device, train_limit=args.train_limit,
                            test_limit=args.test_limit, linear=args.linear, batch_size=args.batch_size)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fastssl eval: {exc}", file=sys.stderr)
        return 2
    return 0


def _finetune_parser(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a checkpoint's backbone on a fraction of the labels, against training from scratch",
        formatter_class=_HelpFormatter,
        epilog="example:\n    fastssl finetune --checkpoint runs/simclr/last.pt --label-fraction 0.01",
        description="Semi-supervised transfer, as SimCLR and BYOL report it: fine-tune the whole pretrained backbone "
                    "with a linear head on a class-balanced fraction of the training labels, then train the same "
                    "backbone from random initialisation on the same labels. Prints `finetune_top1: <float>` and "
                    "`scratch_top1: <float>` (test split).")
    p.add_argument("--checkpoint", required=True, help="a fastssl checkpoint, e.g. runs/simclr/last.pt")
    p.add_argument("--data", help="the labelled dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--label-fraction", type=float, default=0.1, help="share of the training labels, e.g. 0.01, 0.1, 1")
    p.add_argument("--epochs", type=int, default=30, help="epochs at 100%% labels; smaller fractions get more "
                                                        "(epochs / sqrt(fraction))")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05, help="SGD (Nesterov, momentum 0.9), cosine schedule")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-scratch", dest="scratch", action="store_false", help="skip the from-scratch baseline")


def finetune(args: argparse.Namespace) -> int:
    from fastssl.eval.evaluate import finetune_checkpoint

    try:
        finetune_checkpoint(args.checkpoint, args.data, args.label_fraction, args.epochs, args.batch_size, args.lr,
                            args.device, args.seed, args.scratch)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fastssl finetune: {exc}", file=sys.stderr)
        return 2
    return 0


def _sample_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="print text generated by a language-model checkpoint (gpt)", formatter_class=_HelpFormatter,
        epilog="example:\n    fastssl sample --checkpoint runs/gpt/last.pt --prompt 'ROMEO:' --length 200",
        description="Continue --prompt by sampling --length characters one at a time from a gpt checkpoint "
                    "(softmax of the logits / --temperature; 0 takes the most likely character) and print the "
                    "prompt and its continuation.")
    p.add_argument("--checkpoint", required=True, help="a gpt checkpoint, e.g. runs/gpt/last.pt")
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    p.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (default 0.8)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def sample(args: argparse.Namespace, out=None) -> int:
    from fastssl.eval.evaluate import load_method
    from fastssl.train.checkpoint import load_checkpoint
    from fastssl.train.distributed import resolve_device

    out = out or sys.stdout
    try:
        state = load_checkpoint(args.checkpoint)
        method = load_method(state)
        if not hasattr(method, "generate"):
            raise ValueError(f"--checkpoint: {args.checkpoint} holds a {state['method']} model, which does not "
                             "generate text (train one with --method gpt)")
        try:
            prompt = method.tokenizer.encode(args.prompt)
        except ValueError as exc:
            raise ValueError(f"--prompt: {exc}") from None
        method.to(resolve_device(args.device))
        ids = method.generate(prompt, args.length, args.temperature, torch.Generator().manual_seed(args.seed))
    except (ValueError, FileNotFoundError) as exc:
        print(f"fastssl sample: {exc}", file=sys.stderr)
        return 2
    print(method.tokenizer.decode(ids), file=out, flush=True)
    return 0


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`fastssl info | head`): stop quietly, as other command-line tools do, instead of
        # a traceback; point stdout at /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastssl", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    _eval_parser(sub)
    _finetune_parser(sub)
    _sample_parser(sub)
    sub.add_parser("info", help="versions, and which backend of each op runs here (and why not)")
    sub.add_parser("bench", add_help=False,
                   help="`fastssl bench contrastive|augment|masking [args]` (op benchmarks) or `fastssl bench "
                        "--method M --data D` (end-to-end images/s: fused path vs reference path vs bare model)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "pretrain":
        return pretrain(args)
    if args.command == "eval":
        return evaluate(args)
    if args.command == "finetune":
        return finetune(args)
    if args.command == "sample":
        return sample(args)
    if args.command == "info":
        return info()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
