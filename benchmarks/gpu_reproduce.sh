#!/usr/bin/env bash
# Table 4's ResNet-20 row on one GPU in a wall-time budget: the dense baseline, then ManiDP at 54.2% MAC
# reduction, through the DAG (config/gpu_reproduce.yaml), so it writes the DAG's eval.json, summary.csv,
# comparison.csv and table, then one verdict line per compared number against the published one.
#
#   bash benchmarks/gpu_reproduce.sh DATA [OUT]       # DATA: CIFAR-10 (real format, or the JPEG copy)
#
# Schedule: the paper's (baseline 200 epochs, ManiDP 400, batch 128, all 50,000 training images) when
# it fits in BUDGET_S (default 540 s, 9 min, everything included); otherwise the longest with the same
# 1:2 ratio that does, from ResNet-20 step times measured here first (benchmarks/bench_train.py
# --modes; benchmarks/gpu_schedule.py: the estimate and its stated overhead). EPOCHS="B M" skips the
# measurement. Other settings: DEVICE (cuda), STEP (graph), CORES (16), LIMIT_TRAIN (train on the first
# N images only: then a smoke run, every status "not comparable"), DRY_RUN=1 (snakemake -n: the plan
# and its commands, nothing trained; needs EPOCHS or runs the timing first).
# Outputs under OUT (default results/gpu/reproduce): the DAG's tree, step_times.json, provenance.json
# (command, commit, schedule and how it was chosen, wall time, GPU), reproduce.log.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -e "$1" ]; then
    echo "gpu_reproduce: error: give the CIFAR-10 data as the first argument (got '${1:-}'): e.g. ../shared/data/cifar10-jpeg.tar.gz" >&2
    exit 2
fi
DATA=$(realpath "$1")
RES=${2:-results/gpu/reproduce}
BUDGET_S=${BUDGET_S:-540}
DEVICE=${DEVICE:-cuda}
STEP=${STEP:-graph}
CORES=${CORES:-16}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RES"
t0=$SECONDS

how="given (EPOCHS)"
if [ -z "${EPOCHS:-}" ]; then
    python3 benchmarks/bench_train.py --modes eager "$STEP" --kinds plain manidp --archs resnet20 \
        --device "$DEVICE" --warmup 5 --repeats 5 --threads 4 --out "$RES/step_times.json"
    left=$((BUDGET_S - (SECONDS - t0)))
    EPOCHS=$(python3 benchmarks/gpu_schedule.py epochs --budget-s "$left" --mode "$STEP" --timings "$RES/step_times.json" \
             2> "$RES/schedule.txt")
    cat "$RES/schedule.txt"
    how=$(cat "$RES/schedule.txt")
fi
read -r BASE_EPOCHS MANIDP_EPOCHS <<< "$EPOCHS"
images="all 50,000 training images"
smoke=false
limit=""
if [ -n "${LIMIT_TRAIN:-}" ]; then
    images="the first $LIMIT_TRAIN training images (smoke)"
    smoke=true
    limit=", \"limit_train\": $LIMIT_TRAIN"
fi
schedule="baseline $BASE_EPOCHS epochs, ManiDP $MANIDP_EPOCHS epochs"
[ "$BASE_EPOCHS $MANIDP_EPOCHS" = "200 400" ] && schedule="$schedule (the paper's schedule)" \
    || schedule="$schedule (shortened from the paper's 200/400 to fit ${BUDGET_S} s)"
label="CIFAR-10 ($(basename "$DATA")), one $DEVICE device, --step $STEP, $schedule, $images"
echo "gpu_reproduce: $label"

dry=()
[ "${DRY_RUN:-0}" = 1 ] && dry=(-n)
snakemake "${dry[@]}" -p --cores "$CORES" --configfile config/gpu_reproduce.yaml --config \
    "label=$label" "smoke=$smoke" "results=$RES" "tables=$RES/paper_tables" "device=$DEVICE" \
    "data={\"cifar10\": {\"path\": \"$DATA\"}}" \
    "baseline={\"cifar10\": {\"epochs\": $BASE_EPOCHS, \"step\": \"$STEP\"$limit}}" \
    "manidp={\"cifar10\": {\"epochs\": $MANIDP_EPOCHS, \"step\": \"$STEP\"$limit}}" \
    -- "$RES/cifar10/comparison.csv" "$RES/paper_tables/cifar10.md" 2>&1 | tee "$RES/reproduce.log"
[ "${DRY_RUN:-0}" = 1 ] && exit 0

python3 - "$RES" "$label" "$how" "$((SECONDS - t0))" "$BUDGET_S" "$*" <<'EOF'
import json, subprocess, sys
from datetime import datetime, timezone
import pandas as pd
res, label, how, wall, budget, args = sys.argv[1:]
table = pd.read_csv(f"{res}/cifar10/comparison.csv")
for _, r in table[table["kind"] != "published-inconsistency"].iterrows():
    ours = "not measured" if pd.isna(r["ours_mean"]) else f"{r['ours_mean']:.2f}"
    pub = "none" if pd.isna(r["published"]) else f"{r['published']:.2f}"
    diff = "" if pd.isna(r["difference"]) else f", difference {r['difference']:+.2f}"
    print(f"verdict: {r['arch']} {r['variant']} {r['metric']}: ours {ours} vs published {pub}{diff} "
          f"(rule {r['tolerance']}): {r['status']}")
def out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
prov = {"command": f"bash benchmarks/gpu_reproduce.sh {args}", "commit": out(["git", "rev-parse", "HEAD"]),
        "dirty": bool(out(["git", "status", "--porcelain"])), "date": datetime.now(timezone.utc).isoformat(),
        "label": label, "schedule_from": how, "wall_s": int(wall), "budget_s": int(budget),
        "gpu": out(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])}
with open(f"{res}/provenance.json", "w") as f:
    json.dump(prov, f, indent=1)
print(f"gpu_reproduce: {wall} s wall (budget {budget} s); {res}/cifar10/comparison.csv, {res}/provenance.json")
EOF
