"""The training engine on CPU with real data: losses fall, checkpoints resume bit-exactly, guards fire."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastssl.methods import METHODS
from fastssl.train import NonFiniteLossError, TrainConfig, Trainer
from fastssl.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(backbone="resnet18", backbone_args={"width": 0.125}, batch_size=32, device="cpu", progress=False,
             log_every=1, eval_at_end=False)
# The methods of the trainer issue; the method suite's own tests live in tests/methods/.
ENGINE_METHODS = ("simclr", "moco_v2", "byol")
SMALL_METHOD_ARGS = {"simclr": {}, "moco_v2": {"queue_size": 32}, "byol": {"proj_hidden_dim": 128,
                                                                            "pred_hidden_dim": 128}}


def _config(data, out, method="simclr", **overrides):
    values = dict(SMALL, method=method, data=str(data), out=str(out), method_args=SMALL_METHOD_ARGS.get(method, {}))
    values.update(overrides)
    return TrainConfig(**values)


def test_config_yaml_round_trip(tmp_path):
    cfg = TrainConfig(method="byol", batch_size=64, method_args={"momentum_base": 0.99}, lr=0.1)
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(path) == cfg
    path.write_text("batch_sise: 3\n")
    with pytest.raises(ValueError, match="batch_sise"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=10, grad_accum=3).validate()


@pytest.mark.parametrize("method", ENGINE_METHODS)
def test_loss_is_finite_and_decreases(method, cifar_slice, tmp_path):
    """A few steps on real CIFAR-10 images: the loss goes down. (MoCo's queue of 32 holds real keys from step 2 on;
    its first loss, against the random initial queue, is not comparable.)"""
    # batch 32 scales the lr by 1/8: SimCLR's LARS steps are lr * 0.001 * ||w||, BYOL's small recipe (LARC) takes
    # min(0.02 * ||w|| / ||g||, lr) per tensor
    lr = {"simclr": 8.0, "byol": 8.0, "moco_v2": 0.5}[method]
    cfg = _config(cifar_slice, tmp_path, method, max_steps=16, lr=lr, warmup_fraction=0.0)
    summary = Trainer(cfg).run()
    assert summary["step"] == 16
    import csv

    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[1:5]) / 4, losses
    assert {"step", "loss", "lr", "images_per_s"} <= set(rows[0])
    assert (tmp_path / "last.pt").exists() and (tmp_path / "loss.png").exists()


def test_max_steps_zero_writes_the_untrained_model(cifar_slice, tmp_path):
    Trainer(_config(cifar_slice, tmp_path, max_steps=0)).run()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 0
    torch.manual_seed(0)
    fresh = METHODS["simclr"].build("resnet18", {"width": 0.125}, {}, 3, (32, 32))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state["method_state"][key]), key


class _ExplodingSimCLR(METHODS["simclr"]):
    def loss(self, outputs):
        loss = super().loss(outputs)
        return loss * float("nan") if self.training and getattr(self, "_calls", 0) >= 3 else loss

    def forward(self, views, step=0, horizon=1):
        self._calls = getattr(self, "_calls", 0) + 1
        return super().forward(views, step, horizon)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cifar_slice, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "simclr", _ExplodingSimCLR)
    cfg = _config(cifar_slice, tmp_path, max_steps=10, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        Trainer(cfg).run()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["method_state"].values() if v.is_floating_point())


def _pretrain_cmd(data, out, steps, extra=()):
    return [sys.executable, "-m", "fastssl", "pretrain", "--method", "byol", "--data", str(data), "--out",
            str(out), "--backbone", "resnet18", "--backbone-arg", "width=0.125", "--batch-size", "32",
            "--max-steps", str(steps), "--checkpoint-every", "2", "--device", "cpu", "--no-progress", "--no-eval",
            "--method-arg", "proj_hidden_dim=128", "--method-arg", "pred_hidden_dim=128", *extra]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_exact(cifar_slice, tmp_path):
    """Kill -9 after the first checkpoint, resume, and land on the same weights as a run that never stopped.
    BYOL exercises the EMA target, the momentum schedule, LARS's state and BN statistics."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    steps = 10
    straight = tmp_path / "straight"
    subprocess.run(_pretrain_cmd(cifar_slice, straight, steps), check=True, env=env, cwd=ROOT, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_pretrain_cmd(cifar_slice, killed, steps), env=env, cwd=ROOT)
    deadline = time.time() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = load_checkpoint(killed / "last.pt")
    assert 0 < first["step"] < steps
    subprocess.run(_pretrain_cmd(cifar_slice, killed, steps, ["--resume"]), check=True, env=env, cwd=ROOT,
                   timeout=600)
    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == steps
    for key, value in a["method_state"].items():
        assert torch.equal(value, b["method_state"][key]), f"{key} differs after resume"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gradient_accumulation_splits_the_batch(cifar_slice, tmp_path):
    """grad_accum=2: each optimizer step reads two micro-batches of 16 (one image each, no repeats) and the
    checkpoint counts optimizer steps."""
    cfg = _config(cifar_slice, tmp_path, "byol", max_steps=3, grad_accum=2)
    trainer = Trainer(cfg)
    summary = trainer.run()
    assert summary["step"] == 3 and math.isfinite(summary["loss"])
    seen = [trainer.order.global_indices(s, m) for s in range(3) for m in range(2)]
    assert all(len(x) == 16 for x in seen)
    flat = [int(i) for x in seen for i in x]
    assert len(set(flat)) == len(flat)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_image_folder_of_mixed_sizes_trains(tmp_path):
    """A folder of class sub-folders with images of different sizes: batches travel as PackedImages through the
    variable-size augmentation path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "data" / f"class{c}" /
                                                                                  f"{i}.png")
    cfg = _config(tmp_path / "data", tmp_path / "out", "simclr", max_steps=2, batch_size=8,
                  view_args={"size": 32})
    summary = Trainer(cfg).run()
    assert summary["step"] == 2 and math.isfinite(summary["loss"])


def test_compiled_model_trains_like_eager(cifar_slice, tmp_path, monkeypatch):
    """--compile (torch.compile of the method's forward, the fused ops inside as custom ops): the same losses as the
    eager run, step for step, up to the compiler's reordering of float32 sums. Both in float32 (amp="none"): in
    bf16, which amp="auto" picks for ResNets on CPUs with native bf16, the compiler's fused kernels round
    differently and the second loss differed by 1.9% (measured)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    import csv

    losses = {}
    for compile_ in (False, True):
        out = tmp_path / f"compile_{compile_}"
        Trainer(_config(cifar_slice, out, max_steps=2, batch_size=16, compile=compile_, amp="none")).run()
        losses[compile_] = [float(r["loss"]) for r in csv.DictReader(open(out / "metrics.csv"))]
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=2e-3), losses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ENGINE_METHODS)
def test_trains_on_cuda_with_the_triton_paths(method, cifar_slice, tmp_path):
    """The CUDA path end to end (pinned prefetch, Triton augmentation and loss, bf16 autocast): a few steps give
    finite losses and a checkpoint whose weights are finite."""
    cfg = _config(cifar_slice, tmp_path, method, max_steps=6, device="cuda", batch_size=64, lr=1.0)
    summary = Trainer(cfg).run()
    assert summary["step"] == 6
    import csv

    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses), losses
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["method_state"].values() if v.is_floating_point())


