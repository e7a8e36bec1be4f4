#!/usr/bin/env bash
# Issue 5, GPU tier of the speed benchmark. Run ON the lent GPU machine, from the repository root:
#
#     bash benchmarks/gpu_session.sh
#
# Writes $OUT/speed_gpu.log (environment, the table, the JSON line) and $OUT/speed_gpu.json (the
# JSON line alone). Expected wall time: about 1-2 minutes after the machine is up (the benchmark
# prints "[speed] ... done (N s)" after each section). The machine has python3 3.12 with a CUDA
# torch, numpy and scipy but no SimpleITK: the benchmark does not need it (benchmarks/speed.py puts
# a placeholder in its place); if a SimpleITK wheel was carried in .whl/, it is installed anyway.
#
# Options, through the environment:
#   SPEED_TIMEOUT=seconds   limit for the main run (default 420)
#   SPEED_COMPILE=1         afterwards, time the fast step and the training loop again with
#                           torch.compile'd networks (--compile --only step --only loop; adds a few
#                           minutes of compilation: only when the device budget allows)
#   SPEED_COMPILE_MODE=m    torch.compile mode for that run (default "default"; "reduce-overhead"
#                           puts the compiled graphs in CUDA graphs, "max-autotune-no-cudagraphs"
#                           autotunes kernels without them; see TrainConfig.compile_mode)
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
LOG="$OUT/speed_gpu.log"

{
    echo "== speed benchmark, GPU tier: $(date -Is)"
    echo "== repository: $(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 || true
    python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(),
'|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')" 2>&1
    nproc
} | tee "$LOG"

export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"  # where benchmarks/gpu_stage.sh installs
if ! python3 -c "import SimpleITK" >/dev/null 2>&1 && compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing the carried wheels from .whl/ into /tmp/site" | tee -a "$LOG"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
fi
export PYTHONPATH="ReciprocalSeg${PYTHONPATH:+:$PYTHONPATH}"

echo "== PYTHONPATH=ReciprocalSeg python3 -m benchmarks.speed --tier gpu" | tee -a "$LOG"
timeout "${SPEED_TIMEOUT:-420}" python3 -m benchmarks.speed --tier gpu 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
# The benchmark's last line is its JSON object (also when a section failed: see its "errors").
tail -n 1 "$LOG" > "$OUT/speed_gpu.json"
echo "== exit status $status" | tee -a "$LOG"

if [ "${SPEED_COMPILE:-0}" = "1" ]; then
    MODE="${SPEED_COMPILE_MODE:-default}"
    echo "== PYTHONPATH=ReciprocalSeg python3 -m benchmarks.speed --tier gpu --compile --compile-mode $MODE --only step --only loop" | tee -a "$LOG"
    timeout "${SPEED_TIMEOUT:-420}" python3 -m benchmarks.speed --tier gpu --compile --compile-mode "$MODE" --only step --only loop 2>&1 \
        | tee "$OUT/speed_gpu_compile.log" | tee -a "$LOG"
    tail -n 1 "$OUT/speed_gpu_compile.log" > "$OUT/speed_gpu_compile.json"
fi
exit "$status"
