"""The typed run configuration: defaults with the paper's value and why, YAML in, CLI overrides on top."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class TrainConfig:
    """Everything a pretraining run needs. ``None`` means "the method's default" (each method file states it)."""

    method: str = "simclr"
    # a name (cifar10, mnist, shakespeare) under FASTSSL_DATA or ../shared/data, or a path; None: the method's
    # (cifar10 for image methods, shakespeare for text methods)
    data: Optional[str] = None
    out: str = "runs/simclr"  # writes last.pt, metrics.csv, loss.png (and periodic checkpoints)
    backbone: Optional[str] = None  # resnet18 | resnet50 | vit_tiny | vit_small; None: the method's default
    # e.g. {"width": 0.5}; cifar_stem is automatic. With neither set on a CPU, a default ResNet or ViT-Small runs at
    # width 0.25.
    backbone_args: dict[str, Any] = field(default_factory=dict)
    method_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 0.2}; see the method's file
    views: Optional[str] = None  # a fastssl.data view-pipeline preset; None: the method's (its small_preset,
    #                               usually "cifar", for <= 64 px data)
    view_args: dict[str, Any] = field(default_factory=dict)  # overrides of the preset, e.g. {"size": 96}

    epochs: int = 100  # SimCLR's CIFAR-10 runs use 100-1000 epochs; the budget below usually stops a CPU run first
    max_steps: Optional[int] = None  # stop after this many optimizer steps (0 writes the untrained model)
    budget_minutes: Optional[float] = None  # wall-clock budget: the schedules are fitted to it after a few steps
    # the global batch (summed over ranks); None: the method's, 256 for image methods (SimCLR's CIFAR-10 setting is
    # 512-1024), fewer windows of text for the language models
    batch_size: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    resume: bool = False  # continue from out/last.pt, bit-exactly

    optimizer: Optional[str] = None  # sgd | lars | adamw; None: the method's (LARS for SimCLR and BYOL)
    lr: Optional[float] = None  # base lr at batch 256, scaled with batch_size / 256 (linearly, Goyal et al. 2017,
    #                             or by its square root where the method says so: SimCLR)
    weight_decay: Optional[float] = None
    weight_decay_end: Optional[float] = None  # cosine weight-decay schedule end (DINO); None: constant
    momentum: float = 0.9
    # LARS's trust coefficient and LARC clipping (fastssl.train.optim.LARS); None: the method's (0.001 without
    # clipping, SimCLR's and BYOL's; solo-learn's CIFAR recipes use 0.02 with clipping)
    lars_eta: Optional[float] = None
    lars_clip: Optional[bool] = None
    warmup_fraction: float = 0.05  # linear lr warm-up over this fraction of the run (SimCLR: 10 of 100+ epochs)
    min_lr_fraction: float = 0.0  # the cosine schedule ends at min_lr_fraction * lr
    grad_accum: int = 1  # micro-batches per optimizer step (the batch is split; negatives stay per micro-batch)
    clip_grad: Optional[float] = None  # max gradient norm; None: the method's (no clipping unless it says so)

    amp: str = "auto"  # auto: bf16 on CUDA, and on CPUs with native bf16 for ResNets (engine.auto_amp) | bf16 | fp16 | none
    channels_last: Optional[bool] = None  # None: on for convolutional backbones (CPU and GPU)
    compile: bool = False  # torch.compile the method's forward
    augment_backend: str = "auto"  # the fastssl.ops.augment backend
    loss_backend: str = "auto"  # the fused loss backend

    checkpoint_every: int = 500  # optimizer steps between checkpoints (out/last.pt, written atomically)
    keep_checkpoints: bool = False  # also keep out/step_XXXXXXX.pt copies
    log_every: int = 10  # steps between metrics rows
    profile: bool = False  # torch.profiler trace + a step-time breakdown table
    progress: bool = True  # the tqdm progress bar
    eval_at_end: bool = True  # kNN accuracy on the test split when the run ends (image methods)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"config: unknown option(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        import yaml

        text = Path(path).read_text()
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ValueError(f"--config {path}: expected a mapping of options, got {type(values).__name__}")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1 or (self.batch_size or 0) % self.grad_accum:
            raise ValueError(f"grad_accum: must divide batch_size ({self.batch_size}), got {self.grad_accum}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps: must be >= 0, got {self.max_steps}")
        if self.epochs < 1:
            raise ValueError(f"epochs: must be >= 1, got {self.epochs}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ValueError(f"budget_minutes: must be > 0, got {self.budget_minutes}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: auto, cpu or cuda, got {self.device!r}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp: auto, bf16, fp16 or none, got {self.amp!r}")
        if self.optimizer not in (None, "sgd", "lars", "adamw"):
            raise ValueError(f"optimizer: sgd, lars or adamw, got {self.optimizer!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: must be >= 1, got {self.checkpoint_every}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction: must lie in [0, 1), got {self.warmup_fraction}")
