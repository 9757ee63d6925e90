"""Training end to end on real CIFAR-10 rows: baseline, ManiDP, determinism, resume, bad input."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from manidp import checkpoint as ckpt_io
from manidp import cli, train
from manidp.errors import ManidpError
from manidp.losses import LossOptions
from manidp.macs import dense_macs
from manidp.train import TrainConfig, run

FAST = dict(arch="resnet20", dataset="cifar10", batch_size=64, limit_train=256, limit_test=128,
            device="cpu", lr=0.05)


@pytest.fixture(scope="module")
def baseline(cifar_mini, tmp_path_factory):
    """A real baseline: a few hundred SGD steps of ResNet-20 on 2,000 real CIFAR-10 images."""
    out = tmp_path_factory.mktemp("baseline")
    cfg = TrainConfig(method="baseline", arch="resnet20", data=str(cifar_mini), out=str(out), epochs=3,
                      batch_size=32, lr=0.05, limit_train=2000, limit_test=500, device="cpu")
    result = run(cfg, show_progress=False)
    return out, result


def manidp_cfg(data, baseline_dir, out, **kw) -> TrainConfig:
    base = dict(FAST, method="manidp", data=str(data), out=str(out), epochs=2,
                baseline=str(Path(baseline_dir) / "checkpoint.pt"), remain_rate=0.5,
                losses=LossOptions(lambda_sparse=0.1, lambda_sim=0.1), calibration_instances=256)
    base.update(kw)
    return TrainConfig(**base)


def test_fine_tune_epochs_reach_the_target_before_the_last_epoch(baseline, cifar_mini, tmp_path):
    """--fine-tune-epochs 1 of 3: the schedule runs over 2 epochs (0.75, 0.5), then the last epoch
    trains at t = 0.5 and re-estimates its thresholds at t."""
    cfg = manidp_cfg(cifar_mini, baseline[0], tmp_path / "ft", epochs=3, fine_tune_epochs=1, limit_train=128)
    run(cfg, show_progress=False)
    history = [json.loads(line) for line in (tmp_path / "ft" / "history.jsonl").read_text().splitlines()]
    assert [r["remain_rate"] for r in history] == pytest.approx([0.75, 0.5, 0.5])
    for bad in (3, -1):
        with pytest.raises(ManidpError, match=r"--fine-tune-epochs must be >= 0 and smaller than --epochs 3"):
            run(replace(cfg, out=str(tmp_path / "bad"), fine_tune_epochs=bad), show_progress=False)


def test_baseline_then_manidp_prunes(baseline, cifar_mini, tmp_path):
    out, result = baseline
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert sum(r["steps"] for r in history) == 3 * math.ceil(2000 / 32)     # 189 steps
    assert history[-1]["train_ce"] < history[0]["train_ce"]                # it learns
    assert result["top1"] > 20.0                                            # 10 classes: chance is 10%
    assert result["macs"]["macs_mean"] == dense_macs("resnet20")

    cfg = manidp_cfg(cifar_mini, out, tmp_path / "manidp", limit_train=2000, batch_size=32)
    final = run(cfg, show_progress=False)
    history = [json.loads(line) for line in (tmp_path / "manidp" / "history.jsonl").read_text().splitlines()]
    rates = [r["remain_rate"] for r in history]
    assert rates == pytest.approx([0.75, 0.5])                             # cosine schedule, t = 0.5, E = 2
    assert all(t > -10000 for r in history for t in r["thresholds"])     # thresholds rise from "keep all"
    assert history[0]["reduction_pct"] > 0                                  # pruning starts after epoch 1
    assert history[1]["reduction_pct"] > history[0]["reduction_pct"]       # and deepens as r(e) falls
    m = final["macs"]
    assert m["macs_mean"] < m["dense_macs"] == dense_macs("resnet20")
    assert 20 < m["reduction_pct"] < 100
    assert m["macs_min"] <= m["macs_mean"] <= m["macs_max"]
    assert final["thresholds"] == history[-1]["thresholds"]                 # final model, final thresholds
    saved = ckpt_io.load(tmp_path / "manidp" / "checkpoint.pt")
    assert saved["epoch"] == 2 and saved["gated"] and saved["thresholds"] == final["thresholds"]
    for key in ("model", "optimizer", "scheduler", "config", "metrics", "reference_loss"):
        assert key in saved
    env = json.loads((tmp_path / "manidp" / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["seed"] == 0


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("environment",)}


def test_seeded_runs_are_deterministic(baseline, cifar_mini, tmp_path):
    a = run(manidp_cfg(cifar_mini, baseline[0], tmp_path / "a"), show_progress=False)
    b = run(manidp_cfg(cifar_mini, baseline[0], tmp_path / "b"), show_progress=False)
    assert _comparable(a) == _comparable(b)
    c = run(manidp_cfg(cifar_mini, baseline[0], tmp_path / "c", seed=1), show_progress=False)
    assert c["thresholds"] != a["thresholds"]


def test_resume_equals_uninterrupted(baseline, cifar_mini, tmp_path):
    full = run(manidp_cfg(cifar_mini, baseline[0], tmp_path / "full", epochs=3), show_progress=False)
    part = manidp_cfg(cifar_mini, baseline[0], tmp_path / "part", epochs=3)
    assert run(part, stop_after_epoch=1, show_progress=False) == {"stopped_after_epoch": 1}
    assert ckpt_io.load(tmp_path / "part" / "checkpoint.pt")["epoch"] == 1
    resumed = run(part, show_progress=False)
    assert _comparable(resumed) == _comparable(full)
    sa = ckpt_io.load(tmp_path / "full" / "checkpoint.pt")["model"]
    sb = ckpt_io.load(tmp_path / "part" / "checkpoint.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a finished run rerun does no more training and gives the same result
    assert _comparable(run(part, show_progress=False)) == _comparable(full)


def test_resume_with_other_options_is_refused(baseline, cifar_mini, tmp_path):
    cfg = manidp_cfg(cifar_mini, baseline[0], tmp_path / "run", epochs=2)
    run(cfg, stop_after_epoch=1, show_progress=False)
    with pytest.raises(ManidpError, match=r"other options \(remain_rate differ\)"):
        run(replace(cfg, remain_rate=0.7), show_progress=False)


def test_nan_loss_stops_and_keeps_last_checkpoint(baseline, cifar_mini, tmp_path, monkeypatch):
    cfg = manidp_cfg(cifar_mini, baseline[0], tmp_path / "run", epochs=3)
    run(cfg, stop_after_epoch=1, show_progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    good = ckpt.read_bytes()
    real = train.manidp_loss

    def diverging(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(train, "manidp_loss", diverging)
    with pytest.raises(ManidpError, match=r"loss became nan in epoch 2, step 1.*checkpoint.pt\) is kept"):
        run(cfg, show_progress=False)
    assert ckpt.read_bytes() == good
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_cli_evaluate_matches_training_metrics(baseline, cifar_mini, tmp_path, capsys):
    out, result = baseline
    path = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(cifar_mini),
                     "--limit-test", "500", "--out", str(path), "--quiet", "--device", "cpu"]) == 0
    ev = json.loads(path.read_text())
    assert ev["top1"] == result["top1"] and ev["macs"]["macs_mean"] == result["macs"]["macs_mean"]
    assert ev["environment"]["git_commit"] is None or len(ev["environment"]["git_commit"]) >= 40


def test_cli_latency_of_a_pruned_checkpoint(baseline, cifar_mini, tmp_path, capsys):
    """``manidp latency``: the engine reproduces the trained ManiDP model on real test images (same
    predictions, executed MACs = analytic), and every variant is timed. Speed is not asserted."""
    run(manidp_cfg(cifar_mini, baseline[0], tmp_path / "m", epochs=1, limit_train=128), show_progress=False)
    path = tmp_path / "latency.json"
    assert cli.main(["latency", "--checkpoint", str(tmp_path / "m" / "checkpoint.pt"), "--data",
                     str(cifar_mini), "--limit-test", "12", "--repeats", "1", "--quiet",
                     "--out", str(path)]) == 0
    r = json.loads(path.read_text())
    # Images whose gate decisions differ must all sit at float rounding of a threshold; on the
    # others the engine must reproduce the masked model.
    assert r["images"] == 12 and r["nonfinite_masked"] == 0 and r["differing_unexplained"] == 0
    assert r["same_decisions"] + r["differing_decisions"] == 12 and r["same_decisions"] >= 6
    assert r["same_prediction"] == r["same_decisions"] and r["executed_equals_analytic"]
    assert r["max_rel_logit_error"] < 1e-4
    # ONNX Runtime / OpenVINO are timed too where installed (the optional .[bench] extra).
    timed = {"dense", "dense-nhwc", "masked", "engine"} | set(r["dense_engines"]["max_abs_diff"])
    assert r["reduction_pct"] > 0 and set(r["latency_ms"]) == timed
    assert f"the same gate decisions on {r['same_decisions']}/12 images" in capsys.readouterr().out
    # A dense baseline has no gates to skip with; --repeats must be positive: one line each.
    code, line = run_cli(capsys, "latency", "--checkpoint", str(baseline[0] / "checkpoint.pt"),
                         "--data", str(cifar_mini), "--quiet")
    assert code == 2 and "latency needs a pruned (gated) checkpoint" in line
    code, line = run_cli(capsys, "latency", "--checkpoint", str(path), "--data", str(cifar_mini),
                         "--repeats", "0")
    assert code == 2 and "--repeats must be >= 1" in line


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize("extra, needle", [
    (["--remain-rate", "0"], "--remain-rate 0.0 is outside (0, 1]"),
    (["--remain-rate", "1.5"], "--remain-rate 1.5 is outside (0, 1]"),
    (["--remain-rate", "0.5", "--lambda-sparse", "-1"], "--lambda-sparse -1.0 must be"),
    (["--remain-rate", "0.5", "--lambda-sim", "-0.1"], "--lambda-sim -0.1 must be"),
    (["--remain-rate", "0.5", "--arch", "resnet99"], "unknown architecture 'resnet99'"),
    (["--remain-rate", "0.5", "--grad-clip", "0"], "--grad-clip must be > 0"),
])
def test_bad_options_one_line(baseline, cifar_mini, tmp_path, capsys, extra, needle):
    argv = ["prune", "--arch", "resnet20", "--data", str(cifar_mini), "--out", str(tmp_path / "r"),
            "--baseline", str(baseline[0] / "checkpoint.pt"), "--quiet", "--limit-train", "64"]
    # a later --arch overrides the first one
    code, line = run_cli(capsys, *argv, *extra)
    assert code == 2 and line.startswith("manidp: error: ") and needle in line
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_checkpoint_of_another_architecture(baseline, cifar_mini, tmp_path, capsys):
    code, line = run_cli(capsys, "prune", "--arch", "resnet32", "--data", str(cifar_mini), "--out",
                         str(tmp_path / "r"), "--baseline", str(baseline[0] / "checkpoint.pt"),
                         "--remain-rate", "0.5", "--quiet")
    assert code == 2 and "resnet20 checkpoint, but --arch is resnet32" in line


def test_corrupt_and_missing_checkpoint(baseline, cifar_mini, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((baseline[0] / "checkpoint.pt").read_bytes()[:5000])
    code, line = run_cli(capsys, "evaluate", "--checkpoint", str(bad), "--data", str(cifar_mini), "--quiet")
    assert code == 2 and f"checkpoint {bad} cannot be read" in line
    code, line = run_cli(capsys, "evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data",
                         str(cifar_mini), "--quiet")
    assert code == 2 and "does not exist" in line


def test_missing_dataset(tmp_path, capsys):
    code, line = run_cli(capsys, "train-baseline", "--arch", "resnet20", "--data", str(tmp_path / "nowhere"),
                         "--out", str(tmp_path / "r"), "--quiet")
    assert code == 2 and "nowhere" in line


@pytest.mark.parametrize("command", ["train-baseline", "prune", "evaluate", "macs", "latency"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "--" in capsys.readouterr().out


def test_macs_command(capsys):
    assert cli.main(["macs", "--arch", "resnet34", "--target-reduction", "55.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dense_macs"] == 3_663_761_408 and out["gates"] == 32 and 0 < out["remain_rate"] < 1


def test_grad_clip_bounds_every_update(baseline, cifar_mini, tmp_path):
    """With the global gradient norm clipped to c, SGD with momentum mu moves the parameters by at most
    lr * c * (1 + mu) / (1 - mu) per step (Nesterov), whatever the loss does. Weight decay is off: the
    optimizer adds it after clipping."""
    clip = 1e-6
    cfg = manidp_cfg(cifar_mini, baseline[0], tmp_path / "clipped", epochs=1, grad_clip=clip, weight_decay=0.0)
    run(cfg, show_progress=False)
    before = ckpt_io.load(Path(baseline[0]) / "checkpoint.pt")["model"]
    after = ckpt_io.load(tmp_path / "clipped" / "checkpoint.pt")["model"]
    steps = math.ceil(cfg.limit_train / cfg.batch_size)
    bound = steps * cfg.lr * clip * (1 + cfg.momentum) / (1 - cfg.momentum)
    moved = math.sqrt(sum(float((after[k] - before[k]).pow(2).sum()) for k in before
                          if k.endswith(("weight", "bias")) and before[k].is_floating_point()))
    assert 0 < moved <= bound
