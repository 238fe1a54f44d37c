"""CLI smoke runs of pretrain, eval and finetune on a small slice of the real CIFAR-10 data."""

import re
import shutil

import pytest
import torch
import yaml

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


def test_pretrain_with_its_closing_eval_ends_with_the_knn_line(cifar_slice, tmp_path, capsys):
    """The README's quick start promises that pretraining ends with a `knn_top1: <float>` line."""
    code = main(["pretrain", "--method", "simclr", "--data", str(cifar_slice), "--out", str(tmp_path), "--max-steps",
                 "2", "--batch-size", "32", "--backbone-arg", "width=0.125", "--device", "cpu", "--no-progress"])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1].startswith("knn_top1: ") and 0.0 <= _numbers(lines[-1], "knn_top1") <= 1.0
    assert 1.0 <= _numbers("\n".join(lines), "feature_erank") <= 64


def test_resume_from_the_runs_own_config(cifar_slice, tmp_path, capsys):
    """`fastssl pretrain --config OUT/config.yaml --resume` (the --help example) continues the run it describes to
    the same weights; resuming a finished run says so and trains nothing."""
    run = tmp_path / "run"
    config = {"method": "simclr", "data": str(cifar_slice), "out": str(run), "max_steps": 4, "batch_size": 32,
              "backbone_args": {"width": 0.125}, "device": "cpu", "progress": False, "eval_at_end": False,
              "checkpoint_every": 2, "keep_checkpoints": True}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(tmp_path / "run.yaml")]) == 0
    finished = torch.load(run / "last.pt", weights_only=False)["method_state"]

    shutil.copy(run / "step_0000002.pt", run / "last.pt")  # as if the run had been killed during step 3
    capsys.readouterr()
    assert main(["pretrain", "--config", str(run / "config.yaml"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"--resume: continuing from step 2 of {run / 'last.pt'} to step 4" in out and "done: step 4" in out
    resumed = torch.load(run / "last.pt", weights_only=False)["method_state"]
    for name, tensor in finished.items():
        assert torch.equal(tensor, resumed[name]), name

    assert main(["pretrain", "--config", str(run / "config.yaml"), "--resume", "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    assert f"--resume: {run / 'last.pt'} is a finished run (step 4, where its schedules end)" in out
    assert "--max-steps 6 is ignored" in out and "no step run" in out


def test_eval_prints_knn_and_linear(pretrained, cifar_slice, capsys):
    assert main(["eval", "--checkpoint", str(pretrained / "last.pt"), "--data", str(cifar_slice)]) == 0
    out = capsys.readouterr().out
    assert 0.0 <= _numbers(out, "knn_top1") <= 1.0
    assert 0.0 <= _numbers(out, "linear_top1") <= 1.0
    assert (pretrained / "last_embeddings_pca.png").exists()


def test_eval_on_seeded_subsets(pretrained, cifar_slice, capsys):
    """--train-limit / --test-limit: the kNN bank and the test set are seeded subsets (the CPU results script uses
    them); the same limits give the same number twice."""
    args = ["eval", "--checkpoint", str(pretrained / "last.pt"), "--data", str(cifar_slice), "--no-linear",
            "--train-limit", "150", "--test-limit", "40"]
    assert main(args) == 0
    first = _numbers(capsys.readouterr().out, "knn_top1")
    assert main(args) == 0
    assert _numbers(capsys.readouterr().out, "knn_top1") == first
    assert 0.0 <= first <= 1.0


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


def test_a_method_on_the_wrong_kind_of_data_is_told_what_it_takes(cifar_slice, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 50)
    assert main(["pretrain", "--method", "simclr", "--data", str(corpus), "--out", str(tmp_path / "a"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data: simclr is an image method" in err and "is a text corpus" in err and "gpt, mlm" in err
    assert main(["pretrain", "--method", "gpt", "--data", str(cifar_slice), "--out", str(tmp_path / "b"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data: gpt is a text method" in err and "not a text corpus" in err and ".txt / .txt.gz" in err


def test_bench_method_compares_the_three_paths(cifar_slice, capsys):
    assert main(["bench", "--method", "simclr", "--data", str(cifar_slice), "--batch-size", "32", "--steps", "1",
                 "--workers", "0", "--device", "cpu", "--backbone-arg", "width=0.125"]) == 0
    out = capsys.readouterr().out
    for path in ("bare", "fastssl", "reference"):
        assert re.search(rf"^\| {path} \| [0-9,.]+ \|", out, re.M), out


def test_image_folder_of_mixed_sizes_pretrains_evaluates_and_finetunes(tmp_path, capsys):
    """An image folder (class sub-folders, mixed sizes) goes through pretrain, eval and finetune: its batches are
    PackedImages, which the feature extractor and the fine-tuning loop take as they are."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(2):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(14):
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                tmp_path / "data" / f"class{c}" / f"{i}.png")
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path / "data"), "--out", str(run), "--max-steps", "1",
                 "--batch-size", "8", "--view-arg", "size=32", "--backbone-arg", "width=0.125", "--device", "cpu",
                 "--no-progress", "--no-eval"]) == 0
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert 0.0 <= _numbers(out, "knn_top1") <= 1.0 and 0.0 <= _numbers(out, "linear_top1") <= 1.0
    assert main(["finetune", "--checkpoint", str(run / "last.pt"), "--epochs", "1", "--batch-size", "8",
                 "--label-fraction", "0.5", "--device", "cpu"]) == 0
    assert 0.0 <= _numbers(capsys.readouterr().out, "finetune_top1") <= 1.0
