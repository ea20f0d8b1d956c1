#!/usr/bin/env bash
# The first GPU run in one call: install without touching torch, the CUDA tests, the triton contract, and the
# quick GPU study with its report, each stage under its own `timeout` so that rows measured before a stop
# are kept and the later stages still run. Offline; uses the machine's own python3 and torch (>= 2.4).
#
#   bash bench/tools/gpu_check.sh                       # everything, on cuda, into $OUT (or ./gpu-check)
#   bash bench/tools/gpu_check.sh --device cpu --smoke  # the same stages on the CPU, tiny (what tests run)
#
# Options: --device DEV (default cuda), --out DIR (default $OUT, else ./gpu-check), --smoke (tiny presets),
# --python PY (default python3). The four Fashion-MNIST .gz files: data/FashionMNIST/raw, or
# $FASHION_MNIST_DIR. Budget by default (seconds): install 120, tests 180, check 120, study 420.
# Exit status: 0 when every stage passed, else the number of stages that failed; each stage's log is in
# DIR/logs/, the run folder in DIR/results/, the report in DIR/report/, a summary in DIR/summary.txt.
set -u

DEVICE=cuda
OUT_DIR="${OUT:-gpu-check}"
SMOKE=0
PY=python3
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --python) PY="$2"; shift 2 ;;
        *) echo "gpu_check.sh: unknown option $1 (see the comment at the top of this script)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/../.."
mkdir -p "$OUT_DIR/logs" "$OUT_DIR/results"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
FAILED=0

# stage NAME SECONDS COMMAND...: run it under `timeout`, log it, record ok / FAILED (rc) / TIMEOUT.
stage() {
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s): $*" | tee -a "$SUMMARY"
    timeout --signal=TERM --kill-after=20 "$limit" "$@" > "$OUT_DIR/logs/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    if [ $rc -eq 0 ]; then
        echo "   $name: ok in ${took} s" | tee -a "$SUMMARY"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "   $name: TIMEOUT after ${took} s (rows measured so far are kept)" | tee -a "$SUMMARY"
        FAILED=$((FAILED + 1))
    else
        echo "   $name: FAILED (exit $rc) in ${took} s; last lines:" | tee -a "$SUMMARY"
        tail -n 15 "$OUT_DIR/logs/$name.log" | sed 's/^/     /' | tee -a "$SUMMARY"
        FAILED=$((FAILED + 1))
    fi
}

# The dataset: the carried folder, else whatever bench.studies.training.data finds (Debian's package, $FASHION_MNIST_DIR).
if [ -z "${FASHION_MNIST_DIR:-}" ] && ls data/FashionMNIST/raw/train-images-idx3-ubyte* > /dev/null 2>&1; then
    export FASHION_MNIST_DIR="$PWD/data/FashionMNIST/raw"
fi

stage environment 60 "$PY" -c "
import platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('devices:', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
try:
    import triton; print('triton', triton.__version__)
except ImportError:
    print('triton: not installed')
"
[ "$DEVICE" = cpu ] || nvidia-smi > "$OUT_DIR/logs/nvidia-smi.log" 2>&1

# Installed in place, offline, without touching torch: the machine's own packages serve the dependencies.
stage install 120 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
SB=("$PY" -m bench.cli)

if [ "$SMOKE" = 1 ]; then
    stage tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_timing.py -k quantile
    stage check 120 "${SB[@]}" check torch --device "$DEVICE" --dtype float32 --preset quick
    stage study 300 "${SB[@]}" throughput --device "$DEVICE" --preset smoke --variant torch \
        --results-dir "$OUT_DIR/results"
else
    # pytest -m cuda: exactly the tests that need a GPU (the `device` fixture's cuda instances, the timers)
    stage tests 180 "$PY" -m pytest -q -p no:cacheprovider -m cuda
    stage check 120 "${SB[@]}" check triton --device "$DEVICE"
    stage study 420 "${SB[@]}" all --quick --device "$DEVICE" --results-dir "$OUT_DIR/results" \
        --out "$OUT_DIR/report"
fi

# The report from whatever the study left (an interrupted run still reports what it measured).
RUN_DIR="$(ls -1d "$OUT_DIR"/results/*/ 2>/dev/null | tail -1)"
if [ -n "$RUN_DIR" ] && [ ! -f "$OUT_DIR/report/index.md" ]; then
    stage report 120 "${SB[@]}" report "$RUN_DIR" --out "$OUT_DIR/report" --force
fi
echo "run folder: ${RUN_DIR:-none}; report: $OUT_DIR/report; $FAILED stage(s) failed" | tee -a "$SUMMARY"
exit "$FAILED"
