import io
import os
from pathlib import Path

import numpy as np
import pytest


def _shared_data() -> Path:
    return Path(os.environ.get("FASTSSL_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """The first 256 CIFAR-10 training images, decoded from the real JPEG file into a small .npz (x, y)."""
    from PIL import Image

    source = _shared_data() / "cifar10" / "cifar10_all_jpeg.npz"
    if not source.exists():
        pytest.skip(f"{source} not found (set FASTSSL_DATA)")
    with np.load(source) as f:
        jpeg, offsets, labels, is_train = f["jpeg_bytes"], f["offsets"], f["labels"], f["is_train"]
    index = np.flatnonzero(is_train)[:256]
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                       for i in index])
    path = tmp_path_factory.mktemp("data") / "cifar256.npz"
    np.savez(path, x=images, y=labels[index].astype(np.int64))
    return path


@pytest.fixture(scope="session")
def mnist_small(tmp_path_factory) -> Path:
    """The first 128 real MNIST test digits, 28 x 28 x 1 uint8, as a small .npz (x, y)."""
    source = _shared_data() / "mnist" / "mnist_test.npz"
    if not source.exists():
        pytest.skip(f"{source} not found (set FASTSSL_DATA)")
    with np.load(source) as f:
        images, labels = f["x"][:128], f["y"][:128].astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "mnist128.npz"
    np.savez(path, x=images[..., None], y=labels)
    return path
