"""The training engine: one loop for every method, on one process or many.

Per optimizer step: the next uint8 batch (prefetched by a CPU thread, pinned, copied with non_blocking=True) ->
the method's views, made on the device by fastssl.ops.augment with per-sample parameters -> the method's forward
and loss (autocast) -> backward -> optimizer step -> the method's after-step hook (EMA targets) -> metrics and,
every ``checkpoint_every`` steps, an atomic checkpoint.

Everything random in a step is drawn from generators seeded by (seed, epoch) for the data order and
(seed, step, micro-batch) for the augmentation parameters, so a resumed run replays exactly what an uninterrupted
run would have done, and K processes draw the parameters of the global batch and each take its slice: the same
step as one process on the whole batch.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from fastssl import _dispatch
from fastssl.train import checkpoint as ckpt
from fastssl.train.config import TrainConfig
from fastssl.train.distributed import DistInfo, barrier, init_distributed, shutdown
from fastssl.train.optim import build_optimizer, cosine_schedule, parameter_groups, set_hyperparameters

logger = logging.getLogger("fastssl.train")

CPU_DEFAULT_WIDTH = 0.25  # the default backbone's width multiplier on CPU-only runs (see Trainer._build)
CALIBRATION_STEPS = 5  # steps timed (after the first) before a --budget-minutes run fits its schedules
PHASES = ("data", "augment", "forward", "loss", "backward", "optimizer")


def auto_amp(device: torch.device, convolutional: bool) -> str:
    """What ``amp="auto"`` trains in: bf16 on CUDA; on a CPU that does bf16 in hardware (AVX512-BF16 or AMX), bf16
    for convolutional backbones and none for Transformers; none on other CPUs. Measured on the project's 2-core
    AMD EPYC (AVX512-BF16), 2026-12-08, images/s of 8 steps, none -> bf16: the ResNet-18 methods 1.2-2.1x
    (SimCLR 250 -> 520, BYOL 146 -> 274, SimSiam 246 -> 326, DINO 109 -> 147), the Transformers 0.6-1.3x (MoCo v3's
    ViT 211 -> 131, gpt 657 -> 553, MAE 153 -> 195, mlm 464 -> 585)."""
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and convolutional and _dispatch.cpu_native_bf16()[0]:
        return "bf16"
    return "none"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class BudgetPlan:
    """Fits the step horizon (where the cosine schedules end) to a wall-clock budget.

    The first step is not timed: it pays for allocation, kernel selection and compilation, and timing it made
    runs end their schedules (and stop) far before the budget. After ``calibration`` timed steps the horizon is
    fitted to the mean step time since the first step; it is refitted each time another tenth of the budget has
    passed, until 90%, at the pace since the last fit, so a pace that changes (a warm cache, a busier machine)
    still ends the schedules at the budget. The pace of a fit leaves out the slowest step of its interval: one
    stalled step (another process taking the cores for seconds) once set a 15-second test run's pace to 7x its
    real one, cut its horizon from 100 steps to 38, and the run reached them and stopped after 10 s of its 15.
    The horizon never passes ``planned`` (the epochs' steps) and never falls below the current step.
    """

    def __init__(self, budget_s: float, planned: int, start: int, calibration: int = CALIBRATION_STEPS):
        self.budget_s, self.planned, self.start, self.calibration = budget_s, planned, start, calibration
        self.t_first: Optional[float] = None
        self.fits = 0
        self.next_fraction = 0.0
        self.last: Optional[tuple[int, float]] = None
        self.per_step = float("nan")
        self.previous = 0.0  # elapsed at the previous call
        self.slowest = 0.0  # the longest step since the last fit

    def update(self, step: int, elapsed: float) -> Optional[int]:
        """Called after each step with the seconds since the run started; a new horizon, or None."""
        duration, self.previous = elapsed - self.previous, elapsed
        if step == self.start + 1:
            self.t_first = elapsed
            return None
        self.slowest = max(self.slowest, duration)
        timed = step - self.start - 1
        if self.t_first is None or timed < self.calibration:
            return None
        fraction = elapsed / self.budget_s
        if self.fits and (fraction < self.next_fraction or fraction >= 0.9):
            return None
        self.fits += 1
        self.next_fraction = math.floor(fraction * 10 + 1) / 10
        # The pace since the last fit (a tenth of the budget), or since the first step at the first fit, without
        # the interval's slowest step when it has three or more.
        since_step, since = self.last if self.last is not None else (self.start + 1, self.t_first)
        steps, seconds = step - since_step, elapsed - since
        if steps >= 3:
            steps, seconds = steps - 1, seconds - self.slowest
        self.per_step = max(seconds, 1e-9) / steps
        self.last, self.slowest = (step, elapsed), 0.0
        per_step = self.per_step
        fitted = step + int(max(0.0, self.budget_s - elapsed) / per_step)
        return max(step, min(self.planned, fitted))


def _seed_for(*parts: int) -> int:
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & ((1 << 63) - 1)
    return value


def dataset_image_shape(dataset) -> tuple[int, int, int]:
    """(H, W, C) of a fixed-size dataset; for a folder of mixed sizes, the median size."""
    if hasattr(dataset, "image_shape"):
        return tuple(dataset.image_shape)
    packed = dataset.images
    return (int(packed.heights.median()), int(packed.widths.median()), packed.channels)


def dataset_image_sizes(dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 heights and widths of the images at ``indices`` (what the crop sampler needs)."""
    if hasattr(dataset, "image_shape"):
        h, w, _ = dataset.image_shape
        return torch.full((len(indices),), h), torch.full((len(indices),), w)
    index = torch.from_numpy(np.asarray(indices))
    return dataset.images.heights[index], dataset.images.widths[index]


class DataOrder:
    """Which source images each rank reads at each (step, micro-batch): a fresh permutation per epoch from
    (seed, epoch), the global batch cut into micro-batches, each micro-batch cut into per-rank slices."""

    def __init__(self, num_images: int, batch_size: int, grad_accum: int, world: int, rank: int, seed: int):
        self.micro = batch_size // grad_accum
        if self.micro % world:
            raise ValueError(f"batch_size: {batch_size} / grad_accum {grad_accum} = {self.micro} images per "
                             f"micro-batch does not split over {world} processes")
        self.steps_per_epoch = num_images // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size: {batch_size} is larger than the dataset ({num_images} images)")
        self.num_images, self.batch_size, self.grad_accum = num_images, batch_size, grad_accum
        self.world, self.rank, self.seed = world, rank, seed
        # Keyed by epoch, not one mutable "current" permutation: the prefetch thread reads the next step (possibly
        # the next epoch) while the main thread draws this step's augmentation parameters.
        self._permutation = functools.lru_cache(maxsize=2)(self._draw_permutation)

    def _draw_permutation(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(_seed_for(self.seed, epoch, 1))
        return torch.randperm(self.num_images, generator=g).numpy()

    def global_indices(self, step: int, micro: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.batch_size + micro * self.micro
        return self._permutation(epoch)[start:start + self.micro]

    def local_slice(self) -> slice:
        per_rank = self.micro // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


class Trainer:
    """Runs one pretraining job described by a :class:`TrainConfig`."""

    def __init__(self, cfg: TrainConfig, out_stream=None):
        cfg.validate()
        self.cfg = cfg
        self.out_stream = out_stream
        self.out = Path(cfg.out)
        self.timings = {phase: 0.0 for phase in PHASES}

    # -------------------------------------------------------------------------------------------------------
    # set-up
    # -------------------------------------------------------------------------------------------------------

    def _build(self, dist_info: DistInfo) -> None:
        from fastssl.methods import METHODS
        from fastssl.methods.base import DATA_KINDS

        cfg = self.cfg
        if cfg.method not in METHODS:
            raise ValueError(f"method: unknown {cfg.method!r}; choose one of {', '.join(sorted(METHODS))}")
        self.method_cls = METHODS[cfg.method]
        self.data_kind = self.method_cls.data_kind
        if self.data_kind not in DATA_KINDS:
            raise ValueError(f"method: {cfg.method} declares data_kind {self.data_kind!r}, not one of {DATA_KINDS}")
        # None: the method's data set and batch size (a language model's batch counts windows of text)
        self.cfg = cfg.replace(data=cfg.data or self.method_cls.default_data,
                               batch_size=cfg.batch_size or self.method_cls.defaults.get("batch_size", 256))
        self.cfg.validate()
        self._check_data_kind()
        if self.data_kind == "text":
            self._build_text(dist_info)
        else:
            self._build_images(dist_info)
        self._build_optimizer(dist_info)

    def _check_data_kind(self) -> None:
        """A text method on images or an image method on text fails here, naming the method and what it takes
        (the loaders' own errors do not know which method asked)."""
        from fastssl.data.datasets import TEXT_SUFFIXES, resolve_data
        from fastssl.methods import METHODS

        cfg = self.cfg
        path = resolve_data(cfg.data)  # an unknown name or a missing path: the accepted forms
        is_text = path.is_file() and path.name.endswith(TEXT_SUFFIXES)
        text_methods = ", ".join(sorted(name for name, m in METHODS.items() if m.data_kind == "text"))
        if self.data_kind == "text" and not is_text:
            raise ValueError(f"data: {cfg.method} is a text method and {cfg.data!r} ({path}) is not a text corpus; "
                             f"text methods ({text_methods}) take shakespeare, shakespeare_complete or a "
                             f".txt / .txt.gz file")
        if self.data_kind != "text" and is_text:
            raise ValueError(f"data: {cfg.method} is an image method and {cfg.data!r} ({path}) is a text corpus; "
                             f"image methods take cifar10, mnist, an .npz of images or a folder of class "
                             f"sub-folders of images (the text methods are {text_methods})")

    def _build_text(self, dist_info: DistInfo) -> None:
        """A text corpus and a method on a TextTransformer over its characters; no view pipeline."""
        from fastssl.data import load_text_dataset

        cfg = self.cfg
        self.small_images = False
        if cfg.backbone is not None:
            raise ValueError(f"backbone: {cfg.method} is a text method on fastssl.models.TextTransformer; size it "
                             f"with backbone_args (dim, depth, num_heads, ...) instead of backbone={cfg.backbone!r}")
        if cfg.views is not None or cfg.view_args:
            raise ValueError(f"views, view_args: {cfg.method} is a text method; it has no image views")
        self.dataset = load_text_dataset(cfg.data)
        self.pipeline = None
        self.image_shape = None
        torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed
        self.method: nn.Module = self.method_cls.build_text(
            tokenizer=self.dataset.tokenizer, backbone_args=cfg.backbone_args,
            method_args=cfg.method_args, loss_backend=cfg.loss_backend, distributed=dist_info.world > 1)
        self.method.to(dist_info.device)
        self.channels_last = False
        self.window = self.method.text_window()
        # One epoch reads as many windows as the training split holds without overlap.
        self.num_samples = len(self.dataset.train_tokens) // self.window

    def _build_images(self, dist_info: DistInfo) -> None:
        """An image data set, its view pipeline and a method on an image backbone."""
        from fastssl.data import load_image_dataset, view_pipeline

        cfg = self.cfg
        self.dataset = load_image_dataset(cfg.data, split="train")
        height, width, channels = dataset_image_shape(self.dataset)
        self.image_shape = (height, width, channels)
        small = max(height, width) <= 64
        self.small_images = small
        preset = cfg.views or (self.method_cls.small_preset if small else self.method_cls.preset)
        view_args = dict(cfg.view_args)
        if small and "size" not in view_args:
            view_args["size"] = (height, width)
        self.pipeline = view_pipeline(preset, **view_args)
        view_size = self.pipeline.views[0].output_size()

        backbone_args = dict(cfg.backbone_args)
        if (dist_info.device.type == "cpu" and cfg.backbone is None and not backbone_args
                and self.method_cls.default_backbone.startswith(("resnet", "vit_small"))):
            # A CPU has ~1/1000 of a GPU's convolution rate: the default ResNet (or ViT-Small) at a quarter of its
            # width (1/16 of the FLOPs) sees a few epochs in minutes instead of a fraction of one (MoCo v3 at full
            # ViT-Small width took 9 steps in 2 minutes).
            backbone_args = {"width": CPU_DEFAULT_WIDTH}
        backbone = cfg.backbone
        torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed
        self.method: nn.Module = self.method_cls.build(
            backbone=backbone, backbone_args=backbone_args, method_args=cfg.method_args,
            in_channels=channels, image_size=view_size, loss_backend=cfg.loss_backend,
            distributed=dist_info.world > 1, small=small)
        device = dist_info.device
        if dist_info.world > 1 and self.method_cls.global_batchnorm:
            from fastssl.nn.batchnorm import convert_global_batchnorm

            self.method = convert_global_batchnorm(self.method, device)
        self.method.to(device)
        # channels_last: measured 3.8x faster for ResNet-18 (width 0.25, 32x32, fwd+bwd) on this project's CPU
        self.channels_last = (cfg.channels_last if cfg.channels_last is not None
                              else self.method_cls.convolutional(self.method))
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
            self.pipeline.channels_last = True
        if self.method_cls.num_views is not None:
            self.pipeline.views = self.pipeline.views[:self.method_cls.num_views]
        if self.data_kind == "image_text" and (self.dataset.labels is None or not self.dataset.classes):
            raise ValueError(f"data: {cfg.method} builds captions from class names; {cfg.data!r} has no labels "
                             "or no class names")
        self.num_samples = len(self.dataset)

    def _build_optimizer(self, dist_info: DistInfo) -> None:
        """Optimizer, lr and weight-decay schedules, mixed precision, the data order and the step horizon."""
        cfg = self.cfg
        device = dist_info.device
        defaults = self.method_cls.recipe(self.small_images)
        self.optimizer_name = cfg.optimizer or defaults["optimizer"]
        scaling = cfg.batch_size / 256
        if defaults.get("lr_scaling", "linear") == "sqrt":
            scaling = math.sqrt(scaling)
        elif defaults.get("lr_scaling", "linear") == "none":  # the lr is given at the method's own batch size
            scaling = 1.0
        self.base_lr = (cfg.lr if cfg.lr is not None else defaults["lr"]) * scaling
        self.weight_decay = cfg.weight_decay if cfg.weight_decay is not None else defaults["weight_decay"]
        self.weight_decay_end = cfg.weight_decay_end if cfg.weight_decay_end is not None else self.weight_decay
        self.clip_grad = cfg.clip_grad if cfg.clip_grad is not None else defaults.get("clip_grad")
        groups = parameter_groups([self.method], self.weight_decay, fixed_lr=self.method.fixed_lr_modules(),
                                  lr_scale=self.method.lr_scaled_modules())
        self.lars_eta = cfg.lars_eta if cfg.lars_eta is not None else defaults.get("lars_eta", 0.001)
        self.lars_clip = cfg.lars_clip if cfg.lars_clip is not None else defaults.get("lars_clip", False)
        self.optimizer = build_optimizer(self.optimizer_name, groups, self.base_lr, cfg.momentum,
                                         lars_eta=self.lars_eta, lars_clip=self.lars_clip)
        amp = cfg.amp if cfg.amp != "auto" else auto_amp(device, self.method_cls.convolutional(self.method))
        self.amp = amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.order = DataOrder(self.num_samples, cfg.batch_size, cfg.grad_accum, dist_info.world,
                               dist_info.rank, cfg.seed)
        planned = cfg.epochs * self.order.steps_per_epoch
        self.horizon = min(planned, cfg.max_steps) if cfg.max_steps is not None else planned
        self.horizon_fixed = cfg.budget_minutes is None
        self.budget_plan: Optional[BudgetPlan] = None

    def _recipe_note(self) -> str:
        """What the start-of-run line says of the optimizer beyond its name and lr: LARS's settings, and whether
        the method's small-image recipe (Method.small_defaults and friends) is in force."""
        cls = self.method_cls
        note = f" (eta {self.lars_eta:g}{', LARC-clipped' if self.lars_clip else ''})" \
            if self.optimizer_name == "lars" else ""
        if self.small_images and (cls.small_defaults or cls.small_options or cls.small_backbone_args):
            note += f", {cls.name}'s small-image recipe"
        return note

    def _state(self, step: int) -> dict[str, Any]:
        state = {
            "format": ckpt.FORMAT_VERSION, "step": step, "horizon": self.horizon,
            "horizon_fixed": self.horizon_fixed, "config": self.cfg.to_dict(),
            "method": self.cfg.method, "method_state": self.method.state_dict(),
            "backbone": self.method.backbone_spec(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_states(), "world": self.dist.world, "torch": torch.__version__,
        }
        if self.pipeline is not None:
            # small_images: the method was built with its recipe for images of 64 px or less (Method.small_options)
            state.update(view_size=self.pipeline.views[0].output_size(), image_shape=self.image_shape,
                         mean=self.pipeline.mean, std=self.pipeline.std, small_images=self.small_images)
        else:  # the vocabulary, so that evaluation and sampling need no corpus to rebuild the tokenizer
            state["tokenizer_chars"] = "".join(self.dataset.tokenizer.chars)
        return state

    def _save(self, step: int) -> None:
        if self.dist.is_main:
            state = self._state(step)
            ckpt.save_atomic(state, self.out / "last.pt")
            if self.cfg.keep_checkpoints:
                ckpt.save_atomic(state, self.out / f"step_{step:07d}.pt")
        barrier(self.dist)

    def _resume(self) -> int:
        path = self.out / "last.pt"
        state = ckpt.load_checkpoint(path)
        saved = state["config"]
        for key in ("method", "batch_size", "seed", "grad_accum", "backbone", "data"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(f"--resume: {path} was written with {key}={saved.get(key)!r}, this run has "
                                 f"{key}={getattr(self.cfg, key)!r}")
        self.method.load_state_dict(state["method_state"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # torch: "loaded state dict has a different number of parameter groups", ...
            raise ValueError(f"--resume: the optimizer state in {path} does not fit this run's parameter groups "
                             f"({exc}); was it written with other method options (--method-arg, e.g. simsiam's "
                             f"fix_pred_lr, byol's pred_lr_scale) or by an older fastssl?") from exc
        self.scaler.load_state_dict(state["scaler"])
        self.horizon, self.horizon_fixed = state["horizon"], state["horizon_fixed"]
        if self.cfg.max_steps is not None:
            if self.horizon_fixed and self.cfg.max_steps > self.horizon:
                self._print(f"--resume: --max-steps {self.cfg.max_steps} is ignored: the checkpoint's schedules end "
                            f"at step {self.horizon}, and stretching them would change the steps already taken")
            self.horizon = min(self.horizon, self.cfg.max_steps)
        ckpt.restore_rng_states(state["rng"])
        return int(state["step"])

    # -------------------------------------------------------------------------------------------------------
    # one step
    # -------------------------------------------------------------------------------------------------------

    def _load(self, step: int, micro: int):
        """CPU thread: this rank's batch of (step, micro), pinned when it goes to a GPU: uint8 images; for text
        methods the tensors of ``text_inputs`` instead; for image-text methods the images and their captions."""
        if self.data_kind == "text":
            return self._load_text(step, micro)
        indices = self.order.global_indices(step, micro)
        images, _ = self.dataset.batch(indices[self.order.local_slice()])
        if self.dist.device.type == "cuda":
            images = images.pin_memory()
        if self.data_kind == "image_text":
            labels = torch.from_numpy(self.dataset.labels[indices])
            captions = self.method.caption_inputs(labels, self.dataset.classes, self._generator(step, micro))
            return images, self._local(captions)
        return images

    def _load_text(self, step: int, micro: int) -> list[torch.Tensor]:
        """Windows of the training split at random positions, drawn (with the method's masks or other
        corruption) for the GLOBAL micro-batch from the (seed, step, micro) generator, then this rank's slice."""
        g = self._generator(step, micro)
        windows = self.dataset.sample(self.order.micro, self.window, "train", generator=g)
        return self._local(self.method.text_inputs(windows, g))

    def _generator(self, step: int, micro: int) -> torch.Generator:
        """The generator of a batch's random choices other than augmentation (text windows, masks, captions)."""
        return torch.Generator().manual_seed(_seed_for(self.cfg.seed, step, micro, 3))

    def _local(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's slice of each global micro-batch tensor, pinned when it goes to a GPU."""
        local = [t[self.order.local_slice()] for t in tensors]
        return [t.pin_memory() for t in local] if self.dist.device.type == "cuda" else local

    def _to_device(self, batch):
        device = self.dist.device
        if self.data_kind == "text":
            return [t.to(device, non_blocking=True) for t in batch]
        if self.data_kind == "image_text":
            images, captions = batch
            return images.to(device, non_blocking=True), [t.to(device, non_blocking=True) for t in captions]
        return batch.to(device, non_blocking=True)

    def _views(self, batch, step: int, micro: int) -> list[torch.Tensor]:
        """What the method's forward receives for a batch on the device (see fastssl.methods.base)."""
        if self.data_kind == "text":
            return batch
        images, captions = batch if self.data_kind == "image_text" else (batch, [])
        return self.pipeline(images, params=self._params(step, micro), backend=self.cfg.augment_backend) + captions

    def _params(self, step: int, micro: int):
        """The augmentation parameters of the GLOBAL micro-batch, then this rank's slice."""
        g = torch.Generator().manual_seed(_seed_for(self.cfg.seed, step, micro, 2))
        heights, widths = dataset_image_sizes(self.dataset, self.order.global_indices(step, micro))
        params = self.pipeline.sample_params_for_sizes(heights, widths, g)
        local = self.order.local_slice()
        return [p.select(local) for p in params]

    def _sync(self):
        if self.cfg.profile and self.dist.device.type == "cuda":
            torch.cuda.synchronize()

    def _step(self, step: int, model: nn.Module, prefetch) -> tuple[torch.Tensor, Any, float, float]:
        cfg = self.cfg
        device = self.dist.device
        lr = cosine_schedule(step, self.horizon, self.base_lr, self.base_lr * cfg.min_lr_fraction,
                             warmup=int(cfg.warmup_fraction * self.horizon))
        wd = cosine_schedule(step, self.horizon, self.weight_decay, self.weight_decay_end)
        set_hyperparameters(self.optimizer, lr, wd, base_lr=self.base_lr)
        total = torch.zeros((), device=device)
        autocast = (torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch = prefetch.result()
            nxt = (step, micro + 1) if micro + 1 < cfg.grad_accum else (step + 1, 0)
            prefetch = self.pool.submit(self._load, *nxt) if nxt[0] < self.horizon else None
            batch = self._to_device(batch)
            t1 = time.perf_counter()
            views = self._views(batch, step, micro)
            self._sync()
            t2 = time.perf_counter()
            with autocast:
                outputs = model(views, step=step, horizon=self.horizon)
                self._sync()
                t3 = time.perf_counter()
                loss = self.method.loss(outputs)
            self._sync()
            t4 = time.perf_counter()
            self.scaler.scale(loss / cfg.grad_accum).backward()
            self._sync()
            t5 = time.perf_counter()
            total += loss.detach().float()
            for phase, dt in zip(PHASES[:5], (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                self.timings[phase] += dt
        t5 = time.perf_counter()
        self.method.before_optimizer_step(step, self.horizon)
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step(step + 1, self.horizon)
        self._sync()
        self.timings["optimizer"] += time.perf_counter() - t5
        return total / cfg.grad_accum, prefetch, lr, wd

    # -------------------------------------------------------------------------------------------------------
    # the loop
    # -------------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.dist = init_distributed(self.cfg.device)
        try:
            return self._run()
        finally:
            shutdown(self.dist)

    def _run(self) -> dict[str, Any]:
        self._build(self.dist)
        cfg = self.cfg  # with the method's data and batch size filled in
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(cfg.to_yaml())
        start = self._resume() if cfg.resume and (self.out / "last.pt").exists() else 0
        if cfg.resume and start == 0 and not (self.out / "last.pt").exists():
            self._print(f"--resume: no {self.out / 'last.pt'} yet, starting from step 0")
        elif cfg.resume and start >= self.horizon:
            self._print(f"--resume: {self.out / 'last.pt'} is a finished run (step {start}, where its schedules "
                        f"end): nothing to train; a longer run needs a new --out")
        elif cfg.resume:
            self._print(f"--resume: continuing from step {start} of {self.out / 'last.pt'}"
                        + (f" to step {self.horizon}" if self.horizon_fixed else ""))
        metrics = MetricsWriter(self.out / "metrics.csv", start, enabled=self.dist.is_main)
        if self.pipeline is not None:
            data = f"{len(self.dataset)} images {'x'.join(map(str, self.image_shape))}"
            inputs = f"views {self.pipeline.name} {self.pipeline.views[0].output_size()}"
        else:
            data = f"{len(self.dataset.train_tokens)} training tokens, vocabulary {self.dataset.tokenizer.vocab_size}"
            inputs = f"windows of {self.window} tokens"
        self._print(f"fastssl pretrain: {cfg.method} on {cfg.data} ({data}), {self.method.backbone_spec()['name']}, "
                    f"batch {cfg.batch_size} on {self.dist.world} x {self.dist.device}, {self.optimizer_name} "
                    f"lr {self.base_lr:.3g}{self._recipe_note()}, amp {self.amp}, {inputs}, steps {start} -> {self.horizon}")
        model = self.method
        if self.dist.world > 1:
            model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None,
                broadcast_buffers=False)
        if cfg.compile:
            model = torch.compile(model)
        self.method.train()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastssl-data")
        progress = self._progress(start)
        profiler = self._profiler()
        t_start = time.perf_counter()
        t_window, window_images, window_loss, window_steps = t_start, 0, torch.zeros(()), 0
        finite = torch.ones((), dtype=torch.bool, device=self.dist.device)
        prefetch = self.pool.submit(self._load, start, 0) if start < self.horizon else None
        if not self.horizon_fixed:
            self.budget_plan = BudgetPlan(60 * cfg.budget_minutes, self.horizon, start)
        step = start
        last_loss = float("nan")
        stopped_by = "steps"
        try:
            while step < self.horizon:
                loss, prefetch, lr, wd = self._step(step, model, prefetch)
                step += 1
                finite &= torch.isfinite(loss)
                window_loss = window_loss.to(loss.device) + loss
                window_steps += 1
                window_images += cfg.batch_size
                if profiler is not None:
                    profiler.step()
                at_checkpoint = step % cfg.checkpoint_every == 0
                if step % cfg.log_every == 0 or at_checkpoint or step == self.horizon or \
                        self.dist.device.type == "cpu":
                    if not bool(finite):
                        raise NonFiniteLossError(
                            f"the loss became non-finite at or before step {step}; the run stopped and "
                            f"{self.out / 'last.pt'} holds the last good checkpoint. Lower the lr "
                            f"({self.base_lr:.3g}), use amp=bf16 instead of fp16, or set clip_grad.")
                if step % cfg.log_every == 0 or step == self.horizon:
                    now = time.perf_counter()
                    last_loss = (window_loss / window_steps).item()
                    rate = window_images / max(now - t_window, 1e-9)
                    metrics.write(step=step, epoch=step / self.order.steps_per_epoch, loss=last_loss, lr=lr,
                                  weight_decay=wd, images_per_s=rate, elapsed_s=now - t_start,
                                  **self.method.logs())
                    if progress is not None:
                        progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                    t_window, window_images, window_loss, window_steps = now, 0, torch.zeros(()), 0
                if progress is not None:
                    progress.update(1)
                if at_checkpoint:
                    self._save(step)
                if self.budget_plan is not None:
                    self._fit_horizon(step, time.perf_counter() - t_start, progress)
                if cfg.budget_minutes is not None and time.perf_counter() - t_start > 60 * cfg.budget_minutes:
                    stopped_by = "budget"
                    break
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            if progress is not None:
                progress.close()
            if profiler is not None:
                profiler.__exit__(None, None, None)
        if step % cfg.checkpoint_every != 0 or step == 0:
            self._save(step)
        if self.dist.is_main:  # pictures of what the method learned (reconstructions, samples), on step 0's views
            views = self._views(self._to_device(self._load(0, 0)), 0, 0)
            for path in self.method.save_artifacts(self.out, views):
                self._print(f"saved {path}")
        summary = {"step": step, "loss": last_loss, "stopped_by": stopped_by,
                   "seconds": time.perf_counter() - t_start, "checkpoint": str(self.out / "last.pt")}
        if self.dist.is_main:
            metrics.plot(self.out / "loss.png", f"{cfg.method} on {cfg.data}")
            loss_text = f"{last_loss:.4f}" if step > start else "n/a (no step run)"
            self._print(f"done: step {step} ({stopped_by}), loss {loss_text}, "
                        f"{summary['seconds']:.0f} s; checkpoint {summary['checkpoint']}")
            if cfg.profile:
                self._print(self.profile_table(step - start))
        return summary

    def _fit_horizon(self, step: int, elapsed: float, progress) -> None:
        """--budget-minutes: fit the schedules (cosine lr, EMA momentum) to the steps that fit the budget."""
        horizon = self.budget_plan.update(step, elapsed)
        if horizon is None:
            return
        first = not self.horizon_fixed
        moved = abs(horizon - self.horizon) / max(self.horizon, 1)
        self.horizon, self.horizon_fixed = horizon, True
        if progress is not None:
            progress.total = horizon
            progress.refresh()
        if first or moved > 0.05:
            self._print(f"budget {self.cfg.budget_minutes:g} min at {self.budget_plan.per_step:.3g} s/step: schedules end at step "
                        f"{horizon}" + ("" if first else " (refitted)"))

    def _progress(self, start: int):
        if not (self.cfg.progress and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.horizon, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def _profiler(self):
        if not (self.cfg.profile and self.dist.is_main):
            return None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.dist.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        trace = str(self.out / "trace.json")
        profiler = torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
            on_trace_ready=lambda p: p.export_chrome_trace(trace))
        profiler.__enter__()
        return profiler

    def profile_table(self, steps: int) -> str:
        total = sum(self.timings.values())
        lines = [f"step time breakdown over {steps} steps ({total / max(steps, 1) * 1e3:.1f} ms/step; "
                 f"trace in {self.out / 'trace.json'}):", "| phase | ms/step | share |", "|---|---|---|"]
        for phase in PHASES:
            t = self.timings[phase]
            lines.append(f"| {phase} | {t / max(steps, 1) * 1e3:.1f} | {100 * t / max(total, 1e-12):.1f}% |")
        return "\n".join(lines)

    def _print(self, text: str) -> None:
        if self.dist.is_main:
            print(text, file=self.out_stream or sys.stdout, flush=True)


class MetricsWriter:
    """metrics.csv (step, epoch, loss, lr, weight_decay, images_per_s, elapsed_s, method extras), appended as the
    run goes; on resume, rows past the resumed step are dropped (they will be written again)."""

    def __init__(self, path: Path, start: int, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self.rows: list[dict[str, Any]] = []
        self.fields: list[str] = []
        self._tensorboard = None
        if not enabled:
            return
        if start > 0 and path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self.rows = [r for r in reader if int(r["step"]) <= start]
            self._rewrite()
        elif path.exists():
            path.unlink()
        self._tensorboard = self._open_tensorboard()

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (pip install tensorboard)
            return None
        return SummaryWriter(str(self.path.parent / "tensorboard"))

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)

    def write(self, **row) -> None:
        if not self.enabled:
            return
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        new_fields = [k for k in row if k not in self.fields]
        self.fields += new_fields
        self.rows.append(row)
        if new_fields or not self.path.exists():
            self._rewrite()  # a new column (or a new file): rewrite with the full header
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, float(value), int(row["step"]))

    def plot(self, path: Path, title: str) -> None:
        if not self.enabled or not self.rows:
            return
        from fastssl.eval.plots import save_line_plot

        steps = [int(r["step"]) for r in self.rows]
        losses = [float(r["loss"]) for r in self.rows]
        if all(math.isfinite(v) for v in losses):
            save_line_plot(path, steps, losses, title=title, xlabel="step", ylabel="loss")
