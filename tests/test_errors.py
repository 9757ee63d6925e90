"""Bad input and faults, tried as a user would (docs/errors.md): valid data is accepted, every
user error is exactly one ``manidp: error:`` line naming the file or option with exit status 2, no
number is silently wrong, and a failed or killed write loses nothing."""
import codecs
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from manidp import checkpoint as ckpt_io
from manidp import cli, runfolder
from manidp.data import CIFAR10_CLASSES, load_cifar
from manidp.errors import ManidpError
from manidp.io import atomic_write, write_json
from manidp.losses import LossOptions
from manidp.report import experiments
from manidp.train import TrainConfig, run

from test_data import fake_cifar10, make_jpeg_tree
from test_report import PUBLISHED

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def baseline(cifar_mini, tmp_path_factory) -> Path:
    """A dense ResNet-20 after one epoch on 64 real CIFAR-10 images: enough to prune and evaluate."""
    out = tmp_path_factory.mktemp("baseline")
    run(TrainConfig(method="baseline", arch="resnet20", data=str(cifar_mini), out=str(out), epochs=1,
                    batch_size=32, limit_train=64, limit_test=32, device="cpu", lr=0.05), show_progress=False)
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def pruned(baseline, cifar_mini, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pruned")
    run(TrainConfig(method="manidp", arch="resnet20", data=str(cifar_mini), out=str(out), epochs=1,
                    batch_size=32, limit_train=64, limit_test=32, device="cpu", lr=0.05, baseline=str(baseline),
                    remain_rate=0.5, losses=LossOptions(lambda_sparse=0.1, lambda_sim=0.1),
                    calibration_instances=64), show_progress=False)
    return out / "checkpoint.pt"


def one_line(capsys, *argv) -> tuple[int, str, str]:
    """Run the command line in-process: (exit status, the one stderr line, stdout). Asserts that
    stderr is exactly one line and that no Python warning was shown."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:          # argparse exits from parse_args
            code = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert not shown, [str(w.message) for w in shown]
    assert len(lines) == 1, captured.err
    return code, lines[0], captured.out


def assert_error(capsys, *argv, needles) -> str:
    code, line, _ = one_line(capsys, *argv)
    assert code == 2 and line.startswith("manidp: error: "), line
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


def save_like(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint ``src`` with ``edit(payload)`` applied."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, dst)
    return dst


# ------------------------------------------------------------------------------------ valid data

@pytest.fixture(scope="module")
def mini_batches(cifar_mini, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mini")
    with tarfile.open(cifar_mini) as tf:
        tf.extractall(folder, filter="data")
    return next(p.parent for p in folder.rglob("batches.meta"))


@pytest.mark.parametrize("protocol, encoding", [(2, "latin1"), (5, "latin1"), (2, "bytes"), (5, "bytes")])
def test_cifar_batches_in_pickle_protocol_2_and_5_load_identically(mini_batches, tmp_path, protocol, encoding):
    """Protocol 2 written by Python 3 spells bytes as _codecs.encode(...); protocol 5 rebuilds
    arrays through numpy's _frombuffer. Both are the same data, whether the converting script read
    the original with str keys (latin1) or, after CIFAR's own recipe, with bytes keys."""
    original = load_cifar(mini_batches)
    copy = tmp_path / "cifar-10-batches-py"
    copy.mkdir()
    for f in mini_batches.iterdir():
        with open(f, "rb") as src:
            obj = pickle.load(src, encoding=encoding)
        (copy / f.name).write_bytes(pickle.dumps(obj, protocol=protocol))
    again = load_cifar(copy)
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(again, k), getattr(original, k)), k
    assert again.classes == original.classes == list(CIFAR10_CLASSES)
    assert again.source.startswith("CIFAR-10 (subset: 4000 train / 1000 test)")


class _Sneaky:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("protocol", [2, 5])
def test_foreign_code_is_refused_in_every_protocol(tmp_path, protocol):
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py", train_batches=1)
    marker = tmp_path / "executed"
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _Sneaky(marker), "labels": []}, protocol=protocol))
    with pytest.raises(ManidpError, match=r"data_batch_1: truncated or corrupt pickle .*refusing global"):
        load_cifar(tmp_path)
    assert not marker.exists()


