"""Two gloo processes on CPU take the same step as one process on the global batch, for the image methods whose
loss reaches across the batch: Barlow Twins (global standardisation, C summed over ranks), VICReg (statistics of
the gathered embeddings), MoCo v3 (every rank's keys) and DINO (the centre averaged over ranks).

One SGD step that moves the weights by up to ~0.2-0.4 (the lr is set per method: Barlow Twins' gradients are
~1000 times VICReg's at lr 2), the contiguous layout and float32 (amp="none") on both sides, as
tests/train/test_distributed_train.py does.
Compared: each tensor's change over the step, 2 processes against 1, relative to its size. Measured: a median of
5e-6 (BT, VICReg) and 1e-6 (MoCo v3, DINO), heads and late layers <= 3e-5; the early layers of the BN ResNet
reach 2e-2 under BT's and VICReg's losses (float32 rounding amplified through the backward, as the engine test's
notes measure against float64), so each tensor is held to 5e-2 and the median to 1e-4, where a wrong scale or a
missing cross-rank term moves every tensor by tens of percent. Tensors whose exact change is zero (a bias before a
BatchNorm, which cancels it) move by rounding alone (< 1e-7) and are skipped."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fastssl.train import Trainer
from fastssl.train.checkpoint import load_checkpoint
from tests.conftest import require_cpp
from tests.methods.image_ssl_runs import tiny_config

WORLD = 2
METHODS = ("barlow_twins", "vicreg", "moco_v3", "dino")
LR = {"barlow_twins": 0.004, "vicreg": 0.2, "moco_v3": 2.0, "dino": 0.05}  # max weight change ~0.2-0.4 (measured)


def _config(data, out, method, max_steps=1):
    return tiny_config(data, out, method, batch_size=16, max_steps=max_steps, optimizer="sgd", lr=LR[method],
                       channels_last=False, amp="none")


def _worker(rank, port, data, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    for method in METHODS:
        Trainer(_config(data, out / method, method)).run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FASTSSL_SLOW") != "1",
                    reason="set FASTSSL_SLOW=1: 2 gloo processes x 4 methods took 5+ minutes on the 2-core machine "
                           "and once failed there with 'Connection reset by peer' under load (2026-11-28)")
def test_two_processes_match_one(cifar_small, tmp_path):
    require_cpp()
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, cifar_small, tmp_path / "two")) for r in range(WORLD)]
    for p in procs:
        p.start()
    for method in METHODS:  # the single-process runs overlap the spawned ones
        Trainer(_config(cifar_small, tmp_path / "one" / method, method)).run()
        Trainer(_config(cifar_small, tmp_path / "init" / method, method, max_steps=0)).run()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    for method in METHODS:
        one = load_checkpoint(tmp_path / "one" / method / "last.pt")
        two = load_checkpoint(tmp_path / "two" / method / "last.pt")
        init = load_checkpoint(tmp_path / "init" / method / "last.pt")["method_state"]
        assert one["step"] == two["step"] == 1 and two["world"] == WORLD
        moved = max((one["method_state"][k] - v).abs().max().item() for k, v in init.items()
                    if v.is_floating_point())
        assert moved > 1e-2, f"{method}: the step barely moved the weights ({moved:.2g})"
        errors = {}
        for key, start in init.items():
            a, b = one["method_state"][key], two["method_state"][key]
            if not start.is_floating_point():
                assert torch.equal(a, b), f"{method}: {key}"
                continue
            change = (a - start).double()
            if change.norm() < 1e-6:
                continue
            errors[key] = ((b - start).double() - change).norm().item() / change.norm().item()
        worst = max(errors, key=errors.get)
        assert errors[worst] < 5e-2, f"{method}: {worst} changed differently in 2 processes ({errors[worst]:.2g})"
        median = sorted(errors.values())[len(errors) // 2]
        assert median < 1e-4, f"{method}: median relative difference {median:.2g} between 1 and 2 processes"
