"""What every method file provides to the engine: build it, embed the views, compute the loss, update targets.

A method is an ``nn.Module`` holding its backbone, heads and targets (EMA networks, queues, centres), so that
``state_dict`` is the whole training state of the model and a checkpoint restores it in one call.

    outputs = method(views, step=step, horizon=horizon)   # backbone + heads (DDP wraps this call)
    loss = method.loss(outputs)                           # the method's objective, a 0-d tensor
    method.after_step(step + 1, horizon)                  # after the optimizer: EMA updates, schedules

What ``views`` holds depends on the method's ``data_kind``:

- "image": the augmented views of an image batch, each (B, C, H, W) (the engine's view pipeline);
- "text": the tensors of :meth:`Method.text_inputs`, e.g. token windows (B, T), drawn from a text corpus;
- "image_text": the first ``num_views`` image views, then the tensors of :meth:`Method.caption_inputs` (the
  captions of the images' labels).

The engine calls ``text_inputs`` / ``caption_inputs`` on the CPU, on the whole (global) micro-batch, with a
generator seeded by (seed, step, micro-batch): every random choice in a batch (windows, masks, captions) is a
function of the step, so a resumed run replays it exactly, and K processes each take their slice of one batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import nn

from fastssl.models import ResNet, TextTransformer, build_backbone

DATA_KINDS = ("image", "text", "image_text")


def backbone_kwargs(name: str, args: dict[str, Any], in_channels: int, image_size: Sequence[int]) -> dict:
    """The backbone's keyword arguments for images of ``image_size`` (h, w) with ``in_channels`` channels:
    the CIFAR stem (ResNet) or patch size 4 (ViT) for images of 64 pixels or less; ``args`` overrides."""
    small = max(image_size) <= 64
    if name.startswith("resnet"):
        kwargs = dict(in_channels=in_channels, cifar_stem=small)
    else:
        kwargs = dict(in_channels=in_channels, img_size=tuple(image_size), patch_size=4 if small else 16)
    kwargs.update(args)
    return kwargs


def expander_dims(num_features: int, proj_hidden_dim, proj_dim) -> tuple[int, int]:
    """The hidden and output widths of a Barlow Twins / VICReg expander: as given, or 4 x the backbone's
    features when None (8192 for ResNet-50, the papers' width). Raises ValueError naming a bad width."""
    wide = 4 * num_features
    proj_hidden_dim, proj_dim = proj_hidden_dim or wide, proj_dim or wide
    for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}: expected a positive int (or None: 4 x the backbone's {num_features} "
                             f"features), got {value!r}")
    return proj_hidden_dim, proj_dim