def test_codecs_other_than_latin1_are_refused(tmp_path):
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py", train_batches=1)
    # the protocol-2 spelling of bytes, but through the zlib codec: not plain data
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _Codec(), "labels": []}, protocol=2))
    with pytest.raises(ManidpError, match=r"refusing _codecs.encode with encoding 'zlib'"):
        load_cifar(tmp_path)


class _Codec:
    def __reduce__(self):
        return (codecs.encode, (b"x", "zlib"))


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _relabel(folder: Path, names) -> None:
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(names), "num_vis": 3072}, f)


def test_other_label_names_are_named_never_called_cifar10(tmp_path):
    """One rule for both formats: another ten-class dataset is accepted under its own label names."""
    folder = fake_cifar10(tmp_path / "p" / "cifar-10-batches-py")   # five batches: a "full" copy, no md5 then
    _relabel(folder, DIGITS)
    a = load_cifar(tmp_path / "p")
    make_jpeg_tree(tmp_path / "j", per_class=1, classes=DIGITS)
    b = load_cifar(tmp_path / "j", cache_dir=tmp_path / "c")
    assert a.classes == list(DIGITS) and b.classes == sorted(DIGITS)
    for arrays in (a, b):
        assert arrays.source.startswith("not CIFAR-10: 10-class data in its format, labels ")
        assert "CIFAR-10 (" not in arrays.source and "md5" not in arrays.source
    assert a.source.startswith(f"not CIFAR-10: 10-class data in its format, labels {', '.join(DIGITS)} "
                               f"(20 train / 4 test) from {folder}")
    assert b.source.startswith(f"not CIFAR-10: 10-class data in its format, labels {', '.join(sorted(DIGITS))} "
                               f"(JPEG q")
    assert b.source.endswith(f" copy, 10 train / 10 test) from {tmp_path / 'j'}")


def test_some_of_cifar10s_names_or_another_order_is_refused(tmp_path):
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py", train_batches=1)
    _relabel(folder, CIFAR10_CLASSES[:9] + ("lorry",))
    with pytest.raises(ManidpError, match=r"batches.meta: its 'label_names' .* share .* label numbers would differ"):
        load_cifar(tmp_path)
    _relabel(folder, CIFAR10_CLASSES[::-1])
    with pytest.raises(ManidpError, match=r"not CIFAR-10's .*\(in that order\)"):
        load_cifar(tmp_path)


def test_checkpoint_is_not_evaluated_on_other_classes(baseline, tmp_path, capsys):
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py", train_batches=1)
    _relabel(folder, DIGITS)
    assert_error(capsys, "evaluate", "--checkpoint", baseline, "--data", tmp_path, "--quiet", "--device", "cpu",
                 needles=[baseline, "was trained on classes ['airplane'", "holds ['zero'"])


# ------------------------------------------------------------------------------------ data errors

def test_zero_byte_jpeg_is_named(tmp_path, capsys):
    make_jpeg_tree(tmp_path / "j", per_class=1)
    empty = tmp_path / "j" / "train" / "dog" / "0000.jpg"
    empty.write_bytes(b"")
    assert_error(capsys, "train-baseline", "--arch", "resnet20", "--data", tmp_path / "j", "--out", tmp_path / "r",
                 "--epochs", "1", "--cache-dir", tmp_path / "c", *TINY, needles=[empty, "empty file (0 bytes)"])


def test_experiment_list_header_one_column_short_names_it(tmp_path):
    pub = experiments.pub.load(PUBLISHED)
    tsv = tmp_path / "experiments.tsv"
    tsv.write_text("dataset\tpoint\tpublished\ncifar10\tresnet32\tpaper\tManiDP\n")
    with pytest.raises(ManidpError) as e:
        experiments.load(tsv, pub)
    assert str(e.value) == (f"{tsv}: row 1 has 4 cells but the header only 3: column 'arch' is missing from the "
                            f"header; the columns are {', '.join(experiments.COLUMNS)}")
    tsv.write_text("dataset\tarch\tpoint\tpublished\ncifar10\tresnet32\tpaper\tManiDP\t\n")
    with pytest.raises(ManidpError, match=r"row 1 has 5 cells but the header only 4: remove the tabs at its end"):
        experiments.load(tsv, pub)


