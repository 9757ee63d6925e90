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
#
# STAGES (default "path": the above) may add, in order (docs/gpu.md):
#   fast       the launch-free step (manidp/fast_step.py): tests/test_fast_step.py on CUDA (graph
#              against eager), step times of plain, ManiDP and FBS, eager and graph, ResNet-20/32/56 at
#              batch 128 (step_times.json), aggregate throughput of 1, 2, 4, 6 concurrent ManiDP jobs on
#              the GPU (concurrent.json), and from both Table 4's estimated GPU-hours (table4_estimate.txt);
#   reproduce  benchmarks/gpu_reproduce.sh on the JPEG copy $JPEG (default ../shared/data/cifar10-jpeg.tar.gz)
#              in BUDGET_S seconds (default 540), into reproduce/.
#   STAGES="fast reproduce" BUDGET_S=360 bash benchmarks/cuda_check.sh DATA results/gpu    # one device session
set -uo pipefail
DATA=${1:-../shared/data/cifar10-mini.tgz}
RES=${2:-${OUT:-/tmp/cuda_check}}
STAGES=${STAGES:-path}
JPEG=${JPEG:-../shared/data/cifar10-jpeg.tar.gz}
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
echo "commit $(git rev-parse HEAD 2>/dev/null) stages: $STAGES" | tee -a "$RES/summary.txt"
if [[ " $STAGES " == *" path "* ]]; then
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
fi
if [[ " $STAGES " == *" fast "* ]]; then
step fast_step_tests python3 -m pytest -q tests/test_fast_step.py -k test_cuda_step -rs
step step_times python3 benchmarks/bench_train.py --modes eager graph --kinds plain manidp fbs \
    --archs resnet20 resnet32 resnet56 --device cuda --threads 4 --warmup 3 --repeats 15 --out "$RES/step_times.json"
step concurrent python3 benchmarks/bench_train.py --jobs 1 2 4 6 --archs resnet20 --kinds manidp --modes graph \
    --device cuda --threads 2 --steps 300 --out "$RES/concurrent.json"
step table4_estimate python3 benchmarks/gpu_schedule.py table4 --timings "$RES/step_times.json" \
    --concurrency "$RES/concurrent.json"
cp "$RES/table4_estimate.log" "$RES/table4_estimate.txt" 2>/dev/null
fi
if [[ " $STAGES " == *" reproduce "* ]]; then
step reproduce env BUDGET_S="${BUDGET_S:-540}" bash benchmarks/gpu_reproduce.sh "$JPEG" "$RES/reproduce"
grep -E "^(verdict|schedule|gpu_reproduce):" "$RES/reproduce.log" | tee -a "$RES/summary.txt"
fi
echo "overall rc=$status" | tee -a "$RES/summary.txt"
exit $status
