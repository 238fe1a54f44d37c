"""RotNet on real CIFAR-10 and MNIST slices: it trains and resumes exactly under the Trainer, every image is turned
by exactly the rotation its label names (checked against numpy), the loss is the cross-entropy (float64), and
every weight learns."""

import numpy as np
import pytest
import torch

from fastssl.data import view_pipeline
from fastssl.methods import METHODS
from tests.methods.trainer_runs import (
    assert_every_parameter_learns,
    assert_loss_decreases,
    assert_resume_is_exact,
    straight_run,
)

METHOD = "rotation"
STEPS = 12
# The default, one step-seeded random rotation per image, at batch 64 (16 images a step give too noisy a loss to
# see it fall in a few steps); AdamW at 5e-3 x 64 / 256 = 1.25e-3.
RUN = dict(lr=5e-3, batch_size=64)


@pytest.fixture(scope="module")
def straight(cifar_small, tmp_path_factory):
    return straight_run(cifar_small, tmp_path_factory.mktemp(METHOD) / "straight", METHOD, STEPS, **RUN)


def build(channels=3, size=(32, 32), **method_args):
    torch.manual_seed(0)
    return METHODS[METHOD].build("resnet18", {"width": 0.125}, method_args, channels, size)


def real_view(path, count: int = 8) -> torch.Tensor:
    with np.load(path) as f:
        images = torch.from_numpy(f["x"][:count])
    pipe = view_pipeline(METHODS[METHOD].small_preset, size=tuple(images.shape[1:3]))
    (view,) = pipe(images, generator=torch.Generator().manual_seed(0))
    return view


def test_loss_is_finite_and_decreases(straight):
    assert_loss_decreases(straight)
    assert "views mae (32, 32)" in (straight / "printed.txt").read_text()
    assert "rotation_accuracy" in (straight / "metrics.csv").read_text().splitlines()[0]


def test_resume_restores_the_whole_state(cifar_small, straight, tmp_path):
    assert_resume_is_exact(cifar_small, straight, tmp_path / "resumed", METHOD, STEPS, **RUN)


@pytest.mark.parametrize("data", ["cifar_small", "mnist_small"])
@pytest.mark.parametrize("rotations", ["all", "one"])
def test_view_rotated_images_and_label_shapes(data, rotations, request):
    view = real_view(request.getfixturevalue(data))
    batch, channels, height, width = view.shape
    method = build(channels, (height, width), rotations=rotations)
    logits, labels = method([view])
    count = 4 * batch if rotations == "all" else batch
    assert logits.shape == (count, 4) and labels.shape == (count,) and labels.dtype == torch.int64


def _assert_rotated_as_labelled(images, labels, view):
    """images[i] is view[source(i)] turned counter-clockwise by labels[i] quarter turns (numpy's rot90)."""
    batch = view.shape[0]
    for i in range(images.shape[0]):
        source = view[i % batch].numpy()
        expected = np.rot90(source, k=int(labels[i]), axes=(1, 2))
        np.testing.assert_array_equal(images[i].numpy(), expected)


def test_all_four_rotations_of_every_image():
    method = build(size=(6, 6), rotations="all")
    view = torch.randn(3, 3, 6, 6)
    images, labels = method.rotate(view, step=0)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    _assert_rotated_as_labelled(images, labels, view)


def test_one_rotation_per_image_drawn_from_the_step():
    method = build(size=(6, 6), rotations="one")
    view = torch.randn(64, 3, 6, 6)
    images, labels = method.rotate(view, step=4)
    _assert_rotated_as_labelled(images, labels, view)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert torch.equal(labels, method.rotate(view, step=4)[1])
    assert not torch.equal(labels, method.rotate(view, step=5)[1])
    restored = build(size=(6, 6), rotations="one")
    restored.set_extra_state({"rotation_seed": method.rotation_seed + 1})
    assert not torch.equal(labels, restored.rotate(view, step=4)[1])
    restored.load_state_dict(method.state_dict())  # the seed travels in the checkpoint (extra state)
    assert torch.equal(labels, restored.rotate(view, step=4)[1])


def test_non_square_views_are_centre_cropped():
    method = build(size=(6, 10), rotations="all")
    view = torch.randn(2, 3, 6, 10)
    images, labels = method.rotate(view, step=0)
    assert images.shape == (8, 3, 6, 6)
    _assert_rotated_as_labelled(images, labels, view[..., 2:8])


def test_loss_is_the_cross_entropy_in_float64():
    method = build()
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(13, 4, generator=g) * 3, torch.randint(4, (13,), generator=g)
    z = logits.double().numpy()
    log_softmax = z - z.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(13), labels.numpy()].mean()
    assert abs(method.loss((logits, labels)).item() - expected) < 1e-6 * expected
    assert method.logs()["rotation_accuracy"] == (logits.argmax(1) == labels).float().mean().item()


def test_gradients_reach_backbone_and_classifier(cifar_small):
    method = build()
    method.loss(method([real_view(cifar_small)])).backward()
    assert_every_parameter_learns(method)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="rotations"):
        build(rotations="two")
