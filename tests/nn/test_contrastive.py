"""fastssl.nn drop-in losses: the module equals the op, MoCo's queue is a correct FIFO saved in state_dict."""

import pytest
import torch

from fastssl.nn import ClipLoss, MoCoLoss, NTXentLoss
from fastssl.ops import clip_loss, info_nce_reference, nt_xent_reference


def test_ntxent_module_matches_reference():
    out0, out1 = torch.randn(19, 32), torch.randn(19, 32)
    loss = NTXentLoss(temperature=0.2)(out0, out1)
    assert torch.allclose(loss, nt_xent_reference(out0, out1, 0.2), atol=1e-5)


def test_clip_module_matches_op_with_open_clip_call():
    img, txt = torch.randn(11, 16), torch.randn(11, 16)
    scale = torch.tensor(14.0, requires_grad=True)
    loss = ClipLoss()(img, txt, scale)
    assert torch.allclose(loss, clip_loss(img, txt, scale, backend="reference"), atol=1e-5)
    loss.backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)


def test_moco_queue_is_fifo_with_wraparound_and_in_state_dict():
    torch.manual_seed(0)
    moco = MoCoLoss(temperature=0.2, queue_size=10, dim=4)
    queue_before = moco.queue.clone()
    q, k = torch.randn(6, 4), torch.randn(6, 4)
    loss = moco(q, k)
    expected = info_nce_reference(q, torch.cat([k, queue_before]), 0.2)
    assert torch.allclose(loss, expected, atol=1e-5)
    k_unit = torch.nn.functional.normalize(k, dim=1)
    assert torch.allclose(moco.queue[:6], k_unit, atol=1e-6)
    assert torch.equal(moco.queue[6:], queue_before[6:])
    assert int(moco.queue_ptr) == 6
    k2 = torch.randn(6, 4)
    moco(torch.randn(6, 4), k2)  # wraps: 4 rows at the end, 2 at the start
    k2_unit = torch.nn.functional.normalize(k2, dim=1)
    assert torch.allclose(moco.queue[6:], k2_unit[:4], atol=1e-6)
    assert torch.allclose(moco.queue[:2], k2_unit[4:], atol=1e-6)
    assert int(moco.queue_ptr) == 2

    state = moco.state_dict()
    assert set(state) == {"queue", "queue_ptr"}
    restored = MoCoLoss(temperature=0.2, queue_size=10, dim=4)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, moco.queue) and int(restored.queue_ptr) == 2


def test_moco_batch_larger_than_queue_keeps_newest():
    moco = MoCoLoss(queue_size=4, dim=3)
    k = torch.randn(7, 3)
    moco(torch.randn(7, 3), k)
    assert torch.allclose(moco.queue, torch.nn.functional.normalize(k, dim=1)[-4:], atol=1e-6)


def test_moco_gradient_flows_to_query_only_through_loss():
    moco = MoCoLoss(queue_size=8, dim=5)
    q = torch.randn(3, 5, requires_grad=True)
    moco(q, torch.randn(3, 5)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"queue_size": 0}, "queue_size"),
    ({"dim": -1}, "dim"),
    ({"temperature": 0.0}, "temperature"),
])
def test_moco_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoCoLoss(**kwargs)


def test_moco_wrong_dim_names_queue():
    with pytest.raises(ValueError, match="dim=128"):
        MoCoLoss()(torch.randn(2, 64), torch.randn(2, 64))
