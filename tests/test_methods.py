"""The pruning methods of manidp/methods/: FBS (dynamic), FPGM (static, physically pruned), the
registry, and short end-to-end runs of each method on real CIFAR-10 rows."""
import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from manidp import checkpoint as ckpt_io
from manidp import cli
from manidp.errors import ManidpError
from manidp.losses import LossOptions
from manidp.macs import (InstanceCounter, dense_macs, inner_pruned_macs, kept_counts, layer_costs,
                         remain_rate_for_reduction, uniform_keep_macs)
from manidp.methods import METHODS, get_method
from manidp.methods.fbs import FbsGate, l1_penalty, set_density
from manidp.methods.fpgm import geometric_median_order, planned_widths, select_filters, soft_prune
from manidp.methods.surgery import conv_a_widths, dead_channels, remove_dead_channels, zero_channels
from manidp.models import build_model
from manidp.train import TrainConfig, run

ROOT = Path(__file__).resolve().parents[1]


def block_formula(model, kept_a, kept_b=None, size=32):
    """MACs written out block by block (CIFAR ResNets): conv_a = 9 H W C_in m1, conv_b = 9 H W m1 m2."""
    total = 9 * size * size * 3 * model.conv1.out_channels
    h = size
    for j, block in enumerate(model.blocks()):
        h = (h - 1) // block.conv1.stride[0] + 1
        m1 = kept_a[j]
        m2 = block.conv2.out_channels if kept_b is None else kept_b[j]
        total += 9 * h * h * block.conv1.in_channels * m1 + 9 * h * h * m1 * m2
        if block.downsample is not None:
            total += h * h * block.downsample[0].in_channels * block.downsample[0].out_channels
    return total + model.fc.in_features * model.fc.out_features


# ---------------------------------------------------------------------------------------------- FBS

def fbs_model(arch="resnet20", density=0.5, seed=0):
    torch.manual_seed(seed)
    model = get_method("fbs").build(arch, 10)     # train mode: BN normalises the fresh network's maps
    with torch.no_grad():
        for g in model.gates():      # saliencies that vary per instance, around 1 (no blow-up over 18 gates)
            g.fc.weight.normal_(0, 0.3)
    set_density(model, density)
    return model


@pytest.mark.parametrize("density", [1.0, 0.7, 0.5, 0.3, 0.01])
def test_fbs_keeps_exactly_k_channels_per_instance(density):
    model = fbs_model(density=density)
    with torch.no_grad():
        model(torch.randn(6, 3, 32, 32))
    kept = kept_counts(model)
    widths = [g.c_out for g in model.gates()]
    k = [max(1, math.ceil(density * c - 1e-9)) for c in widths]
    assert kept.tolist() == [k] * 6
    for g in model.gates():
        top = g.saliency.topk(g.k, dim=1).values[:, -1:]
        assert bool((g.saliency[g.keep] >= 0).all())
        assert bool((g.saliency[~g.keep] <= top.expand_as(g.saliency)[~g.keep]).all())   # the k largest
    # MACs: the block formula with k kept channels on both convs, and the schedule's uniform keep
    counts = InstanceCounter(model).count(kept)
    kk = [k[2 * j] for j in range(len(model.blocks()))], [k[2 * j + 1] for j in range(len(model.blocks()))]
    assert counts.tolist() == [block_formula(model, *kk)] * 6
    assert int(counts[0]) == uniform_keep_macs(model, density)
    if density == 1.0:
        assert int(counts[0]) == dense_macs("resnet20")


def test_fbs_mask_is_saliency_on_kept_channels():
    gate = FbsGate(4, 5, fc_init="kaiming", density=0.6)
    x = torch.rand(3, 4, 8, 8)
    m = gate(x)
    g = torch.relu(gate.fc(x.mean((2, 3))))
    assert torch.allclose(gate.saliency, g)
    assert torch.equal(m, g * gate.keep)
    assert gate.keep.sum(1).tolist() == [3, 3, 3]
    assert gate.macs == 4 * 5


def test_fbs_starts_as_its_baseline():
    """Zero FC weights and bias 1: saliency 1 everywhere, so density 1 reproduces the dense network."""
    torch.manual_seed(0)
    plain = build_model("resnet20").eval()
    fbs = get_method("fbs").build("resnet20", 10)
    fbs.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fbs.eval()(x), plain(x), atol=1e-5)


