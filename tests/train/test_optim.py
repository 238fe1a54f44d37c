"""LARS against its closed form: the first step (no momentum history yet) of one weight tensor."""

import pytest
import torch

from fastssl.train.optim import LARS, build_optimizer


def _first_step(lr: float, eta: float, clip: bool, weight_decay: float = 0.0):
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(17, 5, generator=generator, dtype=torch.float64)
    g = torch.randn(17, 5, generator=generator, dtype=torch.float64) * 0.3
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    optimizer = LARS([dict(params=[p], weight_decay=weight_decay, lars=True)], lr=lr, eta=eta, clip=clip)
    optimizer.step()
    update = g + weight_decay * w
    trust = eta * w.norm() / update.norm()
    return w, update, trust, p.detach()


def test_lars_scales_the_lr_by_the_trust_ratio():
    w, update, trust, stepped = _first_step(lr=0.7, eta=0.001, clip=False, weight_decay=1e-4)
    torch.testing.assert_close(stepped, w - 0.7 * trust * update, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lr", [5.0, 1e-4])
def test_larc_clipping_takes_the_smaller_of_trust_ratio_and_lr(lr):
    w, update, trust, stepped = _first_step(lr=lr, eta=0.02, clip=True)
    local_lr = min(float(trust), lr)
    # the two cases differ: a large lr is capped at the trust ratio, a small one is plain SGD's step
    assert (local_lr < lr) == (lr == 5.0)
    torch.testing.assert_close(stepped, w - local_lr * update, rtol=1e-12, atol=1e-12)
    # with clipping every tensor moves by at most eta * ||w||
    assert float((stepped - w).norm()) <= 0.02 * float(w.norm()) * (1 + 1e-12)


def test_lars_groups_without_lars_take_plain_sgd_steps():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    p.grad = torch.full((3,), 2.0, dtype=torch.float64)
    LARS([dict(params=[p], weight_decay=0.0, lars=False)], lr=0.1, eta=0.02, clip=True).step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.8, dtype=torch.float64))


def test_bad_trust_coefficient_is_named():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="lars_eta"):
        build_optimizer("lars", [dict(params=[p], weight_decay=0.0, lars=True)], 0.1, 0.9, lars_eta=0.0)


def test_fixed_lr_modules_keep_the_base_lr_while_the_rest_follows_the_schedule():
    from torch import nn

    from fastssl.train.optim import cosine_schedule, parameter_groups, set_hyperparameters

    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    head = model[2]
    plain = parameter_groups([model], weight_decay=1e-4)
    assert len(plain) == 2 and not any(g.get("fixed_lr") for g in plain)
    groups = parameter_groups([model], weight_decay=1e-4, fixed_lr=[head])
    fixed = [g for g in groups if g.get("fixed_lr")]
    assert {id(p) for g in fixed for p in g["params"]} == {id(head.weight), id(head.bias)}
    # every parameter in exactly one group; decay and LARS only for the weight matrices
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    for g in groups:
        assert g["decay"] == g["lars"] == all(p.ndim > 1 for p in g["params"])
    optimizer = build_optimizer("sgd", groups, lr=0.5, momentum=0.9)
    for step in (0, 7):  # in the warm-up, then in the cosine decay
        lr = cosine_schedule(step, 10, 0.5, 0.0, warmup=5)
        assert lr < 0.5
        set_hyperparameters(optimizer, lr, 3e-4, base_lr=0.5)
        for g in optimizer.param_groups:
            assert g["lr"] == (0.5 if g.get("fixed_lr") else lr)
            assert g["weight_decay"] == (3e-4 if g["decay"] else 0.0)
    set_hyperparameters(optimizer, 0.01, 3e-4)  # without base_lr the fixed groups keep the lr they have
    assert [g["lr"] for g in optimizer.param_groups] == [0.5 if g.get("fixed_lr") else 0.01
                                                          for g in optimizer.param_groups]


@pytest.mark.parametrize("optimizer_name, clip", [("sgd", False), ("lars", False), ("lars", True)])
def test_lr_scaled_modules_take_scale_times_the_step(optimizer_name, clip):
    """A module given lr_scale s (BYOL's predictor multiplier) moves by s times the step it would take at scale 1,
    for SGD, LARS and LARC (where the clipping bound is the unscaled lr, so the scale multiplies the clipped
    step), while the other parameters take the same step as without the scale."""
    from torch import nn

    from fastssl.train.optim import parameter_groups, set_hyperparameters

    def stepped(scale):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4)).double()
        before = [p.detach().clone() for p in model.parameters()]
        scaled = [(model[2], scale)] if scale != 1.0 else []
        groups = parameter_groups([model], weight_decay=1e-3, lr_scale=scaled)
        assert len(groups) == (2 if scale == 1.0 else 4)
        if optimizer_name == "lars":
            optimizer = LARS(groups, lr=0.9, eta=0.02, clip=clip)
        else:
            optimizer = build_optimizer(optimizer_name, groups, lr=0.9, momentum=0.9)
        set_hyperparameters(optimizer, 0.9, 1e-3)
        assert [g["lr"] for g in optimizer.param_groups] == [0.9 * g.get("lr_scale", 1.0)
                                                              for g in optimizer.param_groups]
        x = torch.randn(13, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        model(x).square().mean().backward()
        optimizer.step()
        return [p.detach() - b for p, b in zip(model.parameters(), before)]

    base, scaled = stepped(1.0), stepped(3.0)
    for i, (d1, d3) in enumerate(zip(base, scaled)):
        factor = 3.0 if i >= 2 else 1.0  # model[2]'s weight and bias are parameters 2 and 3
        assert float(d1.norm()) > 0
        torch.testing.assert_close(d3, factor * d1, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="lr_scale"):
        parameter_groups([nn.Linear(2, 2)], 0.0, lr_scale=[(nn.Linear(2, 2), 0.0)])
