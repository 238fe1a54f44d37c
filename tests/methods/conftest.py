from pathlib import Path

import numpy as np
import pytest

from tests.methods.trainer_runs import cifar_npz, shared_data


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """The first 256 CIFAR-10 training images (the shared file is sorted by class: all airplanes; the tests that
    use this slice check losses, shapes, gradients and resume, not labels), as a small .npz (x, y)."""
    return cifar_npz(tmp_path_factory.mktemp("data") / "cifar256.npz", lambda labels: np.arange(256))


@pytest.fixture(scope="session")
def mnist_small(tmp_path_factory) -> Path:
    """The first 128 real MNIST test digits, 28 x 28 x 1 uint8, as a small .npz (x, y)."""
    source = shared_data() / "mnist" / "mnist_test.npz"
    if not source.exists():
        pytest.skip(f"{source} not found (set FASTSSL_DATA)")
    with np.load(source) as f:
        images, labels = f["x"][:128], f["y"][:128].astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "mnist128.npz"
    np.savez(path, x=images[..., None], y=labels)
    return path
