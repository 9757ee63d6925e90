"""Fidelity (docs/fidelity.md): pruning runs end on their MAC target, and their history says how
dynamic the gates are and how hard each loss term pulls."""
import json
import math

import pandas as pd
import pytest
import torch

from manidp import cli
from manidp.calibrate import Calibrator, rank_threshold
from manidp.data import build_loaders
from manidp.losses import LossOptions
from manidp.macs import InstanceCounter, keep_plan, remain_rate_for_reduction, uniform_keep_macs
from manidp.models import build_model
from manidp.report import compare
from manidp.schedule import kth_largest_threshold
from manidp.calibrate import mac_target, reestimate_batchnorm
from manidp.train import TrainConfig, run

from test_report import _summary, pub  # noqa: F401 (pub is a fixture)


# ------------------------------------------------------------------------------ calibration, by hand

def test_rank_threshold_by_hand():
    means = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert float(rank_threshold(means, 2)) == 3.0            # integer rank: the k-th largest
    assert float(rank_threshold(means, 2.5)) == 2.5          # halfway between the 2nd and the 3rd
    assert float(rank_threshold(means, 2.25)) == 2.75
    assert float(rank_threshold(means, 0.3)) == 4.0          # at least one channel
    assert float(rank_threshold(means, 4)) == 1.0 == float(rank_threshold(means, 9))


