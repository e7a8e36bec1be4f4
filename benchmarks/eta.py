"""How right the ETA is (issue 15): `python -m benchmarks.eta --data ../shared/data/hippocampus`.

Trains a fresh run, then a round warm-started from it (the service's second round), with fixed
iteration counts, and compares every progress event's `eta_s` with the time the run really
took from then on. Also replays the old estimator (a moving average of the last iterations'
seconds times every iteration left, checkpoints left out) on the same events, side by side.
Reports, from 10% of each run's time on, the largest and the median relative error
|ETA - actual| / actual. Writes OUT/eta.json and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.any_dataset import machine, split_cases
from reciprocalseg.common.atomic import atomic_write_json
from reciprocalseg.data.io import discover_cases, require_labels
from reciprocalseg.planning.fingerprint import compute_fingerprint
from reciprocalseg.planning.planner import plan_from_fingerprint, planned_config
from reciprocalseg.training.events import read_events


def old_eta(events: list[dict[str, Any]], smoothing: float = 0.1) -> list[float | None]:
    """The estimator the ETA used before: an EMA of seconds per iteration (not across a
    checkpoint) times all the iterations left in the run, for each progress event."""
    out, ema, last = [], None, None
    for e in events:
        if e["event"] == "checkpoint" or e["event"] == "phase":
            last = None
            continue
        if e["event"] != "progress":
            continue
        if last is not None:
            dt = e["time"] - last
            ema = dt if ema is None else (1 - smoothing) * ema + smoothing * dt
        last = e["time"]
        left = e["overall_total"] - e["overall_iteration"]
        out.append(None if ema is None else ema * left)
    return out


def errors(run_dir: Path, from_fraction: float = 0.1, to_fraction: float = 0.9) -> dict[str, Any]:
    """ETA errors on the progress events from `from_fraction` to `to_fraction` of the run's time
    (past 90%, a second's error on a few seconds left is a large relative error that says
    nothing), relative to the time really left; and the error of the finish time it implies,
    relative to the run's length, over the same events."""
    events = read_events(run_dir / "events.jsonl")
    progress = [e for e in events if e["event"] == "progress"]
    start = next(e["time"] for e in events if e["event"] == "phase")
    end = next(e["time"] for e in events if e["event"] == "done")
    old = old_eta(events)
    new_err, old_err, finish_err = [], [], []
    length = end - start
    for e, legacy in zip(progress, old, strict=True):
        actual = end - e["time"]
        if not from_fraction * length <= e["time"] - start <= to_fraction * length:
            continue
        if e["eta_s"] is not None:
            new_err.append(abs(e["eta_s"] - actual) / actual)
            finish_err.append(abs(e["eta_s"] - actual) / length)
        if legacy is not None:
            old_err.append(abs(legacy - actual) / actual)

    def stats(values: list[float]) -> dict[str, float]:
        return {"max": round(max(values), 3), "median": round(float(np.median(values)), 3), "n": len(values)}

    return {
        "seconds": round(length, 1),
        "eta": stats(new_err),
        "old_eta": stats(old_err),
        "finish_time_error_of_run_length": stats(finish_err),
    }


def main(argv: list[str] | None = None) -> int:
    from reciprocalseg.training.runner import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("eta-out"))
    p.add_argument("--labeled", type=int, default=4)
    p.add_argument("--unlabeled", type=int, default=16)
    p.add_argument("--supervised-iterations", type=int, default=20)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--n-filters", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cases = require_labels(discover_cases(args.data))
    labeled, unlabeled, _ = split_cases(cases, args.labeled, args.unlabeled, 0, args.seed)
    plan = plan_from_fingerprint(compute_fingerprint(labeled, unlabeled), "cpu")
    config = planned_config(
        plan,
        {
            "device": "cpu",
            "n_filters": args.n_filters,
            "supervised_iterations": args.supervised_iterations,
            "reciprocal_iterations": args.iterations,
            "checkpoint_every": args.checkpoint_every,
        },
    )
    fresh = train(config, labeled, unlabeled, args.out / "fresh")
    train(config, labeled, unlabeled, args.out / "warm", warm_start=fresh.run_dir)
    result = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "fresh": errors(args.out / "fresh"),
        "warm_started": errors(args.out / "warm"),
    }
    atomic_write_json(args.out / "eta.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