def test_budget_plan_ignores_the_slow_first_step_and_refits():
    from fastssl.train.engine import BudgetPlan

    # 100 s budget; the first step takes 10 s (compilation), then 0.5 s a step: 180 steps fit after step 1.
    plan = BudgetPlan(100.0, planned=10_000, start=0, calibration=5)
    elapsed, horizons = 0.0, {}
    for step in range(1, 400):
        elapsed += 10.0 if step == 1 else 0.5
        horizon = plan.update(step, elapsed)
        if horizon is not None:
            horizons[step] = horizon
        if elapsed >= 100.0:
            break
    first = min(horizons)
    assert first == 6 and horizons[first] == 181  # 6 + 87.0 s / 0.5 s
    # The pace halves a third of the way in: the next refit moves the horizon down, still ending near the budget.
    plan = BudgetPlan(100.0, planned=10_000, start=0, calibration=5)
    elapsed, horizon, step = 0.0, None, 0
    while elapsed < 100.0:
        step += 1
        elapsed += 10.0 if step == 1 else (0.5 if elapsed < 40 else 1.0)
        horizon = plan.update(step, elapsed) or horizon
    assert abs(horizon - step) <= 0.05 * step, (horizon, step)
    assert plan.fits > 3
    # One stalled step (7 s where the others take 0.1 s) does not cut the horizon: the run still ends at the budget.
    plan = BudgetPlan(15.0, planned=10_000, start=0, calibration=5)
    elapsed, horizon, step, fitted = 0.0, None, 0, []
    while elapsed < 15.0 and (horizon is None or step < horizon):
        step += 1
        elapsed += 1.0 if step == 1 else (7.0 if step == 30 else 0.1)
        new = plan.update(step, elapsed)
        if new is not None:
            horizon = new
            fitted.append(new)
    assert min(fitted[1:]) >= step - 3 and abs(horizon - step) <= 3, (fitted, step)
    assert elapsed >= 14.0, "the run stopped at its horizon long before its budget"
    # Never beyond the planned epochs, never before the current step.
    plan = BudgetPlan(100.0, planned=50, start=20, calibration=2)
    assert plan.update(21, 1.0) is None and plan.update(22, 1.1) is None
    assert plan.update(23, 1.2) == 50
    late = BudgetPlan(1.0, planned=1_000, start=0, calibration=1)
    late.update(1, 0.1)
    assert late.update(2, 5.0) == 2


