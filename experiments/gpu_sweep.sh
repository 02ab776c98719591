#!/usr/bin/env bash
# The Fashion-MNIST temperature sweep of issue 26 at its full budget, on a GPU: all 60,000
# training images for standard AND PGD training, within one time budget per call, rows appended
# as runs finish (a later call with the same OUTDIR resumes where this one stopped).
#
# Usage: experiments/gpu_sweep.sh OUTDIR      (from anywhere; the repository is this script's
#        parent). Writes OUTDIR/std/ and OUTDIR/pgd/ (results.csv, per_example.jsonl,
#        sweep.json, sweep.log), OUTDIR/versions.txt and OUTDIR/status.txt, and, when a sweep has
#        rows, its REPORT.md and plots. Checkpoints go to RUNS_DIR (default /tmp/gpu-sweep-runs),
#        not to OUTDIR.
# The data: the four gzipped IDX files of Fashion-MNIST (about 30 MB) in FASHION_MNIST_DIR
# (default data/fashion-mnist in the repository, an ignored folder: copy them there from
# /usr/share/datasets/fashion-mnist and carry it: run(..., carry=["data/fashion-mnist"])).
# Environment: TOTAL_S (default 450: the whole call), DEVICE (default cuda), JOBS (default 4:
# runs side by side on the one GPU), PYTHON (default python3), STD_EPOCHS (2), PGD_EPOCHS (10),
# SEEDS (3), TINY=1: the CPU rehearsal (600 training images, 1 epoch, 64 evaluated images,
# temperatures 1 and 4, one seed, no perturbations; DEVICE=cpu).
# The grid: standard training T in {0.5, 1, 2, 4, 8, 16} x {plain, loss x T} x SEEDS; PGD
# training (eps 0.1, 7 steps) T in {0.5, 1, 2, 4, 8}, plain arm, x SEEDS; the evaluation on
# 1000 test images (10 PGD steps, the eps curve at 0.01, 0.02, 0.05), corruptions and natural
# perturbations on all 10,000. Standard training runs first (it is cheaper), then PGD.
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: experiments/gpu_sweep.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-450}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-4}
SEEDS=${SEEDS:-3}
DATA=${FASHION_MNIST_DIR:-$ROOT/data/fashion-mnist}
RUNS=${RUNS_DIR:-/tmp/gpu-sweep-runs}
START=$SECONDS
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET TEMPFAST_BACKEND

for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
         t10k-labels-idx1-ubyte; do
    if [[ ! -f "$DATA/$f.gz" && ! -f "$DATA/$f" ]]; then
        echo "gpu_sweep: $DATA/$f(.gz) is missing (set FASHION_MNIST_DIR)" >&2
        exit 2
    fi
done

if [[ ${TINY:-0} == 1 ]]; then
    STD=(--epochs 1 --train-subset 600 --temps 1 4)
    PGD=(--epochs 1 --train-subset 300 --temps 1 4)
    EVAL=(--eval-examples 64 --eval-steps 2 --eps-curve 0.05)
    SEEDS=1
    EXTRA=""
else
    STD=(--epochs "${STD_EPOCHS:-2}" --temps 0.5 1 2 4 8 16)
    PGD=(--epochs "${PGD_EPOCHS:-10}" --temps 0.5 1 2 4 8)
    EVAL=(--eval-examples 1000 --eps-curve 0.01 0.02 0.05)
    EXTRA="--eval-perturbations --eval-shift-examples all"
fi
COMMON=(--data fashion-mnist --data-dir "$DATA" --batch-size 64 --seeds "$SEEDS"
        --device "$DEVICE" --jobs "$JOBS" --no-gradients "${EVAL[@]}")

: >>"$OUT/status.txt"
{
    echo "# experiments/gpu_sweep.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    else
        echo "nvidia-smi: not available"
    fi
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'triton', triton.__version__)" 2>&1
} >>"$OUT/versions.txt"

left() { echo $((TOTAL_S - (SECONDS - START))); }

sweep() {  # sweep NAME ARGS...: one sweep folder, stopped (Ctrl-C, resumable) at the budget
    local name=$1; shift
    local budget; budget=$(left)
    if ((budget < 30)); then
        echo "$name skipped: ${budget}s left" >>"$OUT/status.txt"
        return
    fi
    mkdir -p "$OUT/$name"
    timeout --signal=INT --kill-after=30 "$budget" "$PY" -m experiments.sweep "$@" \
        --out "$OUT/$name" --runs-dir "$RUNS/$name" >>"$OUT/$name/sweep.log" 2>&1
    local rc=$?
    echo "$name exit=$rc at=$((SECONDS - START))s rows=$(($(wc -l <"$OUT/$name/results.csv" 2>/dev/null || echo 1) - 1))" >>"$OUT/status.txt"
}

sweep std "${COMMON[@]}" "${STD[@]}" --adv none --compensation none loss --extra "$EXTRA"
sweep pgd "${COMMON[@]}" "${PGD[@]}" --adv pgd --compensation none --extra "$EXTRA"

for name in std pgd; do  # reports are cheap: written whenever a sweep has rows
    if [[ -s "$OUT/$name/results.csv" ]]; then
        "$PY" -m experiments.report "$OUT/$name" >>"$OUT/$name/sweep.log" 2>&1 \
            || echo "$name report failed" >>"$OUT/status.txt"
    fi
done
echo "done at=$((SECONDS - START))s" >>"$OUT/status.txt"
