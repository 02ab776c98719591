#!/usr/bin/env bash
# Issue 26's CPU sweeps, one after another, two runs at a time; rerun to resume (each sweep
# skips its finished runs and continues an interrupted one). The plan, its budgets and the
# measured time of one run of each kind: experiments/README.md, "Issue 26's sweeps".
#
# Usage: experiments/issue26.sh [STEP ...]   (from the repository root; default: every step)
# Steps: fm-std references digits-0.1 digits-0.05 fm-pgd fm-vit fm-vit-10 reports
# ("references" trains fm-reference and fm-vit-reference side by side; each may also be named
# alone)
# Environment: FASHION_MNIST_DIR (default /usr/share/datasets/fashion-mnist: apt-get install
# dataset-fashion-mnist), RUNS (default /work/sweeps/issue26: checkpoints, not committed),
# JOBS (default 2), PYTHON (default python: the environment with tempfast's [train] extra).
# Never run it while CI's time, a benchmark or a timing ratio is measured (two cores).
set -uo pipefail

PY=${PYTHON:-python}
FM=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
RUNS=${RUNS:-/work/sweeps/issue26}
JOBS=${JOBS:-2}
OUT=experiments/results
STEPS=("$@")
if [[ ${#STEPS[@]} -eq 0 ]]; then
    STEPS=(fm-std references digits-0.1 digits-0.05 fm-pgd fm-vit fm-vit-10 reports)
fi
SHIFT="--eval-perturbations --eval-shift-examples all"

sweep() {  # sweep NAME ARGS...: experiments.sweep into OUT/NAME, checkpoints under RUNS/NAME
    local name=$1; shift
    echo "== $name $(date -u +%H:%M:%S)"
    "$PY" -m experiments.sweep "$@" --jobs "$JOBS" --out "$OUT/$name" --runs-dir "$RUNS/$name"
    local rc=$?
    if ((rc != 0)); then  # a failed run (see its sweep.log), bad input or Ctrl-C: stop here
        echo "issue26.sh: $name stopped with exit status $rc; rerun to resume" >&2
        exit "$rc"
    fi
}

vit_sweep() {  # vit_sweep NAME EPOCHS: the transformer arm, standard training, both arms
    sweep "$1" --data fashion-mnist --data-dir "$FM" --model test_vit --opt adamw --epochs "$2" \
        --batch-size 64 --eval-examples 500 --temps 1 4 16 --adv none --seeds 3 \
        --compensation none loss --eps-curve 0.01 0.02 0.05 --extra "--patch-size 4 $SHIFT"
}

reference() {  # reference STEP: a converged reference, T = 1, about twice the epochs, seed 0
    local name model ref
    if [[ $1 == fm-reference ]]; then
        name=fashion-mnist-reference model=(--epochs 12)
    else
        name=fashion-mnist-vit-reference
        model=(--model test_vit --patch-size 4 --opt adamw --epochs 10)
    fi
    ref=$RUNS/$name
    echo "== $name $(date -u +%H:%M:%S)"
    if [[ -s $OUT/$name/metrics.jsonl ]]; then  # committed: claims.CONVERGED_CLEAN holds it
        echo "$name: already in $OUT/$name (delete it to train again)"
        return 0
    fi
    if [[ ! -f $ref/summary.json ]]; then  # an interrupted run continues from its checkpoint
        local resume=(--overwrite)
        [[ -f $ref/config.yaml ]] && resume=(--resume)
        "$PY" -m tempfast train --data fashion-mnist --data-dir "$FM" --temp 1 \
            "${model[@]}" --batch-size 64 --seed 0 --threads 1 --eval none "${resume[@]}" \
            --quiet --output "$ref" || return $?
    fi
    mkdir -p "$OUT/$name"
    cp "$ref/metrics.jsonl" "$ref/config.yaml" "$OUT/$name/"
}

for step in "${STEPS[@]}"; do
    case $step in
    fm-std)  # standard training to T = 1 >= 89% clean: 60,000 images x 6 epochs
        sweep fashion-mnist-std --data fashion-mnist --data-dir "$FM" --epochs 6 \
            --batch-size 64 --eval-examples 500 --temps 0.5 1 2 4 8 16 --adv none --seeds 3 \
            --compensation none loss --eps-curve 0.01 0.02 0.05 --extra "$SHIFT" ;;
    fm-reference | fm-vit-reference)
        reference "$step" || exit $? ;;
    references)  # the two single runs side by side, one per core
        reference fm-reference & cnn=$!
        reference fm-vit-reference; vit=$?
        wait "$cnn" || exit $?
        ((vit == 0)) || exit "$vit" ;;
    digits-0.1 | digits-0.05)  # claim 3 rechecked: 8 seeds, all 360 images, strong budget
        eps=${step#digits-}
        sweep "digits-recheck-eps$eps" --data digits --eps "$eps" --temps 1 2 4 8 --adv none \
            --seeds 8 --compensation none --eval-steps 100 --eval-restarts 5 \
            --eval-attacks pgd-ce,pgd-ce-t,pgd-ce-adaptive,pgd-cw,apgd-dlr,square,pgd-targeted \
            --extra "--eval-square-queries 5000 $SHIFT" ;;
    fm-pgd)  # PGD training (eps 0.1) on 6,000 images to its plateau, the paper's plain arm
        sweep fashion-mnist-pgd --data fashion-mnist --data-dir "$FM" --train-subset 6000 \
            --epochs 15 --batch-size 64 --eval-examples 500 --temps 0.5 1 2 4 8 --adv pgd \
            --seeds 3 --compensation none --extra "$SHIFT" ;;
    fm-vit)  # a small timm ViT (test_vit, 4 px patches: 7 x 7 tokens), AdamW, 5 epochs
        vit_sweep fashion-mnist-vit 5 ;;
    fm-vit-10)  # the same at its reference's 10 epochs: after 5, T = 1 still gained 2.8 points
        vit_sweep fashion-mnist-vit-10ep 10 ;;
    reports)
        done=()
        for d in fashion-mnist-std fashion-mnist-pgd fashion-mnist-vit fashion-mnist-vit-10ep \
                 digits-recheck-eps0.1 digits-recheck-eps0.05; do
            if [[ -s $OUT/$d/results.csv ]]; then
                "$PY" -m experiments.report "$OUT/$d" && done+=("$OUT/$d")
            fi
        done
        "$PY" -m experiments.summary "$OUT/digits" "$OUT/fashion-mnist" "${done[@]}" ;;
    *) echo "issue26.sh: unknown step $step" >&2; exit 2 ;;
    esac
done