# ------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("command", ["prune", "evaluate"])
def test_checkpoint_without_a_required_key(baseline, cifar_mini, tmp_path, capsys, command):
    bad = save_like(baseline, tmp_path / "noarch.pt", lambda p: p.pop("arch"))
    argv = (["prune", "--arch", "resnet20", "--baseline", bad, "--remain-rate", "0.5", "--out", tmp_path / "r",
             "--epochs", "1", *TINY] if command == "prune" else
            ["evaluate", "--checkpoint", bad, "--quiet", "--device", "cpu"])
    assert_error(capsys, *argv, "--data", cifar_mini, needles=[bad, "lacks the key 'arch'"])


def test_checkpoint_of_a_newer_format(baseline, cifar_mini, tmp_path, capsys):
    bad = save_like(baseline, tmp_path / "new.pt", lambda p: p.update(format="manidp-checkpoint/2"))
    assert_error(capsys, "evaluate", "--checkpoint", bad, "--data", cifar_mini, "--quiet",
                 needles=[bad, "was written by format 2", "this manidp reads format 1"])


def test_plain_pickle_as_checkpoint_is_one_line_without_torch_warning(cifar_mini, tmp_path, capsys):
    bad = tmp_path / "plain.pkl"
    bad.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    assert_error(capsys, "evaluate", "--checkpoint", bad, "--data", cifar_mini, "--quiet",
                 needles=[bad, "cannot be read", "not a PyTorch file"])


def test_latency_of_a_dense_checkpoint(baseline, cifar_mini, capsys):
    assert_error(capsys, "latency", "--checkpoint", baseline, "--data", cifar_mini, "--quiet",
                 needles=[baseline, "a dense (ungated) model", "latency needs a pruned (gated) checkpoint"])


def _poison(name, value):
    def edit(payload):
        payload["model"][name].view(-1)[3] = value
    return edit


@pytest.mark.parametrize("tensor, value", [("layer2.1.conv1.weight", float("nan")),
                                           ("layer1.0.gate1.fc2.weight", float("inf"))])
def test_evaluate_refuses_non_finite_weights(pruned, cifar_mini, tmp_path, capsys, tensor, value):
    bad = save_like(pruned, tmp_path / "nan.pt", _poison(tensor, value))
    out = tmp_path / "eval.json"
    assert_error(capsys, "evaluate", "--checkpoint", bad, "--data", cifar_mini, "--quiet", "--device", "cpu",
                 "--out", out, needles=[bad, f"tensor {tensor} holds 1 non-finite value(s)"])
    assert not out.exists()


def _overflow_saliency(payload):
    # finite weights whose gate overflows: fc1 gives +inf, fc2's mixed signs make inf - inf = NaN
    m = payload["model"]
    m["layer1.0.gate1.fc1.weight"].fill_(3e38)
    m["layer1.0.gate1.fc2.weight"][:, 1::2] *= -1


def _overflow_logits(payload):
    payload["model"]["fc.weight"].mul_(3e38)


@pytest.mark.parametrize("edit, needle", [(_overflow_saliency, "non-finite saliency of gate layer1.0.gate1"),
                                          (_overflow_logits, "non-finite logits from instance 1")])
def test_evaluate_refuses_non_finite_saliencies_and_logits(pruned, cifar_mini, tmp_path, capsys, edit, needle):
    bad = save_like(pruned, tmp_path / "overflow.pt", edit)
    assert_error(capsys, "evaluate", "--checkpoint", bad, "--data", cifar_mini, "--quiet", "--device", "cpu",
                 needles=[f"checkpoint {bad}: {needle}", "no result is written"])


