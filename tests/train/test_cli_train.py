"""CLI smoke runs of pretrain, eval and finetune on a small slice of the real CIFAR-10 data."""

import re

import pytest

from fastssl.cli import main


def _numbers(text: str, name: str) -> float:
    match = re.search(rf"^{name}: ([0-9.]+)$", text, re.M)
    assert match, f"no '{name}: <float>' line in:\n{text}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def pretrained(cifar_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["pretrain", "--method", "simclr", "--data", str(cifar_slice), "--out", str(out), "--max-steps", "3",
                 "--batch-size", "32", "--backbone-arg", "width=0.125", "--device", "cpu", "--no-progress",
                 "--no-eval", "--checkpoint-every", "2"])
    assert code == 0
    return out


def test_pretrain_writes_its_outputs(pretrained):
    for name in ("last.pt", "metrics.csv", "loss.png", "config.yaml"):
        assert (pretrained / name).exists(), name
    header = (pretrained / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "loss", "lr", "images_per_s"} <= set(header)


def test_eval_prints_knn_and_linear(pretrained, cifar_slice, capsys):
    assert main(["eval", "--checkpoint", str(pretrained / "last.pt"), "--data", str(cifar_slice)]) == 0
    out = capsys.readouterr().out
    assert 0.0 <= _numbers(out, "knn_top1") <= 1.0
    assert 0.0 <= _numbers(out, "linear_top1") <= 1.0
    assert (pretrained / "last_embeddings_pca.png").exists()


def test_finetune_prints_both_accuracies(pretrained, cifar_slice, capsys):
    assert main(["finetune", "--checkpoint", str(pretrained / "last.pt"), "--data", str(cifar_slice),
                 "--label-fraction", "0.5", "--epochs", "1", "--batch-size", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert 0.0 <= _numbers(out, "finetune_top1") <= 1.0
    assert 0.0 <= _numbers(out, "scratch_top1") <= 1.0


def test_bad_arguments_name_the_problem(cifar_slice, tmp_path, capsys):
    assert main(["pretrain", "--method", "simclr2", "--data", str(cifar_slice), "--out", str(tmp_path / "x"),
                 "--device", "cpu", "--no-progress"]) == 2
    assert "method: unknown 'simclr2'" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "y"),
                 "--device", "cpu", "--no-progress"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2


def test_bench_method_compares_the_three_paths(cifar_slice, capsys):
    assert main(["bench", "--method", "simclr", "--data", str(cifar_slice), "--batch-size", "32", "--steps", "1",
                 "--workers", "0", "--device", "cpu", "--backbone-arg", "width=0.125"]) == 0
    out = capsys.readouterr().out
    for path in ("bare", "fastssl", "reference"):
        assert re.search(rf"^\| {path} \| [0-9,.]+ \|", out, re.M), out
