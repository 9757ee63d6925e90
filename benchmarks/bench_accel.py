"""Latency of channel skipping (manidp.accel) against the dense and the masked dense model (issue 4).

For each configuration the gated model gets random gates and BN statistics (no trained checkpoint
is needed) and one keep fraction for all gates, bisected so that the mean MAC reduction over the
benchmark instances is the paper's ManiDP-B point. Then, side by side in one process, batch 1:

    dense            the plain ResNet with the same weights (torch eager, BN unfolded, NCHW)
    dense-nhwc       the same in channels-last memory format, which oneDNN runs faster on CPU
    onnxruntime      the plain ResNet exported to ONNX, in ONNX Runtime (CPU provider, every graph
                     optimisation, the same thread count)
    openvino         the same ONNX file in OpenVINO (CPU, latency hint, the same thread count,
                     float32); both are optional (pip install -e .[bench]) and skipped, with a
                     note, where not installed. Speedups are against the fastest dense variant.
    masked           the gated model as-is: dense convs times masks (the official code's way)
    engine           manidp.accel, executing only kept channels (the C kernel, kernel="auto"; the
                     PyTorch kernels where no C compiler is found: see env.engine_kernel)
    engine-torch     the same with the PyTorch kernels (kernel="torch"): gathered weights, oneDNN
                     conv or im2col + MKL GEMM
    engine-all-open  the engine with every gate open: dense cost through the engine's own code
                     (BN folded, its own GEMM), to separate skipping from kernel efficiency

Each dense engine's logits are checked against PyTorch's (max abs diff in the JSON and the table).
Latency: median per image over --repeats passes over the instances, after warm-up; variants are
interleaved in every pass (rotating order) so background load hits them alike. Peak memory: a
fresh subprocess per variant (ru_maxrss). Batch-32 throughput: every dense variant, masked, engine
"loop", engine "union". The JSON records each engine's version, the CPU's vector ISA and the one the
C kernel was built for (MANIDP_CFLAGS=-mno-avx512f builds the AVX2 kernel on an AVX-512 machine),
oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA=AVX2 runs OpenVINO and PyTorch's oneDNN kernels as AVX2;
ONNX Runtime cannot be capped), the command line and the git commit.

    python benchmarks/bench_accel.py --out bench_accel.json
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manidp import accel, dense_engines, latency, native  # noqa: E402
from manidp.latency import DENSE, best_dense, dense_twin, dense_variants  # noqa: E402
from manidp.provenance import git_commit  # noqa: E402
from manidp.macs import InstanceCounter, dense_macs, kept_counts  # noqa: E402
from manidp.io import write_json  # noqa: E402
from manidp.models import ARCHS, build_model  # noqa: E402

# Paper's ManiDP-B MAC reductions (ImageNet) and the CIFAR ResNet-56 row.
TARGETS = {"resnet34": 55.3, "resnet18": 55.1, "resnet56": 62.4}
CIFAR_MINI = ROOT.parent / "shared" / "data" / "cifar10-mini.tgz"
CIFAR_MEAN = torch.tensor([125.3, 123.0, 113.9]).view(1, 3, 1, 1) / 255
CIFAR_STD = torch.tensor([63.0, 62.1, 66.7]).view(1, 3, 1, 1) / 255


def inputs(arch: str, n: int, seed: int) -> torch.Tensor:
    """Real CIFAR-10 test images for CIFAR nets (random if the subset is absent), random
    ImageNet-size inputs otherwise."""
    model = build_model(arch)
    size = model.input_size
    if size == 32 and CIFAR_MINI.is_file():
        with tarfile.open(CIFAR_MINI) as tar:
            data = pickle.load(tar.extractfile("cifar-10-batches-py/test_batch"), encoding="latin1")
        x = torch.as_tensor(data["data"][seed * n:(seed + 1) * n]).view(-1, 3, 32, 32).float() / 255
        return (x - CIFAR_MEAN) / CIFAR_STD
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def target(arch: str, default: float = TARGETS["resnet56"]) -> float:
    """The paper's MAC reduction for ``arch``; other CIFAR ResNets get ResNet-56's point."""
    return TARGETS.get(arch, default)


def prepare(arch: str, n: int, seed: int, reduction_pct: float | None = None) -> tuple[torch.nn.Module, torch.Tensor, float]:
    x = inputs(arch, n, seed)
    torch.manual_seed(seed)
    model = accel.randomize_(build_model(arch, gated=True), x, seed=seed)
    reduction = accel.calibrate_to_reduction_(model, x, reduction_pct or target(arch))
    return model, x, reduction


def all_open(model) -> torch.nn.Module:
    model = copy.deepcopy(model)
    for g in model.gates():
        g.threshold.fill_(-10000.0)
    return model


def variants(model, x: torch.Tensor, engines: tuple[str, ...]) -> tuple[dict, dict]:
    """Every variant timed, and the dense engines' versions, absences and output checks."""
    vs, info = dense_variants(dense_twin(model), x, engines=engines)
    vs.update({"masked": model, "engine": accel.convert(model),
               "engine-torch": accel.convert(model, kernel="torch"),
               "engine-all-open": accel.convert(all_open(model))})
    return vs, info