def test_fbs_l1_penalty_by_hand():
    g1, g2 = FbsGate(2, 3), FbsGate(1, 1)
    with torch.no_grad():
        g1.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0]]))
        g1.fc.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
        g2.fc.weight.fill_(0.5)
        g2.fc.bias.fill_(0.5)
    g1(torch.tensor([[2.0, 1.0], [0.0, 3.0]]))      # saliencies [2, 0, 2] and [0, 0, 2]: L1 4 and 2
    g2(torch.tensor([[1.0], [3.0]]))                # saliencies [1] and [2]
    model = SimpleNamespace(gates=lambda: [g1, g2])
    assert float(l1_penalty(model).detach()) == pytest.approx((4 + 2) / 2 + (1 + 2) / 2)     # 4.5
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    cfg = SimpleNamespace(method_options={"lambda_l1": 0.1})
    loss, parts = get_method("fbs").loss(model, logits, y, cfg)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert float(loss.detach()) == pytest.approx(float(ce) + 0.45)
    assert float(parts["sparse"]) == pytest.approx(4.5)


# --------------------------------------------------------------------------------------------- FPGM

def brute_force_order(weight):
    """Sum of Euclidean distances of every filter to every other, by explicit loops; ascending."""
    flat = [[float(v) for v in w.flatten()] for w in weight]
    scores = []
    for j, a in enumerate(flat):
        scores.append((sum(math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b))) for b in flat), j))
    return [j for _, j in sorted(scores)]


