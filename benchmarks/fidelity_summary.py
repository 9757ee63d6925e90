"""The fidelity figures of a study's runs (docs/fidelity.md): per run folder, the final top-1 and MAC
reduction of its eval.json against its target, the official rule's reduction that the calibration
replaced, how dynamic its gates were, and how hard each loss term pulled.

    python benchmarks/fidelity_summary.py results/cpu_study/cifar10/resnet20 [--out fidelity.md]

Reads only what the DAG wrote (eval.json, history.jsonl, config.json); prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def run_row(run: Path) -> dict | None:
    ev_path, hist_path = run / "eval.json", run / "history.jsonl"
    if not ev_path.is_file() or not hist_path.is_file():
        return None
    ev, h = json.loads(ev_path.read_text()), _history(run)
    cfg = json.loads((run / "config.json").read_text())
    cal = [r["calibration"] for r in h if "calibration" in r]
    last = h[-1].get("gates") or []
    first_norms = h[0].get("loss_grad_norms") or {}
    return {
        "run": f"{run.parent.name}/{run.name}", "method": cfg["method"], "epochs": cfg["epochs"],
        "top1": ev["top1"], "reduction": ev["macs"]["reduction_pct"], "target": cfg.get("target_reduction"),
        "miss": ev.get("reduction_miss_pt"), "on_target": ev.get("on_target"),
        "official_rule": cal[-1]["official_reduction_pct"] if cal else None,
        "within_std": _mean(g["within_channel_std"] for g in last),
        "between_std": _mean(g["between_channel_std"] for g in last),
        "kept_spread": _mean(g["kept_max"] - g["kept_min"] for g in last),
        "kept_saliency": _mean(g["kept_saliency_mean"] for g in last),
        "train_ce_first": h[0]["train_ce"], "train_ce_last": h[-1]["train_ce"],
        "ce_grad": first_norms.get("ce_grad_norm"), "sim_grad": first_norms.get("sim_grad_norm"),
        "sparse_grad": first_norms.get("sparse_grad_norm"),
        "penalty_grad": first_norms.get("penalty_grad_norm"),
    }


def _f(x, digits=2, signed=False) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def tables(rows: list[dict]) -> str:
    out = ["| run | method | epochs | top-1 (%) | MAC ↓ (%) | target | miss (pp) | on target | official rule MAC ↓ (%) |",
           "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        out.append(f"| {r['run']} | {r['method']} | {r['epochs']} | {_f(r['top1'])} | {_f(r['reduction'])} | "
                   f"{_f(r['target'], 1)} | {_f(r['miss'], 2, True)} | {r['on_target']} | {_f(r['official_rule'])} |")
    out += ["", "Last epoch, mean over gates: saliency std within a channel (across instances) and between "
            "channels (of channel means), max - min kept fraction per instance, mean saliency of kept "
            "channels. First epoch's first step: gradient norms of the weighted loss terms (network "
            "parameters); train CE of the first and last epoch.", "",
            "| run | within std | between std | kept spread | kept saliency | CE grad | sim grad | sparse/penalty grad | train CE first → last |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pen = r["sparse_grad"] if r["sparse_grad"] is not None else r["penalty_grad"]
        out.append(f"| {r['run']} | {_f(r['within_std'], 3)} | {_f(r['between_std'], 3)} | {_f(r['kept_spread'], 3)} | "
                   f"{_f(r['kept_saliency'], 3)} | {_f(r['ce_grad'], 3)} | {_f(r['sim_grad'], 3)} | {_f(pen, 4)} | "
                   f"{_f(r['train_ce_first'], 2)} → {_f(r['train_ce_last'], 2)} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="an architecture folder of a study, e.g. results/cpu_study/cifar10/resnet20")
    p.add_argument("--out", help="also write the tables here")
    args = p.parse_args(argv)
    root = Path(args.folder)
    if not root.is_dir():
        print(f"fidelity_summary: error: {root} is not a folder of run folders", file=sys.stderr)
        return 2
    rows = [r for run in sorted(root.glob("*/seed*")) if run.parent.name != "baseline"
            for r in [run_row(run)] if r is not None]
    text = tables(rows)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