def test_prune_names_the_non_finite_baseline_tensor(baseline, cifar_mini, tmp_path, capsys):
    bad = save_like(baseline, tmp_path / "nan-baseline.pt", _poison("bn1.running_var", float("nan")))
    line = assert_error(capsys, "prune", "--arch", "resnet20", "--baseline", bad, "--remain-rate", "0.5",
                        "--data", cifar_mini, "--out", tmp_path / "r", "--epochs", "1", *TINY,
                        needles=[bad, "tensor bn1.running_var holds 1 non-finite value(s)"])
    assert "--lr" not in line


# ------------------------------------------------------------------------------------ options

@pytest.mark.parametrize("option, value, needles", [
    ("--remain-rate", "abc", ["argument --remain-rate: invalid float value: 'abc'"]),
    ("--method", "foo", ["argument --method: invalid choice: 'foo'", "manidp", "fbs", "fpgm"]),
])
def test_bad_option_values_are_one_line(tmp_path, capsys, option, value, needles):
    argv = ["prune", "--arch", "resnet20", "--data", tmp_path, "--out", tmp_path / "r", "--baseline", tmp_path / "b.pt"]
    if option != "--remain-rate":
        argv += ["--remain-rate", "0.5"]
    assert_error(capsys, *argv, option, value, needles=needles + ["(see manidp prune --help)"])


@pytest.mark.parametrize("value, way", [("-5", "choose a larger one"), ("99.9", "choose a smaller one")])
def test_target_reduction_out_of_range_says_the_range_and_the_way(baseline, cifar_mini, tmp_path, capsys, value, way):
    assert_error(capsys, "macs", "--arch", "resnet20", "--target-reduction", value,
                 needles=[f"--target-reduction {float(value)} is outside the valid range [0, 9", way])
    assert_error(capsys, "prune", "--arch", "resnet20", "--baseline", baseline, "--target-reduction", value,
                 "--data", cifar_mini, "--out", tmp_path / "r", "--epochs", "1", *TINY,
                 needles=["is outside the valid range [0, 9", way])


# ------------------------------------------------------------------------------------ disk full

def disk_full(monkeypatch, name: str, after: int = 0) -> None:
    """The writer of ``name`` fails with ENOSPC from its ``after + 1``-th write on (the temporary
    file is then half written, as on a full disk); every other file is written normally."""
    real, seen = os.fsync, {"n": 0}

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def prune_argv(baseline, data, out, epochs=2):
    return ["prune", "--arch", "resnet20", "--baseline", baseline, "--remain-rate", "0.5", "--data", data,
            "--out", out, "--epochs", str(epochs), "--calibration-instances", "64", *TINY]


def train_argv(data, out, epochs=2):
    """train-baseline: the same run folder, checkpoint and resume code as prune, at a fraction of the time."""
    return ["train-baseline", "--arch", "resnet20", "--data", data, "--out", out, "--epochs", str(epochs), *TINY]


