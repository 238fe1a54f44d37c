"""Datasets: CIFAR-10 (packed-JPEG npz), MNIST and other array npz files, image folders, text corpora.

Every image dataset hands out uint8 pixels, HWC, exactly as decoded: conversion to the model's dtype,
normalisation and augmentation happen later in one fused pass (:mod:`fastssl.ops.augment`). A batch is one
fancy-index of an array (fixed-size datasets) or one concatenation into a PackedImages buffer (image folders
of mixed sizes), never a Python loop over per-sample tensors and a collate.

Where data comes from (:func:`resolve_data`): a name (``cifar10``, ``mnist``, ``shakespeare``,
``shakespeare_complete``) under :func:`data_root`, or a path to an ``.npz`` file, an image folder, or a
``.txt`` / ``.txt.gz`` file. Nothing is ever downloaded.

Splits (``split="train" | "test" | "all"``):

- a packed-JPEG npz with an ``is_train`` mask (CIFAR-10) uses it: 50,000 train and 10,000 test images;
- an image folder with ``train/`` and ``val/`` (or ``test/``) sub-folders uses them;
- everything else, MNIST included (the shared file holds only MNIST's 10,000 test digits), gets a fixed
  seeded split: a permutation from ``numpy.random.default_rng(0)``, the first 20% of it is "test", the rest
  "train", each kept in file order. The same file always gives the same split, on every machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from fastssl.ops.augment import PackedImages

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]
Indices = Union[Tensor, np.ndarray, Sequence[int]]

# Names accepted by resolve_data, relative to data_root(); see ../shared/data/README.md for provenance.
NAMED_DATA = {
    "cifar10": "cifar10/cifar10_all_jpeg.npz",
    "mnist": "mnist/mnist_test.npz",
    "shakespeare": "text/tinyshakespeare_input.txt",
    "shakespeare_complete": "text/shakespeare_complete_modern.txt.gz",
}
SPLITS = ("train", "test", "all")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEXT_SUFFIXES = (".txt", ".txt.gz")
# The fixed split of files that do not carry one (MNIST's shared file, plain npz files, flat image folders).
SPLIT_SEED = 0
TEST_FRACTION = 0.2

_ACCEPTED_FORMS = (
    f"a name ({', '.join(NAMED_DATA)}) under the data root ($FASTSSL_DATA, else ../shared/data from the "
    "current directory or from the repository root), or a path to an .npz file (x uint8 (N, H, W[, C]) with "
    "optional y, or packed JPEGs: jpeg_bytes + offsets), an image folder (class sub-folders of JPEG/PNG "
    "files), or a .txt / .txt.gz text file"
)


# ----------------------------------------------------------------------------------------------------
# Locating data and caches
# ----------------------------------------------------------------------------------------------------


def _data_root_candidates() -> list[Path]:
    candidates = []
    if os.environ.get("FASTSSL_DATA"):
        candidates.append(Path(os.environ["FASTSSL_DATA"]).expanduser())
    candidates.append(Path.cwd() / ".." / "shared" / "data")
    repo_root = Path(__file__).resolve().parent.parent.parent  # .../<repo>/fastssl/data/datasets.py
    candidates.append(repo_root.parent / "shared" / "data")
    return candidates


def data_root() -> Path:
    """The shared data folder: ``$FASTSSL_DATA``, else ``../shared/data`` from the current directory, else
    ``../shared/data`` from the repository root; the first that exists. Raises ValueError naming all three."""
    candidates = _data_root_candidates()
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise ValueError("no data root found; looked at: " + ", ".join(str(c) for c in candidates)
                     + " (set FASTSSL_DATA to the folder that holds cifar10/, mnist/ and text/)")


def cache_dir() -> Path:
    """Where decoded data sets are cached: ``$FASTSSL_CACHE``, else ``~/.cache/fastssl``."""
    return Path(os.environ.get("FASTSSL_CACHE") or Path.home() / ".cache" / "fastssl").expanduser()


def resolve_data(spec: PathLike) -> Path:
    """The path that ``spec`` names: a data set name (see ``NAMED_DATA``) under :func:`data_root`, or an
    existing ``.npz`` file, image folder, or ``.txt`` / ``.txt.gz`` file. Raises ValueError listing the
    accepted forms and the places it looked."""
    name = os.fspath(spec)
    if name in NAMED_DATA:
        looked = [c / NAMED_DATA[name] for c in _data_root_candidates()]
        for path in looked:
            if path.is_file():
                return path.resolve()
        raise ValueError(f"data set {name!r} not found; looked at: {', '.join(str(p) for p in looked)}. "
                         f"Accepted: {_ACCEPTED_FORMS}")
    path = Path(name).expanduser()
    if not path.exists():
        raise ValueError(f"data {name!r}: no such data set name or path (looked at {path.resolve()}). "
                         f"Accepted: {_ACCEPTED_FORMS}")
    if path.is_file() and path.suffix != ".npz" and not name.endswith(TEXT_SUFFIXES):
        raise ValueError(f"data {name!r}: unsupported file type {path.suffix!r}. Accepted: {_ACCEPTED_FORMS}")
    return path.resolve()


def _split_indices(n: int, split: str) -> np.ndarray:
    """The fixed seeded split of ``n`` items (module docstring): sorted indices of ``split``."""
    _check_split(split)
    if split == "all":
        return np.arange(n)
    permutation = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = int(round(n * TEST_FRACTION))
    chosen = permutation[:n_test] if split == "test" else permutation[n_test:]
    return np.sort(chosen)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


def _apply_limit(indices: np.ndarray, limit: Optional[int]) -> np.ndarray:
    if limit is None:
        return indices
    if limit < 1:
        raise ValueError(f"limit: expected None or >= 1, got {limit}")
    return indices[:limit]


def _as_index_array(indices: Indices, n: int) -> np.ndarray:
    if isinstance(indices, Tensor):
        indices = indices.cpu().numpy()
    index = np.asarray(indices, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"indices: expected values in [0, {n}), got min {index.min()} max {index.max()}")
    return index


# ----------------------------------------------------------------------------------------------------
# Fixed-size image data sets (CIFAR-10, MNIST, any array npz)
# ----------------------------------------------------------------------------------------------------


class ImageDataset:
    """Fixed-size images held as one uint8 array, usually a read-only memory map of a cache file.

    Attributes:
        images: uint8 (N, H, W, C), C = 1 or 3 (numpy; ``np.memmap`` where the source allows it).
        labels: int64 (N,) or None.
        classes: class names (``classes[labels[i]]``) or None.

    ``dataset[i]`` is ``(uint8 (H, W, C) tensor, int label or -1)``; :meth:`batch` is the fast path.
    """

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray] = None,
                 classes: Optional[Sequence[str]] = None, name: str = "images"):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"{name}: expected uint8 (N, H, W, C) with C in (1, 3), got {images.dtype} "
                             f"{images.shape}")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (images.shape[0],):
                raise ValueError(f"{name}: labels of shape {labels.shape}, expected ({images.shape[0]},)")
        self.images = images
        self.labels = labels
        self.classes = list(classes) if classes is not None else None
        self.name = name

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = torch.from_numpy(np.array(self.images[index]))
        return image, int(self.labels[index]) if self.labels is not None else -1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def num_classes(self) -> Optional[int]:
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else None

    def batch(self, indices: Indices, out: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Images ``indices`` as uint8 (B, H, W, C) and their int64 (B,) labels (None without labels).

        One gather from the (memory-mapped) array. Pass ``out``, e.g. a pinned uint8 (B, H, W, C) tensor, to
        gather straight into it without an intermediate copy.
        """
        index = _as_index_array(indices, len(self))
        if out is None:
            images = torch.from_numpy(self.images[index])
        else:
            expected = (index.size, *self.images.shape[1:])
            if out.dtype != torch.uint8 or tuple(out.shape) != expected or out.device.type != "cpu" \
                    or not out.is_contiguous():
                raise ValueError(f"out: expected a contiguous CPU uint8 tensor of shape {expected}, got "
                                 f"{out.dtype} {tuple(out.shape)} on {out.device}")
            # mode="clip" (indices are checked above) lets numpy write into `out` without buffering.
            np.take(self.images, index, axis=0, out=out.numpy(), mode="clip")
            images = out
        labels = torch.from_numpy(self.labels[index]) if self.labels is not None else None
        return images, labels

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, {len(self)} images of {self.image_shape}, "
                f"{self.num_classes} classes)")


