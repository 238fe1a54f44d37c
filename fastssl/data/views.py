"""View pipelines: the papers' augmentation recipes as per-sample parameter samplers over fastssl.ops.augment.

    pipe = fastssl.data.view_pipeline("simclr")            # or moco_v2, byol, dino, dino_small, mae, cifar
    views = pipe(images)                                    # uint8 (B, H, W, C) -> [view1, view2], each (B, C, 224, 224)
    params = pipe.sample_params(images, generator=g)       # one AugmentParams per view (a seed reproduces them)

Every sample of every view gets its own parameters, drawn on the CPU from a ``torch.Generator``. Views that share
an output size go through ONE kernel launch: the packed image layout lets several views point at the same source
pixels (their offsets repeat), so a DINO step with 2 global and 8 local crops is two launches, not ten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Union

import torch

from fastssl.ops.augment import LUMA, AugmentParams, ImageBatch, PackedImages, as_packed, augment

Tensor = torch.Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class ViewSpec:
    """How one view is drawn. Probabilities are per sample; ranges are sampled uniformly per sample."""

    size: Union[int, tuple[int, int]] = 224  # output (height, width); an int means square
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop: crop area as a fraction of the image area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop: aspect ratio w/h, sampled log-uniformly
    flip_p: float = 0.5
    jitter_p: float = 0.8  # ColorJitter applied with this probability
    brightness: float = 0.4  # factor uniform in [max(0, 1 - b), 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift uniform in [-hue, hue]
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_size: Optional[int] = None  # odd kernel size; None = about 10% of the view's side, as SimCLR does (23 at 224)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5  # on the [0, 1] scale

    def output_size(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))

    def kernel_size(self) -> int:
        if self.blur_size is not None:
            return int(self.blur_size)
        return int(0.1 * min(self.output_size())) // 2 * 2 + 1

    def validate(self, name: str) -> None:
        h, w = self.output_size()
        if h <= 0 or w <= 0:
            raise ValueError(f"{name}.size: must be positive, got {self.size!r}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"{name}.scale: expected 0 < low <= high <= 1, got {self.scale!r}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"{name}.ratio: expected 0 < low <= high, got {self.ratio!r}")
        for prob in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, prob) <= 1:
                raise ValueError(f"{name}.{prob}: a probability in [0, 1], got {getattr(self, prob)!r}")
        for strength in ("brightness", "contrast", "saturation"):
            if getattr(self, strength) < 0:
                raise ValueError(f"{name}.{strength}: must be >= 0, got {getattr(self, strength)!r}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"{name}.hue: must lie in [0, 0.5], got {self.hue!r}")
        if not (0 < self.blur_sigma[0] <= self.blur_sigma[1]):
            raise ValueError(f"{name}.blur_sigma: expected 0 < low <= high, got {self.blur_sigma!r}")
        if self.kernel_size() < 1 or self.kernel_size() % 2 == 0:
            raise ValueError(f"{name}.blur_size: must be odd and >= 1, got {self.blur_size!r}")


_SPEC_FIELDS = {f.name for f in fields(ViewSpec)}


def sample_view_params(spec: ViewSpec, heights: Tensor, widths: Tensor,
                       generator: Optional[torch.Generator] = None) -> AugmentParams:
    """Draw one view's parameters for images of the given sizes (int64 (B,) each, on the CPU)."""
    b = heights.shape[0]
    crop = random_resized_crop(heights, widths, spec.scale, spec.ratio, generator)

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    def coin(p: float) -> Tensor:
        return torch.rand(b, generator=generator) < p

    flip = coin(spec.flip_p)
    jitter = coin(spec.jitter_p)
    brightness = uniform(max(0.0, 1 - spec.brightness), 1 + spec.brightness)
    contrast = uniform(max(0.0, 1 - spec.contrast), 1 + spec.contrast)
    saturation = uniform(max(0.0, 1 - spec.saturation), 1 + spec.saturation)
    hue = uniform(-spec.hue, spec.hue)
    order = torch.rand(b, 4, generator=generator).argsort(dim=1)  # a uniform random permutation per sample
    grayscale = coin(spec.grayscale_p)
    blur = coin(spec.blur_p)
    sigma = torch.where(blur, uniform(*spec.blur_sigma), torch.zeros(b))
    blur_size = torch.full((b,), spec.kernel_size(), dtype=torch.int64)
    solarize = coin(spec.solarize_p)
    threshold = torch.full((b,), float(spec.solarize_threshold))
    return AugmentParams(crop, flip, jitter, brightness, contrast, saturation, hue, order, grayscale, sigma,
                         blur_size, solarize, threshold)


