"""The cosine remain-rate schedule and the k-th-largest thresholds."""
import math

import pytest
import torch

from manidp.errors import ManidpError
from manidp.models import build_model
from manidp.schedule import kth_largest_threshold, remain_rate, update_thresholds


def test_remain_rate_values():
    E, t = 10, 0.6
    assert remain_rate(E - 1, E, t) == pytest.approx(t)
    assert remain_rate(0, E, t) == pytest.approx(0.2 * math.cos(math.pi / 10) + 0.8)   # 0.990211...
    assert remain_rate(4, E, t) == pytest.approx(0.8)                                   # cos(pi/2) = 0
    rates = [remain_rate(e, E, t) for e in range(E)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_remain_rate_out_of_range(bad):
    with pytest.raises(ManidpError, match=r"--remain-rate .* outside \(0, 1\]"):
        remain_rate(0, 10, bad)


def test_kth_largest():
    s = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert float(kth_largest_threshold(s, 0.5)) == pytest.approx(0.5)     # k = 2
    assert float(kth_largest_threshold(s, 0.6)) == pytest.approx(0.3)  # k = ceil(2.4) = 3
    assert float(kth_largest_threshold(s, 1.0)) == pytest.approx(0.1)
    assert float(kth_largest_threshold(s, 0.01)) == pytest.approx(0.9)    # at least one channel stays


def test_update_thresholds_from_epoch_means():
    model = build_model("resnet20", gated=True)
    gates = model.gates()
    for g in gates:   # channel means 0, 2, 4, ... over 2 instances
        g.saliency_sum.copy_(torch.arange(g.c_out, dtype=torch.float64) * 4)
        g.saliency_count.fill_(2)
    rate = update_thresholds(model, epoch=9, epochs=10, target=0.5)
    assert rate == pytest.approx(0.5)
    for g in gates:   # k = C/2 -> the (C/2)-th largest of 0, 2, ..., 2(C-1) is C
        assert float(g.threshold) == g.c_out
    assert all(int(g.saliency_count) == 0 and float(g.saliency_sum.sum()) == 0 for g in gates)


def test_training_forward_accumulates_saliency():
    torch.manual_seed(0)
    model = build_model("resnet20", gated=True).train()
    x = torch.randn(4, 3, 32, 32)
    model(x)
    model(x)
    g = model.layer2[0].gate2
    assert int(g.saliency_count) == 8
    torch.testing.assert_close(g.mean_saliency().float(), g.saliency.detach().mean(0), rtol=1e-4, atol=1e-5)
    model.eval()
    model(x)
    assert int(g.saliency_count) == 8                        # eval passes do not count