def _dynamic_model(seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet20", num_classes=10, gated=True, fc2_init="kaiming")   # instance-dependent saliencies
    for g in model.gates():                       # tame Kaiming FC2 so activations stay finite
        g.fc2.weight.data.mul_(0.05)
    return model


def test_calibrator_scale_one_is_the_official_rule_and_it_hits_the_target():
    model = _dynamic_model()
    batches = [torch.randn(32, 3, 32, 32) for _ in range(2)]
    model.train()
    for x in batches:
        model(x)
    means = [g.mean_saliency().float() for g in model.gates()]
    cal = Calibrator(model, batches, means, rate=0.5)
    cal.set_scale(1.0)
    assert [float(g.threshold) for g in model.gates()] == \
        [float(kth_largest_threshold(m, 0.5)) for m in means]
    dense = InstanceCounter(model).dense
    target = dense * (1 - 0.45)
    rec = cal.run(target)
    assert abs(rec["calibrated_reduction_pct"] - 45.0) <= 1.0
    assert cal.mean_macs(rec["scale"]) == pytest.approx(dense * (1 - rec["calibrated_reduction_pct"] / 100))


@pytest.mark.parametrize("arch", ["resnet20", "resnet56", "resnet18"])
@pytest.mark.parametrize("target", [30.0, 54.2, 65.0])
def test_keep_plan_is_on_target_and_never_worse_than_uniform(arch, target):
    model = build_model(arch, gated=True)
    counter = InstanceCounter(model)
    ks = keep_plan(model, target)
    got = 100 * (1 - int(counter.count(torch.tensor([ks]))[0]) / counter.dense)
    uniform = 100 * (1 - uniform_keep_macs(model, remain_rate_for_reduction(model, target)) / counter.dense)
    assert abs(got - target) <= abs(uniform - target) and abs(got - target) < 0.1
    assert all(1 <= k <= g.c_out for k, g in zip(ks, model.gates()))


def test_mac_target_flags_a_miss():
    assert mac_target(54.9, 54.2)["on_target"] and not mac_target(55.3, 54.2)["on_target"]
    assert mac_target(53.1, 54.2)["reduction_miss_pt"] == pytest.approx(-1.1)


def test_comparison_marks_an_off_target_row(pub):  # noqa: F811
    s = _summary(8.3, 0.1, 58.0)
    s["on_target"], s["target_reduction"] = [None, False], [0.0, 54.2]
    df = compare.compare(s, pub, "cifar10", compare.Tolerance(), smoke=True)
    note = df.set_index(["variant", "metric"]).loc[("manidp-paper", "mac_reduction"), "note"]
    assert "off its own MAC target (54.2%)" in note
    md = compare.to_markdown(df, "cifar10", "x", True, compare.Tolerance(), [])
    assert "off its own MAC target" in md


def test_held_out_rows_are_the_unused_training_rows(cifar_mini):
    train, _, _ = build_loaders("cifar10", cifar_mini, 64, device="cpu", seed=0, limit_train=100, limit_test=10)
    held = train.held_out
    assert held is not None and not held.train and held.num_samples == 3900
    full = build_loaders("cifar10", cifar_mini, 64, device="cpu", seed=0, limit_test=10)[0]
    assert full.held_out is None
    assert torch.equal(held.x[0], full.x[100]) and torch.equal(held.x[-1], full.x[-1])


def test_bn_reestimate_is_the_plain_mean_over_the_instances(cifar_mini):
    train, _, _ = build_loaders("cifar10", cifar_mini, 50, device="cpu", seed=0, limit_train=100, limit_test=10)
    model = _dynamic_model()
    cfg = TrainConfig(epochs=1, out="x")
    reestimate_batchnorm(model, train, 100, epoch=cfg.epochs + 1)
    train.set_epoch(cfg.epochs + 1)
    xs = torch.cat([x for x, _ in train])
    with torch.no_grad():
        pre = model.conv1(xs)
    assert torch.allclose(model.bn1.running_mean, pre.mean((0, 2, 3)), atol=1e-5)


# ------------------------------------------------------------------------------ end to end, real data

FAST = dict(arch="resnet20", dataset="cifar10", batch_size=64, limit_train=512, limit_test=500, device="cpu",
            lr=0.05, epochs=2, grad_clip=5.0)


@pytest.fixture(scope="module")
def baseline(cifar_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    run(TrainConfig(method="baseline", data=str(cifar_mini), out=str(out), **{**FAST, "epochs": 2}),
        show_progress=False)
    return out / "checkpoint.pt"


def history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pruned(baseline, cifar_mini, tmp_path_factory):
    """ManiDP, FBS and FPGM given 54.2% on the real CIFAR-10 subset."""
    root = tmp_path_factory.mktemp("pruned")
    extra = {"manidp": dict(fine_tune_epochs=1, calibration_instances=512, losses=LossOptions()),
             "fbs": {}, "fpgm": {}}
    out = {}
    for method, kw in extra.items():
        cfg = TrainConfig(**{**FAST, **kw, "method": method, "data": str(cifar_mini), "out": str(root / method),
                             "baseline": str(baseline), "target_reduction": 54.2})
        out[method] = (root / method, run(cfg, show_progress=False))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["manidp", "fbs", "fpgm"])
def test_pruned_runs_end_on_their_mac_target(pruned, method, cifar_mini, tmp_path):
    folder, final = pruned[method]
    assert abs(final["macs"]["reduction_pct"] - 54.2) <= 1.0, final["macs"]["reduction_pct"]
    assert final["on_target"] and final["target_reduction_pct"] == 54.2
    ev_path = tmp_path / "eval.json"               # the tables' own measurement agrees
    assert cli.main(["evaluate", "--checkpoint", str(folder / "checkpoint.pt"), "--data", str(cifar_mini),
                     "--limit-test", "500", "--out", str(ev_path), "--quiet", "--device", "cpu"]) == 0
    ev = json.loads(ev_path.read_text())
    assert ev["on_target"] and ev["macs"]["reduction_pct"] == pytest.approx(final["macs"]["reduction_pct"])


@pytest.mark.slow
def test_manidp_history_has_gate_statistics_and_loss_gradients(pruned):
    folder, _ = pruned["manidp"]
    h = history(folder)
    for r in h:
        assert len(r["gates"]) == 18
        for g in r["gates"]:
            assert g["within_channel_std"] >= 0 and g["between_channel_std"] >= 0
            assert 0 <= g["kept_min"] <= g["kept_mean"] <= g["kept_max"] <= 1
            assert math.isfinite(g["saliency_mean"]) and g["threshold"] is not None
        norms = r["loss_grad_norms"]
        assert set(norms) == {f"{t}_{k}" for t in ("ce", "sparse", "sim") for k in ("grad_norm", "gate_grad_norm")}
        assert all(v >= 0 and math.isfinite(v) for v in norms.values())
    assert h[0]["gates"][0]["kept_min"] == 1.0                 # epoch 1 trains with every gate open
    assert h[1]["gates"][0]["threshold"] == h[0]["thresholds"][0]   # epoch 2 trains at epoch 1's thresholds
    cal = [r["calibration"] for r in h]                        # both updates at the target are calibrated
    assert all(c["sample"] == "held-out training rows" and abs(c["calibrated_reduction_pct"] - 54.2) <= 0.5
               for c in cal)


@pytest.mark.slow
def test_fbs_history_has_gate_statistics(pruned):
    folder, _ = pruned["fbs"]
    h = history(folder)
    last = h[-1]["gates"]
    assert len(last) == 18 and all(g["threshold"] is None for g in last)
    assert all(g["kept_min"] == g["kept_max"] for g in last)   # exact top-k: every instance keeps k
    assert set(h[-1]["loss_grad_norms"]) == {"ce_grad_norm", "ce_gate_grad_norm", "penalty_grad_norm",
                                             "penalty_gate_grad_norm"}


@pytest.mark.slow
def test_official_rule_is_one_option_away(baseline, cifar_mini, tmp_path):
    cfg = TrainConfig(**{**FAST, "method": "manidp", "data": str(cifar_mini), "out": str(tmp_path / "o"),
                         "baseline": str(baseline), "target_reduction": 54.2, "calibrate_macs": False,
                         "epochs": 1})
    run(cfg, show_progress=False)
    h = history(tmp_path / "o")
    assert "calibration" not in h[0]
    saved = torch.load(tmp_path / "o" / "checkpoint.pt", weights_only=False)
    model = build_model("resnet20", num_classes=10, gated=True)
    model.load_state_dict(saved["model"])
    assert h[0]["thresholds"] == model.thresholds()


# ------------------------------------------------------------------------------ study view

def _runs():
    rows = [dict(dataset="cifar10", arch="resnet20", variant="baseline", point="", published="Baseline", run="seed0",
                 top1=64.0, top1_gap=0.0, macs_mean=40.8e6, reduction_pct=0.0, target_reduction=0.0,
                 epochs=30, on_target=None)]
    for method, e, top1, ok in [("manidp", 2, 40.0, True), ("manidp", 6, 50.0, True), ("fbs", 2, 55.0, True),
                                ("fbs", 6, 60.0, True), ("fpgm", 6, 58.0, True), ("nocal", 6, 45.0, False)]:
        rows.append(dict(dataset="cifar10", arch="resnet20", variant=f"{method}-e{e}", point=f"e{e}", published="",
                         run="seed0", top1=top1, top1_gap=64.0 - top1, macs_mean=18.7e6, reduction_pct=54.2,
                         target_reduction=54.2, epochs=e, on_target=ok))
    return pd.DataFrame(rows)


def test_method_table_carries_budget_and_target_flag():
    from manidp.report import study
    t = study.method_table(_runs())
    assert t.set_index("method").loc["nocal", "on_target"] is False
    assert list(t[t["method"] == "manidp"]["epochs"]) == [2, 6]
    md = study.method_table_md(t, "x")
    assert "| nocal | e6 | 6 |" in md and "(**off target**)" in md


def test_budget_plot_draws_each_method_over_its_budgets(tmp_path):
    from manidp.report import plots, study
    fig = study.budget_curves(_runs(), "cifar10")
    left, right = fig.axes
    labels = left.get_legend_handles_labels()[1]
    assert labels[0].startswith("dense baseline") and {"manidp (n=1/1)", "fbs (n=1/1)", "fpgm (n=1)"} <= set(labels)
    assert [t.get_text() for t in right.get_yticklabels()] == ["nocal", "manidp", "fpgm", "fbs"]   # by top-1
    assert any("off target" in t.get_text() for t in right.texts)
    assert plots.save(fig, tmp_path / "budget")[0].stat().st_size > 0
