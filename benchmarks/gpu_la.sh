#!/usr/bin/env bash
# The left-atrium accuracy benchmark (issue 6), paper protocol, on a lent GPU machine.
#
# Run from the repository root ON the device machine, with the data staged at /tmp/la
# (all 80 <ID>_image.nrrd / <ID>_label.nrrd pairs + train.list, see ../shared/data/la/README.md)
# and a SimpleITK wheel carried in .whl/ (the device image has no SimpleITK):
#
#   bash benchmarks/gpu_la.sh BUDGET_MIN [extra benchmarks.la options ...]
#
# BUDGET_MIN   wall-clock minutes for training (default 10). The reciprocal phase is cut when
#              it is spent (the result says so and at which iteration); the supervised phase
#              is never cut, so size it with --supervised-iterations when the budget is short.
# extra        passed to `python -m benchmarks.la`, e.g. --supervised-iterations 3000,
#              --iterations 3000, --preset improved, --labeled 8, --methods reciprocal,control.
#              The budget applies to each method in turn. `control` (the phase-1 model trained as
#              many more iterations on the labelled cases alone) tells what the reciprocal phase's
#              gain owes to the unlabelled scans; on one H100-class GPU it adds about 2.5 min
#              (6000 supervised iterations at ~22 ms) to the ~8.5 min of phase 1 + reciprocal, so
#              run it as a second call on the warm machine (same --out: phase 1 is reused).
#
# Default: protocol `paper` (16 labelled = first 16 of train.list, validation = last 16,
# unlabelled = the 48 between; 6000 + 6000 iterations; the paper's window stride, no
# post-processing), method reciprocal (the supervised-only teacher comes free).
# Writes to $OUT (default /tmp/out): per_case.csv, summary.csv, results.md, result.json,
# split.json, log.txt, events_<method>.jsonl, stdout.txt, stderr.txt, gpu.txt. Model files stay in /tmp/la_paper (too big for $OUT).
# The last line printed is the JSON headline.
set -euo pipefail

BUDGET="${1:-10}"
shift || true
OUT="${OUT:-/tmp/out}"
DATA="${LA_DATA:-/tmp/la}"
WORK="${LA_WORK:-/tmp/la_paper}"
mkdir -p "$OUT" "$WORK"

if ! python3 -c "import SimpleITK" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/ReciprocalSeg:${PYTHONPATH:-}"

if [ ! -f "$DATA/train.list" ]; then
    echo "error: $DATA/train.list not found: stage the 80 cases at $DATA first" >&2
    exit 2
fi
n_images=$(ls "$DATA"/*_image.nrrd | wc -l)
echo "data: $DATA ($n_images images)" | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/gpu.txt" 2>&1 || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.txt"

status=0
python3 -m benchmarks.la --protocol paper --data "$DATA" --out "$WORK" --cache "$WORK/cache" \
    --device cuda --methods reciprocal --time-budget-min "$BUDGET" --log-every 250 "$@" \
    > "$OUT/stdout.txt" 2> "$OUT/stderr.txt" || status=$?

for f in per_case.csv summary.csv results.md result.json split.json log.txt; do
    if [ -f "$WORK/$f" ]; then cp "$WORK/$f" "$OUT/"; fi
done
for run in "$WORK"/runs/*/; do
    if [ -f "$run/events.jsonl" ]; then cp "$run/events.jsonl" "$OUT/events_$(basename "$run").jsonl"; fi
done
tail -n 40 "$OUT/stderr.txt"
if [ -f "$OUT/results.md" ]; then cat "$OUT/results.md"; fi
tail -n 1 "$OUT/stdout.txt"
exit "$status"
