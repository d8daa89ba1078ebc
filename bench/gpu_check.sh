#!/usr/bin/env bash
# The GPU checks of l1pca in one call (about 8 minutes on one H100): the GPU tests, the GPU rows of
# the speed benchmark, the small-fit benchmark with its GPU rows, and the mixed-shape service
# benchmark at short settings. Results go under bench/results/, named by the GPU (nvidia-smi's name,
# lower-cased, runs of other characters as '_'):
#
#   bench/results/gpu_check_<gpu>.md           what ran, each step's status and seconds
#   bench/results/gpu_check_<gpu>_pytest.txt   `pytest -m gpu` output
#   bench/results/solver_speed_gpu_<gpu>.md    bench/solver_speed.py --preset gpu (JAX, CuPy: a batch
#                                              of 4096 small fits, large fits beside PCA on the host)
#   bench/results/small_fits_gpu_<gpu>.md      bench/small_fits.py --gpu
#   bench/results/service_mixed_gpu_<gpu>.md   bench/service_mixed.py, short settings (and .json)
#
# With no NVIDIA GPU (nvidia-smi missing or listing none) it says so, skips the GPU parts and exits 0.
# --dry-run prints the plan (device, steps, files) and runs nothing (the CPU test runs it this way).
#
# Usage:   bash bench/gpu_check.sh [--dry-run]
# Environment: PYTHON (default: python3), NVIDIA_SMI (default: nvidia-smi).
#
# On the device machine (the `device` tool's `run`, see /work/.library/device/README.md): the machine
# has no network and its python3 (3.12) already holds numpy, scipy, scikit-learn, JAX and CuPy for
# CUDA, numba, grpcio, protobuf, prometheus-client, filelock and pytest; this script installs l1pca
# itself from the working tree (no dependencies) into /tmp/l1pca-site. Packages it lacks (for the
# service: grpcio-health-checking, grpcio-reflection, and protobuf/grpcio at the versions the stubs
# need) travel as wheels in .whl/ (README's recipe, `--python-version 3.12`); the script installs
# whatever .whl/ holds first. One call, with the time limit leaving room for the steps' own caps:
#
#   run(command="PYTHONUNBUFFERED=1 bash bench/gpu_check.sh; cp bench/results/*gpu* $OUT/",
#       carry=[".whl"], timeout_s=560)
#
# Each step has its own time cap (timeout), so one slow step cannot take the others' time; a step
# that fails is recorded and the next one runs. The exit status is 0 when every step passed.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run)" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-python3}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
RESULTS=bench/results
SKIPPED="the GPU tests (pytest -m gpu), bench/solver_speed.py --preset gpu, bench/small_fits.py --gpu and bench/service_mixed.py"

if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
    echo "no NVIDIA GPU visible ($NVIDIA_SMI not found): skipping $SKIPPED"
    exit 0
fi
DEVICE=$("$NVIDIA_SMI" --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
if [ -z "$DEVICE" ]; then
    echo "no NVIDIA GPU visible ($NVIDIA_SMI lists none): skipping $SKIPPED"
    exit 0
fi
SLUG=$(printf '%s' "$DEVICE" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/_/g; s/^_+//; s/_+$//')

# step name | time cap (s) | command
STEPS=(
    "pytest|100|$PYTHON -m pytest -q -m gpu -p no:cacheprovider tests/kernels tests/service"
    "solver_speed|150|$PYTHON bench/solver_speed.py --preset gpu --out $RESULTS/solver_speed_gpu_$SLUG.md"
    "small_fits|70|$PYTHON bench/small_fits.py --gpu --batch 4096 --repeats 10 --out $RESULTS/small_fits_gpu_$SLUG.md"
    "service_mixed|150|$PYTHON bench/service_mixed.py --shapes 50 --requests 40 --levels 1,8 --out $RESULTS/service_mixed_gpu_$SLUG"
)

echo "gpu_check: device '$DEVICE' (files named '$SLUG'); python: $PYTHON"
for step in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$step"
    echo "  step $name (at most ${cap} s): $cmd"
done
if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: dry run, nothing was run"
    exit 0
fi

mkdir -p "$RESULTS"
# The wheels that travelled (if any), then l1pca itself, without dependencies.
SITE=/tmp/l1pca-site
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || echo "gpu_check: installing .whl/ failed"
fi
if ! "$PYTHON" -c "import l1pca.kernels" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-cache-dir --target "$SITE" . \
        || echo "gpu_check: installing l1pca failed"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

SUMMARY=$RESULTS/gpu_check_$SLUG.md
{
    echo "# GPU check: $DEVICE"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $("$NVIDIA_SMI" --query-gpu=driver_version,memory.total --format=csv,noheader | head -n 1)"
    echo
    echo "| step | status | seconds | command |"
    echo "|---|---|---|---|"
} >"$SUMMARY"
FAILED=0
for step in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$step"
    echo "== $name (at most ${cap} s)"
    t0=$(date +%s)
    if [ "$name" = pytest ]; then
        timeout "$cap" $cmd 2>&1 | tee "$RESULTS/gpu_check_${SLUG}_pytest.txt"
        rc=${PIPESTATUS[0]}
    else
        timeout "$cap" $cmd
        rc=$?
    fi
    secs=$(( $(date +%s) - t0 ))
    case $rc in
        0) status=passed ;;
        124) status="stopped at its ${cap} s cap" ;;
        *) status="failed (exit $rc)" ;;
    esac
    [ "$rc" = 0 ] || FAILED=1
    echo "| $name | $status | $secs | \`$cmd\` |" >>"$SUMMARY"
    echo "== $name: $status in $secs s"
done
cat "$SUMMARY"
exit $FAILED
