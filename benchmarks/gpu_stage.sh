#!/usr/bin/env bash
# Device side of the data staging (benchmarks/stage_la.py packs the parts; docs/GPU_LEASE.md).
# Run ON the device machine from the repository root, in each call that carries a part:
#
#   bash benchmarks/gpu_stage.sh
#
# Copies every carried .stage/<part>/ into $LA_DATA (default /tmp/la: /tmp survives between
# calls while the machine stays warm; the checkout there does not) and, when .whl/ was carried,
# installs its wheels into /tmp/site (gpu_la.sh and gpu_session.sh look there). Prints how many
# of train.list's cases are complete, so the last call shows at once whether a part went missing.
set -euo pipefail

DATA="${LA_DATA:-/tmp/la}"
mkdir -p "$DATA"
for part in .stage/*/; do
    [ -d "$part" ] || continue
    cp "$part"* "$DATA/"
    echo "staged $(ls "$part" | wc -l) files from $part"
done
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    echo "installed $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')into /tmp/site"
fi
if [ -f "$DATA/train.list" ]; then
    complete=0
    total=0
    for id in $(cat "$DATA/train.list"); do
        total=$((total + 1))
        if [ -f "$DATA/${id}_image.nrrd" ] && [ -f "$DATA/${id}_label.nrrd" ]; then
            complete=$((complete + 1))
        fi
    done
    echo "$DATA: $complete of $total cases of train.list complete"
else
    echo "$DATA: no train.list yet (it rides with the first part)"
fi
