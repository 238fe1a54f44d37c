"""PNG charts with Pillow alone (no matplotlib): the loss curve at the end of training, a 2-D scatter of
test embeddings coloured by class, plus the PCA projection that feeds it, and image grids (reconstructions).

    save_line_plot("runs/x/loss.png", steps, losses, title="SimCLR loss", xlabel="step", ylabel="loss")
    save_scatter_plot("runs/x/pca.png", pca_2d(test_feats), test_labels, class_names, title="test embeddings")
    save_image_grid("runs/vae/samples.png", samples, columns=8)   # (N, C, H, W) in [0, 1]
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

Tensor = torch.Tensor
ArrayLike = Union[Tensor, np.ndarray, Sequence[float]]

# matplotlib's tab10 then the light half of tab20: 20 distinguishable class colours before they repeat.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
LINE_COLOUR = PALETTE[0]
GRID_COLOUR = (225, 225, 225)
TEXT_COLOUR = (20, 20, 20)
TEXT_SIZE, TITLE_SIZE = 13, 17


def pca_2d(features: Tensor, iterations: int = 8) -> Tensor:
    """Project (N, F) features onto their top two principal components: float32 (N, 2).

    Randomised subspace iteration (Halko et al., 2011) with a fixed seed: O(N * F * 12) per iteration instead
    of the O(N * F^2) of a full SVD. Exact (up to rounding) when F <= 12; otherwise the error shrinks like
    (lambda_13 / lambda_2) ** iterations, plenty for a picture. Each component's sign is fixed (its largest
    loading is positive), so the picture does not flip between runs.
    """
    features = torch.as_tensor(features)
    if features.dim() != 2 or features.shape[0] < 2 or features.shape[1] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2 and F >= 2, got {tuple(features.shape)}")
    x = features.detach().cpu().double()
    x = x - x.mean(dim=0)  # (N, F)
    width = min(x.shape[1], 12)
    basis = torch.randn(x.shape[1], width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis = torch.linalg.qr(basis).Q
    for _ in range(iterations):
        basis = torch.linalg.qr(x.T @ (x @ basis)).Q  # (F, width): converges to the top principal directions
    _, _, vh = torch.linalg.svd(x @ basis, full_matrices=False)  # Rayleigh-Ritz inside the subspace
    components = basis @ vh[:2].T  # (F, 2)
    largest = components.abs().argmax(dim=0)
    components = components * components[largest, torch.arange(2)].sign()
    return (x @ components).float()


def save_line_plot(
    path: Union[str, os.PathLike],
    xs: Optional[ArrayLike],
    ys: ArrayLike,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (800, 500),
) -> None:
    """Write a PNG line chart of ys against xs (None = 0, 1, 2, ...) with ticked axes, a light grid, a title.

    Non-finite ys (a diverged step) are left out; the line breaks there."""
    ys = _as_vector("ys", ys)
    xs = np.arange(len(ys), dtype=np.float64) if xs is None else _as_vector("xs", xs)
    if len(xs) != len(ys):
        raise ValueError(f"xs must have the length of ys ({len(ys)}), got {len(xs)}")
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.any():
        raise ValueError("ys has no finite value to plot")
    chart = _Chart(size, title, xlabel, ylabel, xs[finite], ys[finite], legend_width=0)
    segment: list[tuple[float, float]] = []
    for x, y, ok in zip(xs, ys, finite):
        if ok:
            segment.append(chart.to_pixel(x, y))
        elif segment:
            chart.polyline(segment)
            segment = []
    if segment:
        chart.polyline(segment)
    chart.save(path)


def save_scatter_plot(
    path: Union[str, os.PathLike],
    points: ArrayLike,
    labels: ArrayLike,
    class_names: Optional[Sequence[str]] = None,
    title: str = "",
    size: tuple[int, int] = (900, 600),
    point_radius: int = 2,
) -> None:
    """Write a PNG scatter of points (N, 2) coloured by integer labels (N,), with a legend of class_names
    (None = the label numbers). Points are drawn in a fixed random order so that no class hides another."""
    points = torch.as_tensor(np.asarray(points) if not isinstance(points, Tensor) else points).detach().cpu()
    if points.dim() != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be (N, 2) with N >= 1, got {tuple(points.shape)}")
    points = points.double().numpy()
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if labels.shape != (len(points),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integers of shape ({len(points)},), got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    num_classes = int(labels.max()) + 1
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    if len(class_names) < num_classes:
        raise ValueError(f"class_names must name all {num_classes} classes, got {len(class_names)}")
    if not np.isfinite(points).all():
        raise ValueError("points contains NaN or inf")

    chart = _Chart(size, title, "", "", points[:, 0], points[:, 1], legend_width=160)
    order = np.random.default_rng(0).permutation(len(points))
    r = point_radius
    for i in order:
        px, py = chart.to_pixel(points[i, 0], points[i, 1])
        chart.draw.ellipse((px - r, py - r, px + r, py + r), fill=PALETTE[labels[i] % len(PALETTE)])
    chart.legend([(str(class_names[c]), PALETTE[c % len(PALETTE)]) for c in np.unique(labels)])
    chart.save(path)


def save_image_grid(path: Union[str, os.PathLike], images: Tensor, columns: int = 8, padding: int = 2,
                    scale: int = 1) -> None:
    """Write a PNG of ``images`` (N, C, H, W), C = 1 or 3, values in [0, 1] (clamped), laid out row by row in
    ``columns`` columns on a white background with ``padding`` pixels between images, each enlarged ``scale``
    times (nearest neighbour: small images stay sharp)."""
    from PIL import Image

    images = torch.as_tensor(images).detach()
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be (N, C, H, W) with N >= 1 and C = 1 or 3, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contains NaN or inf")
    if columns < 1 or padding < 0 or scale < 1:
        raise ValueError(f"columns and scale must be >= 1 and padding >= 0, got columns={columns}, "
                         f"padding={padding}, scale={scale}")
    count, channels, height, width = images.shape
    pixels = (images.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3).expand(-1, 3, -1, -1)
    rows, columns = math.ceil(count / columns), min(columns, count)
    cell_h, cell_w = height * scale + padding, width * scale + padding
    canvas = torch.full((3, rows * cell_h + padding, columns * cell_w + padding), 255, dtype=torch.uint8)
    for i in range(count):
        top, left = padding + (i // columns) * cell_h, padding + (i % columns) * cell_w
        canvas[:, top:top + height * scale, left:left + width * scale] = pixels[i]
    Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy()).save(path, format="PNG")


class _Chart:
    """A white canvas with a plot area whose axes, ticks and grid fit the data range."""

    def __init__(self, size, title, xlabel, ylabel, xs: np.ndarray, ys: np.ndarray, legend_width: int):
        from PIL import Image, ImageDraw

        width, height = size
        if width < 200 + legend_width or height < 150:
            raise ValueError(f"size must be at least ({200 + legend_width}, 150), got {size}")
        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font, self.title_font = _font(TEXT_SIZE), _font(TITLE_SIZE)
        self.x_ticks, (self.x_lo, self.x_hi) = _nice_ticks(float(xs.min()), float(xs.max()))
        self.y_ticks, (self.y_lo, self.y_hi) = _nice_ticks(float(ys.min()), float(ys.max()))
        x_labels, y_labels = _tick_labels(self.x_ticks), _tick_labels(self.y_ticks)
        label_width = max(self.draw.textlength(s, font=self.font) for s in y_labels)
        self.left = int(label_width) + (40 if ylabel else 16)
        # Room for half of the last x tick label, which is centred on the right edge.
        overhang = int(self.draw.textlength(x_labels[-1], font=self.font) / 2) + 6
        self.right = width - max(20, overhang) - legend_width
        self.top = 44 if title else 16
        self.bottom = height - (50 if xlabel else 30)

        for tick, text in zip(self.x_ticks, x_labels):
            px, _ = self.to_pixel(tick, self.y_lo)
            self.draw.line((px, self.top, px, self.bottom), fill=GRID_COLOUR)
            self.draw.line((px, self.bottom, px, self.bottom + 5), fill=TEXT_COLOUR)
            self.draw.text((px, self.bottom + 7), text, fill=TEXT_COLOUR, font=self.font, anchor="mt")
        for tick, text in zip(self.y_ticks, y_labels):
            _, py = self.to_pixel(self.x_lo, tick)
            self.draw.line((self.left, py, self.right, py), fill=GRID_COLOUR)
            self.draw.line((self.left - 5, py, self.left, py), fill=TEXT_COLOUR)
            self.draw.text((self.left - 7, py), text, fill=TEXT_COLOUR, font=self.font, anchor="rm")
        self.draw.rectangle((self.left, self.top, self.right, self.bottom), outline=TEXT_COLOUR)
        if title:
            self.draw.text(
                ((self.left + self.right) / 2, 12), title, fill=TEXT_COLOUR, font=self.title_font, anchor="mt"
            )
        if xlabel:
            self.draw.text(
                ((self.left + self.right) / 2, height - 8),
                xlabel,
                fill=TEXT_COLOUR,
                font=self.font,
                anchor="mb",
            )
        if ylabel:
            self._vertical_text(ylabel, 6, (self.top + self.bottom) / 2)

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.x_lo) / (self.x_hi - self.x_lo)
        fy = (y - self.y_lo) / (self.y_hi - self.y_lo)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)

    def polyline(self, pixels: list[tuple[float, float]]) -> None:
        if len(pixels) == 1:
            (px, py), r = pixels[0], 2
            self.draw.ellipse((px - r, py - r, px + r, py + r), fill=LINE_COLOUR)
        else:
            self.draw.line(pixels, fill=LINE_COLOUR, width=2, joint="curve")

    def legend(self, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
        x, y = self.right + 16, self.top
        row = TEXT_SIZE + 8
        shown = entries[: max(1, (self.bottom - self.top) // row)]
        for text, colour in shown:
            self.draw.rectangle((x, y + 3, x + 10, y + 13), fill=colour)
            self.draw.text((x + 16, y + 8), text, fill=TEXT_COLOUR, font=self.font, anchor="lm")
            y += row
        if len(shown) < len(entries):
            self.draw.text(
                (x, y + 8),
                f"+{len(entries) - len(shown)} more",
                fill=TEXT_COLOUR,
                font=self.font,
                anchor="lm",
            )

    def _vertical_text(self, text: str, x: int, centre_y: float) -> None:
        from PIL import Image, ImageDraw

        width = int(self.draw.textlength(text, font=self.font)) + 4
        strip = Image.new("RGB", (width, TEXT_SIZE + 6), "white")
        ImageDraw.Draw(strip).text((2, 2), text, fill=TEXT_COLOUR, font=self.font)
        strip = strip.rotate(90, expand=True)
        self.image.paste(strip, (x, int(centre_y - strip.height / 2)))

    def save(self, path) -> None:
        self.image.save(path, format="PNG")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, target: int = 6) -> tuple[list[float], tuple[float, float]]:
    """About `target` ticks at 1, 2 or 5 times a power of ten, and the axis range: the data range rounded out
    to the ticks on either side."""
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = [i * step for i in range(first, last + 1)]
    return ticks, (ticks[0], ticks[-1])


def _tick_labels(ticks: list[float]) -> list[str]:
    step = ticks[1] - ticks[0]
    largest = max(abs(t) for t in ticks)
    if largest >= 1e5 or step < 1e-4:  # scientific, with the mantissa digits that tell the ticks apart
        digits = max(0, math.floor(math.log10(largest)) - math.floor(math.log10(step) + 1e-9))
        return [f"{t:.{digits}e}" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [f"{t:.{decimals}f}" for t in ticks]


def _as_vector(name: str, values: ArrayLike) -> np.ndarray:
    values = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if values.ndim != 1 or len(values) == 0 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence of numbers, got {values.dtype} {values.shape}"
        )
    return values.astype(np.float64)
