"""Model structure, gate placement and initialisation, and loading dense checkpoints."""
import pytest
import torch
import torchvision

from manidp.errors import ManidpError
from manidp.losses import LossOptions, manidp_loss
from manidp.models import build_model, load_dense_state_dict

GATES = {"resnet20": 18, "resnet32": 30, "resnet56": 54, "resnet110": 108, "resnet18": 16, "resnet34": 32}


@pytest.mark.parametrize("arch", GATES)
def test_shapes_and_gate_count(arch):
    model = build_model(arch, gated=True, num_classes=7)
    size = 32 if model.input_size == 32 else 64
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert len(model.gates()) == GATES[arch] == len(model.gate_names())


def test_gate_as_in_reference():
    model = build_model("resnet18", gated=True)
    g64, g128 = model.layer1[0].gate1, model.layer2[1].gate2
    assert g64.hidden == 64 and g128.hidden == 64          # r = 1 below 80 channels, r = 2 above
    assert g64.fc1.bias is None and g64.fc2.bias is not None
    assert torch.all(g64.fc2.bias == 1.0)                   # every gate starts open
    assert torch.all(g64.fc2.weight == 0)                   # ours: saliency starts at exactly 1.0
    official = build_model("resnet18", gated=True, fc2_init="kaiming").layer1[0].gate1
    assert float(official.fc2.weight.detach().std()) == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    with pytest.raises(ManidpError, match="--gate-init 'xavier'"):
        build_model("resnet20", gated=True, fc2_init="xavier")
    assert float(g64.threshold) == -10000.0
    # gate 2 reads the conv_a output: its input width is the block's width
    assert model.layer2[0].gate1.c_in == 64 and model.layer2[0].gate2.c_in == 128


def test_saliency_clamped_and_kept_channels_scaled():
    model = build_model("resnet20", gated=True).eval()
    gate = model.layer1[0].gate1
    with torch.no_grad():
        gate.fc2.bias.fill_(5000.0)
        gate.fc2.weight.zero_()
        m = gate(torch.randn(3, 16, 8, 8))
    assert torch.all(m == 1000.0)                           # clamp at 1000
    with torch.no_grad():
        gate.fc2.bias.copy_(torch.linspace(0.1, 1.6, 16))
        gate.threshold.fill_(0.8)
        m = gate(torch.randn(3, 16, 8, 8))
    expected = torch.where(gate.fc2.bias >= 0.8, gate.fc2.bias, torch.zeros(16))
    torch.testing.assert_close(m, expected.expand(3, 16))


def test_fresh_gated_model_computes_its_baseline():
    # Fresh gates (FC2 weights zero, bias 1) give saliency 1 everywhere and prune nothing, so the
    # gated network starts as exactly the dense network it was loaded from.
    torch.manual_seed(0)
    plain = build_model("resnet20").eval()
    gated = build_model("resnet20", gated=True).eval()
    load_dense_state_dict(gated, plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), plain(x))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_torchvision_state_dict_loads(arch):
    tv = getattr(torchvision.models, arch)(weights=None).eval()
    for m in tv.modules():  # non-trivial BN statistics, so a mis-mapped key would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    plain = build_model(arch).eval()
    load_dense_state_dict(plain, tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), tv(x))
    gated = build_model(arch, gated=True)
    load_dense_state_dict(gated, tv.state_dict())           # gates stay fresh
    assert torch.equal(gated.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)


def test_mismatched_checkpoint_names_the_keys():
    with pytest.raises(ManidpError, match=r"missing keys layer1\.2\."):
        load_dense_state_dict(build_model("resnet34"), build_model("resnet18").state_dict())
    with pytest.raises(ManidpError, match="unexpected keys"):
        load_dense_state_dict(build_model("resnet20"), build_model("resnet32").state_dict())
    with pytest.raises(ManidpError, match="shape mismatch in fc.weight"):
        load_dense_state_dict(build_model("resnet20", num_classes=100), build_model("resnet20").state_dict())


def test_unknown_architecture():
    with pytest.raises(ManidpError, match="unknown architecture 'resnet99'.*--arch"):
        build_model("resnet99")


@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("init", ["zero", "kaiming"])
def test_every_parameter_gets_a_gradient(detach, init):
    torch.manual_seed(0)
    model = build_model("resnet20", gated=True, fc2_init=init).train()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opts = LossOptions(lambda_sparse=0.1, lambda_sim=0.1, detach_weight=detach)
    if init == "zero":   # FC1 sees gradient once FC2 is non-zero, i.e. from the second step on
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        manidp_loss(model, model(x), y, reference_loss=10.0, opts=opts)[0].backward()
        opt.step()
        opt.zero_grad()
    model(x)
    for g in model.gates():  # prune about half the channels so masks are real
        g.threshold.fill_(float(g.saliency.detach().median()))
    logits = model(x)
    loss, parts = manidp_loss(model, logits, y, reference_loss=10.0, opts=opts)
    assert float(parts["weight"].sum()) > 0                 # some instances are easy enough to be weighted
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_mask_and_pool_matches_autograd(channels_last):
    """The fused ops behind the gated block have the gradients of their unfused definitions."""
    from manidp.models.gate import apply_mask, global_pool, mask_and_pool
    torch.manual_seed(0)
    y = torch.randn(3, 4, 5, 6, dtype=torch.double)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    y.requires_grad_(True)
    m = torch.rand(3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(mask_and_pool, (y, m))
    assert torch.autograd.gradcheck(lambda a, b: mask_and_pool(a, b)[1] * 3, (y, m))   # masked output unused
    assert torch.autograd.gradcheck(global_pool, (y,))
    out, pooled = mask_and_pool(y, m)
    ref_out, ref_pooled = apply_mask(y, m), y.mean((2, 3))
    w = torch.randn_like(ref_out)
    g = torch.autograd.grad((out * w).sum() + pooled.pow(2).sum(), (y, m))
    ref_g = torch.autograd.grad((ref_out * w).sum() + ref_pooled.pow(2).sum(), (y, m))
    assert torch.equal(out, ref_out) and torch.allclose(pooled, ref_pooled)
    assert all(torch.allclose(a, b) for a, b in zip(g, ref_g))


def test_gate2_reads_the_masked_conv_a_output():
    """Gate 2 gets feature1 * m1, which must equal pooling the masked conv_a output itself."""
    torch.manual_seed(0)
    model = build_model("resnet20", gated=True, fc2_init="kaiming").eval()
    block = model.blocks()[0]
    seen = {}
    block.gate2.register_forward_hook(lambda g, inp, out: seen.update(pooled=inp[0]))
    x = torch.randn(2, 16, 32, 32)
    for g in (block.gate1, block.gate2):
        g.threshold.fill_(float(1.0))
    with torch.no_grad():
        block(x)
        m1 = block.gate1.saliency * block.gate1.keep
        masked = torch.relu(block.bn1(block.conv1(x))) * m1[:, :, None, None]
    assert torch.allclose(seen["pooled"], masked.mean((2, 3)), atol=1e-6)