def test_budget_run_ends_its_schedule_at_the_budget(cifar_slice, tmp_path):
    cfg = _config(cifar_slice, tmp_path / "run", budget_minutes=0.25, epochs=1000)
    summary = Trainer(cfg).run()
    assert summary["stopped_by"] in ("budget", "steps")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["horizon_fixed"]
    # The schedule's end is within a few steps of where the budget stopped the run.
    assert abs(state["horizon"] - summary["step"]) <= max(3, 0.15 * summary["step"]), (state["horizon"], summary)
    assert 12 <= summary["seconds"] <= 15 + 10


def test_small_images_take_the_methods_small_recipe(tmp_path):
    """Images of 64 px or less get the method's small recipe (MoCo v2: lr, EMA momentum and queue size), larger
    ones the paper's, whatever the view size; the checkpoint records which, so evaluation rebuilds the same
    model (the queue's size differs)."""
    import numpy as np

    from fastssl.eval.evaluate import load_method

    cls = METHODS["moco_v2"]
    assert cls.recipe(True) != cls.recipe(False) and cls.method_options(True) != cls.method_options(False)
    rng = np.random.default_rng(0)
    for px, small in ((32, True), (80, False)):
        data = tmp_path / f"images{px}.npz"
        np.savez(data, x=rng.integers(0, 256, (16, px, px, 3), dtype=np.uint8), y=np.arange(16) % 2)
        cfg = _config(data, tmp_path / f"out{px}", "moco_v2", method_args={}, max_steps=0, batch_size=8,
                      view_args={"size": 32})
        trainer = Trainer(cfg)
        trainer.run()
        options = cls.method_options(small)
        assert trainer.base_lr == pytest.approx(cls.recipe(small)["lr"] * 8 / 256)
        assert trainer.method.momentum == options["momentum"]
        assert trainer.method.criterion.queue.shape[0] == options["queue_size"]
        state = load_checkpoint(tmp_path / f"out{px}" / "last.pt")
        assert state["small_images"] is small
        rebuilt = load_method(state)  # the 32 px views alone would have suggested the small recipe for both
        assert rebuilt.criterion.queue.shape[0] == options["queue_size"]


def test_simsiam_predictor_keeps_the_base_lr(tmp_path):
    """SimSiam's paper keeps the predictor's lr fixed: after the last step of a 2-step cosine schedule the predictor's
    groups still hold the base lr, the other groups the scheduled lr; fix_pred_lr=False schedules every group."""
    import numpy as np

    rng = np.random.default_rng(1)
    data = tmp_path / "images.npz"
    np.savez(data, x=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), y=np.arange(24) % 3)
    for fix in (True, False):
        cfg = _config(data, tmp_path / f"out{fix}", "simsiam", max_steps=2, batch_size=8,
                      method_args={"proj_hidden_dim": 64, "proj_dim": 64, "pred_hidden_dim": 16,
                                   "fix_pred_lr": fix})
        trainer = Trainer(cfg)
        trainer.run()
        predictor = {id(p) for p in trainer.method.predictor.parameters()}
        groups = trainer.optimizer.param_groups
        fixed = [g for g in groups if g.get("fixed_lr")]
        assert bool(fixed) is fix
        if fix:
            assert {id(p) for g in fixed for p in g["params"]} == predictor
            assert all(g["lr"] == trainer.base_lr for g in fixed)
        scheduled = [g for g in groups if not g.get("fixed_lr")]
        assert all(g["lr"] < trainer.base_lr for g in scheduled)
    # resuming the unfixed run with the predictor fixed changes the optimizer's groups: a clear error, not torch's
    cfg = _config(data, tmp_path / "outFalse", "simsiam", max_steps=3, batch_size=8, resume=True,
                  method_args={"proj_hidden_dim": 64, "proj_dim": 64, "pred_hidden_dim": 16, "fix_pred_lr": True})
    with pytest.raises(ValueError, match="fix_pred_lr"):
        Trainer(cfg).run()


