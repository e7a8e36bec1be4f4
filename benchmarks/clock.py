"""Does a time-budgeted round keep to its clock when the load changes mid-round? (issue 27)

    python -m benchmarks.clock --data ../shared/data/hippocampus --minutes 5 \\
        --code before=/tmp/clock-before/ReciprocalSeg --code after=ReciprocalSeg \\
        --hogs 4 --hog-from 0.5 --hog-to 0.85 --out benchmarks/results/2026-12-07-clock/a

Starts one `reciprocalseg train --minutes M` per `--code NAME=DIR` (DIR: a checkout's
`ReciprocalSeg` folder, imported through PYTHONPATH, so two versions of the package run side by
side), all at the same moment on the same cases, so that every run sees the same load. At
`--hog-from` of the budget it starts `--hogs` busy processes (`while True: pass`) and stops them
at `--hog-to`. The load average is sampled every 5 s.

For each run, against the budget: when its process exited (from its launch: what the user waits
for) and when its `done` event came on the run's own clock (the one its budget counts); each
phase's iterations and end against its deadline, on the run's own clock; the median seconds per
iteration of each phase with and without the hogs. Writes OUT/clock.json, OUT/load.jsonl and,
per run, OUT/NAME/events.jsonl, done.json and the command's output (the runs themselves, with
their models, stay in --work), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.any_dataset import machine, split_cases
from reciprocalseg.common.atomic import atomic_write_json
from reciprocalseg.data.io import discover_cases, require_labels


def write_manifest(path: Path, data: Path, n_labeled: int, n_unlabeled: int, seed: int) -> None:
    cases = discover_cases(data)
    require_labels(cases)
    labeled, unlabeled, _ = split_cases(cases, n_labeled, n_unlabeled, 0, seed)
    manifest = {
        "labeled": [{"id": c.case_id, "image": str(c.image), "label": str(c.label)} for c in labeled],
        "unlabeled": [{"id": c.case_id, "image": str(c.image)} for c in unlabeled],
    }
    atomic_write_json(path, manifest)


class LoadSampler(threading.Thread):
    """The 1-minute load average every `every` seconds, into a JSON-lines file."""

    def __init__(self, path: Path, start: float, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.path, self.start_time, self.every = path, start, every
        self.stop = threading.Event()

    def run(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            while not self.stop.is_set():
                one, five, fifteen = os.getloadavg()
                f.write(
                    json.dumps({"t": round(time.time() - self.start_time, 1), "load": [one, five, fifteen]})
                )
                f.write("\n")
                f.flush()
                self.stop.wait(self.every)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def start_run(name: str, code: Path, manifest: Path, work: Path, out: Path, args: argparse.Namespace) -> dict:
    run_dir = work / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "OMP_NUM_THREADS": str(args.threads)}
    command = [
        sys.executable,
        "-m",
        "reciprocalseg",
        "train",
        "--manifest",
        str(manifest),
        "--out",
        str(run_dir),
    ]
    command += ["--minutes", str(args.minutes), "--device", "cpu", "--json", *args.train_arg]
    (out / name).mkdir(parents=True, exist_ok=True)
    log = open(out / name / "stdout.jsonl", "w", encoding="utf-8")  # noqa: SIM115 (closed in finish_run)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    return {
        "name": name,
        "code": str(code),
        "run_dir": run_dir,
        "process": process,
        "log": log,
        "start": time.time(),
    }


def deadlines(config: dict[str, Any]) -> dict[str, float]:
    """Where each phase should end on the run's clock: the end of its cumulative share."""
    counts = [config["supervised_iterations"], config["reciprocal_iterations"], config["finetune_iterations"]]
    shares = [s if n > 0 else 0.0 for s, n in zip(config["budget_split"], counts, strict=True)]
    seconds, total, cumulative = config["minutes"] * 60, sum(shares), 0.0
    out = {}
    for phase, share in zip(("supervised", "reciprocal", "finetune"), shares, strict=True):
        cumulative += share
        out[phase] = round(seconds * cumulative / total, 1)
    return out


def phase_report(
    events: list[dict[str, Any]], start: float, hog: tuple[float, float], due: dict[str, float]
) -> dict[str, Any]:
    """Per phase: iterations, when it ended (its last checkpoint, s on the run's clock) against
    its deadline, and the median seconds per iteration outside and inside the hogs' window."""
    out: dict[str, Any] = {}
    for phase in ("supervised", "reciprocal"):
        times = [e["time"] - start for e in events if e["event"] == "progress" and e.get("phase") == phase]
        if not times:
            continue
        ends = [e["time"] - start for e in events if e["event"] == "checkpoint" and e.get("phase") == phase]
        steps = list(zip(times, times[1:], strict=False))
        inside = [b - a for a, b in steps if hog[0] <= a and b <= hog[1]]
        outside = [b - a for a, b in steps if b <= hog[0] or a >= hog[1]]
        out[phase] = {
            "iterations": len(times),
            "ended_s": round(max(ends or times), 1),
            "deadline_s": due[phase],
            "sec_per_iter_without_hogs": round(statistics.median(outside), 2) if outside else None,
            "sec_per_iter_with_hogs": round(statistics.median(inside), 2) if inside else None,
        }
    return out


