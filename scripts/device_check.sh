#!/usr/bin/env bash
# One prepared GPU check, for a session that is lent a device machine (15 minutes of device time in all).
#
#   here, once:  bash scripts/device_check.sh --fetch
#                (downloads the cp312 wheels the device image lacks - taichi, dill, trimesh, ~57 MB - into .whl/,
#                 which .git/info/exclude ignores; the device image already has torch, numpy, scikit-image, pytest)
#   there:       device run with carry [".whl"], command "bash scripts/device_check.sh", timeout_s 560
#
# It runs the render benchmark with arch=cuda (tide and the torch references both on the GPU), then the render
# and field tests with TIDE_TEST_ARCH=cuda, and leaves the logs in $OUT (or runs/device).
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch" ]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl taichi==1.7.4 dill trimesh
fi
out=${OUT:-runs/device}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_check: installing the carried wheels failed (run with carry [\".whl\"])"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi -L > "$out/gpu.txt" 2>&1
set -o pipefail
TIDE_ARCH=cuda timeout 240 python3 scripts/bench_render.py --repeats 5 2>&1 | tee "$out/bench_render_cuda.log"
TIDE_TEST_ARCH=cuda timeout 240 python3 -m pytest tests/render tests/fields -q -p no:cacheprovider -rf \
    2>&1 | tee "$out/tests_cuda.log" | tail -40
