"""The tuning tables of RESULTS.md ("The loop in strokes"): per loop-benchmark output folder, the
mean Dice (over classes, then cases) after 0, 1, 2, 3, 5 and 10 strokes per arm, and each case's
lowest class Dice after strokes 1-3 of the refine arm.

    python summarise_tuning.py OUT [OUT ...]
"""

import glob
import json
import sys

import numpy as np


def summarise(folder: str) -> str:
    curves: dict[str, list[list[float]]] = {}
    worst = []
    for path in sorted(glob.glob(folder + "/cases/*.json")):
        with open(path) as f:
            rows = json.load(f)
        for arm in ("paste", "refine"):
            curve = [float(np.mean(r["dice"])) for r in rows if r["arm"] == arm]
            curve += [curve[-1]] * (11 - len(curve))  # carried forward where the case stopped
            curves.setdefault(arm, []).append(curve[:11])
        refine = [r for r in rows if r["arm"] == "refine"]
        worst.append(min(min(r["dice"]) for r in refine[1:4]))
    parts = []
    for arm, arm_curves in curves.items():
        mean = np.mean(arm_curves, axis=0)
        parts.append(f"{arm}: " + " ".join(f"{k}:{mean[k]:.3f}" for k in (0, 1, 2, 3, 5, 10)))
    lowest = " ".join(f"{w:.2f}" for w in worst)
    return f"{folder.rstrip('/').split('/')[-1]} {len(worst)} cases | {' | '.join(parts)} | lowest: {lowest}"


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(summarise(folder))
