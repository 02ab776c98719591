#!/usr/bin/env bash
# Run tempfast's smoke test of the waiting kernels, benchmark suite and GPU tests on a machine
# without network; write all results flat into OUTDIR (at most 12 files):
#   versions.txt   GPU, driver, CUDA, Python and package versions, how tempfast was installed
#   smoke.jsonl    python -m bench.smoke: each cooperative kernel at C = 32000 and 262144, bf16
#                  and fp32, in a child process with a hard timeout (a hang is reported as one
#                  and the script goes on): error against fp64, launches, give-ups, and the
#                  time of the default launch beside the two-launch path
#   smoke.md       the same as a table; smoke.log its output
#   cases.jsonl    one JSON line per benchmark case, appended as each finishes (kept by a run
#                  killed at its limit): wall time, CUDA-event time, the static model's
#                  prediction (bench/results/static-*.json) and measured / predicted
#   cases.md       cases.jsonl as a markdown table
#   bench.log      pytest bench --benchmark-only (the pytest-benchmark tables)
#   bench.json     --benchmark-json output (input of python -m bench.report)
#   bench.md       the report as markdown
#   report.txt     the report as text
#   gpu_tests.log  pytest tests/test_gpu.py -m gpu
#   status.txt     exit status and seconds of each phase
# Order: the smoke test first (at most 3 x SMOKE_KERNEL_S), then the benchmark, cross-entropy
# cases first among its cases (bench/gpu_plugin.py), then the GPU tests with the time left (at
# most GPU_TESTS_S).
# Usage: bench/gpu_run.sh OUTDIR    (from anywhere; the repository is this script's parent)
# Environment: TOTAL_S (default 480: the whole run, in seconds), GPU_TESTS_S (default 120),
# SMOKE_KERNEL_S (default 60: seconds per waiting kernel in the smoke test),
# PYTHON (default python3), TEMPFAST_STATIC_JSON (default: the newest committed static report).
# Wheels in .whl/ at the repository root (e.g. liger-kernel) are installed into /tmp/site.
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bench/gpu_run.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
TOTAL_S=${TOTAL_S:-480}
GPU_TESTS_S=${GPU_TESTS_S:-120}
SMOKE_KERNEL_S=${SMOKE_KERNEL_S:-60}
START=$SECONDS
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET TEMPFAST_BACKEND

phase() {  # phase NAME STATUS: record a finished phase
    echo "$1 exit=$2 at=$((SECONDS - START))s" >>"$OUT/status.txt"
}

: >"$OUT/status.txt"
{
    echo "# tempfast GPU run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "## nvidia-smi"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 \
        || echo "nvidia-smi: not available"
    nvidia-smi 2>/dev/null | grep -m1 "CUDA Version" || true
} >"$OUT/versions.txt"

# Carried wheels (no index: the machine has no network).
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" >>"$OUT/versions.txt" 2>&1; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        echo "wheels installed into /tmp/site: ${wheels[*]}" >>"$OUT/versions.txt"
    else
        echo "wheel install FAILED: ${wheels[*]}" >>"$OUT/versions.txt"
    fi
fi

# tempfast itself: an editable install if pip and setuptools allow it; else the installed
# layout made in place (a link tempfast/kernels -> ../kernels, removed on exit) with the
# repository on PYTHONPATH.
if "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/tmp/tempfast_install.log 2>&1 \
    && (cd / && "$PY" -c "import tempfast.kernels") >/dev/null 2>&1; then
    echo "tempfast: pip install -e . (editable)" >>"$OUT/versions.txt"
elif [[ ! -e tempfast/kernels ]]; then
    ln -s ../kernels tempfast/kernels
    trap 'rm -f "$ROOT/tempfast/kernels"' EXIT
    echo "tempfast: repository on PYTHONPATH with a link tempfast/kernels (editable install" \
        "failed: $(tail -n 1 /tmp/tempfast_install.log))" >>"$OUT/versions.txt"
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

setup_status=0
"$PY" - >>"$OUT/versions.txt" 2>&1 <<'EOF' || setup_status=$?
import importlib, platform, sys
import torch
print("## python", platform.python_version(), platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "sm", torch.cuda.get_device_capability())
failed = False
for name in ("triton", "tempfast", "liger_kernel", "timm", "pytest_benchmark", "rich"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "installed"), getattr(mod, "__file__", ""))
    except Exception as exc:
        print(name, "NOT importable:", type(exc).__name__, exc)
        failed = failed or name in ("triton", "tempfast", "pytest_benchmark", "rich")
sys.exit(1 if failed else 0)  # what the benchmark needs is missing: the status says so
EOF
phase setup "$setup_status"

# The kernels that wait, before anything else: a hang here is reported, and the run goes on.
timeout -k 10 $((3 * SMOKE_KERNEL_S + 30)) "$PY" -m bench.smoke "$OUT" \
    --timeout "$SMOKE_KERNEL_S" >"$OUT/smoke.log" 2>&1
phase smoke $?
static_json=${TEMPFAST_STATIC_JSON:-$(ls bench/results/static-*.json 2>/dev/null | tail -n 1)}
echo "static model predictions: ${static_json:-none}" >>"$OUT/versions.txt"
export TEMPFAST_STATIC_JSON=$static_json

# The suite skips its remaining cases once its budget is spent (cross-entropy headline shapes
# run first); a case that starts just before the deadline (a cold torch.compile takes tens of
# seconds) has 90 s of grace; the hard timeout only guards against a hung case (it loses
# bench.json, not cases.jsonl).
left=$((TOTAL_S - (SECONDS - START)))
budget=$((left - GPU_TESTS_S - 60))
if ((budget < 30)); then
    budget=30
fi
: >"$OUT/cases.jsonl"
TEMPFAST_CASES_JSONL="$OUT/cases.jsonl" TEMPFAST_BENCH_BUDGET_S=$budget \
    timeout -k 10 $((budget + 90)) \
    "$PY" -m pytest bench --benchmark-only --benchmark-json "$OUT/bench.json" \
    -p bench.gpu_plugin -p no:cacheprovider -q -rs >"$OUT/bench.log" 2>&1
phase "bench(budget=${budget}s)" $?
"$PY" -m bench.gpu_plugin "$OUT/cases.jsonl" >"$OUT/cases.md" 2>&1
phase cases_md $?

if [[ -s "$OUT/bench.json" ]]; then
    "$PY" -m bench.report "$OUT/bench.json" --markdown "$OUT/bench.md" >"$OUT/report.txt" 2>&1
    phase report $?
else
    echo "no bench.json: see bench.log" >"$OUT/report.txt"
    phase report 1
fi

# Only the GPU test module: collecting all of tests/ would import the trainer's extras
# (scikit-learn, torchattacks), which the GPU image may lack.
left=$((TOTAL_S - (SECONDS - START)))
tests_s=$((left < GPU_TESTS_S ? left : GPU_TESTS_S))
if ((tests_s < 10)); then
    tests_s=10
fi
timeout -k 10 "$tests_s" "$PY" -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider \
    >"$OUT/gpu_tests.log" 2>&1
status=$?
if ((status == 5)); then
    echo "(no test selected by -m gpu)" >>"$OUT/gpu_tests.log"
fi
phase gpu_tests "$status"
cat "$OUT/status.txt"