CLOCK = time.perf_counter


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    return latency.interleaved(fns, repeats, warmup, clock=CLOCK)


def batch1(vs: dict, x: torch.Tensor, repeats: int) -> dict:
    times = latency.batch1_ms(vs, x, repeats, clock=CLOCK)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v)} for k, v in times.items()}


def batch32(vs: dict, xb: torch.Tensor, repeats: int) -> dict:
    fns = {k: (lambda m=vs[k]: m(xb)) for k in (*DENSE, "masked") if k in vs}
    fns.update({"engine-loop": lambda: vs["engine"](xb, strategy="loop"),
                "engine-union": lambda: vs["engine"](xb, strategy="union")})
    times = interleaved(fns, repeats, warmup=1)
    out = {k: {"images_per_s": len(xb) / statistics.median(v)} for k, v in times.items()}
    dense = [k for k in DENSE if k in out]
    out["best_dense"] = max(dense, key=lambda k: out[k]["images_per_s"])
    best_engine = max(("engine-loop", "engine-union"), key=lambda k: out[k]["images_per_s"])
    out["best_engine"] = best_engine
    out["speedup"] = out[best_engine]["images_per_s"] / out[out["best_dense"]]["images_per_s"]
    with torch.inference_mode():
        for strategy in ("loop", "union"):
            vs["engine"](xb, strategy=strategy)
            mean = sum(vs["engine"].executed_macs) / len(xb)
            out[f"engine-{strategy}"]["reduction_pct"] = 100 * (1 - mean / dense_macs(vs["masked"]))
    return out


def profile_blocks(vs: dict, x: torch.Tensor, repeats: int) -> list[dict]:
    """Per-block latency, one instance: PyTorch dense (NHWC), each block alone in ONNX Runtime
    (where installed), the engine, the engine with every gate open and the PyTorch kernels. All-open
    vs ONNX Runtime is the kernel's own efficiency; engine vs all-open is what skipping buys. Each
    engine call gets a fresh copy of the block input (identity blocks update it in place); the
    copy is timed too."""
    dense, engine, torch_engine = vs["dense-nhwc"].model, vs["engine"], vs["engine-torch"]
    opened = vs["engine-all-open"]
    rows = []
    with torch.inference_mode():
        h = dense.stem(x[:1].contiguous(memory_format=torch.channels_last))
        for j, (db, eb, ob, tb) in enumerate(zip(dense.blocks(), engine.blocks, opened.blocks,
                                                 torch_engine.blocks)):
            hh, hw = h.shape[2:]
            fns = {"dense": lambda: db(h),
                   "engine-torch": lambda: tb.forward_one(h.clone(memory_format=torch.channels_last))}
            if "onnxruntime" in vs:
                runners, _ = dense_engines.build(copy.deepcopy(db).to(memory_format=torch.contiguous_format),
                                                 h.contiguous(), engines=("onnxruntime",))
                if runners:
                    hc = h.contiguous()
                    fns["onnxruntime"] = lambda: runners["onnxruntime"](hc)
            if engine.kernel == "native":
                padded = accel.to_padded(h[0])
                fns["engine"] = lambda: eb.forward_native(padded.clone(), hh, hw)
                fns["engine-all-open"] = lambda: ob.forward_native(padded.clone(), hh, hw)
                n1, n2 = eb.forward_native(padded.clone(), hh, hw)[4:6]
            else:
                fns["engine"] = fns["engine-torch"]
                *_, n1, n2 = tb.forward_one(h.clone(memory_format=torch.channels_last))
            times = interleaved(fns, repeats)
            c = db.conv1
            rows.append({"block": j, "in": list(h.shape[1:]), "out_channels": c.out_channels,
                         "stride": c.stride[0], "k1": n1, "k2": n2,
                         **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()}})
            h = db(h)
    return rows


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork+exec, so every probe would report the benchmark process's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(arch: str, variant: str, state: str, threads: int) -> dict:
    """Run in a fresh process: peak RSS after setup and after inference of one variant."""
    torch.set_num_threads(threads)
    model = build_model(arch, gated=True).eval()
    model.load_state_dict(torch.load(state))
    size = model.input_size
    if variant == "dense":
        net = dense_twin(model)
        del model
    elif variant == "masked":
        net = model
    else:
        net = accel.convert(model)
        del model
    gc.collect()
    setup = peak_rss_mb()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        for _ in range(5):
            net(x)
    peak = peak_rss_mb()
    return {"setup_peak_mb": setup, "peak_mb": peak, "inference_growth_mb": peak - setup}


