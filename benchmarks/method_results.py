"""Issue 6's results table: every registered method pretrained for a fixed budget, then judged by its metric next
to the random-initialisation (or unigram) baseline on the same data.

    python benchmarks/method_results.py --budget-minutes 5 --linear --train-limit 10000 --test-limit 2000 --out runs/method_results
    python benchmarks/method_results.py --methods simclr mae gpt --device cuda --budget-minutes 8

Per method, through the public CLI (what a user runs):
  1. `fastssl pretrain --method M --budget-minutes B --no-eval` (the method's default data and backbone on the
     device; on a CPU the default ResNet runs at width 0.25, see fastssl/train/engine.py);
  2. `fastssl eval --checkpoint .../last.pt` (image methods: weighted kNN top-1, optionally the linear probe; text
     and multimodal methods print their own metrics, e.g. bits per character against the unigram baseline,
     masked-token accuracy, zero-shot accuracy);
  3. the same evaluation of the method's untrained model (`--max-steps 0`, the same seed, so the same initial
     weights, and the method's own input normalisation): the random-initialisation baseline.
`--baselines-for OUT/results.json` re-measures only the baselines of a finished table; `--table-from` rebuilds or
merges tables from results.json files without running anything; `--seeds-table A/results.json B/results.json`
puts runs of one table with different seeds side by side, with each method's mean gain and its spread.
Every `name: number` line that `fastssl eval` prints is recorded. Writes OUT/results.md (the table), OUT/results.json
and each run's folder (checkpoint, metrics.csv, loss.png). A method whose run fails is reported as failed, with
its exit code, and the table goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRIC = re.compile(r"^([a-z][a-z0-9_]*): (-?[0-9.]+(?:e-?[0-9]+)?|nan|inf)\s*$", re.MULTILINE)
# The metric each table row leads with, in order of preference; the first one printed is the headline.
HEADLINE = ("zero_shot_top1", "knn_top1", "val_bits_per_char", "masked_accuracy")
# printed baselines that pair with a metric (and replace the random initialisation as its baseline)
BASELINE_NAMES = {"unigram_bits_per_char": "val_bits_per_char", "majority_accuracy": "masked_accuracy"}


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, str]:
    t0 = time.time()
    print("$", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, text = 124, f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout:.0f} s"
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{text}\n[exit {code} after {time.time() - t0:.0f} s]\n")
    return code, text


def metrics(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in METRIC.findall(text)}


def headline(values: dict[str, float]) -> str | None:
    return next((name for name in HEADLINE if name in values), None)


def method_info(name: str) -> dict:
    from fastssl.methods import METHODS

    cls = METHODS[name]
    return {"data": getattr(cls, "default_data", "cifar10"), "data_kind": getattr(cls, "data_kind", "image"),
            "backbone": cls.default_backbone}


def random_init(name: str, out: Path, py: list[str], common: list[str], eval_args: list[str], log: Path) -> dict:
    """The metrics of the method's untrained model (`--max-steps 0`, same seed: the same initial weights)."""
    init_dir = out / f"{name}_init"
    code, _ = run(py + ["pretrain", "--method", name, "--out", str(init_dir), "--max-steps", "0", "--no-eval"]
                  + common, log, 600)
    if code != 0:
        return {}
    _, text = run(py + ["eval", "--checkpoint", str(init_dir / "last.pt")] + eval_args, log, 3600)
    return metrics(text)


def pretrain_arguments(args, batch_size) -> list[str]:
    common = ["--device", args.device, "--seed", str(args.seed), "--no-progress"]
    common += ["--batch-size", str(batch_size)] if batch_size else []
    return common + shlex.split(args.pretrain_args or "")