def wait_for_exits(runs: list[dict], timeout: float) -> None:
    """Each run's exit time (s from its launch), polled; a run past `timeout` is stopped."""
    while any("exited" not in run for run in runs):
        for run in runs:
            if "exited" in run:
                continue
            if run["process"].poll() is not None:
                run["exited"] = time.time() - run["start"]
            elif time.time() - run["start"] > timeout:
                run["process"].terminate()  # this benchmark's own child, by its handle
                run["process"].wait()
                run["exited"] = time.time() - run["start"]
        time.sleep(0.2)


def finish_run(run: dict, out: Path, budget_s: float, hog: tuple[float, float]) -> dict:
    process, exited = run["process"], run["exited"]
    run["log"].close()
    run_dir: Path = run["run_dir"]
    for name in ("events.jsonl", "done.json"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out / run["name"] / name)
    events = [json.loads(line) for line in open(run_dir / "events.jsonl", encoding="utf-8")]
    due = deadlines(json.loads((run_dir / "config.json").read_text()))
    done = next((e for e in events if e["event"] == "done"), None)
    # The run's own clock, which its budget counts: its `done` event's seconds (since the train
    # command started; before issue 27, since Trainer.run(), after the imports and the planning).
    origin = events[0]["time"] if done is None else done["time"] - done["seconds"]
    hog_on_clock = (hog[0] - (origin - run["start"]), hog[1] - (origin - run["start"]))
    return {
        "name": run["name"],
        "code": run["code"],
        "returncode": process.returncode,
        "budget_s": budget_s,
        "exit_s": round(exited, 1),
        "exit_error_pct": round(100 * (exited - budget_s) / budget_s, 1),
        "clock_started_s": round(origin - run["start"], 1),
        "done_s": None if done is None else done["seconds"],
        "done_error_pct": None if done is None else round(100 * (done["seconds"] - budget_s) / budget_s, 1),
        "phases": phase_report(events, origin, hog_on_clock, due),
        "warnings": [e.get("message") for e in events if e["event"] == "warning"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a folder of image/label pairs")
    p.add_argument("--code", action="append", required=True, help="NAME=DIR: a ReciprocalSeg folder to run")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--labeled", type=int, default=5)
    p.add_argument("--unlabeled", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hogs", type=int, default=2, help="busy processes started mid-round")
    p.add_argument("--hog-from", type=float, default=0.5, help="fraction of the budget")
    p.add_argument("--hog-to", type=float, default=0.85, help="fraction of the budget")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    p.add_argument("--train-arg", action="append", default=[], help="an option for every run's train command")
    p.add_argument("--work", type=Path, default=Path("/tmp/clock-bench"), help="where the runs train")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    codes = dict(item.split("=", 1) for item in args.code)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "cases.json"
    write_manifest(manifest, args.data, args.labeled, args.unlabeled, args.seed)
    shutil.copy(manifest, args.out / "cases.json")
    budget_s = args.minutes * 60
    hog = (args.hog_from * budget_s, args.hog_to * budget_s)
    readings = {"start": uptime()}
    start = time.time()
    sampler = LoadSampler(args.out / "load.jsonl", start)
    sampler.start()
    runs = [start_run(name, Path(code), manifest, args.work, args.out, args) for name, code in codes.items()]
    hogs: list[subprocess.Popen] = []
    waiter = threading.Thread(target=wait_for_exits, args=(runs, 3 * budget_s + 120))
    waiter.start()
    try:
        time.sleep(max(0.0, hog[0] - (time.time() - start)))
        readings["hogs_start"] = uptime()
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        time.sleep(max(0.0, hog[1] - (time.time() - start)))
        readings["hogs_stop"] = uptime()
    finally:
        for h in hogs:  # only the processes started here, by their own handles
            h.terminate()
            h.wait()
    waiter.join()
    results = [finish_run(run, args.out, budget_s, hog) for run in runs]
    readings["end"] = uptime()
    sampler.stop.set()
    sampler.join()
    report = {
        "machine": machine(),
        "minutes": args.minutes,
        "hogs": args.hogs,
        "hog_window_s": hog,
        "threads": args.threads,
        "uptime": readings,
        "runs": results,
    }
    atomic_write_json(args.out / "clock.json", report)
    print(
        "| code | budget | exit after launch | done, run's own clock | supervised: its, end / deadline "
        "| reciprocal: its, end / deadline | s/it sup / rec without hogs | with hogs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        s, c = r["phases"].get("supervised", {}), r["phases"].get("reciprocal", {})
        done = "-" if r["done_s"] is None else f"{r['done_s']:.1f} s ({r['done_error_pct']:+}%)"
        print(
            f"| {r['name']} | {r['budget_s']:.0f} s | {r['exit_s']} s ({r['exit_error_pct']:+}%) | {done} | "
            f"{s.get('iterations')}, {s.get('ended_s')} / {s.get('deadline_s')} s | "
            f"{c.get('iterations')}, {c.get('ended_s')} / {c.get('deadline_s')} s | "
            f"{s.get('sec_per_iter_without_hogs')} / {c.get('sec_per_iter_without_hogs')} | "
            f"{s.get('sec_per_iter_with_hogs')} / {c.get('sec_per_iter_with_hogs')} |"
        )
    print(json.dumps({"uptime": readings}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
