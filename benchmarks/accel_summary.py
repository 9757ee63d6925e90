"""Issue 13's targets across every kept acceleration run (results/accel/): one row per
bench_accel.py JSON with the machine, the ISAs, threads and clock, the batch-1 speedup of each
model against the fastest dense engine, and the all-open engine against it (the kernel's own
efficiency).

    python benchmarks/accel_summary.py                      # every results/accel/**/bench_accel_*.json
    python benchmarks/accel_summary.py a.json b.json [--out summary.md]

Reads only what bench_accel.py wrote; prints Markdown. Targets (issue 13; batch 1 against the fastest
dense engine installed): ResNet-34 and ResNet-18 >= 1.8x, CIFAR ResNet-56 >= 1.5x, no CIFAR ResNet
below 1.0x.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manidp.errors import ManidpError  # noqa: E402
from manidp.io import write_text  # noqa: E402

RESULTS = ROOT / "results" / "accel"
ARCHS = ("resnet34", "resnet18", "resnet56", "resnet20", "resnet32", "resnet110")
CIFAR = ("resnet56", "resnet20", "resnet32", "resnet110")
TARGETS = {"resnet34": 1.8, "resnet18": 1.8, "resnet56": 1.5}
SHORT = {"onnxruntime": "ORT", "openvino": "OV", "dense": "PT", "dense-nhwc": "PT-NHWC"}


def machine(env: dict, path: Path) -> str:
    """The CPU as the run recorded it: family and model where it has env.cpu_details, else the name
    of its results/accel folder (runs before that field; the folder's README says which CPU)."""
    d = env.get("cpu_details") or {}
    name = " ".join(env.get("cpu_model", "?").replace("(R)", "").replace(" Processor", "").split())
    if "cpu_family" in d:
        return f"{name}, family {d['cpu_family']} model {d.get('model', '?')}"
    return f"{name} ({path.parent.name})"


def row(path: Path) -> dict:
    data = json.loads(path.read_text())
    env, results = data["env"], {r["arch"]: r for r in data["results"]}
    missing = [a for a in results if a in ARCHS and not all(
        isinstance(results[a].get(k), (int, float)) and results[a][k] == results[a][k]   # not NaN
        for k in ("speedup", "all_open_vs_best_dense"))]
    if missing:
        raise SystemExit(f"accel_summary: {path}: no finite speedup for {', '.join(missing)}; "
                         "rerun bench_accel.py for it")
    cifar = [results[a]["speedup"] for a in CIFAR if a in results]
    met = [results[a]["speedup"] >= t for a, t in TARGETS.items() if a in results]
    if cifar:
        met.append(min(cifar) >= 1.0)
    return {"file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "machine": machine(env, path), "kernel_isa": env.get("kernel_isa"),
            "dense_isa": env.get("cpu_isa"), "threads": env.get("threads"), "clock": env.get("clock"),
            "commit": (env.get("git_commit") or "?")[:7], "results": results,
            "cifar_min": min(cifar) if cifar else None, "met": sum(met), "targets": len(met)}


def table(rows: list[dict]) -> str:
    head = " | ".join(a.replace("resnet", "R") for a in ARCHS)
    lines = [f"| file | CPU | kernel ISA / dense ISA | threads, clock | commit | {head} | CIFAR min | "
             "all-open vs best dense | targets met |", "|---" * (8 + len(ARCHS)) + "|"]
    for r in rows:
        res = r["results"]
        cells = [f"{res[a]['speedup']:.2f}x ({SHORT.get(res[a]['best_dense'], res[a]['best_dense'])})"
                 if a in res else "-" for a in ARCHS]
        opens = [res[a]["all_open_vs_best_dense"] for a in ARCHS if a in res]
        lines.append(
            f"| `{r['file']}` | {r['machine']} | {r['kernel_isa']} / {r['dense_isa']} | "
            f"{r['threads']}, {r['clock']} | {r['commit']} | " + " | ".join(cells) + " | "
            + (f"{r['cifar_min']:.2f}x" if r["cifar_min"] is not None else "-") + " | "
            f"{min(opens):.2f}-{max(opens):.2f}x | {r['met']} of {r['targets']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="*", type=Path, help="bench_accel.py outputs (default: every "
                    "bench_accel_*.json under results/accel)")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    paths = args.json or sorted(RESULTS.rglob("bench_accel_*.json"))
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"accel_summary: {p}: no such file; give bench_accel.py --out JSONs")
    rows = []
    for p in paths:
        try:
            rows.append(row(p))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise SystemExit(f"accel_summary: {p}: not a bench_accel.py JSON ({type(e).__name__}: {e}); "
                             "give the files bench_accel.py --out wrote")
    text = table(rows)
    print(text)
    if args.out:
        try:
            write_text(args.out, text + "\n")
        except ManidpError as e:
            raise SystemExit(f"accel_summary: {e}")


if __name__ == "__main__":
    sys.exit(main())