def test_byol_logs_the_spread_of_its_targets():
    """BYOL's z_std (metrics.csv): the std over the batch of the l2-normalised target projections, averaged over
    dimensions; 0 when the targets collapse to one vector, about 1 / sqrt(dim) when they spread evenly. z_erank,
    their effective rank, also shows the dimensional collapse that z_std misses."""
    torch.manual_seed(0)
    method = METHODS["byol"].build("resnet18", {"width": 0.125}, {**SMALL_METHOD_ARGS["byol"], "proj_dim": 64}, 3,
                                   (32, 32))
    g = torch.Generator().manual_seed(3)
    p0, p1, z0, z1 = (torch.randn(37, 64, generator=g, dtype=torch.float64) for _ in range(4))
    method.loss(((p0, p1), (z0, z1)))
    expected = (z0 / z0.norm(dim=1, keepdim=True)).std(dim=0, unbiased=False).mean()
    assert method.logs()["z_std"] == pytest.approx(float(expected), rel=1e-5)
    assert 0.5 / 8 < method.logs()["z_std"] < 1.5 / 8
    # z_erank: 37 Gaussian rows in 64-d spread over nearly all 36 directions their centring leaves
    assert 25 < method.logs()["z_erank"] <= 36 + 1e-6
    constant = torch.randn(1, 64, generator=g).expand(37, 64)
    method.loss(((p0, p1), (3 * constant, constant)))
    assert method.logs()["z_std"] == pytest.approx(0.0, abs=1e-6) and method.logs()["z_erank"] == 0.0
    # dimensional collapse: rows that vary along one direction only; z_std stays well above 0, z_erank says 1
    line = constant + torch.randn(37, 1, generator=g) * torch.randn(1, 64, generator=g)
    method.loss(((p0, p1), (line, line)))
    assert method.logs()["z_erank"] == pytest.approx(1.0, abs=1e-3) and method.logs()["z_std"] > 0.01


def test_byol_predictor_lr_scale_reaches_the_optimizer(tmp_path):
    """pred_lr_scale (the BYOL paper's predictor lr multiplier, Appendix F.2): the predictor's groups hold that
    many times the scheduled lr of the others at every step; the default 1 builds the plain two groups."""
    import numpy as np

    rng = np.random.default_rng(2)
    data = tmp_path / "images.npz"
    np.savez(data, x=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), y=np.arange(24) % 3)
    for scale in (1.0, 10.0):
        cfg = _config(data, tmp_path / f"out{scale}", "byol", max_steps=2, batch_size=8,
                      method_args={**SMALL_METHOD_ARGS["byol"], "pred_lr_scale": scale})
        trainer = Trainer(cfg)
        trainer.run()
        groups = trainer.optimizer.param_groups
        scaled = [g for g in groups if "lr_scale" in g]
        assert len(groups) == (2 if scale == 1.0 else 4) and len(scaled) == (0 if scale == 1.0 else 2)
        if scaled:
            predictor = {id(p) for p in trainer.method.predictor.parameters()}
            assert {id(p) for g in scaled for p in g["params"]} == predictor
            others = [g for g in groups if "lr_scale" not in g]
            assert all(g["lr"] == pytest.approx(10.0 * others[0]["lr"]) for g in scaled) and others[0]["lr"] > 0
    with pytest.raises(ValueError, match="pred_lr_scale"):
        METHODS["byol"].build("resnet18", {"width": 0.125}, {"pred_lr_scale": -1.0}, 3, (32, 32))


def test_auto_amp_picks_bf16_only_where_it_was_measured_faster(monkeypatch):
    """amp="auto": bf16 on CUDA; on a CPU, bf16 only for convolutional backbones and only where the CPU does bf16
    in hardware (elsewhere torch emulates it, slower than float32); Transformers stay in float32 on CPUs."""
    from fastssl import _dispatch
    from fastssl.train.engine import auto_amp

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_amp(cuda, True) == auto_amp(cuda, False) == "bf16"
    monkeypatch.setattr(_dispatch, "cpu_native_bf16", lambda: (True, "AVX512-BF16"))
    assert auto_amp(cpu, True) == "bf16" and auto_amp(cpu, False) == "none"
    monkeypatch.setattr(_dispatch, "cpu_native_bf16", lambda: (False, "no AVX512-BF16 or AMX"))
    assert auto_amp(cpu, True) == "none" and auto_amp(cpu, False) == "none"


def test_run_says_which_precision_it_trains_in(cifar_slice, tmp_path, monkeypatch):
    import io

    from fastssl import _dispatch

    for native, expected in ((True, "amp bf16"), (False, "amp none")):
        monkeypatch.setattr(_dispatch, "cpu_native_bf16", lambda native=native: (native, "probe"))
        stream = io.StringIO()
        trainer = Trainer(_config(cifar_slice, tmp_path / str(native), max_steps=0), out_stream=stream)
        trainer.run()
        assert expected in stream.getvalue() and trainer.amp == expected.split()[1]
        assert trainer.amp_dtype == (torch.bfloat16 if native else None)
