"""Per-sample SSL augmentation in one pass: uint8 images in, normalised views out.

This module holds the op's input types; the op, its reference and its dispatch follow below them.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Optional, Sequence, Union

import torch

from fastssl import _dispatch

Tensor = torch.Tensor


@dataclass
class PackedImages:
    """A batch of images of different sizes in one flat uint8 buffer, so that a photo dataset with mixed sizes goes
    through one kernel launch.

    Image ``b`` is ``data[offsets[b] : offsets[b] + heights[b] * widths[b] * channels]`` viewed as
    ``(heights[b], widths[b], channels)`` (HWC, as decoded). Every image has the same ``channels`` (3 or 1).

    data: uint8 (total,); offsets, heights, widths: int64 (B,), on the same device as ``data``.

    ``host_sizes`` (optional): CPU copies of (heights, widths), and ``checked`` marks a batch whose values were
    already validated. ``to(device)`` of a CPU batch fills both (validating on the CPU, where it costs no device
    sync), so that ``augment`` on a GPU never waits for the device to read sizes back.
    """

    data: Tensor
    offsets: Tensor
    heights: Tensor
    widths: Tensor
    channels: int
    host_sizes: Optional[tuple[Tensor, Tensor]] = dataclass_field(default=None, repr=False, compare=False)
    checked: bool = dataclass_field(default=False, repr=False, compare=False)

    @classmethod
    def from_list(cls, images: Sequence[Tensor], pin_memory: bool = False) -> "PackedImages":
        """Pack a list of uint8 (H, W, C) tensors (or numpy arrays) with the same C; (H, W) counts as C = 1."""
        if len(images) == 0:
            raise ValueError("images: empty list, nothing to pack")
        tensors = []
        for i, image in enumerate(images):
            image = torch.as_tensor(image)
            if image.dim() == 2:
                image = image.unsqueeze(-1)
            if image.dim() != 3 or image.dtype != torch.uint8:
                raise ValueError(f"images[{i}]: expected uint8 (H, W, C), got {image.dtype} {tuple(image.shape)}")
            tensors.append(image)
        channels = tensors[0].shape[-1]
        for i, image in enumerate(tensors):
            if image.shape[-1] != channels:
                raise ValueError(f"images[{i}]: has {image.shape[-1]} channels, images[0] has {channels}")
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
        offsets = torch.zeros(len(tensors), dtype=torch.int64)
        offsets[1:] = torch.cumsum(sizes, 0)[:-1]
        data = torch.empty(int(sizes.sum()), dtype=torch.uint8, pin_memory=pin_memory)
        torch.cat([t.reshape(-1) for t in tensors], out=data)
        heights = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64)
        widths = torch.tensor([t.shape[1] for t in tensors], dtype=torch.int64)
        return cls(data, offsets, heights, widths, int(channels))

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def device(self) -> torch.device:
        return self.data.device

    def image(self, index: int) -> Tensor:
        """Image ``index`` as a uint8 (H, W, C) view of the buffer."""
        h, w = int(self.heights[index]), int(self.widths[index])
        start = int(self.offsets[index])
        return self.data[start : start + h * w * self.channels].view(h, w, self.channels)

    def pin_memory(self) -> "PackedImages":
        return PackedImages(self.data.pin_memory(), self.offsets.pin_memory(), self.heights.pin_memory(),
                            self.widths.pin_memory(), self.channels, self.host_sizes, self.checked)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "PackedImages":
        """The batch on ``device``. From the CPU, it is validated there first and keeps CPU copies of its sizes."""
        host_sizes, checked = self.host_sizes, self.checked
        if self.data.device.type == "cpu":
            if not checked:
                self.validate("images")
            host_sizes, checked = (self.heights, self.widths), True
        return PackedImages(*(t.to(device, non_blocking=non_blocking)
                              for t in (self.data, self.offsets, self.heights, self.widths)), self.channels,
                            host_sizes, checked)

    def repeat(self, count: int) -> "PackedImages":
        """``count`` copies of the batch sharing its pixels (the same buffer, the index tensors repeated)."""
        host = None if self.host_sizes is None else tuple(t.repeat(count) for t in self.host_sizes)
        return PackedImages(self.data, self.offsets.repeat(count), self.heights.repeat(count),
                            self.widths.repeat(count), self.channels, host, self.checked)

    def sizes_on_host(self) -> Optional[tuple[Tensor, Tensor]]:
        """CPU (heights, widths) without a device sync, or None when only the device holds them."""
        if self.heights.device.type == "cpu":
            return self.heights, self.widths
        return self.host_sizes

    def validate(self, name: str = "images") -> None:
        """Raise ValueError naming ``name`` when the buffer and the index tensors disagree."""
        if self.data.dtype != torch.uint8 or self.data.dim() != 1:
            raise ValueError(f"{name}.data: expected a flat uint8 buffer, got {self.data.dtype} "
                             f"{tuple(self.data.shape)}")
        if self.channels not in (1, 3):
            raise ValueError(f"{name}.channels: expected 1 or 3, got {self.channels}")
        batch = self.offsets.shape[0] if self.offsets.dim() == 1 else -1
        for field in ("offsets", "heights", "widths"):
            t = getattr(self, field)
            if t.dtype != torch.int64 or t.dim() != 1 or t.shape[0] != batch:
                raise ValueError(f"{name}.{field}: expected int64 ({batch},), got {t.dtype} {tuple(t.shape)}")
            if t.device != self.data.device:
                raise ValueError(f"{name}.{field}: on {t.device}, data is on {self.data.device}")
        if batch == 0:
            raise ValueError(f"{name}: empty batch")
        if torch.compiler.is_compiling():
            return  # the value checks below read tensor values: eager calls run them, a traced graph cannot
        sizes_ok = (self.heights >= 1) & (self.widths >= 1)
        ends = self.offsets + self.heights * self.widths * self.channels
        inside = (self.offsets >= 0) & (ends <= self.data.numel())
        if bool((sizes_ok & inside).all()):  # one host sync for both checks (a GPU batch pays it once per call)
            self.checked = True
            return
        if not bool(sizes_ok.all()):
            raise ValueError(f"{name}: every image needs height and width >= 1")
        raise ValueError(f"{name}: an image runs past the end of data ({self.data.numel()} bytes)")


ImageBatch = Union[Tensor, PackedImages]


# ----------------------------------------------------------------------------------------------------------------
# Per-sample parameters
# ----------------------------------------------------------------------------------------------------------------

# Colour-jitter operation codes, as torchvision's ColorJitter numbers them in its per-call permutation (fn_idx).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
JITTER_NAMES = ("brightness", "contrast", "saturation", "hue")

# ITU-R 601-2 luma, the weights of torchvision's rgb_to_grayscale.
LUMA = (0.2989, 0.587, 0.114)

# The packed layout the kernels read: one int64 row and one float32 row per sample (one load each in a kernel).
# int64 columns:
I_TOP, I_LEFT, I_CROP_H, I_CROP_W, I_FLIP, I_JITTER, I_ORDER, I_GRAY, I_SOLARIZE, I_BLUR_SIZE = 0, 1, 2, 3, 4, 5, 6, 10, 11, 12
NUM_INT_PARAMS = 13
# float32 columns:
F_BRIGHTNESS, F_CONTRAST, F_SATURATION, F_HUE, F_SIGMA, F_THRESHOLD = 0, 1, 2, 3, 4, 5
NUM_FLOAT_PARAMS = 6


@dataclass
class AugmentParams:
    """One view's augmentation parameters, one entry per sample (every sample gets its own).

    crop:        int64 (B, 4)  top, left, height, width of the crop box in source pixels (inside the image)
    flip:        bool (B,)     mirror the view horizontally
    jitter:      bool (B,)     apply the colour jitter (brightness, contrast, saturation, hue below)
    brightness:  float (B,)    factor >= 0 (1 = identity)
    contrast:    float (B,)    factor >= 0 (1 = identity)
    saturation:  float (B,)    factor >= 0 (1 = identity)
    hue:         float (B,)    shift in [-0.5, 0.5] of a turn (0 = identity)
    jitter_order: int64 (B, 4) a permutation of 0..3 (brightness, contrast, saturation, hue): the order they apply in
    grayscale:   bool (B,)     convert to ITU-R 601-2 luma, replicated over the channels
    blur_sigma:  float (B,)    Gaussian blur standard deviation in output pixels; 0 = no blur
    blur_size:   int64 (B,)    odd kernel size of that blur
    solarize:    bool (B,)     invert the values >= solarize_threshold
    solarize_threshold: float (B,)  on the [0, 1] scale (torchvision's 128 for uint8 is 128/255)
    """

    crop: Tensor
    flip: Tensor
    jitter: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    jitter_order: Tensor
    grayscale: Tensor
    blur_sigma: Tensor
    blur_size: Tensor
    solarize: Tensor
    solarize_threshold: Tensor

    @classmethod
    def identity(cls, batch_size: int, height: Union[int, Tensor], width: Union[int, Tensor],
                 device: Union[str, torch.device, None] = None) -> "AugmentParams":
        """Parameters that crop the whole image and change nothing else (a resize and a normalise)."""
        b = batch_size
        crop = torch.zeros(b, 4, dtype=torch.int64, device=device)
        crop[:, 2] = torch.as_tensor(height, device=device)
        crop[:, 3] = torch.as_tensor(width, device=device)
        zeros = torch.zeros(b, device=device)
        ones = torch.ones(b, device=device)
        false = torch.zeros(b, dtype=torch.bool, device=device)
        order = torch.arange(4, device=device).repeat(b, 1)
        return cls(crop, false, false.clone(), ones, ones.clone(), ones.clone(), zeros, order, false.clone(),
                   zeros.clone(), torch.ones(b, dtype=torch.int64, device=device), false.clone(),
                   torch.full((b,), 0.5, device=device))

    def __len__(self) -> int:
        return int(self.crop.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "AugmentParams":
        return AugmentParams(**{f: getattr(self, f).to(device, non_blocking=non_blocking) for f in _FIELDS})

    def select(self, index: Tensor) -> "AugmentParams":
        """The parameters of the samples at ``index`` (a slice of the batch)."""
        return AugmentParams(**{f: getattr(self, f)[index] for f in _FIELDS})

    def packed(self, device: Union[str, torch.device, None] = None) -> tuple[Tensor, Tensor]:
        """(int64 (B, 13), float32 (B, 6)): the rows the kernels read, columns I_* and F_* of this module.
        CPU parameters bound for a GPU are packed on the CPU and sent in two pinned, non-blocking copies."""
        target = self.crop.device if device is None else torch.device(device)
        source = self.crop.device
        if source.type == "cpu" and target.type != "cpu":
            ints, floats = self.packed(source)
            return _to_device(ints, target), _to_device(floats, target)
        device = target
        ints = torch.cat([
            self.crop.to(device, torch.int64),
            self.flip.to(device, torch.int64)[:, None],
            self.jitter.to(device, torch.int64)[:, None],
            self.jitter_order.to(device, torch.int64),
            self.grayscale.to(device, torch.int64)[:, None],
            self.solarize.to(device, torch.int64)[:, None],
            self.blur_size.to(device, torch.int64)[:, None],
        ], dim=1)
        floats = torch.stack([getattr(self, f).to(device, torch.float32) for f in
                              ("brightness", "contrast", "saturation", "hue", "blur_sigma", "solarize_threshold")],
                             dim=1)
        return ints.contiguous(), floats.contiguous()


_FIELDS = tuple(AugmentParams.__dataclass_fields__)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor on ``device`` without making the host wait for the device's queue: a copy from pageable
    memory is synchronous, one from pinned memory is not."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ----------------------------------------------------------------------------------------------------------------
# The reference: the specification and the test oracle. Per sample, plain PyTorch, float math throughout.
# ----------------------------------------------------------------------------------------------------------------
# Semantics follow torchvision's definitions on float images in [0, 1]:
#   resized crop  F.interpolate(crop, size, mode="bilinear", align_corners=False, antialias=True): a triangle filter
#                 stretched by the scale when downscaling (PIL's and torchvision's antialias), plain bilinear up
#   flip          out[..., x] = in[..., W - 1 - x]
#   brightness    clamp(b * x, 0, 1)
#   contrast      clamp(c * x + (1 - c) * mean(gray(x)), 0, 1), the mean over the whole view at that point
#   saturation    clamp(s * x + (1 - s) * gray(x), 0, 1)
#   hue           RGB -> HSV (torchvision's _rgb2hsv), h = (h + shift) mod 1, HSV -> RGB
#   grayscale     gray(x) = 0.2989 r + 0.587 g + 0.114 b, replicated over the channels
#   blur          separable Gaussian, kernel exp(-x^2 / (2 sigma^2)) on x = -(k-1)/2 .. (k-1)/2, normalised,
#                 reflect padding (mirror without repeating the edge; repeated for views smaller than the kernel)
#   solarize      x >= t  ->  1 - x
#   normalise     (x - mean[c]) / std[c], cast to the output dtype
# One deliberate difference from torchvision on uint8 images: torchvision rounds to uint8 after each step; fastssl
# keeps float values from the resize to the output (one rounding, into out_dtype), which is closer to the ideal result.
# Saturation and hue leave single-channel images unchanged, as torchvision does.
# Memory traffic of the fused op: read each source pixel the crops touch (at most H*W*C bytes per view) and write
# B*C*out_h*out_w values of out_dtype; this reference instead makes about a dozen float passes over every view.


def _gray(x: Tensor) -> Tensor:
    """(C, H, W) -> (1, H, W) luma; a single-channel image is its own gray."""
    if x.shape[0] == 1:
        return x
    return LUMA[0] * x[0:1] + LUMA[1] * x[1:2] + LUMA[2] * x[2:3]


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(0)
    maxc, minc = x.max(0).values, x.min(0).values
    equal = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(equal, ones, maxc)
    divisor = torch.where(equal, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc])


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(0)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # sector i picks (r, g, b) from these rows
    table = torch.stack([torch.stack([v, q, p, p, t, v]), torch.stack([t, v, v, q, p, p]),
                         torch.stack([p, p, t, v, v, q])])  # (3, 6, H, W)
    return table.gather(1, i[None, None].expand(3, 1, *i.shape)).squeeze(1)


def _reflect(index: Tensor, size: int) -> Tensor:
    """Mirror indices into [0, size) without repeating the edge (numpy's 'reflect'), any distance out."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)


def gaussian_kernel1d(size: int, sigma: float, dtype=torch.float64) -> Tensor:
    """torchvision's _get_gaussian_kernel1d: exp(-x^2 / (2 sigma^2)) on x = -(k-1)/2 .. (k-1)/2, summing to 1."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, size, dtype=dtype)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def _blur(x: Tensor, size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur of (C, H, W) with reflect padding."""
    kernel = gaussian_kernel1d(size, sigma, x.dtype).to(x.device)
    taps = torch.arange(size) - size // 2
    _, h, w = x.shape
    cols = _reflect(torch.arange(w)[:, None] + taps[None, :], w)  # (W, k) source column of each tap
    x = (x[:, :, cols] * kernel).sum(-1)
    rows = _reflect(torch.arange(h)[:, None] + taps[None, :], h)  # (H, k)
    return (x[:, rows, :] * kernel[None, :, None]).sum(2)


def augment_one_reference(image: Tensor, params: AugmentParams, index: int, out_size: tuple[int, int],
                          dtype: torch.dtype = torch.float64) -> Tensor:
    """Sample ``index`` of ``params`` applied to one uint8 (H, W, C) image: (C, out_h, out_w) in [0, 1], before
    normalisation, computed in ``dtype``."""
    top, left, crop_h, crop_w = (int(v) for v in params.crop[index])
    x = image[top:top + crop_h, left:left + crop_w].permute(2, 0, 1).to(dtype) / 255.0  # (C, crop_h, crop_w)
    x = torch.nn.functional.interpolate(x[None], size=out_size, mode="bilinear", align_corners=False,
                                        antialias=True)[0]
    if bool(params.flip[index]):
        x = x.flip(-1)
    if bool(params.jitter[index]):
        for op in params.jitter_order[index].tolist():
            if op == BRIGHTNESS:
                x = (float(params.brightness[index]) * x).clamp(0.0, 1.0)
            elif op == CONTRAST:
                c = float(params.contrast[index])
                x = (c * x + (1.0 - c) * _gray(x).mean()).clamp(0.0, 1.0)
            elif op == SATURATION and x.shape[0] == 3:
                s = float(params.saturation[index])
                x = (s * x + (1.0 - s) * _gray(x)).clamp(0.0, 1.0)
            elif op == HUE and x.shape[0] == 3:
                hsv = _rgb_to_hsv(x)
                hsv = torch.stack([torch.remainder(hsv[0] + float(params.hue[index]), 1.0), hsv[1], hsv[2]])
                x = _hsv_to_rgb(hsv)
    if bool(params.grayscale[index]):
        x = _gray(x).expand_as(x)
    sigma = float(params.blur_sigma[index])
    if sigma > 0:
        x = _blur(x, int(params.blur_size[index]), sigma)
    if bool(params.solarize[index]):
        x = torch.where(x >= float(params.solarize_threshold[index]), 1.0 - x, x)
    return x


def augment_reference(images: ImageBatch, params: AugmentParams, out_size, mean, std,
                      out_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                      compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """The whole op, one sample at a time: (B, C, out_h, out_w) in ``out_dtype``."""
    out_h, out_w = _out_size(out_size)
    batch = len(images) if isinstance(images, PackedImages) else images.shape[0]
    views = []
    for b in range(batch):
        image = images.image(b) if isinstance(images, PackedImages) else images[b]
        views.append(augment_one_reference(image, params, b, (out_h, out_w), compute_dtype))
    x = torch.stack(views)  # (B, C, out_h, out_w)
    device = x.device
    mean_t = torch.as_tensor(mean, dtype=compute_dtype, device=device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=compute_dtype, device=device).reshape(1, -1, 1, 1)
    out = ((x - mean_t) / std_t).to(out_dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def _out_size(out_size) -> tuple[int, int]:
    if isinstance(out_size, int):
        return out_size, out_size
    out_h, out_w = (int(v) for v in out_size)
    return out_h, out_w


# ----------------------------------------------------------------------------------------------------------------
# The fused op. Every kernel has one signature and writes into a preallocated output:
#   augment(data, offsets, heights, widths, channels, int_params, float_params, mean, std, out) -> None
# data: flat uint8 (PackedImages layout, HWC per image); int_params int64 (B, 13) and float_params float32 (B, 6)
# as AugmentParams.packed() lays them out; mean, std float32 (C,); out (B, C, out_h, out_w) of the output dtype,
# any strides (contiguous or channels_last).
# ----------------------------------------------------------------------------------------------------------------

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# No CUDA C++ kernel: the Triton one is the GPU path (DESIGN.md: a .cu kernel only where it beats Triton).
BACKENDS = (
    _dispatch.triton_backend("augment", OUT_DTYPES),
    _dispatch.cpp_backend("augment", OUT_DTYPES),
    _dispatch.reference_backend(),
)
_dispatch.register("augment", BACKENDS)


def _kernel(backend: str):
    if backend == "cpp":
        return _dispatch.extension()[0].augment
    if backend == "triton":
        return _dispatch.triton_module("augment")[0].augment
    raise ValueError(f"unknown fused backend {backend!r}")


def _empty_views(batch: int, channels: int, out_h: int, out_w: int, out_dtype: torch.dtype, channels_last: bool,
                 device: torch.device) -> Tensor:
    # Allocated directly in its layout: a contiguous tensor converted afterwards cost a 93 ms copy per SimCLR batch.
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(batch, channels, out_h, out_w, dtype=out_dtype, device=device, memory_format=layout)


@torch.library.custom_op("fastssl::augment_fused", mutates_args=())
def _augment_fused(data: Tensor, offsets: Tensor, heights: Tensor, widths: Tensor, channels: int,
                   int_params: Tensor, float_params: Tensor, mean: Tensor, std: Tensor, out_h: int, out_w: int,
                   out_dtype: torch.dtype, channels_last: bool, backend: str) -> Tensor:
    out = _empty_views(offsets.shape[0], channels, out_h, out_w, out_dtype, channels_last, data.device)
    _kernel(backend)(data, offsets, heights, widths, channels, int_params, float_params, mean, std, out)
    return out


@_augment_fused.register_fake
def _(data, offsets, heights, widths, channels, int_params, float_params, mean, std, out_h, out_w, out_dtype,
      channels_last, backend):
    return _empty_views(offsets.shape[0], channels, out_h, out_w, out_dtype, channels_last, data.device)


def augment(images: ImageBatch, params: AugmentParams, out_size, mean, std, out_dtype: torch.dtype = torch.float32,
            channels_last: bool = False, backend: str = "auto") -> Tensor:
    """Augment a batch of uint8 images into normalised views, every sample with its own parameters, in one pass.

    Per sample, in this order: resized crop (bilinear, antialiased when downscaling), horizontal flip, colour
    jitter (brightness, contrast, saturation, hue in the sample's own order), grayscale, Gaussian blur, solarize,
    normalise with ``mean``/``std`` (on the [0, 1] scale), as torchvision defines each (see augment_reference).

    Args:
        images: uint8 (B, H, W, C) with C = 3 or 1, as decoded, or a :class:`PackedImages` of mixed sizes.
        params: :class:`AugmentParams` with B entries (``fastssl.data.view_pipeline`` draws them).
        out_size: int or (out_h, out_w).
        mean, std: C floats each (or tensors), on the [0, 1] scale, e.g. ImageNet's (0.485, 0.456, 0.406).
        out_dtype: float32, bfloat16 or float16.
        channels_last: return the views in channels_last memory format (same shape).
        backend: "auto", "reference", "cpp", "triton" or "cuda".

    Returns:
        (B, C, out_h, out_w) views of ``out_dtype`` on the images' device.

    Example:
        >>> import torch, fastssl
        >>> images = torch.randint(0, 256, (8, 64, 48, 3), dtype=torch.uint8)
        >>> params = fastssl.ops.AugmentParams.identity(8, 64, 48)
        >>> views = fastssl.ops.augment(images, params, 32, mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> views.shape
        torch.Size([8, 3, 32, 32])
    """
    packed = as_packed(images)
    channels = packed.channels
    out_h, out_w = _check_out_size(out_size)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype: expected one of {', '.join(map(str, OUT_DTYPES))}, got {out_dtype}")
    mean_t = _check_channel_values("mean", mean, channels, packed.device)
    std_t = _check_channel_values("std", std, channels, packed.device)
    _check_params(params, packed)
    chosen = _dispatch.select("augment", backend, packed.device, out_dtype)
    if chosen == "reference":
        return augment_reference(images, params.to(packed.device), (out_h, out_w), mean_t, std_t, out_dtype,
                                 channels_last, compute_dtype=torch.float32)
    int_params, float_params = params.packed(packed.device)
    return _augment_fused(packed.data, packed.offsets, packed.heights, packed.widths, channels, int_params,
                          float_params, mean_t, std_t, out_h, out_w, out_dtype, channels_last, chosen)


# ----------------------------------------------------------------------------------------------------------------
# Input checks: each names the argument.
# ----------------------------------------------------------------------------------------------------------------


def as_packed(images: ImageBatch, validate: bool = True) -> PackedImages:
    """``images`` as PackedImages: a dense uint8 (B, H, W, C) batch becomes a view of its own buffer (no copy when
    contiguous). Raises ValueError naming ``images`` for bad input; ``validate=False`` skips the value checks of an
    already validated PackedImages."""
    if isinstance(images, PackedImages):
        if validate and not images.checked:
            images.validate("images")
        return images
    if not isinstance(images, Tensor):
        raise ValueError(f"images: expected a uint8 tensor (B, H, W, C) or PackedImages, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images: expected uint8 pixels, got {images.dtype}")
    if images.dim() != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images: expected (B, H, W, C) with C = 3 or 1, got shape {tuple(images.shape)}")
    batch, height, width, channels = images.shape
    if batch == 0:
        raise ValueError("images: empty batch")
    if height == 0 or width == 0:
        raise ValueError(f"images: empty images of shape {tuple(images.shape[1:])}")
    device = images.device
    size = height * width * channels
    host_sizes = (torch.full((batch,), height, dtype=torch.int64), torch.full((batch,), width, dtype=torch.int64))
    return PackedImages(images.contiguous().view(-1), torch.arange(batch, device=device, dtype=torch.int64) * size,
                        torch.full((batch,), height, device=device, dtype=torch.int64),
                        torch.full((batch,), width, device=device, dtype=torch.int64), int(channels),
                        host_sizes, checked=True)  # valid by construction


def _check_out_size(out_size) -> tuple[int, int]:
    try:
        out_h, out_w = _out_size(out_size)
    except (TypeError, ValueError):
        raise ValueError(f"out_size: expected an int or (height, width), got {out_size!r}") from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_size: must be positive, got {out_size!r}")
    return out_h, out_w


def _check_channel_values(name: str, values, channels: int, device: torch.device) -> Tensor:
    """``values`` as float32 (C,) on ``device``; numbers and CPU tensors are checked on the CPU (no device sync)."""
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() != channels:
        raise ValueError(f"{name}: expected {channels} values (one per channel), got {t.numel()}")
    if not torch.compiler.is_compiling():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: must be finite, got {t.tolist()}")
        if name == "std" and bool((t == 0).any()):
            raise ValueError(f"std: contains 0 ({t.tolist()}); normalising would divide by zero")
    return _to_device(t, device)


def _check_params(params: AugmentParams, packed: PackedImages) -> None:
    if not isinstance(params, AugmentParams):
        raise ValueError(f"params: expected fastssl.ops.AugmentParams, got {type(params).__name__}")
    batch = len(packed)
    shapes = {f: (batch,) for f in _FIELDS}
    shapes.update(crop=(batch, 4), jitter_order=(batch, 4))
    for field, shape in shapes.items():
        t = getattr(params, field)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"params.{field}: expected shape {shape} for a batch of {batch} images, got {got}")
    if torch.compiler.is_compiling():
        return  # the value checks below read tensor values (eager calls run them; a traced graph cannot)
    # Check where the parameters live: CPU parameters against CPU sizes cost no device sync.
    host_sizes = packed.sizes_on_host()
    if params.crop.device.type == "cpu" and host_sizes is not None:
        heights, widths = host_sizes
    else:
        params = params.to(packed.device)
        heights, widths = packed.heights, packed.widths
    crop = params.crop.to(torch.int64)
    checks = [
        ("params.crop", (crop[:, 0] >= 0) & (crop[:, 1] >= 0) & (crop[:, 2] >= 1) & (crop[:, 3] >= 1)
         & (crop[:, 0] + crop[:, 2] <= heights) & (crop[:, 1] + crop[:, 3] <= widths),
         "boxes (top, left, height, width) must lie inside their image"),
        ("params.jitter_order", torch.sort(params.jitter_order, dim=1).values.eq(
            torch.arange(4, device=params.jitter_order.device)).all(1), "rows must be permutations of 0..3"),
        ("params.blur_sigma", torch.isfinite(params.blur_sigma) & (params.blur_sigma >= 0), "must be >= 0"),
        ("params.blur_size", (params.blur_sigma == 0) | ((params.blur_size >= 1) & (params.blur_size % 2 == 1)),
         "must be odd and >= 1 where blur_sigma > 0"),
        ("params.brightness", torch.isfinite(params.brightness) & (params.brightness >= 0), "must be >= 0"),
        ("params.contrast", torch.isfinite(params.contrast) & (params.contrast >= 0), "must be >= 0"),
        ("params.saturation", torch.isfinite(params.saturation) & (params.saturation >= 0), "must be >= 0"),
        ("params.hue", params.hue.abs() <= 0.5, "must lie in [-0.5, 0.5]"),
        ("params.solarize_threshold", torch.isfinite(params.solarize_threshold), "must be finite"),
    ]
    # One host sync for all checks; the per-check scan below runs only when something failed.
    if bool(torch.stack([ok.all() for _, ok, _ in checks]).all()):
        return
    for name, ok, rule in checks:
        bad = (~ok).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            detail = ""
            if name == "params.crop":
                detail = (f"; sample {i}: box {crop[i].tolist()} in an image of {int(heights[i])}x"
                          f"{int(widths[i])}")
            else:
                detail = f"; sample {i}: {getattr(params, name.split('.')[1])[i].tolist()}"
            raise ValueError(f"{name}: {rule} ({bad.numel()} of {batch} samples violate it{detail})")