def memory(arch: str, model, threads: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state.pt")
        torch.save(model.state_dict(), state)
        for variant in ("dense", "masked", "engine"):
            cmd = [sys.executable, __file__, "--memory-probe", arch, variant, state,
                   "--threads", str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def run(arch: str, args) -> dict:
    t0 = time.time()
    model, x, reduction = prepare(arch, args.instances, args.seed, target(arch, args.reduction))
    engines = tuple(e for e in args.engines.split(",") if e)
    vs, dense_info = variants(model, x, engines)
    for name, why in dense_info["missing"].items():
        print(f"{arch}: skipping {name}: {why}", file=sys.stderr, flush=True)
    with torch.inference_mode():
        vs["engine"](x)
    executed = vs["engine"].executed_macs
    with torch.no_grad():
        model(x)
    analytic = InstanceCounter(model, x.shape[-1]).count(kept_counts(model)).tolist()
    dense = dense_macs(model)
    theory = dense / (sum(executed) / len(executed))
    result = {"arch": arch, "input_size": x.shape[-1], "instances": len(x),
              "target_reduction_pct": target(arch, args.reduction), "reduction_pct": reduction,
              "dense_macs": dense, "executed_macs_mean": sum(executed) / len(executed),
              "executed_equals_analytic": executed == analytic,
              "theoretical_speedup": theory, "dense_engines": dense_info}
    lat = batch1(vs, x, args.repeats)
    result["batch1"] = lat
    best = best_dense({k: v["median_ms"] for k, v in lat.items()})
    result["best_dense"] = best
    speedup = lat[best]["median_ms"] / lat["engine"]["median_ms"]
    result["speedup"] = speedup
    result["speedup_vs_pytorch_dense"] = min(lat[k]["median_ms"] for k in ("dense", "dense-nhwc")) \
        / lat["engine"]["median_ms"]
    result["speedup_min"] = min(lat[k]["min_ms"] for k in DENSE if k in lat) / lat["engine"]["min_ms"]
    result["fraction_of_theoretical"] = speedup / theory
    result["skipping_speedup"] = lat["engine-all-open"]["median_ms"] / lat["engine"]["median_ms"]
    # The kernel's own efficiency: dense cost through the engine against the best dense engine.
    result["all_open_vs_best_dense"] = lat[best]["median_ms"] / lat["engine-all-open"]["median_ms"]
    result["speedup_torch_kernels"] = lat[best]["median_ms"] / lat["engine-torch"]["median_ms"]
    if args.profile:
        result["blocks"] = profile_blocks(vs, x, args.repeats)
    if not args.skip_batch:
        xb = inputs(arch, args.batch, args.seed + 1)
        result["batch"] = {"size": args.batch, **batch32(vs, xb, args.batch_repeats)}
    if not args.skip_memory:
        result["memory"] = memory(arch, model, args.threads)
    result["seconds"] = time.time() - t0
    return result


DENSE_LABELS = latency.DENSE_NAMES


def _ms(d: dict, key: str, field: str = "median_ms", fmt: str = ".1f") -> str:
    return format(d[key][field], fmt) if key in d else "-"


def table(results: list[dict]) -> str:
    """Markdown tables of the results; '-' where a dense engine was not installed."""
    dense_cols = " | ".join(f"{v} ms" for v in DENSE_LABELS.values())
    lines = [f"| model | MAC red. | theory | {dense_cols} | masked ms | engine ms | best dense | "
             "speedup vs best dense | of theory | engine all-open ms | all-open vs best dense | "
             "engine (PyTorch kernels) ms |", "|---" * 15 + "|"]
    # Medians per image; speedup = fastest dense / engine; theory = dense MACs / executed MACs.
    for r in results:
        b = r["batch1"]
        dense = " | ".join(_ms(b, k) for k in DENSE_LABELS)
        lines.append(
            f"| {r['arch']} @{r['input_size']} | {r['reduction_pct']:.1f}% | "
            f"{r['theoretical_speedup']:.2f}x | {dense} | {_ms(b, 'masked')} | {_ms(b, 'engine', fmt='.2f')} | "
            f"{DENSE_LABELS[r['best_dense']]} | {r['speedup']:.2f}x | "
            f"{100 * r['fraction_of_theoretical']:.0f}% | {_ms(b, 'engine-all-open', fmt='.2f')} | "
            f"{r['all_open_vs_best_dense']:.2f}x | {_ms(b, 'engine-torch')} |")
    diffs = [f"{r['arch']}: " + ", ".join(f"{DENSE_LABELS[k]} {v:.1e}" for k, v in
                                          r["dense_engines"]["max_abs_diff"].items())
             for r in results if r["dense_engines"]["max_abs_diff"]]
    if diffs:
        lines += ["", "Dense engines' max |logit - PyTorch logit|: " + "; ".join(diffs)]
    if any("batch" in r for r in results):
        dense_cols = " | ".join(f"{v} img/s" for v in DENSE_LABELS.values())
        lines += ["", f"| model | batch | {dense_cols} | masked img/s | loop img/s | union img/s | "
                  "union MAC red. | best engine vs best dense |", "|---" * 11 + "|"]
        for r in results:
            if "batch" in r:
                b = r["batch"]
                dense = " | ".join(_ms(b, k, "images_per_s") for k in DENSE_LABELS)
                lines.append(
                    f"| {r['arch']} | {b['size']} | {dense} | {_ms(b, 'masked', 'images_per_s')} | "
                    f"{_ms(b, 'engine-loop', 'images_per_s')} | {_ms(b, 'engine-union', 'images_per_s')} | "
                    f"{b['engine-union']['reduction_pct']:.1f}% | {b['speedup']:.2f}x "
                    f"({b['best_engine'][7:]} vs {DENSE_LABELS[b['best_dense']]}) |")
    if any("memory" in r for r in results):
        lines += ["", "| model | dense peak MB | masked peak MB | engine peak MB |", "|---|---|---|---|"]
        for r in results:
            if "memory" in r:
                m = r["memory"]
                lines.append(f"| {r['arch']} | {m['dense']['peak_mb']:.0f} | "
                             f"{m['masked']['peak_mb']:.0f} | {m['engine']['peak_mb']:.0f} |")
    for r in results:
        if "blocks" in r:
            lines += ["", f"Per block, {r['arch']}, batch 1 (median ms):", "",
                      "| block | input | k1 | k2 | PyTorch NHWC | ONNX Runtime | engine all-open | engine | "
                      "engine (PyTorch kernels) | all-open / ONNX Runtime | engine / ONNX Runtime |",
                      "|---" * 11 + "|"]
            for b in r["blocks"]:
                ort = b.get("onnxruntime_ms")
                ms = [format(b[k], ".3f") if b.get(k) else "-" for k in
                      ("dense_ms", "onnxruntime_ms", "engine-all-open_ms", "engine_ms", "engine-torch_ms")]
                ratios = [f"{b[k] / ort:.2f}" if ort and k in b else "-"
                          for k in ("engine-all-open_ms", "engine_ms")]
                lines.append(f"| {b['block']} | {'x'.join(map(str, b['in']))} | {b['k1']} | {b['k2']} | "
                             + " | ".join(ms + ratios) + " |")
    return "\n".join(lines)


VARIANT_LABELS = {**{k: f"dense, {v}" for k, v in DENSE_LABELS.items()},
                  "masked": "masked (official way)", "engine-torch": "engine, PyTorch kernels",
                  "engine-all-open": "engine, C kernel, all gates open", "engine": "engine, C kernel"}


def plot(data: dict, path: str) -> None:
    """Batch-1 latency per model and variant, relative to the fastest dense engine (bars), with the
    theoretical time (dense / theoretical speedup) as a line: what --plot writes, from the JSON.
    Variants a run did not time (a dense engine not installed) are left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = data["results"]
    fig, ax = plt.subplots(figsize=(1.2 + 2.6 * len(results), 3.6))
    shown = {k: v for k, v in VARIANT_LABELS.items() if any(k in r["batch1"] for r in results)}
    width = 0.8 / len(shown)
    for j, (key, label) in enumerate(shown.items()):
        xs, ys, ms = [], [], []
        for i, r in enumerate(results):
            lat = r["batch1"]
            if key in lat:
                xs.append(i + (j - (len(shown) - 1) / 2) * width)
                ys.append(lat[key]["median_ms"] / lat[r["best_dense"]]["median_ms"])
                ms.append(lat[key]["median_ms"])
        ax.bar(xs, ys, width, label=label)
        for x, y, m in zip(xs, ys, ms):
            ax.text(x, y, f"{m:.1f}", ha="center", va="bottom", fontsize=5)
    for i, r in enumerate(results):
        ax.hlines(1 / r["theoretical_speedup"], i - 0.45, i + 0.45, colors="k", linestyles="--",
                  label="theoretical (dense MACs / executed MACs)" if i == 0 else None)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([f"{r['arch']} @{r['input_size']}\n{r['reduction_pct']:.1f}% fewer MACs"
                        for r in results])
    ax.set_ylabel("latency / fastest dense engine (labels: ms)")
    env = data["env"]
    isa = f", CPU {env['cpu_isa']}, kernel built for {env['kernel_isa']}" if "cpu_isa" in env else ""
    ax.set_title(f"batch 1, {env['threads']} thread(s), {env['clock']} clock{isa}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def _cpuinfo() -> dict[str, str]:
    """The first value of every key in /proc/cpuinfo (i.e. CPU 0's), or {} where there is none."""
    info, out = Path("/proc/cpuinfo"), {}
    for line in info.read_text().splitlines() if info.is_file() else []:
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_details() -> dict:
    """CPU family / model / stepping and cache sizes: virtual machines often name every AMD part
    "AMD EPYC", and Zen 3 (family 25, 32 KB L1d) and Zen 5 (family 26, 48 KB L1d) behave apart."""
    info = _cpuinfo()
    out = {k.replace(" ", "_"): info[k] for k in ("cpu family", "model", "stepping") if k in info}
    caches = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(caches.glob("index*")) if caches.is_dir() else []:
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            out[f"L{level}{'d' if kind == 'Data' else ''}"] = size
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--archs", default="resnet34,resnet18,resnet56")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--instances", type=int, default=4, help="batch-1 instances per pass")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batch-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reduction", type=float, default=TARGETS["resnet56"],
                   help="MAC reduction (%%) for archs without a paper point (default: ResNet-56's, %(default)s)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time, robust to other processes' load; a latency only "
                        "with --threads 1")
    p.add_argument("--profile", action="store_true", help="also time every block, dense vs engine")
    p.add_argument("--engines", default=",".join(dense_engines.ENGINES),
                   help="dense engines to time beside PyTorch, where installed (default: %(default)s; "
                        "'' for none)")
    p.add_argument("--plot", help="also draw the batch-1 latencies as a PNG here")
    p.add_argument("--replot", metavar="JSON", help="only redraw --plot from a saved --out JSON")
    p.add_argument("--skip-batch", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-probe", nargs=3, metavar=("ARCH", "VARIANT", "STATE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe, args.threads)))
        return
    if args.replot:
        if not args.plot:
            p.error("--replot needs --plot PATH")
        try:
            data = json.loads(Path(args.replot).read_text())
        except (OSError, ValueError) as e:
            p.error(f"--replot {args.replot}: cannot read it as a bench_accel.py JSON ({e})")
        plot(data, args.plot)
        print(f"wrote {args.plot}")
        return
    archs = args.archs.split(",")
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        p.error(f"--archs: unknown architecture {', '.join(unknown)}: choose from {', '.join(ARCHS)}")
    env = {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "clock": args.clock, "loadavg_start": os.getloadavg(),
           "engine_kernel": "native" if native.load() is not None else "torch",
           "native_unavailable": native.why_unavailable(), "native_flags": native.FLAGS,
           "cpu_isa": native.cpu_isa(), "kernel_isa": native.kernel_isa(),
           "cpu_model": cpu_model(), "cpu_details": cpu_details(), "versions": {"torch": torch.__version__, **dense_engines.versions()},
           "command": [Path(sys.executable).name, *sys.argv], "git_commit": git_commit(),
           "MANIDP_CFLAGS": os.environ.get("MANIDP_CFLAGS", ""),
           # oneDNN's ISA cap: ONEDNN_MAX_CPU_ISA=AVX2 makes OpenVINO and PyTorch's oneDNN
           # kernels AVX2 on an AVX-512 CPU; ONNX Runtime (MLAS) has no such switch.
           "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))}
    results = []
    data = {"env": env, "results": results}
    for arch in archs:
        results.append(run(arch, args))
        print(f"{arch}: done in {results[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
        env["loadavg_end"] = os.getloadavg()
        if args.out:                # after every model: a later failure keeps what was measured
            write_json(args.out, data)
    print(table(results))
    print(f"\n{args.threads} thread(s), {args.clock} clock, engine kernel: {env['engine_kernel']} "
          f"built for {env['kernel_isa']} on a {env['cpu_isa']} CPU; "
          f"load average (1, 5, 15 min): start {env['loadavg_start']}, end {env['loadavg_end']}")
    if args.plot:
        plot(data, args.plot)


if __name__ == "__main__":
    main()
