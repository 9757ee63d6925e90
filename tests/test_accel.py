"""Channel-skipping engine (manidp.accel): same outputs as the masked dense model, and executed MACs
equal to the analytic per-instance count. Latency is measured in benchmarks/bench_accel.py only."""
import pickle
import platform
import shutil
import tarfile

import pytest
import torch
import torch.nn.functional as F

from manidp import accel, native
from manidp.errors import ManidpError
from manidp.macs import InstanceCounter, dense_macs, kept_counts, layer_costs
from manidp.models import build_model

CIFAR_MEAN = torch.tensor([125.3, 123.0, 113.9]).view(1, 3, 1, 1) / 255
CIFAR_STD = torch.tensor([63.0, 62.1, 66.7]).view(1, 3, 1, 1) / 255
NEVER = 1e9             # a threshold no saliency reaches (clamp is 1000): the gate prunes everything
ALWAYS = -10000.0       # the gates' initial threshold: everything kept
# Engine options per kernel: the PyTorch kernels (oneDNN conv on channels-last maps, the default
# layout; the same on NCHW maps; im2col + GEMM for every block) and the C kernel (stem included; the
# channels_last option only concerns the PyTorch kernels, so both native rows must agree).
KERNELS = {"conv": {"kernel": "torch", "mm_max_pixels": 0},
           "conv-nchw": {"kernel": "torch", "mm_max_pixels": 0, "channels_last": False},
           "gemm": {"kernel": "torch", "mm_max_pixels": 10**9},
           "native": {"kernel": "native"},
           "native-nchw": {"kernel": "native", "channels_last": False}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The engine runs many small ops per instance; on a shared 2-core machine two OpenMP threads
    wait on each other at every op (20-40x slower here under load). Equivalence does not depend on
    the thread count; the benchmark measures speed with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cifar_images(cifar_mini):
    """The first 8 images of the real CIFAR-10 test set, normalised."""
    with tarfile.open(cifar_mini) as tar:
        batch = pickle.load(tar.extractfile("cifar-10-batches-py/test_batch"), encoding="latin1")
    x = torch.as_tensor(batch["data"][:8]).view(-1, 3, 32, 32).float() / 255
    return (x - CIFAR_MEAN) / CIFAR_STD


def gated(arch, x, remain=0.5, seed=0):
    """A gated model with random gates and BN statistics, thresholds keeping ~``remain`` on ``x``."""
    torch.manual_seed(seed)
    model = accel.randomize_(build_model(arch, gated=True), x, seed=seed)
    return accel.calibrate_thresholds_(model, x, remain)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def check_equivalent(model, x, strategy="loop", **engine_options):
    """Engine vs masked dense model on ``x``: outputs, kept counts, and (loop) executed MACs."""
    with torch.no_grad():
        ref = model(x)
    kept = kept_counts(model)
    if engine_options.get("kernel") == "native" and native._compiler() is None:
        pytest.skip("no C compiler: the native kernel cannot be built here")
    engine = accel.convert(model, **engine_options)
    assert engine.kernel == engine_options.get("kernel", engine.kernel)
    out = engine(x, strategy=strategy)
    assert rel_err(out, ref) < 1e-4
    assert torch.equal(engine.kept, kept)
    if strategy == "loop":
        expected = InstanceCounter(model, x.shape[-1]).count(kept).tolist()
        assert engine.executed_macs == expected
    return engine, out


# -- equivalence with random (per-instance) masks ---------------------------------------------------

@pytest.mark.parametrize("arch,kernel", [("resnet20", "conv"), ("resnet20", "conv-nchw"), ("resnet20", "gemm"),
                                         ("resnet56", "gemm"), ("resnet20", "native"),
                                         ("resnet56", "native")])
def test_cifar_real_images(arch, kernel, cifar_images):
    model = gated(arch, cifar_images)
    engine, _ = check_equivalent(model, cifar_images, **KERNELS[kernel])
    # The masks really are dynamic: instances keep different channel counts.
    assert len({tuple(k) for k in engine.kept.tolist()}) > 1


def test_cifar_resnet110_and_32(cifar_images):
    for arch in ("resnet32", "resnet110"):
        check_equivalent(gated(arch, cifar_images[:4], remain=0.6), cifar_images[:4])


@pytest.mark.parametrize("arch,size,kernel", [("resnet18", 64, "conv"), ("resnet18", 112, "gemm"),
                                              ("resnet34", 64, "conv"), ("resnet34", 64, "native"),
                                              # odd map sizes (50, 25, 13, 7, 4): tile and
                                              # padded-width edges of the C kernel
                                              ("resnet18", 100, "native"),
                                              ("resnet18", 100, "native-nchw"),
                                              # an odd stem width (49): the max-pool's last
                                              # window ends past the map
                                              ("resnet18", 98, "native")])
def test_imagenet_random_inputs(arch, size, kernel):
    x = torch.randn(2, 3, size, size)
    check_equivalent(gated(arch, x), x, **KERNELS[kernel])


@pytest.mark.parametrize("arch,kernel", [("resnet18", "conv"), ("resnet18", "native"), ("resnet34", "native")])
def test_imagenet_224(arch, kernel):
    x = torch.randn(1, 3, 224, 224)
    check_equivalent(gated(arch, x, remain=0.45), x, **KERNELS[kernel])


def test_native_threads_give_identical_outputs():
    """The C kernel splits whole output tiles between threads (batch 1), or whole instances (batch
    > 1), each summed in the same order, so neither the thread count nor the batch path can change a
    bit of the pooled features the FC reads (the FC itself is PyTorch's, whose GEMM may split its
    sums differently per thread count; the C kernel's own FC, run by the batch path, sums in a
    fixed order, so its logits do not change either)."""
    x = torch.randn(3, 3, 96, 96)
    model = gated("resnet18", x)
    if native._compiler() is None:
        pytest.skip("no C compiler")
    engine = accel.convert(model, kernel="native")
    runs, logit_runs = [], []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                singles = [engine._blocks_native(x[i:i + 1]) for i in range(len(x))]
                pooled, logits, macs, kept = engine._network_native(x)
            runs.append(torch.cat([p for p, _, _ in singles]))
            logit_runs.append(logits)
            with torch.inference_mode():      # batch 1: every thread on the one instance
                assert torch.equal(engine._network_native(x[:1])[1][0], logits[0])
            assert torch.equal(pooled, runs[-1])
            assert macs == [m for _, m, _ in singles] and kept.tolist() == [c for _, _, c in singles]
    finally:
        torch.set_num_threads(1)
    assert all(torch.equal(r, runs[0]) for r in runs)
    assert all(torch.equal(r, logit_runs[0]) for r in logit_runs)


@pytest.mark.parametrize("arch,size", [("resnet56", 32), ("resnet18", 64)])
def test_native_batch_runs_instances_in_parallel(arch, size):
    """Batch > 1 with several threads: whole instances per thread (manidp_forward), each still at
    its own executed cost, equal to the masked model and to one-at-a-time runs."""
    x = torch.randn(5, 3, size, size)
    model = gated(arch, x)
    torch.set_num_threads(2)
    try:
        engine, out = check_equivalent(model, x, kernel="native")
    finally:
        torch.set_num_threads(1)
    singles = torch.cat([engine(x[i:i + 1]) for i in range(len(x))])
    assert rel_err(out, singles) < 1e-5


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 compiler flag")
def test_native_portable_build(monkeypatch, tmp_path):
    """The kernel built without AVX-512 (8-wide vectors, a 6 x 16 register tile: what an AVX2-only
    CPU gets) computes the same as the masked model."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-mno-avx512f"])
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_reason", None)
    monkeypatch.setenv("MANIDP_CACHE", str(tmp_path))
    assert native.load() is not None, native.why_unavailable()
    x = torch.randn(2, 3, 100, 100)
    check_equivalent(gated("resnet18", x), x, kernel="native")
    assert list((tmp_path / "kernels").glob("skip_block-*.so"))


def test_native_build_is_keyed_by_every_kernel_source(monkeypatch, tmp_path):
    """The cached library is named by a hash of skip_block.c and the headers it includes: editing
    gemm.h alone must give a new build, never the stale one."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    src = tmp_path / "src"
    shutil.copytree(native.SOURCE.parent, src)
    monkeypatch.setattr(native, "SOURCE", src / native.SOURCE.name)
    monkeypatch.setenv("MANIDP_CACHE", str(tmp_path / "cache"))
    first = native._build(native._compiler())
    assert native._build(native._compiler()) == first          # unchanged sources: the cached build
    header = src / "gemm.h"
    header.write_text(header.read_text() + "\n/* edited */\n")
    second = native._build(native._compiler())
    assert second != first and second.is_file()


@pytest.mark.skipif(native.cpu_isa() != "AVX-512", reason="needs an AVX-512 CPU to run both builds")
def test_native_avx2_build_equals_avx512_build(monkeypatch, tmp_path):
    """On an AVX-512 machine, the kernel built for AVX2 (8-wide vectors, 6 x 16 tile) and the native
    AVX-512 build (16-wide, 6 x 64) make the same gate decisions, run the same MACs and give the
    same outputs (each GEMM output sums its K terms in the same order in both; only the vector
    partial sums of the gates' means differ), and both equal the masked model."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    x = torch.randn(2, 3, 64, 64)
    model = gated("resnet18", x)
    runs = {}
    for isa, extra in (("AVX-512", []), ("AVX2", ["-mno-avx512f"])):
        monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, *extra])
        monkeypatch.setattr(native, "_lib", None)
        monkeypatch.setattr(native, "_reason", None)
        monkeypatch.setenv("MANIDP_CACHE", str(tmp_path))
        assert native.kernel_isa() == isa, native.why_unavailable()
        engine, out = check_equivalent(model, x, kernel="native")
        runs[isa] = (out, engine.executed_macs, engine.kept)
    (a, macs_a, kept_a), (b, macs_b, kept_b) = runs.values()
    assert macs_a == macs_b and torch.equal(kept_a, kept_b)
    assert rel_err(b, a) < 1e-5


def test_native_unavailable_falls_back(monkeypatch):
    model = build_model("resnet20", gated=True).eval()
    monkeypatch.setattr(native, "load", lambda: None)
    monkeypatch.setattr(native, "why_unavailable", lambda: "no C compiler found")
    assert accel.convert(model).kernel == "torch"
    with pytest.raises(ManidpError, match="kernel='native' is unavailable.*no C compiler"):
        accel.convert(model, kernel="native")
    with pytest.raises(ManidpError, match="unknown kernel 'cuda'"):
        accel.convert(model, kernel="cuda")


# -- extreme masks -------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["conv", "native"])
@pytest.mark.parametrize("arch,size", [("resnet20", 32), ("resnet18", 32)])
def test_all_open_runs_at_dense_cost(arch, size, kernel):
    x = torch.randn(2, 3, size, size)
    model = gated(arch, x)
    for g in model.gates():
        g.threshold.fill_(ALWAYS)
    engine, _ = check_equivalent(model, x, **KERNELS[kernel])
    assert engine.executed_macs == [dense_macs(model, size)] * 2
    assert engine.kept.tolist() == [[g.c_out for g in model.gates()]] * 2


@pytest.mark.parametrize("kernel", KERNELS)
def test_all_closed_but_one(kernel):
    x = torch.randn(2, 3, 32, 32)
    model = accel.randomize_(build_model("resnet18", gated=True), x)
    x = x[:1]

    def keep_top1(gate, _inputs, _output):
        # Threshold halfway between the two largest saliencies, set as each gate runs (like
        # calibrate_thresholds_), so gate 2 sees gate 1's final single-channel mask.
        top = gate.saliency.topk(2, dim=1).values[0]
        gate.threshold.fill_(float(top.mean()))
        gate.keep = gate.saliency >= gate.threshold
        return gate.saliency * gate.keep

    hooks = [g.register_forward_hook(keep_top1) for g in model.gates()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    engine, _ = check_equivalent(model, x, **KERNELS[kernel])
    assert engine.kept.tolist() == [[1] * len(model.gates())]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("arch,size", [("resnet20", 32), ("resnet18", 32)])
@pytest.mark.parametrize("pruned", ["gate1", "gate2", "both"])
def test_block_with_every_channel_pruned(arch, size, pruned, kernel):
    """Gate 1 all pruned: conv_b has no input, its output is the folded BN bias times m2; gate 2
    all pruned: the block is shortcut + ReLU. Blocks with and without a projection shortcut."""
    x = torch.randn(2, 3, size, size)
    model = gated(arch, x)
    blocks = model.blocks()
    for block in (blocks[1], next(b for b in blocks if b.downsample is not None)):
        if pruned in ("gate1", "both"):
            block.gate1.threshold.fill_(NEVER)
        if pruned in ("gate2", "both"):
            block.gate2.threshold.fill_(NEVER)
    engine, _ = check_equivalent(model, x, **KERNELS[kernel])
    gate_index = {id(g): i for i, g in enumerate(model.gates())}
    i1 = gate_index[id(blocks[1].gate1)]
    if pruned in ("gate1", "both"):
        assert engine.kept[:, i1].eq(0).all()
        if pruned == "gate1":       # bias path: gate 2 still keeps channels from its FC2 bias
            assert engine.kept[:, i1 + 1].gt(0).all()
    if pruned in ("gate2", "both"):
        assert engine.kept[:, i1 + 1].eq(0).all()


def test_whole_network_pruned():
    x = torch.randn(2, 3, 32, 32)
    model = gated("resnet20", x)
    for g in model.gates():
        g.threshold.fill_(NEVER)
    engine, _ = check_equivalent(model, x)
    fixed = sum(c.dense_macs for c in layer_costs(model) if c.kind in ("stem", "shortcut", "fc"))
    assert engine.executed_macs == [fixed] * 2


# -- batch strategies ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,size", [("resnet20", 32), ("resnet18", 64)])
def test_union_equals_loop(arch, size, cifar_images):
    x = cifar_images[:6] if arch == "resnet20" else torch.randn(3, 3, size, size)
    model = gated(arch, x)
    engine, loop_out = check_equivalent(model, x, "loop")
    loop_macs = engine.executed_macs
    union_out = engine(x, strategy="union")
    assert rel_err(union_out, loop_out) < 1e-5
    assert torch.equal(engine.kept, kept_counts(model))
    # Every instance is charged the union's cost: at least its own, at most dense.
    assert len(set(engine.executed_macs)) == 1
    assert all(loop_macs[i] <= engine.executed_macs[i] <= dense_macs(model, size)
               for i in range(len(x)))
    # Batch 1: both strategies are the same computation.
    engine(x[:1], strategy="union")
    assert engine.executed_macs == loop_macs[:1]


def test_union_with_pruned_block(cifar_images):
    x = cifar_images[:4]
    model = gated("resnet20", x)
    model.blocks()[3].gate1.threshold.fill_(NEVER)
    check_equivalent(model, x, "union")


# -- helpers and errors -------------------------------------------------------------------------------

def test_bn_folding_is_exercised(cifar_images):
    model = gated("resnet20", cifar_images[:2])
    for bn in (model.bn1, model.blocks()[0].bn2):
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    w, b = accel.fold_bn(model.conv1, model.bn1)
    x = cifar_images[:2]
    with torch.no_grad():
        ref = model.bn1(model.conv1(x))
    assert rel_err(F.conv2d(x, w, b, padding=1), ref) < 1e-5


@pytest.mark.parametrize("size,stride", [(7, 1), (14, 2), (9, 2), (8, 1)])
def test_im2col_matches_unfold(size, stride):
    x = torch.randn(5, size, size)
    cols, h, w = accel.im2col3x3(x, stride)
    assert torch.equal(cols, F.unfold(x[None], 3, padding=1, stride=stride)[0])
    assert (h, w) == F.conv2d(x[None], torch.zeros(1, 5, 3, 3), stride=stride, padding=1).shape[2:]


@pytest.mark.parametrize("size", [112, 111, 8])
def test_max_pool_matches(size):
    x = torch.randn(1, 4, size, size).relu()
    assert torch.equal(accel.max_pool_3x3s2(x), F.max_pool2d(x, 3, 2, 1))


def test_rejects_plain_train_mode_and_unknown_strategy():
    with pytest.raises(ManidpError, match="gated"):
        accel.convert(build_model("resnet20").eval())
    with pytest.raises(ManidpError, match="eval"):
        accel.convert(build_model("resnet20", gated=True))            # nn.Module default: train mode
    from manidp.methods import get_method
    with pytest.raises(ManidpError, match="FbsGate"):
        accel.convert(get_method("fbs").build("resnet20", 10).eval())
    engine = accel.convert(build_model("resnet20", gated=True).eval())
    with pytest.raises(ManidpError, match="strategy"):
        engine(torch.randn(1, 3, 32, 32), strategy="bogus")


def test_engine_is_a_snapshot():
    x = torch.randn(2, 3, 32, 32)
    model = gated("resnet20", x)
    engine = accel.convert(model)
    before = engine(x)
    with torch.no_grad():
        for g in model.gates():
            g.threshold.fill_(NEVER)
        for p in model.parameters():
            p.mul_(2)
    assert torch.equal(engine(x), before)


@pytest.mark.parametrize("size,stride", [(7, 1), (14, 2), (9, 2)])
def test_im2row_is_tap_major_im2col(size, stride):
    x = torch.randn(5, size, size)
    rows, h, w = accel.im2row3x3(x, stride)
    cols = F.unfold(x[None], 3, padding=1, stride=stride)[0]           # (channel, kh, kw) rows
    assert torch.equal(rows, cols.view(5, 9, h * w).permute(2, 1, 0).reshape(h * w, 45))