def _npz_members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]


def _npz_member(path: Path, key: str) -> np.ndarray:
    """Member ``key`` of an npz: memory-mapped if stored uncompressed (``np.savez``), read otherwise."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(key + ".npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                # The member's data starts after its local header, whose name/extra lengths may differ from
                # the central directory's.
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
                f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 \
                    else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                if not dtype.hasobject:
                    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=f.tell(),
                                     order="F" if fortran else "C")
        with archive.open(info) as member:
            return np.lib.format.read_array(io.BufferedReader(member), allow_pickle=False)


def _load_array_npz(path: Path, split: str, limit: Optional[int]) -> ImageDataset:
    """An npz with ``x`` uint8 (N, H, W) or (N, H, W, C), optional ``y`` labels and ``classes`` names."""
    members = _npz_members(path)
    images = _npz_member(path, "x")
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray(_npz_member(path, "y"), dtype=np.int64) if "y" in members else None
    classes = [str(c) for c in _npz_member(path, "classes")] if "classes" in members else None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: x must be uint8 (N, H, W) or (N, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    index = _apply_limit(_split_indices(images.shape[0], split), limit)
    images = images[_contiguous_or_index(index)]
    if labels is not None:
        labels = labels[index]
    return ImageDataset(images, labels, classes, name=f"{path.name}:{split}")


def _contiguous_or_index(index: np.ndarray) -> Union[slice, np.ndarray]:
    """A slice where ``index`` is a run of consecutive integers, so that a memory map's slice stays a view."""
    if index.size and index[-1] - index[0] + 1 == index.size and bool(np.all(np.diff(index) == 1)):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def decode_jpegs(jpeg_bytes: np.ndarray, offsets: np.ndarray, indices: np.ndarray, out: np.ndarray,
                 progress: bool = False, desc: str = "decoding JPEGs") -> None:
    """Decode JPEG i = ``indices[j]`` (``jpeg_bytes[offsets[i]:offsets[i + 1]]``) into ``out[j]`` (Pillow).

    ``out``: uint8 (len(indices), H, W, C); every image must decode to (H, W) and is converted to RGB (C = 3)
    or gray (C = 1). Raises ValueError naming the first image that does not fit.
    """
    from tqdm import tqdm

    height, width, channels = out.shape[1:]
    mode = "RGB" if channels == 3 else "L"
    for j, i in enumerate(tqdm(indices, desc=desc, unit="img", disable=not progress, mininterval=1.0)):
        with Image.open(io.BytesIO(jpeg_bytes[offsets[i]:offsets[i + 1]])) as image:
            if image.size != (width, height):
                raise ValueError(f"image {i}: decodes to {image.size[0]}x{image.size[1]} (WxH), expected "
                                 f"{width}x{height}")
            out[j] = np.asarray(image.convert(mode) if image.mode != mode else image).reshape(height, width,
                                                                                             channels)


