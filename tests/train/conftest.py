import os
from pathlib import Path

import numpy as np
import pytest


def _cifar_npz() -> Path:
    root = Path(os.environ.get("FASTSSL_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
    return root / "cifar10" / "cifar10_all_jpeg.npz"


@pytest.fixture(scope="session")
def cifar_slice(tmp_path_factory) -> Path:
    """512 real CIFAR-10 training images, decoded from the JPEG file into a small .npz (x, y): the first 51 or 52
    of each class, interleaved (the shared file is sorted by class, so its first 512 images are all airplanes and
    a label-based check on them would prove nothing)."""
    import io

    from PIL import Image

    source = _cifar_npz()
    if not source.exists():
        pytest.skip(f"{source} not found (set FASTSSL_DATA)")
    with np.load(source) as f:
        jpeg, offsets, labels, is_train = f["jpeg_bytes"], f["offsets"], f["labels"], f["is_train"]
    per_class = [np.flatnonzero(is_train & (labels == c))[:52] for c in range(10)]
    index = np.stack(per_class, axis=1).reshape(-1)[:512]  # class 0, 1, ..., 9, 0, 1, ...
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                       for i in index])
    path = tmp_path_factory.mktemp("data") / "cifar512.npz"
    np.savez(path, x=images, y=labels[index].astype(np.int64))
    return path
