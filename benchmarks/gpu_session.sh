#!/usr/bin/env bash
# Every GPU measurement the docs quote, in one command on one GPU machine, inside ten minutes:
# the `gpu` tests, the kernel microbenchmarks, and training throughput/MFU with a profile.
#
#   benchmarks/gpu_session.sh [OUT_DIR]      (default: $OUT, else ./gpu-results; $PYTHON, else python3)
#
# Each part has its own time limit, so a slow or failing part still leaves the others' results;
# logs land in OUT_DIR as gpu_tests.log, kernels.log, throughput.log. Where the machine lacks
# the project's dependencies and cannot reach a package index, carry the wheels in `.whl/`
# (made elsewhere for that machine's Python): they are installed into a private folder first.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:-${OUT:-gpu-results}}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/pretrain-site .whl/*.whl
    export PYTHONPATH="/tmp/pretrain-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

part() {  # part NAME SECONDS COMMAND...: run it with a limit, log it, note how it ended
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name exit $?" >>"$out/$name.log"
    tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
part gpu_tests 150 "$python" -m pytest -m gpu -q -p no:cacheprovider tests
part kernels 90 "$python" benchmarks/kernels.py
part throughput 300 "$python" benchmarks/gpu_throughput.py --profile