def _cache_name(source: Path, selection: str) -> tuple[str, str]:
    """(prefix shared by every version of this cache, file name). The version is keyed by the source's path,
    size and modification time: a changed source gets a new cache, and the stale one is removed."""
    stat = source.stat()
    path_key = hashlib.sha1(str(source).encode()).hexdigest()[:8]
    version = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    prefix = f"{source.stem}-{path_key}-{selection}-"
    return prefix, f"{prefix}{version}.npy"


def _write_atomically(path: Path, shape: tuple, fill) -> None:
    """Create the uint8 .npy ``path`` of ``shape`` with ``fill(array)``: written to a temporary file in the
    same folder, flushed and fsync'd, then renamed over ``path``, so a reader never sees a half-written cache
    (another process building the same cache at the same time just replaces it with identical bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        array = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.uint8, shape=shape)
        fill(array)
        array.flush()
        del array
        with open(tmp_name, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _load_jpeg_npz(path: Path, split: str, limit: Optional[int], cache: Optional[PathLike],
                   progress: bool) -> ImageDataset:
    """A packed-JPEG npz (CIFAR-10's layout): ``jpeg_bytes`` uint8, ``offsets`` int64 (N + 1,), optional
    ``labels``, ``is_train`` bool (N,), ``classes``. Decoded once into a cached .npy, then memory-mapped."""
    _check_split(split)
    members = _npz_members(path)
    with np.load(path, allow_pickle=False) as archive:
        offsets = archive["offsets"]
        n = offsets.shape[0] - 1
        labels = archive["labels"].astype(np.int64) if "labels" in members else None
        classes = [str(c) for c in archive["classes"]] if "classes" in members else None
        if "is_train" in members:
            is_train = archive["is_train"]
            index = np.arange(n) if split == "all" else np.flatnonzero(is_train == (split == "train"))
        else:
            index = _split_indices(n, split)
        index = _apply_limit(index, limit)

        # The full cache holds every image in file order (one file serves all splits); a limited load caches
        # just its own images, so that a quick test does not decode 60,000 JPEGs.
        selection = "all" if limit is None else f"{split}{index.size}"
        decoded = index if limit is not None else np.arange(n)
        prefix, name = _cache_name(path, selection)
        folder = Path(cache).expanduser() if cache is not None else cache_dir()
        cache_path = folder / name
        images = _open_cache(cache_path, decoded.size)
        if images is None:
            jpeg_bytes = archive["jpeg_bytes"]
            with Image.open(io.BytesIO(jpeg_bytes[offsets[0]:offsets[1]])) as first:
                width, height = first.size
                channels = 1 if first.mode in ("L", "1") else 3

            def fill(out):
                decode_jpegs(jpeg_bytes, offsets, decoded, out, progress, desc=f"decoding {path.name} once")

            _write_atomically(cache_path, (decoded.size, height, width, channels), fill)
            for stale in folder.glob(prefix + "*.npy"):
                if stale.name != name:
                    stale.unlink(missing_ok=True)
            images = _open_cache(cache_path, decoded.size)
    if limit is None:
        images = images[_contiguous_or_index(index)]
    if labels is not None:
        labels = labels[index]
    return ImageDataset(images, labels, classes, name=f"{path.name}:{split}")


def _open_cache(path: Path, n: int) -> Optional[np.ndarray]:
    """The memory-mapped cache, or None (so it is rebuilt) when it is missing or does not hold n images."""
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return images if images.ndim == 4 and images.shape[0] == n and images.dtype == np.uint8 else None


# ----------------------------------------------------------------------------------------------------
# Image folders (mixed sizes)
# ----------------------------------------------------------------------------------------------------


def _decode_file(path: Path, max_side: Optional[int]) -> Union[np.ndarray, str]:
    """uint8 (H, W, 3) RGB pixels of an image file, or the reason it could not be read."""
    try:
        with Image.open(path) as image:
            if max_side is not None:
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
            image = ImageOps.exif_transpose(image)
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            if image.mode != "RGB":
                image = image.convert("RGB")
            if max_side is not None and max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"


class ImageFolderDataset:
    """Images of any sizes from a folder, decoded once into one :class:`PackedImages` buffer (RGB, HWC).

    Layout: ``root/<class>/**/<image>`` (labels are the indices of the sorted class names), or image files
    directly in ``root`` (no labels). Gray, RGBA, palette and CMYK files are converted to RGB; EXIF
    orientation is applied. A file Pillow cannot read is skipped, and one warning gives the count and the
    first few paths.

    Attributes:
        images: PackedImages holding all N images (the whole folder lives in memory: N * H * W * 3 bytes).
        labels: int64 (N,) or None.
        classes: sorted class-folder names or None.
        files: the N paths that were read.
    """

    def __init__(self, files: Sequence[Path], labels: Optional[Sequence[int]] = None,
                 classes: Optional[Sequence[str]] = None, max_side: Optional[int] = None,
                 progress: bool = False, num_threads: Optional[int] = None, name: str = "image folder"):
        from tqdm import tqdm

        if len(files) == 0:
            raise ValueError(f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        workers = num_threads or min(8, os.cpu_count() or 1)
        # Pillow releases the GIL while it decodes, so threads overlap the decoding of large photos.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            decoded = list(tqdm(pool.map(lambda f: _decode_file(f, max_side), files), total=len(files),
                                desc=f"decoding {name}", unit="img", disable=not progress, mininterval=1.0))
        keep = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        failed = [(files[i], decoded[i]) for i, d in enumerate(decoded) if isinstance(d, str)]
        if failed:
            first = "; ".join(f"{path} ({why})" for path, why in failed[:3])
            warnings.warn(f"{name}: skipped {len(failed)} of {len(files)} images that could not be read, "
                          f"first: {first}", stacklevel=3)
        if not keep:
            raise ValueError(f"{name}: none of the {len(files)} image files could be read")
        self.images = PackedImages.from_list([decoded[i] for i in keep])
        self.labels = np.asarray(labels, dtype=np.int64)[keep] if labels is not None else None
        self.classes = list(classes) if classes is not None else None
        self.files = [Path(files[i]) for i in keep]
        self.name = name
        self._ends = self.images.offsets + self.images.heights * self.images.widths * self.images.channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images.image(index), int(self.labels[index]) if self.labels is not None else -1

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.classes) if self.classes is not None else None

    def batch(self, indices: Indices, pin_memory: bool = False) -> tuple[PackedImages, Optional[Tensor]]:
        """Images ``indices`` in one new PackedImages (one concatenation), and int64 (B,) labels."""
        index = torch.from_numpy(_as_index_array(indices, len(self)))
        if index.numel() == 0:
            raise ValueError("indices: empty batch")
        starts, ends = self.images.offsets[index].tolist(), self._ends[index].tolist()
        heights, widths = self.images.heights[index], self.images.widths[index]
        sizes = heights * widths * self.images.channels
        offsets = torch.zeros_like(sizes)
        offsets[1:] = torch.cumsum(sizes, 0)[:-1]
        data = torch.empty(int(sizes.sum()), dtype=torch.uint8, pin_memory=pin_memory)
        torch.cat([self.images.data[s:e] for s, e in zip(starts, ends)], out=data)
        labels = torch.from_numpy(self.labels[index.numpy()]) if self.labels is not None else None
        return PackedImages(data, offsets, heights, widths, self.images.channels), labels

    def __repr__(self) -> str:
        return f"ImageFolderDataset({self.name!r}, {len(self)} images, {self.num_classes} classes)"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _scan_folder(roots: Sequence[Path]) -> tuple[list[Path], Optional[list[int]], Optional[list[str]]]:
    """Files, labels and class names under ``roots`` (class sub-folders, or loose files without labels)."""
    classes = sorted({d.name for root in roots for d in root.iterdir()
                      if d.is_dir() and not d.name.startswith(".")})
    if not classes:
        files = sorted(p for root in roots for p in root.iterdir() if _is_image(p))
        return files, None, None
    files, labels = [], []
    for root in roots:
        for label, cls in enumerate(classes):
            folder = root / cls
            if not folder.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                dirnames.sort()
                for filename in sorted(filenames):
                    path = Path(dirpath) / filename
                    if _is_image(path):
                        files.append(path)
                        labels.append(label)
    return files, labels, classes


def load_image_folder(root: PathLike, split: str = "all", *, limit: Optional[int] = None,
                      max_side: Optional[int] = None, progress: bool = True,
                      num_threads: Optional[int] = None) -> ImageFolderDataset:
    """An :class:`ImageFolderDataset` from ``root``.

    ``root/train`` and ``root/val`` (or ``root/test``) are used as the splits when both exist ("all" joins
    them); otherwise the files get the fixed seeded 80/20 split. ``max_side`` shrinks larger images on load
    (aspect kept), ``limit`` keeps the first files of the split.
    """
    _check_split(split)
    root = Path(root)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        roots = {"train": [root / "train"], "test": [test_dir], "all": [root / "train", test_dir]}[split]
        files, labels, classes = _scan_folder(roots)
        index = np.arange(len(files))
    else:
        files, labels, classes = _scan_folder([root])
        index = _split_indices(len(files), split)
    index = _apply_limit(index, limit)
    return ImageFolderDataset([files[i] for i in index], [labels[i] for i in index] if labels else None,
                              classes, max_side=max_side, progress=progress, num_threads=num_threads,
                              name=f"{root.name}:{split}")


def load_image_dataset(spec: PathLike, split: str = "train", *, limit: Optional[int] = None,
                       cache: Optional[PathLike] = None, progress: bool = True,
                       **folder_options) -> Union[ImageDataset, ImageFolderDataset]:
    """The image data set that ``spec`` names (see :func:`resolve_data`), ``split`` "train", "test" or "all".

    - packed-JPEG npz (``cifar10``): decoded once with Pillow into ``<cache>/<name>-...npy`` (default
      :func:`cache_dir`), memory-mapped afterwards; an :class:`ImageDataset`.
    - array npz (``mnist``, any ``x``/``y`` file): an :class:`ImageDataset`, memory-mapped if stored
      uncompressed.
    - image folder: an :class:`ImageFolderDataset` (``folder_options``: ``max_side``, ``num_threads``).

    ``limit`` keeps only the first ``limit`` images of the split (file order), for quick runs and tests.
    """
    path = resolve_data(spec)
    if path.is_dir():
        return load_image_folder(path, split, limit=limit, progress=progress, **folder_options)
    if folder_options:
        raise ValueError(f"{', '.join(folder_options)}: only image folders take these options")
    if path.suffix != ".npz":
        raise ValueError(f"{spec!r} is a text corpus ({path}); use load_text or load_text_dataset")
    members = _npz_members(path)
    if "jpeg_bytes" in members and "offsets" in members:
        return _load_jpeg_npz(path, split, limit, cache, progress)
    if "x" in members:
        return _load_array_npz(path, split, limit)
    raise ValueError(f"{path}: an image npz needs x (uint8 (N, H, W[, C])) or jpeg_bytes + offsets; it has "
                     f"{', '.join(members)}")


def load_cifar10(split: str = "train", **options) -> ImageDataset:
    """CIFAR-10 from the shared packed-JPEG npz: 50,000 train / 10,000 test 32x32 RGB images, 10 classes."""
    return load_image_dataset("cifar10", split, **options)


def load_mnist(split: str = "train", **options) -> ImageDataset:
    """MNIST's 10,000 test digits, (28, 28, 1); "train" and "test" are the fixed seeded 8,000 / 2,000 split of
    them (the shared data has no MNIST train file)."""
    return load_image_dataset("mnist", split, **options)


# ----------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------


def load_text(spec: PathLike) -> str:
    """The UTF-8 text of ``spec``: ``shakespeare``, ``shakespeare_complete``, or a .txt / .txt.gz path."""
    path = resolve_data(spec)
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    raise ValueError(f"{spec!r}: expected a .txt or .txt.gz file, got {path}")


class CharTokenizer:
    """Character-level tokenizer over the sorted characters of a text.

    Ids ``0 .. len(chars) - 1`` are the characters in sorted (code point) order, as in nanoGPT's
    shakespeare_char; then two reserved ids follow: ``pad_id = len(chars)`` ("[PAD]") and ``mask_id =
    len(chars) + 1`` ("[MASK]", the masked-language-modelling replacement token). ``vocab_size`` counts both.
    """

    SPECIAL_TOKENS = ("[PAD]", "[MASK]")

    def __init__(self, text: str):
        if not text:
            raise ValueError("text: empty, no vocabulary to build")
        self.chars = sorted(set(text))
        self._code_points = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._tokens = np.array(self.chars + list(self.SPECIAL_TOKENS), dtype=object)
        self.pad_id = len(self.chars)
        self.mask_id = len(self.chars) + 1
        self.vocab_size = len(self.chars) + len(self.SPECIAL_TOKENS)

    def encode(self, text: str) -> Tensor:
        """int64 (len(text),) ids; raises ValueError on a character outside the vocabulary."""
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._code_points, code_points)
        unknown = self._code_points[np.minimum(ids, len(self.chars) - 1)] != code_points
        if unknown.any():
            position = int(np.flatnonzero(unknown)[0])
            raise ValueError(f"text: character {text[position]!r} at position {position} is not in the "
                             "vocabulary")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: Union[Tensor, Sequence[int]]) -> str:
        """The text of ``ids``; special ids come out as their names ("[PAD]", "[MASK]")."""
        ids = np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"ids: expected values in [0, {self.vocab_size}), got min {ids.min()} "
                             f"max {ids.max()}")
        return "".join(self._tokens[ids])

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self.chars)} characters + {', '.join(self.SPECIAL_TOKENS)})"


class TextDataset:
    """A tokenised corpus: the first ``1 - val_fraction`` of the tokens for training, the rest for validation.

    Attributes:
        tokenizer: the :class:`CharTokenizer` (built from the whole text unless one is given).
        train_tokens, val_tokens: int64 (T_train,), (T_val,).
    """

    def __init__(self, text: str, tokenizer: Optional[CharTokenizer] = None, val_fraction: float = 0.1):
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected in [0, 1), got {val_fraction}")
        self.tokenizer = tokenizer or CharTokenizer(text)
        tokens = self.tokenizer.encode(text)
        n_train = len(tokens) - int(len(tokens) * val_fraction)
        self.train_tokens = tokens[:n_train]
        self.val_tokens = tokens[n_train:]

    def sample(self, batch_size: int, block_size: int, split: str = "train",
               generator: Optional[torch.Generator] = None) -> Tensor:
        """int64 (batch_size, block_size): windows at uniformly random start positions of ``split``'s tokens.

        For next-token prediction ask for ``block_size + 1``: ``w[:, :-1]`` is the input, ``w[:, 1:]`` the
        target.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        tokens = self.train_tokens if split == "train" else self.val_tokens
        if not 1 <= block_size <= len(tokens):
            raise ValueError(f"block_size: expected in [1, {len(tokens)}] for the {split} tokens, "
                             f"got {block_size}")
        starts = torch.randint(0, len(tokens) - block_size + 1, (batch_size,), generator=generator)
        return tokens.unfold(0, block_size, 1)[starts]

    def __repr__(self) -> str:
        return (f"TextDataset({len(self.train_tokens)} train + {len(self.val_tokens)} val tokens, "
                f"vocab {self.tokenizer.vocab_size})")


def load_text_dataset(spec: PathLike, val_fraction: float = 0.1) -> TextDataset:
    """:class:`TextDataset` of the corpus ``spec`` (see :func:`load_text`)."""
    return TextDataset(load_text(spec), val_fraction=val_fraction)
