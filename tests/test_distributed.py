"""Multi-process training (DistributedDataParallel, gloo on CPU) against one process.

Two processes at half the batch each see the same global batches as one process, so they must end
with the same model, thresholds and evaluation statistics; an interrupted two-process run must
resume to the uninterrupted result. Processes are spawned here on 127.0.0.1, one thread each, on a
few hundred real CIFAR-10 rows.

The end-to-end runs compute in float64 (:func:`_float64`, test only). In float32 the two runs agree
only as well as training agrees with itself: reduction orders differ (1 vs 2 processes, and just as
much 1 vs 2 threads), and a few SGD steps of a barely trained network amplify 1e-7 rounding to
1e-4..1e-2 in the weights, so a float32 test would prove nothing. In float64 they agree to 1e-12,
which only an exact implementation does. The pieces that are float32-sensitive (BatchNorm over the
global batch, the gathered similarity loss) are also tested in float32 below.
"""
import json
import os
import pickle
import socket
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manidp import checkpoint as ckpt_io
from manidp import cli, distributed
from manidp.data import TensorLoader, imagefolder_loaders, load_cifar, make_synthetic_imagefolder
from manidp.errors import ManidpError
from manidp.losses import LossOptions, similarity_loss
from manidp.train import TrainConfig, run

# 117 = 64 + 53 training rows and 61 test rows at a global batch of 64: the last training batch and
# the test batch split unevenly over two processes (27 / 26, 31 / 30).
N_TRAIN, N_TEST, BATCH = 117, 61, 64
TIGHT = dict(rel=1e-9, abs=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, world: int = 2) -> None:
    mp.spawn(fn, args=(world, _free_port(), *args), nprocs=world)