def test_fpgm_selects_filters_nearest_the_geometric_median():
    # 1-D filters 0, 1, 2, 10, 11: distance sums 24, 21, 20, 28, 31 -> 2 is nearest the median, then 1, 0
    w = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0]).reshape(5, 1, 1, 1)
    assert geometric_median_order(w).tolist() == [2, 1, 0, 3, 4]
    assert sorted(select_filters(w, 0.6).tolist()) == [1, 2]           # keeps ceil(0.6 * 5) = 3 filters
    assert sorted(select_filters(w, 0.4).tolist()) == [0, 1, 2]        # keeps 2
    torch.manual_seed(0)
    for c in (8, 16):
        w = torch.randn(c, 4, 3, 3)
        assert geometric_median_order(w).tolist() == brute_force_order(w)
        assert sorted(select_filters(w, 0.5).tolist()) == sorted(brute_force_order(w)[: c // 2])


def randomized(arch="resnet20", seed=0):
    """A plain model with non-trivial BN statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("arch, rate", [("resnet20", 0.5), ("resnet32", 0.3), ("resnet20", 0.01)])
def test_physically_pruned_equals_soft_pruned(arch, rate):
    model = randomized(arch)
    pruned_filters = soft_prune(model, rate)
    widths = planned_widths(model, rate)
    assert pruned_filters == sum(b.conv1.out_channels for b in model.blocks()) - sum(widths)
    assert [int((~dead_channels(b)).sum()) for b in model.blocks()] == widths
    physical = remove_dead_channels(model)
    assert conv_a_widths(physical) == widths
    soft = copy.deepcopy(model)
    for block in soft.blocks():
        zero_channels(block, dead_channels(block))   # the zeroed channel is exactly zero, BN included
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out_soft, out_phys = soft(x), physical(x)
        with_constant = model(x)                      # BN of a zeroed filter still emits a constant
    assert torch.allclose(out_phys, out_soft, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(with_constant, out_soft, atol=1e-5)
    # MACs of the physical network: from its real shapes, the planning count, the block formula, torch's counter
    macs = dense_macs(physical)
    assert macs == inner_pruned_macs(model, widths) == block_formula(model, widths)
    with FlopCounterMode(display=False) as fc:
        physical(x[:1])
    assert fc.get_total_flops() == 2 * macs
    assert macs < dense_macs(arch)


def test_fpgm_target_reduction():
    model = build_model("resnet56")
    target = 52.6                                          # FPGM's published ResNet-56 row
    rate = get_method("fpgm").target(model, SimpleNamespace(remain_rate=None, target_reduction=target))
    reduction = 100 * (1 - inner_pruned_macs(model, planned_widths(model, rate)) / dense_macs(model))
    assert target <= reduction < target + 2
    with pytest.raises(ManidpError, match="outside"):
        get_method("fpgm").target(model, SimpleNamespace(remain_rate=None, target_reduction=99.9))


def test_registry_and_unknown_method():
    assert {"baseline", "manidp", "fbs", "fpgm"} <= set(METHODS)
    with pytest.raises(ManidpError, match="--method 'sfp' is unknown: use one of"):
        get_method("sfp")
    with pytest.raises(ManidpError, match="option 'lambda_l1' does not apply to --method fpgm"):
        TrainConfig(method="fpgm", out="x", remain_rate=0.5, method_options={"lambda_l1": 1.0}).validate()


# ------------------------------------------------------------------------------------- end to end

FAST = dict(arch="resnet20", dataset="cifar10", batch_size=64, limit_train=128, limit_test=64, device="cpu",
            lr=0.05, epochs=2)


@pytest.fixture(scope="module")
def baseline(cifar_mini, tmp_path_factory):
    """A barely trained but real baseline: 2 epochs of ResNet-20 on 128 real CIFAR-10 images."""
    out = tmp_path_factory.mktemp("baseline")
    run(TrainConfig(method="baseline", data=str(cifar_mini), out=str(out), **FAST), show_progress=False)
    return out / "checkpoint.pt"


def method_cfg(method, data, baseline, out, **kw):
    return TrainConfig(**{**FAST, "method": method, "data": str(data), "out": str(out),
                          "baseline": str(baseline), "remain_rate": 0.5, **kw})


def history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def evaluate_cli(checkpoint, data, tmp_path):
    path = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--limit-test", "64",
                     "--out", str(path), "--quiet", "--device", "cpu"]) == 0
    return json.loads(path.read_text())


def test_fbs_end_to_end(baseline, cifar_mini, tmp_path):
    out = tmp_path / "fbs"
    final = run(method_cfg("fbs", cifar_mini, baseline, out, method_options={"lambda_l1": 1e-4}),
                show_progress=False)
    h = history(out)
    assert [r["density"] for r in h] == pytest.approx([0.75, 0.5])            # cosine, reaches d = 0.5
    assert h[0]["train_sparse"] > 0
    m = final["macs"]
    model = get_method("fbs").build("resnet20", 10)
    assert m["macs_mean"] == m["macs_min"] == m["macs_max"] == uniform_keep_macs(model, 0.5) < m["dense_macs"]
    assert final["method"] == "fbs" and final["thresholds"] == []
    ev = evaluate_cli(out / "checkpoint.pt", cifar_mini, tmp_path)            # rebuilt with FBS gates
    assert ev["top1"] == final["top1"] and ev["macs"]["macs_mean"] == m["macs_mean"]
    assert ev["method"] == "fbs"


def test_fpgm_end_to_end_and_resume(baseline, cifar_mini, tmp_path):
    cfg = method_cfg("fpgm", cifar_mini, baseline, tmp_path / "full", remain_rate=None, target_reduction=54.0)
    final = run(cfg, show_progress=False)
    h = history(tmp_path / "full")
    widths = h[-1]["conv_a_widths"]
    m = final["macs"]
    assert m["macs_mean"] == m["macs_max"] == block_formula(build_model("resnet20"), widths)
    assert 54.0 <= m["reduction_pct"] < 56 and all(r["reduction_pct"] == m["reduction_pct"] for r in h)
    saved = ckpt_io.load(tmp_path / "full" / "checkpoint.pt")            # the trained (soft) network
    assert not saved["gated"] and saved["model"]["layer1.0.conv1.weight"].shape[0] == 16
    ev = evaluate_cli(tmp_path / "full" / "checkpoint.pt", cifar_mini, tmp_path)    # measured physically pruned
    assert ev["top1"] == final["top1"] and ev["macs"]["macs_mean"] == m["macs_mean"]
    # interrupted after epoch 1 and resumed: the same network as the uninterrupted run
    part = method_cfg("fpgm", cifar_mini, baseline, tmp_path / "part", remain_rate=None, target_reduction=54.0)
    assert run(part, stop_after_epoch=1, show_progress=False) == {"stopped_after_epoch": 1}
    resumed = run(part, show_progress=False)
    assert resumed["top1"] == final["top1"] and resumed["macs"] == final["macs"]
    a = ckpt_io.load(tmp_path / "part" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], saved["model"][k]) for k in a)


def test_manidp_ablation_without_both_regularisers(baseline, cifar_mini, tmp_path):
    """Plain dynamic pruning with an L1 penalty: lambda_2 = 0 and w_i = 1."""
    losses = LossOptions(lambda_sparse=0.1, lambda_sim=0.0, complexity_weighting=False)
    final = run(method_cfg("manidp", cifar_mini, baseline, tmp_path / "abl", losses=losses, epochs=1),
                show_progress=False)
    h = history(tmp_path / "abl")
    assert all(r["train_sim"] == 0 for r in h) and h[0]["train_sparse"] > 0
    assert final["macs"]["macs_mean"] < final["macs"]["dense_macs"]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize("extra, needle", [
    (["--method", "fbs", "--remain-rate", "0"], "--remain-rate 0.0 is outside (0, 1]"),
    (["--method", "fbs", "--remain-rate", "1.5"], "--remain-rate 1.5 is outside (0, 1]"),
    (["--method", "fpgm", "--target-reduction", "99.9"], "--target-reduction 99.9 is outside the valid range [0, "),
    (["--method", "fbs", "--remain-rate", "0.5", "--lambda-l1", "-1"], "--lambda-l1 -1.0 must be"),
    (["--method", "fbs", "--remain-rate", "0.5", "--lambda-sim", "0"],
     "--lambda-sim is an option of --method manidp, not of --method fbs"),
    (["--method", "fpgm", "--remain-rate", "0.5", "--lambda-l1", "1e-8"],
     "--lambda-l1 is an option of --method fbs, not of --method fpgm"),
    (["--remain-rate", "0.5", "--lambda-l1", "1e-8"], "--lambda-l1 is an option of --method fbs, not of --method manidp"),
])
def test_bad_method_options_one_line(baseline, cifar_mini, tmp_path, capsys, extra, needle):
    argv = ["prune", "--arch", "resnet20", "--data", str(cifar_mini), "--out", str(tmp_path / "r"),
            "--baseline", str(baseline), "--quiet", "--limit-train", "64", "--device", "cpu"]
    code, line = run_cli(capsys, *argv, *extra)
    assert code == 2 and line.startswith("manidp: error: ") and needle in line
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


# -------------------------------------------------------------------------------- the DAG's methods

def test_experiment_rows_name_a_configured_method(tmp_path):
    from manidp.report import experiments, published
    pub = published.load(ROOT / "paper_tables" / "published.csv")
    path = tmp_path / "x.tsv"
    path.write_text("dataset\tarch\tpoint\tpublished\ttarget_reduction\tmethod\n"
                    "cifar10\tresnet20\tpaper\tFBS\t\tfbs\n"
                    "cifar10\tresnet20\tpaper\t\t54.2\tnosim\n")
    fbs, nosim = experiments.load(path, pub, methods=["fbs", "nosim"])
    assert (fbs.variant, fbs.target_reduction, nosim.variant, nosim.published) == ("fbs-paper", 53.1, "nosim-paper", "")
    with pytest.raises(ManidpError, match=r"row 1: unknown method 'fbs' \(column method\); choose one of nosim"):
        experiments.load(path, pub, methods=["nosim"])


def test_cpu_study_dag_dry_run(tmp_path):
    """config/cpu_study.yaml: one baseline, ManiDP, FBS and FPGM at 2, 6 and 20 pruning epochs (the
    row's epochs column), and the fidelity hypotheses as ManiDP variants at 6 epochs, as one target."""
    from test_pipeline import job_counts, make_workdir, snakemake
    workdir = make_workdir(tmp_path / "wf")
    r = snakemake(workdir, "-n", "-p", "--configfile", "config/cpu_study.yaml", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    counts = job_counts(r.stdout)
    assert {k: counts.get(k) for k in ("train_baseline", "prune", "measure", "table", "method_table")} == \
        {"train_baseline": 1, "prune": 3 * 3 + 9, "measure": 1 + 18, "table": 1, "method_table": 1}
    for method in ("manidp", "fbs", "fpgm"):
        for epochs in (2, 6, 20):
            folder = f"results/cpu_study/cifar10/resnet20/{method}-e{epochs}/seed0"
            line = next(x for x in r.stdout.splitlines() if f"--out {folder} " in x and "manidp prune" in x)
            assert f"--method {method} " in line and f"--epochs {epochs} " in line
    line = next(x for x in r.stdout.splitlines() if "official-e6/seed0 " in x and "manidp prune" in x)
    assert "--no-calibrate-macs" in line and "--fine-tune-epochs 0" in line
    assert "seed1" not in r.stdout
    assert "--detach-features" in next(x for x in r.stdout.splitlines() if "detfeat-e6/seed0 " in x and "prune" in x)