class Method(nn.Module):
    """Base class of the methods in this folder; each subclass documents its paper and its defaults."""

    name: ClassVar[str] = ""
    preset: ClassVar[str] = "simclr"  # the view pipeline for images larger than 64 px
    small_preset: ClassVar[str] = "cifar"  # the view pipeline for images of 64 px or less
    default_backbone: ClassVar[str] = "resnet18"
    global_batchnorm: ClassVar[bool] = True  # normalise over the global batch in multi-process runs
    defaults: ClassVar[dict[str, Any]] = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6}
    options: ClassVar[dict[str, Any]] = {}  # the method's own hyper-parameters (method_args) and defaults
    # The method's recipe for images of 64 px or less (CIFAR-10, MNIST), where the paper's is an ImageNet recipe:
    # entries that replace those of `defaults` (optimizer, lr, weight_decay, lars_eta, lars_clip, ...) and of
    # `options`. Like small_preset, chosen by the data's image size; the config and --method-arg override both.
    small_defaults: ClassVar[dict[str, Any]] = {}
    small_options: ClassVar[dict[str, Any]] = {}
    # ... and the default backbone's keyword arguments for such images (under --backbone-arg), e.g. a ViT patch size
    small_backbone_args: ClassVar[dict[str, Any]] = {}
    data_kind: ClassVar[str] = "image"  # one of DATA_KINDS: what the engine feeds forward (module docstring)
    default_data: ClassVar[str] = "cifar10"  # the data of `fastssl pretrain --method NAME` without --data
    num_views: ClassVar[Optional[int]] = None  # the view pipeline's first views that forward uses; None: all
    # Text methods: the TextTransformer's keyword arguments (--backbone-arg overrides them).
    text_backbone: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: nn.Module, backbone_spec: dict[str, Any], loss_backend: str = "auto",
                 distributed: bool = False):
        super().__init__()
        self.backbone = backbone
        self._backbone_spec = backbone_spec
        self.loss_backend = loss_backend
        self.distributed = distributed

    @classmethod
    def recipe(cls, small: bool) -> dict[str, Any]:
        """The optimizer defaults (optimizer, lr, weight_decay, ...): ``defaults``, updated with ``small_defaults``
        for images of 64 px or less."""
        return {**cls.defaults, **(cls.small_defaults if small else {})}

    @classmethod
    def method_options(cls, small: bool) -> dict[str, Any]:
        """The method's hyper-parameters before --method-arg: ``options``, updated with ``small_options`` for
        images of 64 px or less."""
        return {**cls.options, **(cls.small_options if small else {})}

    @classmethod
    def build(cls, backbone: str | None, backbone_args: dict, method_args: dict, in_channels: int,
              image_size: Sequence[int], loss_backend: str = "auto", distributed: bool = False,
              small: Optional[bool] = None) -> "Method":
        """``small``: whether the data's images are of 64 px or less (the small recipe); None: judged from the
        views' ``image_size``."""
        cls.check_method_args(method_args)
        small = max(image_size) <= 64 if small is None else small
        name = backbone or cls.default_backbone
        if small and name == cls.default_backbone:
            backbone_args = {**cls.small_backbone_args, **backbone_args}
        kwargs = backbone_kwargs(name, backbone_args, in_channels, image_size)
        net = build_backbone(name, **kwargs)
        return cls(net, {"name": name, "kwargs": kwargs}, loss_backend=loss_backend, distributed=distributed,
                   **{**cls.method_options(small), **method_args})

    @classmethod
    def check_method_args(cls, method_args: dict) -> None:
        unknown = set(method_args) - set(cls.options)
        if unknown:
            raise ValueError(f"method_args: {', '.join(sorted(unknown))} not options of {cls.name}; its options "
                             f"are {', '.join(f'{k}={v!r}' for k, v in cls.options.items()) or 'none'}")

    @classmethod
    def build_text(cls, tokenizer, backbone_args: dict, method_args: dict, loss_backend: str = "auto",
                   distributed: bool = False) -> "Method":
        """A text method (``data_kind == "text"``) on a :class:`TextTransformer` over the ids of ``tokenizer`` (a
        :class:`~fastssl.data.CharTokenizer`): ``cls.text_backbone`` updated with ``backbone_args`` (dim, depth,
        num_heads, mlp_ratio, dropout, ...); the position table holds ``block_size`` (a method option) tokens."""
        cls.check_method_args(method_args)
        options = {**cls.options, **method_args}
        kwargs = {**cls.text_backbone, "vocab_size": tokenizer.vocab_size, "max_len": options["block_size"],
                  **backbone_args}
        try:
            net = TextTransformer(**kwargs)
        except TypeError as exc:
            raise ValueError(f"backbone_args: {exc}; TextTransformer takes vocab_size, max_len, dim, depth, "
                             "num_heads, mlp_ratio, causal, lm_head, dropout") from None
        return cls(net, {"name": "text_transformer", "kwargs": kwargs}, tokenizer=tokenizer,
                   loss_backend=loss_backend, distributed=distributed, **options)

    def text_window(self) -> int:
        """Text methods: how many consecutive tokens each training sample holds."""
        raise NotImplementedError

    def text_inputs(self, windows: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """Text methods: int64 token windows (B, text_window()) -> the tensors forward receives as ``views``, each
        with the batch first (e.g. corrupted tokens and their targets). Runs on the CPU; draw only from
        ``generator``."""
        return [windows]

    def caption_inputs(self, labels: torch.Tensor, classes: Sequence[str],
                       generator: torch.Generator) -> list[torch.Tensor]:
        """Image-text methods: int64 labels (B,) and the class names -> caption tensors (B, ...) that follow the
        image views in ``views``. Runs on the CPU; draw only from ``generator``."""
        raise NotImplementedError

    @staticmethod
    def convolutional(method: "Method") -> bool:
        return isinstance(method.backbone, ResNet)

    def backbone_spec(self) -> dict[str, Any]:
        """How to rebuild the backbone for evaluation: ``build_backbone(spec["name"], **spec["kwargs"])``."""
        return dict(self._backbone_spec)

    def forward(self, views: list[torch.Tensor], step: int = 0, horizon: int = 1):
        raise NotImplementedError

    def loss(self, outputs) -> torch.Tensor:
        raise NotImplementedError

    def fixed_lr_modules(self) -> list[nn.Module]:
        """Modules whose lr stays at the base lr instead of following the warm-up and cosine schedule (SimSiam's
        predictor); none by default."""
        return []

    def lr_scaled_modules(self) -> list[tuple[nn.Module, float]]:
        """(module, scale) pairs: the module's lr is always ``scale`` times the schedule's (BYOL's predictor lr
        multiplier); none by default."""
        return []

    def before_optimizer_step(self, step: int, horizon: int) -> None:
        """Called after the step's backward pass(es) and before gradient clipping and the optimizer step, with the
        index of the step being taken (0-based): the place to drop gradients (DINO's frozen last layer)."""

    def after_step(self, step: int, horizon: int) -> None:
        """Called after each optimizer step with the number of steps done."""

    def logs(self) -> dict[str, float]:
        """Extra scalars for metrics.csv (e.g. the EMA momentum)."""
        return {}

    def save_artifacts(self, out_dir: Path, views: list[torch.Tensor]) -> list[Path]:
        """Called once at the end of a run, on the main process, with one batch of views: write pictures of
        what the method learned (e.g. reconstructions) under ``out_dir`` and return their paths."""
        return []