def test_disk_full_during_checkpoint_keeps_the_last_one_and_the_rerun_resumes(cifar_mini, tmp_path, capsys,
                                                                              monkeypatch):
    out = tmp_path / "run"
    disk_full(monkeypatch, "checkpoint.pt", after=1)        # epoch 1's checkpoint is written, epoch 2's is not
    assert_error(capsys, *train_argv(cifar_mini, out),
                 needles=[f"{out}: the disk is full", "while writing checkpoint.pt", "rerun the same command"])
    kept = ckpt_io.load(out / "checkpoint.pt")
    assert kept["epoch"] == 1 and len(kept["metrics"]) == 1
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()                                       # space freed
    assert cli.main([str(a) for a in train_argv(cifar_mini, out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1 |" not in printed and "epoch 2 |" in printed        # resumed, not restarted
    done = ckpt_io.load(out / "checkpoint.pt")
    assert done["epoch"] == 2 and done["metrics"][0] == kept["metrics"][0]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_disk_full_during_metrics_and_eval_json(cifar_mini, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    disk_full(monkeypatch, "metrics.json")
    assert_error(capsys, *train_argv(cifar_mini, out, epochs=1),
                 needles=[f"{out}: the disk is full", "while writing metrics.json"])
    assert ckpt_io.load(out / "checkpoint.pt")["epoch"] == 1 and not (out / "metrics.json").exists()

    ev = tmp_path / "eval" / "eval.json"
    write_json(ev, {"previous": True})
    disk_full(monkeypatch, "eval.json")
    assert_error(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--data", cifar_mini, "--out", ev,
                 "--quiet", "--device", "cpu", needles=[f"{ev.parent}: the disk is full", "while writing eval.json",
                                                        "the previous eval.json is kept"])
    assert json.loads(ev.read_text()) == {"previous": True} and not list(ev.parent.glob(".*.tmp"))
    monkeypatch.undo()
    assert cli.main([str(a) for a in train_argv(cifar_mini, out, epochs=1)]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


# ------------------------------------------------------------------------------------ left behind

def test_a_run_removes_its_own_stale_temporary_files_only(baseline, cifar_mini, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [".checkpoint.pt.k3j2_x9a.tmp", ".history.jsonl.0a1b2c3d.tmp", ".metrics.json.deadbeef.tmp"]
    kept = [".notes.txt.abcd1234.tmp", "my.tmp", ".checkpoint.pt.bak", "checkpoint.pt.abc.tmp", "README"]
    for name in stale + kept:
        (out / name).write_bytes(b"x" * 10)
    run(TrainConfig(method="baseline", arch="resnet20", data=str(cifar_mini), out=str(out), epochs=1,
                    batch_size=32, limit_train=64, limit_test=32, device="cpu"), show_progress=False)
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(kept + ["checkpoint.pt", "config.json", "env.json", "history.jsonl", "metrics.json",
                                  runfolder.LOCK_NAME])


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain"
        plain.write_text("x")                    # what open() gives
        ours = atomic_write(tmp_path / "ours.json", lambda f: f.write("{}"), mode="w")
        replaced = write_json(tmp_path / "plain", {"again": 1})
    finally:
        os.umask(old)
    assert (ours.stat().st_mode & 0o777) == (0o666 & ~umask) == (replaced.stat().st_mode & 0o777)


def test_run_folder_files_are_readable_by_the_group(baseline):
    for f in baseline.parent.iterdir():
        if f.name != runfolder.LOCK_NAME:
            assert (f.stat().st_mode & 0o777) == (0o666 & ~_umask()), f


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# ------------------------------------------------------------------------------------ run-folder lock

def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding the run folder as a run does (runfolder.claim), until killed."""
    code = ("import sys, time\nfrom manidp import runfolder\nwith runfolder.claim(sys.argv[1]):\n"
            "    print('holding', flush=True)\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "holding"
    return p


def test_a_second_run_on_a_held_folder_is_refused_and_a_dead_holder_blocks_nothing(baseline, cifar_mini,
                                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        for argv in (prune_argv(baseline, cifar_mini, out, epochs=1), train_argv(cifar_mini, out, epochs=1)):
            assert_error(capsys, *argv, needles=[f"run folder {out} is in use by another manidp run "
                                                 f"(pid {holder.pid})", "another --out"])
        assert not (out / "checkpoint.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / runfolder.LOCK_NAME).read_text().strip() == str(holder.pid)    # a dead run's lock file
    assert cli.main([str(a) for a in train_argv(cifar_mini, out, epochs=1)]) == 0
    assert ckpt_io.load(out / "checkpoint.pt")["epoch"] == 1


# ------------------------------------------------------------------------------------ off target

def test_a_run_off_its_mac_target_says_so(baseline, cifar_mini, tmp_path, capsys):
    """The official threshold rule (no calibration) after one epoch misses 54.2%: the output and
    metrics.json say so."""
    out = tmp_path / "run"
    assert cli.main([str(a) for a in ["prune", "--arch", "resnet20", "--baseline", baseline, "--target-reduction",
                                      "54.2", "--no-calibrate-macs", "--data", cifar_mini, "--out", out,
                                      "--epochs", "1", *TINY]]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["on_target"] is False and abs(m["macs"]["reduction_pct"] - 54.2) > 1.0
    assert (f"warning: MAC reduction {m['macs']['reduction_pct']:.2f}% misses the target 54.20% by more than"
            in capsys.readouterr().out)