def _join(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives process ``rank`` of ``world``."""
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))


def _float64() -> None:
    """Train in float64 (in a spawned process only): parameters, inputs and the losses' upcasts."""
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = lambda self: self if self.is_floating_point() else self.double()
    TensorLoader.normalise = lambda self, x: x.double().mul_(self._scale.double()).add_(self._shift.double())


@pytest.fixture(scope="module")
def rows(cifar_mini, tmp_path_factory) -> Path:
    """The first rows of the real CIFAR-10 subset as a small pickle folder (fast for every process)."""
    a = load_cifar(cifar_mini)
    root = tmp_path_factory.mktemp("rows") / "cifar-10-batches-py"
    root.mkdir()
    for name, x, y in (("data_batch_1", a.train_x[:N_TRAIN], a.train_y[:N_TRAIN]),
                       ("test_batch", a.test_x[:N_TEST], a.test_y[:N_TEST])):
        batch = {"data": x.reshape(len(x), -1).numpy(), "labels": y.tolist()}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": list(a.classes)}))
    return root


def _configs(rows: Path, tmp: Path, n: int) -> tuple[TrainConfig, TrainConfig]:
    """The baseline and the ManiDP run of ``n`` processes; ManiDP always starts from the one-process
    baseline, so that its comparison does not inherit the baselines' (1e-13) difference."""
    common = dict(arch="resnet20", dataset="cifar10", data=str(rows), batch_size=BATCH, device="cpu",
                  lr=0.05, epochs=2)
    baseline = TrainConfig(method="baseline", out=str(tmp / f"baseline{n}"), **common)
    manidp = TrainConfig(method="manidp", out=str(tmp / f"manidp{n}"), baseline=str(tmp / "baseline1" / "checkpoint.pt"),
                         remain_rate=0.5, grad_clip=5.0, losses=LossOptions(lambda_sparse=0.1, lambda_sim=0.1),
                         **common)
    return baseline, manidp


def _evaluate_argv(rows: Path, tmp: Path, out: str) -> list[str]:
    return ["evaluate", "--checkpoint", str(tmp / "manidp1" / "checkpoint.pt"), "--data", str(rows),
            "--batch-size", "40", "--device", "cpu", "--quiet", "--out", str(tmp / out)]


def _runs_worker(rank, world, port, rows, tmp):
    """Everything one process (world 1) or each of two processes (world 2) trains and evaluates."""
    _join(rank, world, port)
    _float64()
    baseline, manidp = _configs(rows, tmp, world)
    if world > 1:   # one process group for all the runs below; run() joins it
        dist.init_process_group("gloo")
    run(baseline, show_progress=False)
    run(manidp, show_progress=False)
    if world > 1:
        resumed = TrainConfig.from_dict({**asdict(manidp), "out": str(tmp / "resumed2")})
        assert run(resumed, stop_after_epoch=1, show_progress=False) == {"stopped_after_epoch": 1}
        run(resumed, show_progress=False)
    assert cli.main(_evaluate_argv(rows, tmp, f"eval{world}.json")) == 0    # the same checkpoint: manidp1's
    if world > 1:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(rows, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    spawn(_runs_worker, rows, tmp, world=1)
    spawn(_runs_worker, rows, tmp, world=2)
    return tmp


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _same_evaluation(a: dict, b: dict, tol=TIGHT) -> None:
    assert a["instances"] == b["instances"] == N_TEST
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
    assert a["loss"] == pytest.approx(b["loss"], **tol)
    ma, mb = a["macs"], b["macs"]
    for k in ("macs_mean", "macs_std", "macs_min", "macs_max", "reduction_pct"):
        assert ma[k] == pytest.approx(mb[k], **tol), k
    assert ma["histogram"] == mb["histogram"]
    assert ma["keep_rates"] == pytest.approx(mb["keep_rates"], **tol)


def _same_model(a: Path, b: Path) -> None:
    ma, mb = (ckpt_io.load(p / "checkpoint.pt")["model"] for p in (a, b))
    for k in ma:                                # BatchNorm running statistics and thresholds included
        assert torch.allclose(ma[k], mb[k], rtol=1e-9, atol=1e-10), k


def test_baseline_two_processes_match_one(runs):
    one, two = _history(runs / "baseline1"), _history(runs / "baseline2")
    assert [r["steps"] for r in two] == [2, 2]                  # global steps, as one process
    for a, b in zip(one, two):
        assert a["train_ce"] == pytest.approx(b["train_ce"], **TIGHT)
        assert a["train_top1"] == pytest.approx(b["train_top1"], **TIGHT)
    _same_model(runs / "baseline1", runs / "baseline2")
    _same_evaluation(_metrics(runs / "baseline1"), _metrics(runs / "baseline2"))
    assert json.loads((runs / "baseline2" / "env.json").read_text())["processes"] == 2


def test_manidp_two_processes_match_one(runs):
    one, two = _history(runs / "manidp1"), _history(runs / "manidp2")
    for a, b in zip(one, two):
        for k in ("reference_loss", "train_ce", "train_sparse", "train_sim", "train_top1"):
            assert a[k] == pytest.approx(b[k], **TIGHT), k   # reference_loss: incl. the pass before epoch 0
        assert a["thresholds"] == pytest.approx(b["thresholds"], **TIGHT)
    m1, m2 = _metrics(runs / "manidp1"), _metrics(runs / "manidp2")
    assert m1["macs"]["reduction_pct"] > 10                    # it did prune, so thresholds matter
    assert m1["thresholds"] == pytest.approx(m2["thresholds"], **TIGHT)
    _same_model(runs / "manidp1", runs / "manidp2")
    _same_evaluation(m1, m2)


def test_two_process_resume_matches_uninterrupted(runs):
    assert [r["epoch"] for r in _history(runs / "resumed2")] == [1, 2]
    _same_model(runs / "manidp2", runs / "resumed2")
    a, b = _metrics(runs / "manidp2"), _metrics(runs / "resumed2")
    assert a["thresholds"] == b["thresholds"]
    _same_evaluation(a, b)


def test_evaluate_command_two_processes(runs):
    one, two = (json.loads((runs / f"eval{n}.json").read_text()) for n in (1, 2))
    _same_evaluation(one, two)
    assert one["thresholds"] == two["thresholds"]


# --------------------------------------------------------------------------- pieces, in two processes

def _pieces_worker(rank, world, port, out):
    """SyncBatchNorm2d and the gathered similarity loss on this process's rows of fixed tensors."""
    _join(rank, world, port)
    with distributed.launch("cpu") as w:
        x, weights, feats, sal = _piece_inputs()
        bn = distributed.sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), w.device)[0]
        part = distributed.shard_slice(len(x), w.rank, w.size)
        xr = x[part].clone().requires_grad_()
        (bn(xr) * weights[part]).sum().backward()
        f = [t[part].clone().requires_grad_() for t in feats]
        s = [t[part].clone().requires_grad_() for t in sal]
        net = SimpleNamespace(gates=lambda: [SimpleNamespace(feature=a, saliency=b) for a, b in zip(f, s)])
        sim = distributed.global_similarity_loss(net, len(x))
        (sim * w.size).backward()                         # as manidp_loss weights it
        torch.save(dict(part=part, bn_grad=xr.grad, bn_running=(bn.running_mean, bn.running_var), sim=sim.detach(),
                        f_grad=[t.grad for t in f], s_grad=[t.grad for t in s]), out / f"rank{w.rank}.pt")


