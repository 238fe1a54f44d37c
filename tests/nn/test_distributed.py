"""gather_distributed: 2 gloo processes on CPU must take the same step as one process on the global batch.

Each rank runs a DDP-wrapped model on its half of the batch; DDP averages the parameter gradients. The loss on every
rank and the averaged gradients must equal those of a single process over the concatenated batch. (Public SSL
libraries have shipped this wrong: label offsets per rank, and gradients off by the world size.)
"""

import datetime
import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastssl.nn import ClipLoss, MoCoLoss, NTXentLoss
from tests.conftest import require_cpp

WORLD = 2
N_PER_RANK = 5
DIM_IN, DIM_OUT = 12, 8


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(DIM_IN, DIM_OUT)
        self.text = nn.Linear(DIM_IN, DIM_OUT)
        self.log_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x0, x1, t):
        views = self.encoder(torch.cat([x0, x1]))
        return views[: len(x0)], views[len(x0):], self.text(t), self.log_scale.exp()


def _data():
    g = torch.Generator().manual_seed(1234)
    n = WORLD * N_PER_RANK
    return [torch.randn(n, DIM_IN, generator=g) for _ in range(3)]


def _model():
    torch.manual_seed(7)
    return TwoTower()


def _step(model, x0, x1, t, backend, moco):
    z0, z1, txt, scale = model(x0, x1, t)
    losses = {
        "nt_xent": NTXentLoss(0.3, gather_distributed=True, backend=backend)(z0, z1),
        "clip": ClipLoss(gather_distributed=True, backend=backend)(z0, txt, scale),
        "moco": moco(z0, z1.detach()),
    }
    sum(losses.values()).backward()
    return {k: v.item() for k, v in losses.items()}


def _worker(rank, init_file, out_dir, backend):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    model = nn.parallel.DistributedDataParallel(_model())
    moco = MoCoLoss(0.2, queue_size=16, dim=DIM_OUT, gather_distributed=True, backend=backend)
    torch.manual_seed(99)
    moco.queue.copy_(nn.functional.normalize(torch.randn(16, DIM_OUT), dim=1))
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    x0, x1, t = (x[rows] for x in _data())
    losses = _step(model, x0, x1, t, backend, moco)
    grads = {name: p.grad for name, p in model.module.named_parameters()}
    torch.save({"losses": losses, "grads": grads, "queue": moco.queue.clone()}, os.path.join(out_dir, f"{rank}.pt"))
    # DDP's reducer must go before its process group: torn down the other way round it hung at exit now and then.
    del model, grads
    dist.barrier()
    dist.destroy_process_group()


BACKENDS = ["reference", "cpp"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_gloo_processes_take_the_single_process_step(backend):
    if backend == "cpp":
        require_cpp()
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only: the sandbox's other interfaces may not route
    with tempfile.TemporaryDirectory() as tmp:
        workers = mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp, backend), nprocs=WORLD, join=False)
        deadline = time.monotonic() + 180
        while not workers.join(timeout=5):
            if time.monotonic() > deadline:
                for process in workers.processes:
                    process.kill()
                pytest.fail("the 2-process gloo run did not finish in 180 s")
        ranks = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(WORLD)]

    model = _model()
    moco = MoCoLoss(0.2, queue_size=16, dim=DIM_OUT, backend=backend)
    torch.manual_seed(99)
    moco.queue.copy_(nn.functional.normalize(torch.randn(16, DIM_OUT), dim=1))
    x0, x1, t = _data()
    single = _step(model, x0, x1, t, backend, moco)

    for rank in ranks:
        for name, value in single.items():
            assert abs(rank["losses"][name] - value) < 1e-5, (name, rank["losses"][name], value)
        for name, p in model.named_parameters():
            torch.testing.assert_close(rank["grads"][name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(rank["queue"], moco.queue)
