#!/usr/bin/env bash
# The left-atrium accuracy benchmark (issue 6), paper protocol, on a lent GPU machine.
#
# Run from the repository root ON the device machine, with the data staged at /tmp/la
# (all 80 <ID>_image.nrrd / <ID>_label.nrrd pairs + train.list) and SimpleITK installed in
# /tmp/site or its wheel carried in .whl/ (the device image has no SimpleITK): see
# docs/GPU_LEASE.md (benchmarks/stage_la.py here, benchmarks/gpu_stage.sh there).
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
# Writes to $OUT (default /tmp/out) five files, as a device call brings back at most 8:
# results.md, result.json, per_case.csv, log.txt and la_report.tar.gz, which holds those and
# summary.csv, split.json, events_<method>.jsonl, stdout.txt, stderr.txt and gpu.txt. Model files
# stay in /tmp/la_paper (too big for $OUT); a second call on the warm machine with the same
# arguments resumes a run that the budget cut, and evaluates it.
# The last line printed is the JSON headline.
set -euo pipefail

BUDGET="${1:-10}"
shift || true
OUT="${OUT:-/tmp/out}"
DATA="${LA_DATA:-/tmp/la}"
WORK="${LA_WORK:-/tmp/la_paper}"
mkdir -p "$OUT" "$WORK"

# SimpleITK: installed into /tmp/site by an earlier call (benchmarks/gpu_stage.sh), or from a
# wheel carried in .whl/ with this call.
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import SimpleITK" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD/ReciprocalSeg:${PYTHONPATH:-}"

if [ ! -f "$DATA/train.list" ]; then
    echo "error: $DATA/train.list not found: stage the 80 cases at $DATA first" >&2
    exit 2
fi
n_images=$(ls "$DATA"/*_image.nrrd | wc -l)
REPORT="$WORK/report"
rm -rf "$REPORT"
mkdir -p "$REPORT"
echo "data: $DATA ($n_images images)" | tee "$REPORT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$REPORT/gpu.txt" 2>&1 || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$REPORT/gpu.txt"

status=0
python3 -m benchmarks.la --protocol paper --data "$DATA" --out "$WORK" --cache "$WORK/cache" \
    --device cuda --methods reciprocal --time-budget-min "$BUDGET" --log-every 250 "$@" \
    > "$REPORT/stdout.txt" 2> "$REPORT/stderr.txt" || status=$?

for f in per_case.csv summary.csv results.md result.json split.json log.txt; do
    if [ -f "$WORK/$f" ]; then cp "$WORK/$f" "$REPORT/"; fi
done
for run in "$WORK"/runs/*/; do
    if [ -f "$run/events.jsonl" ]; then cp "$run/events.jsonl" "$REPORT/events_$(basename "$run").jsonl"; fi
done
tar czf "$OUT/la_report.tar.gz" -C "$REPORT" .
for f in results.md result.json per_case.csv log.txt; do
    if [ -f "$REPORT/$f" ]; then cp "$REPORT/$f" "$OUT/"; fi
done
tail -n 40 "$REPORT/stderr.txt"
if [ -f "$REPORT/results.md" ]; then cat "$REPORT/results.md"; fi
tail -n 1 "$REPORT/stdout.txt"
exit "$status"
