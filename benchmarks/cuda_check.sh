#!/usr/bin/env bash
# CUDA path check, on a machine with one NVIDIA GPU: everything the CPU test suite cannot run.
#
#   bash benchmarks/cuda_check.sh [CIFAR-10 data path] [output folder]
#
# 1. `manidp train-baseline` on CUDA, in float32 and with --amp (float16 + GradScaler);
# 2. `manidp prune` on CUDA for ManiDP (--amp), FBS and FPGM, from that baseline;
# 3. `manidp evaluate` of the ManiDP model on CUDA and on the CPU: top-1 and the per-instance MAC
#    statistics must agree (benchmarks/cuda_compare.py);
# 4. a ManiDP training step against a plain one on CUDA, the masked model against the engine
#    (manidp.accel) in equivalence, and their latencies (benchmarks/cuda_compare.py).
# Every step's log and the summary go to the output folder (default $OUT, else /tmp/cuda_check).
set -uo pipefail
DATA=${1:-../shared/data/cifar10-mini.tgz}
RES=${2:-${OUT:-/tmp/cuda_check}}
mkdir -p "$RES"
W=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
M="python3 -m manidp"
C="--dataset cifar10 --data $DATA --arch resnet20 --batch-size 128 --limit-train 2000 --limit-test 1000 --device cuda --quiet"
status=0

step() {  # step NAME COMMAND...: run, log to $RES/NAME.log, one summary line with rc and seconds
    local name=$1; shift
    local t0=$SECONDS
    "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || status=1
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$RES/summary.txt"
    tail -n 3 "$RES/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/summary.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$RES/summary.txt"
step baseline_fp32 $M train-baseline $C --epochs 4 --lr 0.1 --out "$W/base"
step baseline_amp $M train-baseline $C --epochs 1 --amp --out "$W/base_amp"
step prune_manidp_amp $M prune --method manidp $C --epochs 2 --amp --target-reduction 54.2 --grad-clip 5 \
    --baseline "$W/base/checkpoint.pt" --out "$W/manidp"
step prune_fbs $M prune --method fbs $C --epochs 1 --target-reduction 54.2 --baseline "$W/base/checkpoint.pt" --out "$W/fbs"
step prune_fpgm $M prune --method fpgm $C --epochs 1 --target-reduction 54.2 --baseline "$W/base/checkpoint.pt" --out "$W/fpgm"
step eval_cuda $M evaluate --dataset cifar10 --data "$DATA" --limit-test 1000 --device cuda --quiet \
    --checkpoint "$W/manidp/checkpoint.pt" --out "$RES/eval_cuda.json"
step eval_cpu $M evaluate --dataset cifar10 --data "$DATA" --limit-test 1000 --device cpu --quiet \
    --checkpoint "$W/manidp/checkpoint.pt" --out "$RES/eval_cpu.json"
step compare python3 benchmarks/cuda_compare.py --checkpoint "$W/manidp/checkpoint.pt" \
    --eval-cuda "$RES/eval_cuda.json" --eval-cpu "$RES/eval_cpu.json" --out "$RES/cuda_compare.json"
echo "overall rc=$status" | tee -a "$RES/summary.txt"
exit $status
