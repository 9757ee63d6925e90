"""Exact MAC counts: dense golden values, and per-instance counts checked two independent ways."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from manidp.macs import InstanceCounter, MacMeter, dense_macs, kept_counts, remain_rate_for_reduction, uniform_keep_macs
from manidp.models import build_model
from manidp.models.gate import quantile_thresholds_
from manidp.errors import ManidpError

# Reference dense conv+FC MACs (shared/reference/manidp-method.md, section 7).
GOLDEN = {"resnet20": 40_813_184, "resnet32": 69_124_736, "resnet56": 125_747_840,
          "resnet18": 1_814_073_344, "resnet34": 3_663_761_408}


@pytest.mark.parametrize("arch", GOLDEN)
def test_dense_macs_exact(arch):
    assert dense_macs(arch) == GOLDEN[arch]
    assert dense_macs(build_model(arch, gated=True)) == GOLDEN[arch]  # gates are never in the backbone count


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
def test_dense_macs_equal_flop_counter(arch):
    # torch's FlopCounterMode counts 2 FLOPs per MAC for conv and linear layers.
    model = build_model(arch).eval()
    x = torch.randn(1, 3, model.input_size, model.input_size)
    with FlopCounterMode(display=False) as fc:
        model(x)
    assert fc.get_total_flops() == 2 * dense_macs(model)


def random_gated(arch, seed=0, keep=0.5):
    """A gated model whose thresholds prune about ``1 - keep`` of each gate's channels, per instance."""
    torch.manual_seed(seed)
    model = build_model(arch, gated=True, fc2_init="kaiming").eval()   # saliency varies per instance
    for g in model.gates():
        torch.nn.init.normal_(g.fc2.bias, 1.0, 0.5)
    size = model.input_size if arch.startswith("resnet") and model.input_size == 32 else 64
    x = torch.randn(8, 3, size, size)
    quantile_thresholds_(model, x, 1 - keep)   # each gate: the quantile of its own saliencies
    return model, size


def hand_count(model, size, kept):
    """The formula of the issue, written out block by block, for one instance's kept counts."""
    h = size if model.maxpool is None else size // 4
    total = 3 * model.conv1.out_channels * model.conv1.kernel_size[0] ** 2 * (size if model.maxpool is None else size // 2) ** 2
    g = 0
    for block in model.blocks():
        s = block.conv1.stride[0]
        h_out = (h - 1) // s + 1
        m1, m2 = int(kept[g]), int(kept[g + 1])
        total += 9 * h_out * h_out * block.conv1.in_channels * m1      # conv_a
        total += 9 * h_out * h_out * m1 * m2                           # conv_b
        if block.downsample is not None:
            total += h_out * h_out * block.conv1.in_channels * block.conv1.out_channels
        h, g = h_out, g + 2
    return total + model.fc.in_features * model.fc.out_features


@pytest.mark.parametrize("arch", ["resnet20", "resnet56", "resnet18", "resnet34"])
def test_instance_macs_equal_formula(arch):
    model, size = random_gated(arch)
    x = torch.randn(6, 3, size, size)
    with torch.no_grad():
        model(x)
    kept = kept_counts(model)
    assert 0 < kept.float().mean() < max(g.c_out for g in model.gates())
    counts = InstanceCounter(model, size).count(kept)
    for i in range(x.shape[0]):
        assert int(counts[i]) == hand_count(model, size, kept[i])
    # all gates open -> dense cost; all closed -> only the fixed layers
    full = torch.tensor([[g.c_out for g in model.gates()]])
    assert int(InstanceCounter(model, size).count(full)[0]) == dense_macs(model, size)


def sliced_forward(model, x):
    """One instance through a network built from only its kept channels (weights sliced), the way a
    channel-skipping engine would run it. Returns (logits, MACs counted by FlopCounterMode)."""
    assert x.shape[0] == 1
    with torch.no_grad():
        model(x)                       # masks of this instance
        saliency = [g.saliency[0] for g in model.gates()]
        keeps = [g.keep[0].nonzero().flatten() for g in model.gates()]

        def bn(b, y, idx):
            return F.batch_norm(y, b.running_mean[idx], b.running_var[idx], b.weight[idx], b.bias[idx], False, 0.0, b.eps)

        with FlopCounterMode(display=False) as fc:
            h = model.stem(x)
            g = 0
            for block in model.blocks():
                k1, k2 = keeps[g], keeps[g + 1]
                c = block.conv1
                if len(k1):
                    a = F.conv2d(h, c.weight[k1], stride=c.stride, padding=c.padding)
                    a = F.relu(bn(block.bn1, a, k1)) * saliency[g][k1][None, :, None, None]
                else:
                    side = (h.shape[2] - 1) // c.stride[0] + 1
                    a = h.new_zeros(1, 0, side, side)
                c = block.conv2
                out = block.shortcut(h).clone()
                if len(k2):   # a layer with no kept channel runs no convolution at all
                    if len(k1):
                        b = F.conv2d(a, c.weight[k2][:, k1], stride=c.stride, padding=c.padding)
                    else:     # no input channel: the conv output is zero, BN still adds its shift
                        b = a.new_zeros(1, len(k2), *a.shape[2:])
                    b = bn(block.bn2, b, k2) * saliency[g + 1][k2][None, :, None, None]
                    out[:, k2] += b
                h = F.relu(out)
                g += 2
            logits = model.head(h)
    return logits, fc.get_total_flops() // 2


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
def test_instance_macs_equal_sliced_forward(arch):
    model, size = random_gated(arch, seed=1)
    counter = InstanceCounter(model, size)
    for i in range(3):
        x = torch.randn(1, 3, size, size)
        logits, executed = sliced_forward(model, x)
        with torch.no_grad():
            masked = model(x)
        # relative to the logits' scale: random gates make activations large, summation order differs
        assert float((logits - masked).norm() / masked.norm()) < 1e-5
        assert executed == int(counter.count(kept_counts(model))[0])


def test_meter_summary():
    model, size = random_gated("resnet20", seed=2)
    meter = MacMeter(model, size)
    values = []
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(5, 3, size, size))
            meter.update(model, 5)
            values.append(InstanceCounter(model, size).count(kept_counts(model)))
    s = meter.summary(bins=10)
    v = torch.cat(values).double()
    assert s["instances"] == 15
    assert s["macs_mean"] == pytest.approx(float(v.mean()))
    assert s["macs_min"] == float(v.min()) and s["macs_max"] == float(v.max())
    assert sum(s["histogram"]["counts"]) == 15
    assert s["reduction_pct"] == pytest.approx(100 * (1 - float(v.mean()) / 40_813_184))
    assert s["gate_macs"] > 0 and len(s["keep_rates"]) == 18
    assert all(0 <= r <= 1 for r in s["keep_rates"].values())


def test_remain_rate_for_reduction():
    model = build_model("resnet56", gated=True)
    r = remain_rate_for_reduction(model, 62.4)
    dense = dense_macs(model)
    assert 1 - uniform_keep_macs(model, r) / dense >= 0.624
    assert 1 - uniform_keep_macs(model, r + 1e-3) / dense < 0.624 + 0.01
    with pytest.raises(ManidpError, match="target-reduction"):
        remain_rate_for_reduction(model, 99.9)
