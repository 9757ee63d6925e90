"""Both ManiDP losses against hand-computed small examples."""
from types import SimpleNamespace

import pytest
import torch

from manidp.errors import ManidpError
from manidp.losses import (LossOptions, alignment_loss, complexity_weights, grouped_alignment_loss, manidp_loss,
                           similarity_loss, sparsity_loss)


def test_complexity_weights_by_hand():
    ce = torch.tensor([0.1, 0.5, 2.0, 1.0])
    # C = 0.5 * 2.0 = 1.0 -> w = (C - CE) / C for CE < C, else 0
    torch.testing.assert_close(complexity_weights(ce, 2.0), torch.tensor([0.9, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(complexity_weights(ce, 2.0, gamma=2.0), torch.tensor([0.81, 0.25, 0.0, 0.0]))
    # floor 1e-10 keeps the base positive before the power
    assert float(complexity_weights(torch.tensor([1.0 - 1e-12], dtype=torch.float64), 2.0)[0]) == pytest.approx(1e-10)


def test_complexity_weight_detach_option():
    ce = torch.tensor([0.2, 0.6], requires_grad=True)
    complexity_weights(ce, 2.0, detach=False).sum().backward()
    torch.testing.assert_close(ce.grad, torch.tensor([-1.0, -1.0]))    # d/dCE (C - CE)/C = -1/C
    ce2 = ce.detach().clone().requires_grad_()
    assert not complexity_weights(ce2, 2.0, detach=True).requires_grad


def fake_model(saliencies, features=None):
    gates = [SimpleNamespace(saliency=s, feature=f) for s, f in
             zip(saliencies, features or [None] * len(saliencies))]
    return SimpleNamespace(gates=lambda: gates)


def test_sparsity_loss_by_hand():
    s1 = torch.tensor([[1.0, 3.0], [2.0, 2.0]])            # per-instance channel means 2, 2
    s2 = torch.tensor([[0.0, 0.0, 3.0], [6.0, 0.0, 0.0]])  # 1, 2
    w = torch.tensor([1.0, 0.5])
    # gate 1: mean(1*2, 0.5*2) = 1.5; gate 2: mean(1*1, 0.5*2) = 1.0
    assert float(sparsity_loss(fake_model([s1, s2]), w)) == pytest.approx(2.5)


def test_alignment_loss_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])             # orthogonal: T = I
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0]])             # parallel:   R = all ones
    assert float(alignment_loss(f, s)) == pytest.approx(2 / 4)   # off-diagonal 1, 1 over B^2 = 4
    f3 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    s3 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # T off-diagonals: 1/sqrt2, 0, 1/sqrt2; R: 1, 0, 0 -> 2*((1/sqrt2 - 1)^2 + (1/sqrt2)^2) / 9
    expected = 2 * ((2 ** -0.5 - 1) ** 2 + 0.5) / 9
    assert float(alignment_loss(f3, s3)) == pytest.approx(expected)
    m = fake_model([s, s3], [f, f3])
    assert float(similarity_loss(m)) == pytest.approx(0.5 + expected)


def test_grouped_alignment_equals_the_per_gate_sum_with_gradients():
    """The batched similarity loss (gates grouped by widths) against the per-gate definition."""
    g = torch.Generator().manual_seed(0)
    widths = [(16, 16), (16, 16), (16, 32), (32, 32), (32, 32), (32, 64), (64, 64)]
    pairs = [(torch.randn(6, a, generator=g, dtype=torch.float64, requires_grad=True),
              torch.rand(6, b, generator=g, dtype=torch.float64, requires_grad=True)) for a, b in widths]
    ref = sum(alignment_loss(f, s) for f, s in pairs)
    got = grouped_alignment_loss(pairs)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    leaves = [t for p in pairs for t in p]
    for a, b in zip(torch.autograd.grad(ref, leaves), torch.autograd.grad(got, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_full_objective():
    s = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    model = fake_model([s], [f])
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    opts = LossOptions(lambda_sparse=0.3, lambda_sim=2.0)
    loss, parts = manidp_loss(model, logits, y, reference_loss=4 * float(ce[1]), opts=opts)
    w = complexity_weights(ce, 4 * float(ce[1]))
    sparse = float((w * s.mean(1)).mean())
    expected = float(ce.mean()) + 0.3 * sparse + 2.0 * float(alignment_loss(f, s))
    assert float(loss) == pytest.approx(expected)
    ablated, parts = manidp_loss(model, logits, y, 1.0, LossOptions(complexity_weighting=False))
    assert torch.all(parts["weight"] == 1)


@pytest.mark.parametrize("name", ["lambda_sparse", "lambda_sim", "gamma"])
def test_negative_option_rejected(name):
    with pytest.raises(ManidpError, match=f"--{name.replace('_', '-')}"):
        LossOptions(**{name: -1.0}).validate()
