"""End-to-end training throughput of one method: fastssl's fused path against the usual reference path.

    python benchmarks/bench_method.py --method simclr --data cifar10 [--device cuda] [--steps 20]
    fastssl bench --method simclr --data cifar10

Three loops over the same model, optimizer and data, images/s of source images (each makes the method's views):

    bare       the model's forward + loss + backward + optimizer step on views made once and reused: the upper bound
    fastssl    uint8 batch -> device -> fastssl.ops.augment (per-sample parameters, one launch per view size) ->
               model -> fused loss -> backward -> step (what `fastssl pretrain` runs)
    reference  per-sample augmentation in DataLoader workers (fastssl's PyTorch reference, float32, one sample at a
               time, as torchvision transforms run), collated and copied, then the model with the loss's PyTorch
               reference backend

Issue 5's GPU target: fastssl >= 90% of bare (augmentation and loss overhead <= 10%).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _trainer(method: str, data: str, batch: int, device: str, backbone_args: dict):
    from fastssl.train import TrainConfig, Trainer
    from fastssl.train.distributed import init_distributed

    cfg = TrainConfig(method=method, data=data, out=tempfile.mkdtemp(prefix="fastssl_bench_"), batch_size=batch,
                      device=device, progress=False, eval_at_end=False, backbone_args=backbone_args)
    trainer = Trainer(cfg)
    trainer.dist = init_distributed(device)
    trainer._build(trainer.dist)
    return trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_step(trainer, views) -> None:
    method = trainer.method
    autocast = (torch.autocast(trainer.dist.device.type, dtype=trainer.amp_dtype) if trainer.amp_dtype
                else torch.autocast("cpu", enabled=False))
    with autocast:
        loss = method.loss(method(views))
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    method.after_step(1, 2)


def _set_loss_backend(method, backend: str) -> None:
    for module in method.modules():
        if hasattr(module, "backend") and isinstance(module.backend, str):
            module.backend = backend


class _ReferenceViews(torch.utils.data.Dataset):
    """One sample's views made by the per-sample reference, as a DataLoader worker would."""

    def __init__(self, dataset, pipeline, params, indices):
        self.dataset, self.pipeline, self.params, self.indices = dataset, pipeline, params, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        from fastssl.ops.augment import augment_one_reference

        image, _ = self.dataset[int(self.indices[i])]
        mean = torch.tensor(self.pipeline.mean).view(-1, 1, 1)
        std = torch.tensor(self.pipeline.std).view(-1, 1, 1)
        return [((augment_one_reference(image, p, i, v.output_size(), torch.float32) - mean) / std)
                for p, v in zip(self.params, self.pipeline.views)]


def measure(method: str, data: str, batch: int, steps: int, device: str, workers: int, backbone_args: dict) -> dict:
    trainer = _trainer(method, data, batch, device, backbone_args)
    dev = trainer.dist.device
    indices = trainer.order.global_indices(0, 0)
    params = trainer._params(0, 0)
    images, _ = trainer.dataset.batch(indices)
    if dev.type == "cuda":
        images = images.pin_memory()
    results = {}

    views = trainer.pipeline(images.to(dev), params=params)
    for _ in range(2):
        _train_step(trainer, views)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        _train_step(trainer, views)
    _sync(dev)
    results["bare"] = steps * batch / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for _ in range(steps):
        views = trainer.pipeline(images.to(dev, non_blocking=True), params=params)
        _train_step(trainer, views)
    _sync(dev)
    results["fastssl"] = steps * batch / (time.perf_counter() - t0)

    _set_loss_backend(trainer.method, "reference")
    ref_steps = max(1, steps // 4)
    loader = torch.utils.data.DataLoader(_ReferenceViews(trainer.dataset, trainer.pipeline, params, indices),
                                         batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=dev.type == "cuda")
    batches = iter(())
    t0 = time.perf_counter()
    for _ in range(ref_steps):
        try:
            batch_views = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch_views = next(batches)
        channels_last = trainer.pipeline.channels_last
        views = [v.to(dev, non_blocking=True).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format) for v in batch_views]
        _train_step(trainer, views)
    _sync(dev)
    results["reference"] = ref_steps * batch / (time.perf_counter() - t0)
    results.update(method=method, data=data, batch=batch, device=str(dev),
                   backbone=trainer.method.backbone_spec(), workers=workers)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loop (the reference loop runs 1/4)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference path")
    parser.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import yaml

    from fastssl.methods import METHODS

    if args.method not in METHODS:
        parser.error(f"--method: unknown {args.method!r}; registered: {', '.join(sorted(METHODS))}")
    if METHODS[args.method].data_kind != "image":
        parser.error(f"--method: {args.method} is a {METHODS[args.method].data_kind} method; this benchmark times "
                     "the image pipeline (uint8 batch -> fused augmentation -> model -> loss) against per-sample "
                     "augmentation in DataLoader workers. `fastssl pretrain` logs a text method's throughput.")

    backbone_args = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.backbone_arg)}
    r = measure(args.method, args.data, args.batch_size, args.steps, args.device, args.workers, backbone_args)
    spec = r["backbone"]
    print(f"{r['method']} on {r['data']}, batch {r['batch']}, {spec['name']} {spec['kwargs']}, device {r['device']}")
    print("| path | images/s | vs bare | vs reference |")
    print("|---|---|---|---|")
    for path in ("bare", "fastssl", "reference"):
        print(f"| {path} | {r[path]:,.1f} | {r[path] / r['bare']:.0%} | {r[path] / r['reference']:.1f}x |")
    return 0


if __name__ == "__main__":
    main()