def eval_arguments(args) -> list[str]:
    eval_args = ["--device", args.device] + ([] if args.linear else ["--no-linear"])
    for flag, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit)):
        if value is not None:
            eval_args += [flag, str(value)]
    return eval_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--budget-minutes", type=float, default=2.0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("runs/method_results"))
    parser.add_argument("--linear", action="store_true", help="also the linear probe (image methods)")
    parser.add_argument("--train-limit", type=int, help="kNN bank / probe training images (default: all)")
    parser.add_argument("--test-limit", type=int, help="test images (default: all)")
    parser.add_argument("--batch-size", type=int, help="pretraining batch (default: the trainer's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-args", metavar="'ARGS'",
                        help="more arguments for every `fastssl pretrain` of the table, random-init runs "
                             "included, as one quoted string, e.g. --pretrain-args '--lr 0.3 --method-arg "
                             "momentum_base=0.996'; recorded in each row")
    parser.add_argument("--baselines-for", type=Path, metavar="RESULTS.json",
                        help="pretrain nothing: re-measure the random-initialisation baseline of every method in "
                             "this results.json (with this run's evaluation arguments) and write OUT/results.*")
    parser.add_argument("--table-from", nargs="+", type=Path, metavar="RESULTS.json",
                        help="run nothing: write OUT/results.md from these results.json files (a later file's row "
                             "of a method replaces an earlier one; the header takes this run's arguments)")
    parser.add_argument("--seeds-table", nargs="+", type=Path, metavar="RESULTS.json",
                        help="run nothing: write OUT/seeds.md, one column per results.json (runs of the same table "
                             "with different seeds) with the mean and spread of each method's gain")
    parser.add_argument("--labels", nargs="+", help="column names for --seeds-table (default: each row's "
                                                    "seed, or the results.json's folder name)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.seeds_table:
        if args.labels and len(args.labels) != len(args.seeds_table):
            parser.error(f"--labels: expected {len(args.seeds_table)} names, one per --seeds-table file, "
                         f"got {len(args.labels)}")
        labels = args.labels or [seed_label(path) for path in args.seeds_table]
        args.out.mkdir(parents=True, exist_ok=True)
        table = seeds_markdown(args.seeds_table, labels)
        (args.out / "seeds.md").write_text(table)
        print(table)
        return 0
    from fastssl.methods import METHODS

    if args.table_from:
        merged: dict[str, dict] = {}
        for path in args.table_from:
            for row in json.loads(path.read_text()):
                config = path.parent / row["method"] / "config.yaml"  # rows written before batch_size was kept
                if row.get("batch_size") is None and config.exists():
                    import yaml

                    row["batch_size"] = yaml.safe_load(config.read_text()).get("batch_size")
                merged[row["method"]] = row
        rows = [merged[name] for name in sorted(merged)]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
        table = markdown(rows, args)
        (args.out / "results.md").write_text(table)
        print(table)
        return 0

    if args.baselines_for:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = json.loads(args.baselines_for.read_text())
        for row in rows:
            row["random_init"] = random_init(row["method"], args.out, [sys.executable, "-m", "fastssl"],
                                             pretrain_arguments(args, row.get("batch_size")), eval_arguments(args),
                                             args.out / "log.txt")
            print(f"{row['method']}: random init {row['random_init']}", flush=True)
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
        (args.out / "results.md").write_text(markdown(rows, args))
        print(markdown(rows, args))
        return 0

    names = args.methods or sorted(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; registered: {', '.join(sorted(METHODS))}")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    py = [sys.executable, "-m", "fastssl"]
    common = pretrain_arguments(args, args.batch_size)
    eval_args = eval_arguments(args)
    budget_s = args.budget_minutes * 60
    rows, baselines = [], {}
    for name in names:
        info = method_info(name)
        row = {"method": name, **info, "budget_minutes": args.budget_minutes, "seed": args.seed}
        if args.pretrain_args:
            row["pretrain_args"] = args.pretrain_args
        run_dir = args.out / name
        t0 = time.time()
        code, text = run(py + ["pretrain", "--method", name, "--out", str(run_dir), "--budget-minutes",
                               str(args.budget_minutes), "--no-eval"] + common, log, budget_s * 2 + 600)
        row["pretrain_seconds"] = round(time.time() - t0, 1)
        done = re.search(r"done: step (\d+)", text)
        row["steps"] = int(done.group(1)) if done else None
        batch = re.search(r", batch (\d+) on ", text)
        row["batch_size"] = int(batch.group(1)) if batch else None
        if code != 0:
            row["error"] = f"pretrain exit {code}: {text.strip().splitlines()[-1] if text.strip() else ''}"
            rows.append(row)
            print(f"{name}: {row['error']}", flush=True)
            continue
        code, text = run(py + ["eval", "--checkpoint", str(run_dir / "last.pt")] + eval_args, log, 3600)
        row["trained"] = metrics(text)
        if code != 0:
            row["error"] = f"eval exit {code}: {text.strip().splitlines()[-1] if text.strip() else ''}"
        # The untrained model of this method: the seed fixes the initial weights, but the method's view preset
        # fixes the input normalisation the evaluation applies (the "mae" preset's random ResNet scored 0.3005
        # kNN, the "cifar" preset's 0.2935), so every method gets its own.
        key = name
        if key not in baselines:
            baselines[key] = random_init(name, args.out, py, common, eval_args, log)
        row["random_init"] = baselines[key]
        rows.append(row)
        print(f"{name}: {row.get('trained')} vs random init {row['random_init']}", flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows, args)
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n" + table)
    return 0 if all("error" not in r for r in rows) else 1


def seed_label(path: Path) -> str:
    seeds = {row.get("seed") for row in json.loads(path.read_text())}
    return f"seed {seeds.pop()}" if len(seeds) == 1 and None not in seeds else path.parent.name


def comparison(row: dict) -> tuple[str | None, str, float | None, float | None, str]:
    """(headline metric, what the baseline is, baseline value, better by, unit) of one results row: better by is
    points of accuracy, or bits per character saved."""
    trained, init = row.get("trained") or {}, row.get("random_init") or {}
    head = headline(trained)
    if head is None:
        return None, "", None, None, ""
    baseline_kind, baseline = "random init", init.get(head)
    for printed, pairs in BASELINE_NAMES.items():
        if pairs == head and printed in trained:
            baseline_kind, baseline = printed.replace("_", " "), trained[printed]
    if baseline is None:
        return head, baseline_kind, None, None, ""
    if head == "val_bits_per_char":
        return head, baseline_kind, baseline, baseline - trained[head], "bits"
    return head, baseline_kind, baseline, 100 * (trained[head] - baseline), "points"


def seeds_markdown(paths: list[Path], labels: list[str]) -> str:
    """One row per method, one column per results.json (a seed), then the mean and the spread (largest minus
    smallest) of "better by" across them, and the same for the linear probe where it was measured."""
    runs = [{row["method"]: row for row in json.loads(path.read_text())} for path in paths]
    names = sorted(set().union(*runs))
    lines = ["| method | metric | " + " | ".join(f"{label}: trained, better by" for label in labels)
             + " | mean better by | spread | linear probe better by: " + ", ".join(labels) + " | mean |",
             "|---|---|" + "---|" * len(labels) + "---|---|---|---|"]
    for name in names:
        cells, gains, linear, metric, unit = [], [], [], "", ""
        for run in runs:
            row = run.get(name)
            head, _, _, delta, unit_here = comparison(row) if row and "error" not in row else (None,) * 5
            if head is None or delta is None:
                cells.append("failed" if row else "not run")
                linear.append(None)
                continue
            metric, unit = head, unit_here
            cells.append(f"{row['trained'][head]:.4f}, {delta:+.2f}")
            gains.append(delta)
            trained, init = row["trained"], row.get("random_init") or {}
            linear.append(100 * (trained["linear_top1"] - init["linear_top1"])
                          if "linear_top1" in trained and "linear_top1" in init else None)
        mean = f"{sum(gains) / len(gains):+.2f} {unit}" if gains else ""
        spread = f"{max(gains) - min(gains):.2f}" if len(gains) > 1 else ""
        measured = [g for g in linear if g is not None]
        linear_cells = ", ".join("-" if g is None else f"{g:+.2f}" for g in linear) if measured else ""
        linear_mean = f"{sum(measured) / len(measured):+.2f}" if measured else ""
        lines.append(f"| {name} | {metric} | " + " | ".join(cells) + f" | {mean} | {spread} | {linear_cells} | "
                     f"{linear_mean} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], args) -> str:
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    lines = [f"Budget {args.budget_minutes:g} min of pretraining per method on {name}, torch {torch.__version__}, "
             f"seed {args.seed}, {time.strftime('%Y-%m-%d')}. Evaluation: "
             f"{'kNN and linear probe' if args.linear else 'weighted kNN (k = 20)'} for image methods"
             f"{f', {args.train_limit} bank images' if args.train_limit else ''}"
             f"{f', {args.test_limit} test images' if args.test_limit else ''}; the method's own metrics otherwise."
             f"{f' Pretrained with `{args.pretrain_args}`.' if args.pretrain_args else ''}",
             "", "| method | data | steps, batch | metric | trained | baseline | baseline is | better by | other metrics |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r and not r.get("trained"):
            lines.append(f"| {r['method']} | {r['data']} | {r.get('steps') or ''} | failed | | | | | {r['error']} |")
            continue
        trained, init = r.get("trained", {}), r.get("random_init", {})
        head, baseline_kind, baseline, delta, unit = comparison(r)
        if head is None:
            lines.append(f"| {r['method']} | {r['data']} | {r.get('steps')} | none printed | | | | | |")
            continue
        others = ", ".join(f"{k} {v:.4g}" + (f" (init {init[k]:.4g})" if k in init else "")
                           for k, v in trained.items() if k != head and k not in BASELINE_NAMES)
        base = f"{baseline:.4f}" if baseline is not None else ""
        gain = f"{delta:+.2f} {unit}" if delta is not None else ""
        batch = f", batch {r['batch_size']}" if r.get("batch_size") else ""
        lines.append(f"| {r['method']} | {r['data']} | {r.get('steps')}{batch} | {head} | {trained[head]:.4f} | "
                     f"{base} | {baseline_kind} | {gain} | {others} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
