"""benchmarks/method_results.py: the comparison behind each table row and the side-by-side table of seeds."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "method_results.py"
spec = importlib.util.spec_from_file_location("method_results", SCRIPT)
method_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(method_results)


def image_row(method, knn, knn_init, linear=None, linear_init=None, seed=None):
    row = {"method": method, "data": "cifar10", "trained": {"knn_top1": knn}, "random_init": {"knn_top1": knn_init}}
    if linear is not None:
        row["trained"]["linear_top1"], row["random_init"]["linear_top1"] = linear, linear_init
    if seed is not None:
        row["seed"] = seed
    return row


def test_comparison_by_metric_kind():
    head, kind, base, delta, unit = method_results.comparison(image_row("simclr", 0.4090, 0.2935))
    assert (head, kind, base, unit) == ("knn_top1", "random init", 0.2935, "points")
    assert delta == pytest.approx(11.55)
    # bits per character: lower is better, and the printed unigram value is the baseline
    gpt = {"method": "gpt", "trained": {"val_bits_per_char": 2.2339, "unigram_bits_per_char": 4.8291}}
    head, kind, base, delta, unit = method_results.comparison(gpt)
    assert (head, kind, base, unit) == ("val_bits_per_char", "unigram bits per char", 4.8291, "bits")
    assert delta == pytest.approx(2.5952)
    # zero-shot accuracy leads over kNN for CLIP
    clip = {"method": "clip", "trained": {"knn_top1": 0.54, "zero_shot_top1": 0.499},
            "random_init": {"knn_top1": 0.29, "zero_shot_top1": 0.0925}}
    assert method_results.comparison(clip)[0] == "zero_shot_top1"
    assert method_results.comparison({"method": "x", "trained": {}})[0] is None


def test_seeds_table_mean_spread_and_missing_runs(tmp_path):
    seed0, seed1 = tmp_path / "a" / "results.json", tmp_path / "b" / "results.json"
    for path in (seed0, seed1):
        path.parent.mkdir()
    seed0.write_text(json.dumps([image_row("byol", 0.3725, 0.2935, 0.381, 0.329, seed=0),
                                 image_row("mae", 0.3845, 0.3160, seed=0)]))
    seed1.write_text(json.dumps([image_row("byol", 0.3470, 0.2595, 0.3835, 0.3315, seed=1),
                                 {"method": "dino", "data": "cifar10", "seed": 1,
                                  "error": "pretrain exit 1: boom"}]))
    labels = [method_results.seed_label(seed0), method_results.seed_label(seed1)]
    assert labels == ["seed 0", "seed 1"]
    lines = method_results.seeds_markdown([seed0, seed1], labels).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:]}
    assert set(rows) == {"byol", "dino", "mae"}
    byol = rows["byol"]
    assert byol[2:4] == ["0.3725, +7.90", "0.3470, +8.75"]
    assert byol[4] == "+8.32 points" and byol[5] == "0.85"   # (7.90 + 8.75) / 2, 8.75 - 7.90
    assert byol[6] == "+5.20, +5.20" and byol[7].startswith("+5.20")
    assert rows["dino"][2:4] == ["not run", "failed"] and rows["dino"][4] == ""
    assert rows["mae"][3] == "not run" and rows["mae"][5] == ""   # one seed: no spread
    # a results.json without a seed in its rows is named by its folder
    seed0.write_text(json.dumps([image_row("mae", 0.3845, 0.3160)]))
    assert method_results.seed_label(seed0) == "a"