def _piece_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 4, 4, generator=g) * 0.1 + 50.0          # |mean| >> std: no cancellation allowed
    weights = torch.randn(7, 3, 4, 4, generator=g)                  # a loss sum(w * BN(x)), gradient O(1)
    feats = [torch.randn(7, c, generator=g) for c in (4, 6)]
    sal = [torch.rand(7, c, generator=g) for c in (4, 6)]
    return x, weights, feats, sal


def test_sync_batchnorm_and_global_similarity_loss(tmp_path):
    spawn(_pieces_worker, tmp_path)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    x, weights, feats, sal = _piece_inputs()
    # one process, the whole batch: BatchNorm2d and losses.similarity_loss
    bn = torch.nn.BatchNorm2d(3)
    xg = x.clone().requires_grad_()
    (bn(xg) * weights).sum().backward()
    f = [t.clone().requires_grad_() for t in feats]
    s = [t.clone().requires_grad_() for t in sal]
    sim = similarity_loss(SimpleNamespace(gates=lambda: [SimpleNamespace(feature=a, saliency=b) for a, b in zip(f, s)]))
    sim.backward()
    for r in got:
        assert torch.allclose(r["bn_grad"], xg.grad[r["part"]], rtol=1e-4, atol=1e-4)
        assert torch.allclose(r["bn_running"][0], bn.running_mean) and torch.allclose(r["bn_running"][1], bn.running_var)
        assert float(r["sim"]) == pytest.approx(float(sim.detach()), rel=1e-6)
    # DDP averages the processes' gradients of shared weights; for the inputs each process holds
    # its own rows, which together must be the one-process gradient (scaled by DDP's 1 / world).
    for i in range(len(f)):
        assert torch.allclose(torch.cat([r["f_grad"][i] for r in got]) / 2, f[i].grad, rtol=1e-5, atol=1e-7)
        assert torch.allclose(torch.cat([r["s_grad"][i] for r in got]) / 2, s[i].grad, rtol=1e-5, atol=1e-7)
    assert [r["part"] for r in got] == [slice(0, 4), slice(4, 7)]


# --------------------------------------------------------------------------- sharding, in one process

def test_shards_of_every_global_batch_are_the_one_process_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (53, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(53)
    mean, std = (0.5,) * 3, (0.25,) * 3
    one = list(TensorLoader(x, y, 16, mean, std, train=True, seed=3))
    parts = [list(TensorLoader(x, y, 16, mean, std, train=True, seed=3, shard=(r, 3))) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    for i, (xb, yb) in enumerate(one):         # same instances, same crops and flips, rank order
        assert torch.equal(torch.cat([p[i][1] for p in parts]), yb)
        assert torch.equal(torch.cat([p[i][0] for p in parts]), xb)
    assert [TensorLoader(x, y, 16, mean, std, train=True, shard=(r, 3)).shard_samples for r in range(3)] == [20, 17, 16]


def test_image_folder_shards_are_the_one_process_batch(tmp_path):
    root = make_synthetic_imagefolder(tmp_path / "img", num_classes=3, per_class=5, size=16)
    one, _, _ = imagefolder_loaders(root, 6, workers=0, image_size=12, seed=2)
    parts = [imagefolder_loaders(root, 6, workers=0, image_size=12, seed=2, shard=(r, 2))[0] for r in (0, 1)]
    for loader in (one, *parts):
        loader.set_epoch(1)
    parts = [list(p) for p in parts]
    for i, (xb, yb) in enumerate(one):         # DataLoader's own shuffle, and per-instance augmentation
        assert torch.equal(torch.cat([p[i][1] for p in parts]), yb)
        assert torch.equal(torch.cat([p[i][0] for p in parts]), xb)


def test_bad_world_sizes_one_line():
    assert distributed.shard_sizes(53, 4) == [14, 13, 13, 13]
    with pytest.raises(ManidpError, match=r"--batch-size 30 is the global batch and must be divisible by the 4"):
        distributed.check_shardable(245, 30, 4)
    with pytest.raises(ManidpError, match=r"last training batch holds 1 instance"):
        distributed.check_shardable(129, 64, 2)
    distributed.check_shardable(245, 30, 1)              # one process: anything goes