def random_resized_crop(heights: Tensor, widths: Tensor, scale: Sequence[float], ratio: Sequence[float],
                        generator: Optional[torch.Generator] = None, attempts: int = 10) -> Tensor:
    """torchvision's RandomResizedCrop.get_params for a whole batch: int64 (B, 4) boxes (top, left, height, width).

    Per sample: up to ``attempts`` draws of area ~ U(scale) * H * W and log-aspect ~ U(log ratio); the first box
    that fits is kept; if none fits, the largest centred box with the aspect ratio clamped into ``ratio``.
    """
    b = heights.shape[0]
    heights, widths = heights.to(torch.int64), widths.to(torch.int64)
    area = (heights * widths).double()[:, None]
    target = area * (torch.rand(b, attempts, generator=generator, dtype=torch.float64)
                     * (scale[1] - scale[0]) + scale[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(b, attempts, generator=generator, dtype=torch.float64) * (log_hi - log_lo) + log_lo)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = fits.long().argmax(dim=1)  # the first attempt that fits (0 if none does)
    found = fits.any(dim=1)
    rows = torch.arange(b)
    h, w = h[rows, first], w[rows, first]
    # Fallback: the whole image, clamped to the ratio bounds and centred.
    in_ratio = widths.double() / heights.double()
    fb_w = torch.where(in_ratio < ratio[0], widths,
                       torch.where(in_ratio > ratio[1], torch.round(heights * ratio[1]).long(), widths))
    fb_h = torch.where(in_ratio < ratio[0], torch.round(widths / ratio[0]).long(), heights)
    fb_w, fb_h = fb_w.clamp(1, None).minimum(widths), fb_h.clamp(1, None).minimum(heights)
    h, w = torch.where(found, h, fb_h), torch.where(found, w, fb_w)
    u_top = torch.rand(b, generator=generator, dtype=torch.float64)
    u_left = torch.rand(b, generator=generator, dtype=torch.float64)
    top = torch.where(found, (u_top * (heights - h + 1)).long().minimum(heights - h), (heights - h) // 2)
    left = torch.where(found, (u_left * (widths - w + 1)).long().minimum(widths - w), (widths - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _image_sizes(images: ImageBatch) -> tuple[Tensor, Tensor]:
    if isinstance(images, PackedImages):
        host = images.sizes_on_host()
        return host if host is not None else (images.heights.cpu(), images.widths.cpu())
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("images: expected a uint8 tensor (B, H, W, C) or PackedImages, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    b, h, w, _ = images.shape
    return torch.full((b,), h, dtype=torch.int64), torch.full((b,), w, dtype=torch.int64)


def _channels(images: ImageBatch) -> int:
    return images.channels if isinstance(images, PackedImages) else int(images.shape[-1])


def _as_packed_views(images: ImageBatch, count: int) -> PackedImages:
    """``count`` copies of the batch that share its pixels: the same buffer, the offsets repeated (augment
    validates the result)."""
    packed = as_packed(images, validate=False)
    return packed if count == 1 else packed.repeat(count)


def _concat(params: Sequence[AugmentParams]) -> AugmentParams:
    return AugmentParams(**{f: torch.cat([getattr(p, f) for p in params]) for f in AugmentParams.__dataclass_fields__})


def channel_normalization(mean: Sequence[float], std: Sequence[float],
                          channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean``/``std`` for images with ``channels`` channels: as given, or for single-channel images a
    three-value mean/std reduced with the ITU-R 601-2 luma weights."""
    if channels == len(mean):
        return tuple(mean), tuple(std)
    if channels == 1 and len(mean) == 3:
        return (sum(w * m for w, m in zip(LUMA, mean)),), (sum(w * s for w, s in zip(LUMA, std)),)
    raise ValueError(f"mean, std: {len(mean)} values for images with {channels} channels")


@dataclass
class ViewPipeline:
    """A list of views to draw from each source batch, and how to normalise them.

    ``mean``/``std`` are on the [0, 1] scale; for single-channel images a three-value mean/std is reduced with the
    ITU-R 601-2 luma weights (what the gray image of a normalised colour image would see).
    """

    views: list[ViewSpec]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    out_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    name: str = "custom"

    def __post_init__(self):
        if not self.views:
            raise ValueError("views: a pipeline needs at least one view")
        for i, view in enumerate(self.views):
            view.validate(f"views[{i}]")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean, std: {len(self.mean)} and {len(self.std)} values")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std: contains 0 ({self.std})")

    def sample_params(self, images: ImageBatch, generator: Optional[torch.Generator] = None) -> list[AugmentParams]:
        """One AugmentParams per view (on the CPU), drawn from ``generator`` (a seed reproduces them)."""
        heights, widths = _image_sizes(images)
        if heights.shape[0] == 0:
            raise ValueError("images: empty batch")
        return self.sample_params_for_sizes(heights, widths, generator)

    def sample_params_for_sizes(self, heights: Tensor, widths: Tensor,
                                generator: Optional[torch.Generator] = None) -> list[AugmentParams]:
        """As :meth:`sample_params`, from the images' int64 heights and widths (B,) alone."""
        return [sample_view_params(view, heights, widths, generator) for view in self.views]

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return channel_normalization(self.mean, self.std, channels)

    def __call__(self, images: ImageBatch, generator: Optional[torch.Generator] = None, backend: str = "auto",
                 params: Optional[Sequence[AugmentParams]] = None) -> list[Tensor]:
        """The views of ``images`` (uint8 (B, H, W, C) or PackedImages, on any device): a list of
        (B, C, h, w) tensors, in the order of ``self.views``. Pass ``params`` to reuse drawn parameters."""
        if params is None:
            params = self.sample_params(images, generator)
        if len(params) != len(self.views):
            raise ValueError(f"params: expected {len(self.views)} AugmentParams (one per view), got {len(params)}")
        mean, std = self.normalization(_channels(images))
        batch = _image_sizes(images)[0].shape[0]
        outputs: list[Optional[Tensor]] = [None] * len(self.views)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, view in enumerate(self.views):
            groups.setdefault(view.output_size(), []).append(i)
        for size, members in groups.items():
            source = _as_packed_views(images, len(members))
            joint = _concat([params[i] for i in members])  # augment sends CPU parameters in pinned copies
            out = augment(source, joint, size, mean, std, out_dtype=self.out_dtype,
                          channels_last=self.channels_last, backend=backend)
            for j, i in enumerate(members):
                outputs[i] = out[j * batch:(j + 1) * batch]
        return outputs  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Presets: the papers' recipes
# ----------------------------------------------------------------------------------------------------------------


def _simclr() -> ViewPipeline:
    """SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
    Appendix A): two views of RandomResizedCrop(224, scale (0.08, 1)), flip, colour distortion of strength s = 1
    (ColorJitter(0.8, 0.8, 0.8, 0.2) with p = 0.8, grayscale p = 0.2), Gaussian blur p = 0.5 with sigma in
    [0.1, 2.0] and a kernel 10% of the image side (23 at 224)."""
    view = ViewSpec(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
    return ViewPipeline([view, replace(view)], name="simclr")


def _moco_v2() -> ViewPipeline:
    """MoCo v2 (Chen et al., 2020, "Improved Baselines with Momentum Contrastive Learning", and its released
    code): RandomResizedCrop(224, scale (0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8, grayscale p = 0.2,
    Gaussian blur sigma in [0.1, 2.0] p = 0.5, flip; two views drawn alike."""
    view = ViewSpec(scale=(0.2, 1.0))
    return ViewPipeline([view, replace(view)], name="moco_v2")


def _byol() -> ViewPipeline:
    """BYOL (Grill et al., 2020, "Bootstrap Your Own Latent", Table 6): RandomResizedCrop(224, scale (0.08, 1)),
    flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale p = 0.2, then the asymmetric part: Gaussian blur
    p = 1.0 on the first view and 0.1 on the second, solarize p = 0 and 0.2 (threshold 128 of 255)."""
    common = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, solarize_threshold=128 / 255)
    return ViewPipeline([ViewSpec(blur_p=1.0, solarize_p=0.0, **common),
                         ViewSpec(blur_p=0.1, solarize_p=0.2, **common)], name="byol")


def _dino(local_crops: int = 8, local_size: int = 96, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)):
    """DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers", and its released
    code): multi-crop with 2 global 224 views (scale (0.4, 1)) and 8 local 96 views (scale (0.05, 0.4)); flip,
    ColorJitter(0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale p = 0.2; blur p = 1.0 on the first global view, 0.1 and
    solarize p = 0.2 on the second, 0.5 on the local views."""
    common = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, solarize_threshold=128 / 255)
    views = [ViewSpec(scale=global_scale, blur_p=1.0, **common),
             ViewSpec(scale=global_scale, blur_p=0.1, solarize_p=0.2, **common)]
    views += [ViewSpec(size=local_size, scale=local_scale, blur_p=0.5, **common) for _ in range(local_crops)]
    return ViewPipeline(views, name="dino")


def _dino_small(local_crops: int = 6, local_size: int = 16, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)):
    """DINO's multi-crop (Caron et al., 2021) for images of 64 px or less, such as CIFAR-10: 2 global 32 px views
    and ``local_crops`` local 16 px views (the paper's 224 : 96 ratio, about 2 : 1), the paper's crop scales and
    colour recipe, without blur (SimCLR's CIFAR-10 recipe, Appendix B.9, drops it: a blur erases a 32 px object);
    CIFAR-10 normalisation. The engine sets the global size to the data's size."""
    pipe = _dino(local_crops, local_size, global_scale, local_scale)
    views = [replace(view, size=32, blur_p=0.0) for view in pipe.views[:2]]
    views += [replace(view, blur_p=0.0) for view in pipe.views[2:]]
    return ViewPipeline(views, mean=CIFAR10_MEAN, std=CIFAR10_STD, name="dino_small")


def _mae() -> ViewPipeline:
    """MAE (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners"): RandomResizedCrop(224,
    scale (0.2, 1)) and a flip, nothing else (MAE resizes bicubically; fastssl's crop is bilinear)."""
    return ViewPipeline([ViewSpec(scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)], name="mae")


def _cifar() -> ViewPipeline:
    """SimCLR's CIFAR-10 recipe (Chen et al., 2020, Appendix B.9): RandomResizedCrop(32, scale (0.08, 1)), flip,
    colour distortion of strength 0.5 (ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8, grayscale p = 0.2), no blur;
    normalised with the CIFAR-10 channel statistics."""
    view = ViewSpec(size=32, blur_p=0.0)
    return ViewPipeline([view, replace(view)], mean=CIFAR10_MEAN, std=CIFAR10_STD, name="cifar")


PRESETS = {"simclr": _simclr, "moco_v2": _moco_v2, "byol": _byol, "dino": _dino, "dino_small": _dino_small,
           "mae": _mae, "cifar": _cifar}
_PIPELINE_KEYS = {"mean", "std", "out_dtype", "channels_last"}
_DINO_KEYS = {"local_crops", "local_size", "global_scale", "local_scale"}
_MULTI_CROP = {"dino", "dino_small"}  # the presets that take _DINO_KEYS; ``size`` sets their global views only


def view_pipeline(preset: str, **overrides) -> ViewPipeline:
    """The preset's pipeline with ``overrides`` applied.

    A ViewSpec field (``size``, ``scale``, ``blur_p``, ...) applies to every view (e.g. ``size=96``); ``mean``,
    ``std``, ``out_dtype`` and ``channels_last`` apply to the pipeline; ``dino`` and ``dino_small`` also take
    ``local_crops``, ``local_size``, ``global_scale`` and ``local_scale`` (and ``size`` then sets the global views
    only).

    >>> pipe = view_pipeline("cifar")
    >>> [v.shape for v in pipe(torch.zeros(4, 32, 32, 3, dtype=torch.uint8))]
    [torch.Size([4, 3, 32, 32]), torch.Size([4, 3, 32, 32])]
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; choose one of {', '.join(PRESETS)}")
    multi_crop = preset in _MULTI_CROP
    accepted = _SPEC_FIELDS | _PIPELINE_KEYS | (_DINO_KEYS if multi_crop else set())
    unknown = set(overrides) - accepted
    if unknown:
        raise ValueError(f"{', '.join(sorted(unknown))}: not an option of view_pipeline({preset!r}); "
                         f"accepted: {', '.join(sorted(accepted))}")
    dino_args = {k: overrides.pop(k) for k in list(overrides) if k in _DINO_KEYS}
    pipeline_args = {k: overrides.pop(k) for k in list(overrides) if k in _PIPELINE_KEYS}
    pipe = PRESETS[preset](**dino_args) if multi_crop else PRESETS[preset]()
    views = []
    for i, view in enumerate(pipe.views):
        args = dict(overrides)
        if multi_crop and i >= 2:
            args.pop("size", None)
        views.append(replace(view, **args))
    return ViewPipeline(views, **{**dict(mean=pipe.mean, std=pipe.std, out_dtype=pipe.out_dtype,
                                        channels_last=pipe.channels_last, name=pipe.name), **pipeline_args})


def to_device(images: ImageBatch, device: Union[str, torch.device]) -> ImageBatch:
    """Move a uint8 batch to ``device`` the fast way: through pinned memory with ``non_blocking=True`` (the copy
    overlaps the GPU's work on the previous step). On the CPU it is returned as is."""
    device = torch.device(device)
    if device.type == "cpu" or images.device == device:
        return images
    return images.pin_memory().to(device, non_blocking=True)
