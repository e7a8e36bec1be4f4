"""Accuracy on the left-atrium MRI data (issue 6): `python -m benchmarks.la`.

Trains on a split of ../shared/data/la (80 labelled cases, `train.list` order) and evaluates
on held-out cases with Dice, Jaccard, 95HD and ASD (voxels and mm), per case and mean +- std.

Protocols (`--protocol`):
  paper   the paper's recipe (preset `paper`: 6000 supervised teacher iterations, then 6000
          reciprocal), 16 labelled, the student at the last iteration, no post-processing,
          the paper's window stride (18, 18, 4) for evaluation;
  lite    the CPU-sized version (preset `lite`: 1.25 mm grid, smaller patch and network);
  paper8, lite8   the same with 8 labelled cases.

Default split (printed and written to OUT/split.json): labelled = the first 16 (or 8) of
train.list, evaluation = the last 16 of train.list (our validation split; the standard
20-case test split is kept apart), unlabelled = the cases in between. `--test-dir` evaluates
on a separate folder of `<ID>_image.nrrd` / `<ID>_label.nrrd` pairs instead (then the
unlabelled cases are all of train.list after the labelled ones, as in the paper).

Methods: `reciprocal` (gives the supervised-only teacher of phase 1 for free, the final
teacher and the student), `mean_teacher` (benchmarks/mean_teacher.py) and `control`: the
phase-1 model trained as many more iterations as the reciprocal phase has, on the labelled
cases alone with phase 1's recipe (the equal-iteration supervised control: what the extra
iterations give without the unlabelled scans). Outputs in OUT:
per_case.csv, summary.csv, results.md, result.json, split.json, log.txt, runs/<method>/.
The last line printed is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "ReciprocalSeg") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "ReciprocalSeg"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from benchmarks.mean_teacher import MeanTeacherSettings, train_mean_teacher  # noqa: E402
from reciprocalseg.common.atomic import atomic_write_json  # noqa: E402
from reciprocalseg.common.device import describe_device, resolve_device  # noqa: E402
from reciprocalseg.common.errors import CancelledError, ReciprocalSegError  # noqa: E402
from reciprocalseg.config import PRESETS, TrainConfig  # noqa: E402
from reciprocalseg.data.io import Case, discover_cases, read_image, read_list_file  # noqa: E402
from reciprocalseg.evaluation.metrics import evaluate_case, summarize  # noqa: E402
from reciprocalseg.inference.sliding_window import LoadedModel, load_model, predict_image  # noqa: E402
from reciprocalseg.model.vnet import build_model  # noqa: E402
from reciprocalseg.training.checkpoint import load_checkpoint, model_meta  # noqa: E402
from reciprocalseg.training.runner import CancelToken, train  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "la"
METRICS = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm")
METHODS = ("reciprocal", "mean_teacher", "control")


@dataclass(frozen=True)
class Protocol:
    name: str
    preset: str
    labeled: int
    paper_stride: bool = True


PROTOCOLS = {
    "paper": Protocol("paper", "paper", 16),
    "paper8": Protocol("paper8", "paper", 8),
    "lite": Protocol("lite", "lite", 16),
    "lite8": Protocol("lite8", "lite", 8),
}


class BenchmarkError(ReciprocalSegError):
    """A bad split or option (the message says what to change)."""


# --------------------------------------------------------------------------- split


@dataclass
class Split:
    labeled: list[Case]
    unlabeled: list[Case]
    evaluation: list[Case]
    description: str
    source: str = "train.list"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "evaluation_source": self.source,
            "labeled": [c.case_id for c in self.labeled],
            "unlabeled": [c.case_id for c in self.unlabeled],
            "evaluation": [c.case_id for c in self.evaluation],
            **self.extra,
        }


def parse_ids(value: str | None) -> list[str] | None:
    """Case IDs from a comma-separated string or from a list file (one ID a line)."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return read_list_file(path)
    ids = [v.strip() for v in value.split(",") if v.strip()]
    if not ids:
        raise BenchmarkError(f"no case IDs in {value!r}")
    return ids


def make_split(
    data_dir: Path,
    n_labeled: int,
    unlabeled_ids: Sequence[str] | None = None,
    eval_ids: Sequence[str] | None = None,
    test_dir: Path | None = None,
    n_eval: int = 16,
) -> Split:
    """Labelled = the first `n_labeled` of train.list; evaluation = the last `n_eval` (or
    `eval_ids`, or the cases of `test_dir`); unlabelled = the rest (or `unlabeled_ids`).

    Raises BenchmarkError for unknown IDs, any overlap between the three sets, and a test
    folder that shares a case with the training cases.
    """
    order = read_list_file(data_dir / "train.list")
    cases = {c.case_id: c for c in discover_cases(data_dir)}
    missing = [i for i in order if i not in cases or cases[i].label is None]
    if missing:
        raise BenchmarkError(f"{data_dir}: train.list names cases without image/label files: {missing[:5]}")
    if not 1 <= n_labeled < len(order):
        raise BenchmarkError(f"--labeled {n_labeled}: must be between 1 and {len(order) - 1}")

    def known(ids: Sequence[str], what: str) -> list[str]:
        unknown = [i for i in ids if i not in cases]
        if unknown:
            raise BenchmarkError(f"{what}: unknown case IDs {unknown[:5]} (not in {data_dir})")
        return list(ids)

    labeled = order[:n_labeled]
    source = "train.list"
    if test_dir is not None:
        if eval_ids is not None:
            raise BenchmarkError("use either --test-dir or --eval-ids, not both")
        test_cases = discover_cases(test_dir)
        unlabelled_test = [c.case_id for c in test_cases if c.label is None]
        if unlabelled_test:
            raise BenchmarkError(f"{test_dir}: test cases without a label: {unlabelled_test[:5]}")
        evaluation_cases = test_cases
        unlabeled = known(unlabeled_ids, "--unlabeled-ids") if unlabeled_ids else order[n_labeled:]
        training = set(labeled) | set(unlabeled)
        overlap = sorted(c.case_id for c in test_cases if c.case_id in training)
        same_files = sorted(
            c.case_id
            for c in test_cases
            if any(c.image.resolve() == cases[i].image.resolve() for i in training if i in cases)
        )
        if overlap or same_files:
            raise BenchmarkError(
                f"--test-dir {test_dir} overlaps the training cases: "
                f"{sorted(set(overlap + same_files))[:10]}; "
                "a test folder must hold cases that are neither labelled nor unlabelled training data"
            )
        source = str(test_dir)
        desc_eval = f"{len(test_cases)} cases of {test_dir}"
    else:
        evaluation = known(eval_ids, "--eval-ids") if eval_ids else order[-n_eval:]
        taken = set(labeled) | set(evaluation)
        unlabeled = (
            known(unlabeled_ids, "--unlabeled-ids") if unlabeled_ids else [i for i in order if i not in taken]
        )
        evaluation_cases = [cases[i] for i in evaluation]
        desc_eval = (
            f"evaluation = {', '.join(evaluation)}"
            if eval_ids
            else f"evaluation = the last {len(evaluation)} of train.list"
        )
    ev_ids = [c.case_id for c in evaluation_cases]
    for a, b, name in (
        (labeled, unlabeled, "labelled and unlabelled"),
        (labeled, ev_ids, "labelled and evaluation"),
        (unlabeled, ev_ids, "unlabelled and evaluation"),
    ):
        common = sorted(set(a) & set(b))
        if common:
            raise BenchmarkError(f"the {name} cases overlap: {common[:10]}")
    if not ev_ids:
        raise BenchmarkError("no evaluation cases")
    desc_unl = (
        f"unlabelled = {len(unlabeled)} given cases"
        if unlabeled_ids
        else f"unlabelled = the {len(unlabeled)} other cases of train.list"
    )
    description = (
        f"labelled = the first {n_labeled} of train.list; {desc_unl}; {desc_eval} "
        f"({len(labeled)}/{len(unlabeled)}/{len(ev_ids)})"
    )
    labeled_cases, unlabeled_cases = [cases[i] for i in labeled], [cases[i] for i in unlabeled]
    return Split(labeled_cases, unlabeled_cases, list(evaluation_cases), description, source)


def add_scribbled(split: Split, n: int, slices: int, folder: Path) -> Split:
    """Make the first `n` unlabelled cases partially labelled with simulated scribbles
    (benchmarks/scribbles.py), written to `folder`. They join the labelled cases; they leave
    the unlabelled list because the engine puts partially labelled cases in the student's
    unlabelled pool itself, so the student's pool stays the same cases as without them."""
    from benchmarks.scribbles import write_scribbled_label

    if not 0 < n <= len(split.unlabeled):
        raise BenchmarkError(f"--scribbled {n}: must be between 1 and {len(split.unlabeled)}")
    scribbled, fractions = [], {}
    for case in split.unlabeled[:n]:
        partial = folder / f"{case.case_id}_label.nrrd"
        fractions[case.case_id] = round(write_scribbled_label(case.label, partial, slices=slices), 6)
        scribbled.append(Case(case.case_id, case.image, partial))
    mean = float(np.mean(list(fractions.values())))
    description = (
        f"{split.description}; of the unlabelled, the first {n} scribbled ({slices} axial slices each, "
        f"benchmarks/scribbles.py; annotated voxels {100 * mean:.3f}% on average) and labelled partially"
    )
    extra = {**split.extra, "scribbled": [c.case_id for c in scribbled], "annotated_fraction": fractions}
    return Split(
        split.labeled + scribbled, split.unlabeled[n:], split.evaluation, description, split.source, extra
    )


# --------------------------------------------------------------------------- configuration


def parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, lists, true/false/null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(
    protocol: Protocol,
    preset: str | None = None,
    iterations: int | None = None,
    supervised_iterations: int | None = None,
    device: str = "auto",
    sets: Sequence[str] = (),
) -> TrainConfig:
    """The protocol's preset, then `preset` (a base preset replaces it; `improved` is layered on
    top of the protocol's base), then the iteration overrides and `--set KEY=VALUE` pairs."""
    base = protocol.preset
    layered: dict[str, Any] = {}
    name = base
    if preset is not None:
        if preset not in PRESETS:
            raise BenchmarkError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        if preset in ("paper", "lite", "demo"):
            base, name = preset, preset
        else:
            layered, name = dict(PRESETS[preset]), f"{base}+{preset}"
    values: dict[str, Any] = {**PRESETS[base], **layered, "preset": name, "device": device}
    if iterations is not None:
        values["reciprocal_iterations"] = iterations
    if layered.get("finetune_iterations"):
        # `improved`'s fine-tune is sized for the paper's 6000 reciprocal iterations (500, 1/12 of
        # them); on a shorter reciprocal phase it keeps that share (lite's 300: 25).
        reciprocal = values.get("reciprocal_iterations", TrainConfig.reciprocal_iterations)
        share = layered["finetune_iterations"] / TrainConfig.reciprocal_iterations
        values["finetune_iterations"] = max(1, round(share * reciprocal))
    if supervised_iterations is not None:
        values["supervised_iterations"] = supervised_iterations
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise BenchmarkError(f"--set {item!r}: use KEY=VALUE, e.g. --set n_filters=4")
        values[key.strip()] = parse_value(raw)
    config = TrainConfig.from_dict(values)
    config.validate()
    return config


# --------------------------------------------------------------------------- time budget


class Budget:
    """Cancels training once `seconds` of wall clock have passed since `start`.

    Only the reciprocal (and fine-tune / mean-teacher) phase is cut; the supervised phase is
    cut only when `cut_supervised` (then no reciprocal phase runs). Records where it stopped.
    """

    def __init__(self, seconds: float | None, token: CancelToken, cut_supervised: bool = False) -> None:
        self.seconds, self.token, self.cut_supervised = seconds, token, cut_supervised
        self.start = time.perf_counter()
        self.last: dict[str, Any] = {}
        self.fired = False

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") != "progress":
            return
        self.last = {"phase": event["phase"], "iteration": event["iteration"], "of": event["total"]}
        if self.seconds is None or self.fired:
            return
        if event["phase"] == "supervised" and not self.cut_supervised:
            return
        if time.perf_counter() - self.start > self.seconds and event["iteration"] < event["total"]:
            self.fired = True
            self.token.cancel()


class ProgressPrinter:
    """Prints a progress line every `every` iterations (to stderr and the log file)."""

    def __init__(self, log: Any, every: int = 50) -> None:
        self.log, self.every = log, every

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            it, total = event["iteration"], event["total"]
            if it % self.every and it != total and it != 1:
                return
            losses = " ".join(f"{k}={v:.4g}" for k, v in (event.get("losses") or {}).items())
            h = event.get("h")
            extra = f" h={h:.3g}" if h is not None else ""
            self.log(
                f"  {event['phase']} {it}/{total} lr={event.get('lr', 0):.3g} {losses}{extra} "
                f"s/it={event.get('sec_per_iter')} eta={event.get('eta_s')}"
            )
        elif kind in ("phase", "preprocessed", "cancelled", "done", "error", "resumed"):
            fields = {k: v for k, v in event.items() if k not in ("event", "time")}
            self.log(f"  [{kind}] {fields}")


SUPERVISED_CHECKPOINT = "supervised_end.pt"
# Fields that do not change phase 1 (the supervised teacher), so runs differing only in them
# can share it: the reciprocal-phase additions and bookkeeping.
PHASE2_ONLY = {
    "preset",
    "device",
    "reciprocal_iterations",
    "finetune_iterations",
    "teacher_dice",
    "student_ema",
    "h_baseline",
    "unlabeled_student_aug",
    "student_init",
    "checkpoint_every",
    "num_workers",
    "extra",
}


RECIPROCAL_CHECKPOINT = "reciprocal_end.pt"


class PhaseSnapshot:
    """Copies the run's latest checkpoint when `phase` starts (the end of the phase before it).

    `reciprocal` -> checkpoints/supervised_end.pt (phase 1, shareable between runs);
    `finetune` -> checkpoints/reciprocal_end.pt (the student and its EMA before the fine-tune).
    """

    def __init__(self, run_dir: Path, phase: str, name: str) -> None:
        self.run_dir, self.phase, self.name = run_dir, phase, name

    def __call__(self, event: dict[str, Any]) -> None:
        if (event.get("event"), event.get("phase"), event.get("iteration")) == ("phase", self.phase, 0):
            latest = self.run_dir / "checkpoints" / "latest.pt"
            target = self.run_dir / "checkpoints" / self.name
            if latest.exists() and not target.exists():
                shutil.copyfile(latest, target)


def start_from_supervised(run_dir: Path, source: Path, config: TrainConfig) -> str:
    """Seed `run_dir` with another run's end-of-phase-1 checkpoint (same phase-1 recipe).

    The new run then skips its supervised phase (identical by construction: same seed, same
    data stream, same recipe) and starts the reciprocal phase from the same teacher.
    """
    checkpoint_path = source / "checkpoints" / SUPERVISED_CHECKPOINT if source.is_dir() else source
    latest = run_dir / "checkpoints" / "latest.pt"
    if latest.exists():
        return f"resumed {run_dir}"
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint is None or checkpoint.get("phase") != "supervised":
        raise BenchmarkError(f"{checkpoint_path}: no end-of-supervised-phase checkpoint there")
    theirs, ours = TrainConfig.completed(checkpoint["config"]), config.to_dict()
    differ = sorted(
        k for k in ours if k not in PHASE2_ONLY and json.dumps(theirs.get(k)) != json.dumps(ours[k])
    )
    if differ or checkpoint["iteration"] != config.supervised_iterations:
        raise BenchmarkError(
            f"--from-supervised {source}: its phase 1 differs from this run's ({differ or 'iterations'})"
        )
    latest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint_path, latest)
    supervised = checkpoint_path.parent.parent / "supervised.pt"
    if supervised.exists():
        shutil.copyfile(supervised, run_dir / "supervised.pt")
    return f"phase 1 (supervised teacher) shared with {checkpoint_path.parent.parent}"


def train_control(
    config: TrainConfig,
    split: Split,
    run_dir: Path,
    supervised: Path,
    cache: Path,
    budget_s: float | None,
    printer: ProgressPrinter,
) -> tuple[LoadedModel, dict[str, Any]]:
    """The equal-iteration supervised control: the phase-1 model (`supervised`) trained
    `config.reciprocal_iterations` more iterations with phase 1's recipe (labelled crops only,
    `supervised_batch` per step, the lr schedule restarted as the reciprocal phase restarts it).

    What is left of the reciprocal run's gain over this model is what the unlabelled scans gave.
    Returns the model (the run's teacher) and the run's record; a budget cut evaluates the last
    checkpoint.
    """
    control_config = config.replace(
        supervised_iterations=config.reciprocal_iterations,
        reciprocal_iterations=0,
        finetune_iterations=0,
        student_ema=0.0,
    )
    token = CancelToken(run_dir / "CANCEL")
    budget = Budget(budget_s, token, cut_supervised=True)
    t0 = time.perf_counter()
    cut = False
    try:
        train(control_config, split.labeled, [], run_dir, [budget, printer], token, supervised, cache)
    except CancelledError:
        cut = True
    model = (
        cut_run_models(run_dir, control_config, config.device)["teacher"]
        if cut
        else load_model(run_dir / "teacher.pt", config.device)
    )
    record = {
        "cut": cut,
        "seconds": round(time.perf_counter() - t0, 1),
        "reached": budget.last,
        "init": str(supervised),
    }
    return model, record


# --------------------------------------------------------------------------- evaluation


def _model_from_state(state: dict[str, torch.Tensor], config: TrainConfig, device: str) -> LoadedModel:
    module = build_model(config.n_classes, config.n_filters, config.normalization, config.dropout)
    module.load_state_dict(state)
    dev = resolve_device(device)
    module.to(dev).eval()
    return LoadedModel(module, model_meta(config), dev)


def cut_run_models(run_dir: Path, config: TrainConfig, device: str) -> dict[str, LoadedModel]:
    """Teacher and student of a run cut by the time budget (from its last checkpoint).

    The student is the EMA of the student when the config keeps one and the run was cut
    in the reciprocal phase (what the finished run would evaluate), else the raw student.
    """
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    if checkpoint is None:
        raise BenchmarkError(f"{run_dir}: the run was cut before its first checkpoint")
    models = {"teacher": _model_from_state(checkpoint["teacher"], config, device)}
    ema = checkpoint.get("student_ema")
    if ema is not None and checkpoint["phase"] == "reciprocal":
        state = {k[len("module.") :]: v for k, v in ema.items() if k.startswith("module.")}
        models["student"] = _model_from_state(state, config, device)
    else:
        models["student"] = _model_from_state(checkpoint["student"], config, device)
    return models


def intermediate_models(checkpoint_path: Path, config: TrainConfig) -> dict[str, LoadedModel]:
    """The student (and its EMA, if kept) at the end of the reciprocal phase, before a fine-tune."""
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint is None:
        return {}
    out = {"student_before_finetune": _model_from_state(checkpoint["student"], config, config.device)}
    ema = checkpoint.get("student_ema")
    if ema is not None:
        state = {k[len("module.") :]: v for k, v in ema.items() if k.startswith("module.")}
        out["student_ema_before_finetune"] = _model_from_state(state, config, config.device)
    return out


@dataclass
class EvalCase:
    case_id: str
    image: sitk.Image
    label: np.ndarray
    spacing: tuple[float, float, float]


def load_eval_cases(cases: Sequence[Case]) -> list[EvalCase]:
    out = []
    for c in cases:
        image = read_image(c.image)
        label = sitk.GetArrayFromImage(read_image(c.label))
        out.append(EvalCase(c.case_id, image, label, tuple(image.GetSpacing())))
    return out


def evaluate(
    model: LoadedModel, cases: Sequence[EvalCase], paper_stride: bool, largest_component: bool = False
) -> list[dict[str, Any]]:
    """Per-case metrics of class 1 (the left atrium) for one model."""
    rows = []
    for case in cases:
        pred = predict_image(
            model, case.image, paper_stride=paper_stride, largest_component=largest_component
        )
        labels = sitk.GetArrayFromImage(pred.labels)
        metrics = evaluate_case(labels, case.label, case.spacing, n_classes=model.n_classes)[1]
        rows.append({"case": case.case_id, **metrics.to_dict()})
    return rows


# --------------------------------------------------------------------------- reporting


def _fmt(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def summaries(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, rows in results.items():
        s = summarize({k: r[k] for k in METRICS} for r in rows)
        out[name] = {
            k: {"mean": s[k][0], "std": s[k][1], "n": s.counts[k], "n_nan": s.nan_counts[k]} for k in METRICS
        }
    return out


def write_outputs(
    out: Path,
    results: dict[str, list[dict[str, Any]]],
    summary: dict[str, dict[str, Any]],
    header: dict[str, Any],
) -> None:
    """per_case.csv, summary.csv and results.md in `out`."""
    with open(out / "per_case.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "case", *METRICS])
        for name, rows in results.items():
            for r in rows:
                writer.writerow([name, r["case"], *(f"{r[k]:.6g}" for k in METRICS)])
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "n", *(f"{k}_{s}" for k in METRICS for s in ("mean", "std")), "n_nan"])
        for name, s in summary.items():
            n_nan = max(s[k]["n_nan"] for k in METRICS)
            writer.writerow(
                [name, len(results[name])]
                + [f"{s[k][stat]:.6g}" for k in METRICS for stat in ("mean", "std")]
                + [n_nan]
            )
    lines = [
        f"# Left atrium: protocol `{header['protocol']}`, preset `{header['preset']}`",
        "",
        f"- split: {header['split']}",
        f"- device: {header['device']}; evaluation: {header['evaluation']}",
        f"- iterations: {header['iterations']}",
        f"- command: `{header['command']}`",
        "",
        markdown_table(results, summary),
        "",
        "Dice and Jaccard in %, 95HD and ASD in voxels (as the paper reports them) and in mm; "
        "mean ± std (population) over the evaluation cases; distances skip cases with an empty "
        "prediction (counted in the last column).",
    ]
    for note in header.get("notes", []):
        lines.append(f"- {note}")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def markdown_table(results: dict[str, list[dict[str, Any]]], summary: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| model | n | Dice % | Jaccard % | 95HD vox | ASD vox | 95HD mm | ASD mm | empty |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        cells = [
            _fmt(s["dice"]["mean"], s["dice"]["std"], 100),
            _fmt(s["jaccard"]["mean"], s["jaccard"]["std"], 100),
            *(_fmt(s[k]["mean"], s[k]["std"]) for k in ("hd95_vox", "asd_vox", "hd95_mm", "asd_mm")),
        ]
        n_nan = max(s[k]["n_nan"] for k in METRICS)
        rows.append(f"| {name} | {len(results[name])} | " + " | ".join(cells) + f" | {n_nan} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.la", description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="lite")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.list and the cases")
    p.add_argument("--out", type=Path, default=None, help="output folder (default /tmp/la-<protocol>)")
    p.add_argument(
        "--methods", default="reciprocal", help="comma-separated: reciprocal, mean_teacher, control"
    )
    p.add_argument("--labeled", type=int, default=None, help="labelled cases: the first N of train.list")
    p.add_argument("--unlabeled-ids", default=None, help="comma-separated IDs or a list file")
    p.add_argument("--eval-ids", default=None, help="comma-separated IDs or a list file")
    p.add_argument("--n-eval", type=int, default=16, help="default evaluation = the last N of train.list")
    p.add_argument(
        "--scribbled", type=int, default=0, help="label the first N unlabelled cases with simulated scribbles"
    )
    p.add_argument("--scribble-slices", type=int, default=3, help="axial slices scribbled per case")
    p.add_argument("--test-dir", type=Path, default=None, help="evaluate on these <ID>_image/_label pairs")
    p.add_argument("--preset", default=None, help="paper/lite/demo replace the base; improved is layered on")
    p.add_argument("--iterations", type=int, default=None, help="reciprocal (and mean-teacher) iterations")
    p.add_argument("--supervised-iterations", type=int, default=None)
    p.add_argument("--set", dest="sets", action="append", default=[], help="config KEY=VALUE (JSON value)")
    p.add_argument("--time-budget-min", type=float, default=None, help="wall-clock budget per method")
    p.add_argument("--cut-supervised", action="store_true", help="let the budget cut the supervised phase")
    p.add_argument(
        "--from-supervised",
        type=Path,
        default=None,
        help="start the reciprocal phase from another run's phase-1 checkpoint (same phase-1 recipe)",
    )
    p.add_argument("--mt-init", choices=("scratch", "supervised"), default="scratch")
    p.add_argument("--mt-rampup", type=float, default=0.4, help="ramp-up as a fraction of the iterations")
    p.add_argument(
        "--mt-consistency",
        type=float,
        default=0.1,
        help="final consistency weight (0: no loss on the unlabelled crops, though they still share the "
        "student's batch-norm batch; the pure supervised control is --methods control)",
    )
    p.add_argument("--no-paper-stride", action="store_true", help="evaluate with the default overlap")
    p.add_argument("--largest-component", action="store_true", help="post-process (off in the paper)")
    p.add_argument("--skip-eval", default="", help="models not to evaluate, e.g. supervised")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache (default OUT/cache)")
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the full record (also written to OUT/result.json)."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Session:
    """What the stages of one benchmark invocation share: inputs, and what they produce."""

    args: argparse.Namespace
    protocol: Protocol
    methods: list[str]
    out: Path
    split: Split
    config: TrainConfig
    device_name: str
    log: Callable[[str], None]
    models: dict[str, LoadedModel] = field(default_factory=dict)
    runs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    train_seconds: dict[str, float] = field(default_factory=dict)
    cache: Path = field(init=False)
    budget_s: float | None = field(init=False)
    printer: ProgressPrinter = field(init=False)

    def __post_init__(self) -> None:
        self.cache = self.args.cache or self.out / "cache"
        minutes = self.args.time_budget_min
        self.budget_s = None if minutes is None else minutes * 60
        self.printer = ProgressPrinter(self.log, self.args.log_every)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(text)

    def cut_reason(self, budget: Budget) -> str:
        return f"the {self.args.time_budget_min} min budget" if budget.fired else "a cancel request"

    @property
    def phase1_dir(self) -> Path:
        return self.out / "runs" / "reciprocal"


def _methods(args: argparse.Namespace) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise BenchmarkError(f"--methods: unknown {bad}; choose from {list(METHODS)}")
    if args.mt_consistency < 0:
        raise BenchmarkError(f"--mt-consistency {args.mt_consistency}: must be >= 0")
    return methods


def _open_session(
    args: argparse.Namespace, methods: list[str], out: Path, log: Callable[[str], None]
) -> Session:
    protocol = PROTOCOLS[args.protocol]
    split = make_split(
        args.data,
        args.labeled or protocol.labeled,
        parse_ids(args.unlabeled_ids),
        parse_ids(args.eval_ids),
        args.test_dir,
        args.n_eval,
    )
    if args.scribbled:
        split = add_scribbled(split, args.scribbled, args.scribble_slices, out / "scribbles")
    config = build_config(
        protocol, args.preset, args.iterations, args.supervised_iterations, args.device, args.sets
    )
    device_name = describe_device(resolve_device(config.device))
    atomic_write_json(out / "split.json", split.to_dict())
    log(f"protocol {protocol.name}, preset {config.preset}, methods {methods}, device {device_name}")
    log(f"split: {split.description}")
    log(
        f"iterations: supervised {config.supervised_iterations}, reciprocal {config.reciprocal_iterations}, "
        f"finetune {config.finetune_iterations}; patch {config.patch_size}, n_filters {config.n_filters}, "
        f"spacing {config.target_spacing}"
    )
    return Session(args, protocol, methods, out, split, config, device_name, log)


# --------------------------------------------------------------------------- stages


def run_reciprocal(s: Session) -> None:
    """Phase 1 and, when asked for, the reciprocal phase; gives `supervised`, `teacher`, `student`.

    Also runs when only phase 1 is needed (the control, or mean teacher from the supervised model).
    """
    config, run_dir = s.config, s.phase1_dir
    wanted = "reciprocal" in s.methods
    run_config = config if wanted else config.replace(reciprocal_iterations=0, finetune_iterations=0)
    info: dict[str, Any] = {}
    if s.args.from_supervised is not None:
        info["phase1"] = start_from_supervised(run_dir, s.args.from_supervised, run_config)
        s.note(info["phase1"])
    # Only phase 1 is wanted and it is there: leave the run as it is (resuming it with a
    # supervised-only configuration would mark an unfinished reciprocal phase as done).
    if not wanted and (run_dir / "supervised.pt").exists():
        s.models["supervised"] = load_model(run_dir / "supervised.pt", config.device)
        info.update({"reused": "phase 1", "cut": False, "seconds": 0.0, "reached": {}})
    else:
        info.update(_train_reciprocal_run(s, run_config))
        _load_reciprocal_models(s, info)
    s.runs["reciprocal"] = info
    if not wanted:
        s.models.pop("teacher", None)
        s.models.pop("student", None)


def _train_reciprocal_run(s: Session, run_config: TrainConfig) -> dict[str, Any]:
    """Trains (or resumes, or reuses a finished) run in OUT/runs/reciprocal; its record."""
    run_dir = s.phase1_dir
    token = CancelToken(run_dir / "CANCEL")
    budget = Budget(s.budget_s, token, s.args.cut_supervised)
    done_file = run_dir / "done.json"
    reused = done_file.exists()
    listeners = [
        budget,
        s.printer,
        PhaseSnapshot(run_dir, "reciprocal", SUPERVISED_CHECKPOINT),
        PhaseSnapshot(run_dir, "finetune", RECIPROCAL_CHECKPOINT),
    ]
    t0 = time.perf_counter()
    cut = False
    try:
        train(run_config, s.split.labeled, s.split.unlabeled, run_dir, listeners, token, cache_dir=s.cache)
    except CancelledError:
        cut = True
    seconds = time.perf_counter() - t0
    info: dict[str, Any] = {}
    if reused:  # a finished run in OUT: evaluated again, not retrained
        seconds = json.loads(done_file.read_text())["seconds"]
        info["reused"] = True
    s.train_seconds["reciprocal"] = seconds
    info.update({"cut": cut, "seconds": round(seconds, 1), "reached": budget.last})
    if cut:
        reached = budget.last
        s.note(
            f"reciprocal run CUT by {s.cut_reason(budget)} at {reached.get('phase')} "
            f"iteration {reached.get('iteration')} of {reached.get('of')}"
        )
    return info


def _load_reciprocal_models(s: Session, info: dict[str, Any]) -> None:
    config, run_dir, models = s.config, s.phase1_dir, s.models
    if (run_dir / "supervised.pt").exists():
        models["supervised"] = load_model(run_dir / "supervised.pt", config.device)
    if info["cut"]:
        cut_models = cut_run_models(run_dir, config, config.device)
        if info["reached"].get("phase") == "supervised":
            models["supervised"] = cut_models["teacher"]
        else:
            models["teacher"], models["student"] = cut_models["teacher"], cut_models["student"]
    else:
        models["teacher"] = load_model(run_dir / "teacher.pt", config.device)
        models["student"] = load_model(run_dir / "student.pt", config.device)
        if config.student_ema > 0 and config.finetune_iterations == 0:  # student.pt is the EMA
            models["student_raw"] = load_model(run_dir / "checkpoints" / "student.pt", config.device)
    if "student" in models and (run_dir / "checkpoints" / RECIPROCAL_CHECKPOINT).exists():
        # Each addition on its own: the raw student and its EMA before the fine-tune.
        models.update(intermediate_models(run_dir / "checkpoints" / RECIPROCAL_CHECKPOINT, config))


def run_mean_teacher(s: Session) -> None:
    run_dir = s.out / "runs" / "mean_teacher"
    token = CancelToken(run_dir / "CANCEL")
    budget = Budget(s.budget_s, token, True)
    init = s.phase1_dir / "supervised.pt" if s.args.mt_init == "supervised" else None
    settings = MeanTeacherSettings(consistency=s.args.mt_consistency, rampup_fraction=s.args.mt_rampup)
    t0 = time.perf_counter()
    result = train_mean_teacher(
        s.config,
        s.split.labeled,
        s.split.unlabeled,
        run_dir,
        [budget, s.printer],
        token,
        s.cache,
        init,
        settings,
    )
    s.train_seconds["mean_teacher"] = time.perf_counter() - t0
    s.runs["mean_teacher"] = {
        "cut": result.cut,
        "seconds": round(result.seconds, 1),
        "reached": {"phase": "mean_teacher", "iteration": result.iterations, "of": result.planned},
        "init": s.args.mt_init,
    }
    if result.cut:
        s.note(
            f"mean teacher CUT by {s.cut_reason(budget)} at iteration {result.iterations} of {result.planned}"
        )
    s.models["mean_teacher_student"] = load_model(result.student, s.config.device)
    s.models["mean_teacher_ema"] = load_model(result.teacher, s.config.device)


def run_control(s: Session) -> None:
    model, record = train_control(
        s.config,
        s.split,
        s.out / "runs" / "control",
        s.phase1_dir / "supervised.pt",
        s.cache,
        s.budget_s,
        s.printer,
    )
    s.models["control"], s.runs["control"] = model, record
    s.train_seconds["control"] = record["seconds"]
    if record["cut"]:
        reached = record["reached"]
        s.note(f"control CUT by the budget at iteration {reached.get('iteration')} of {reached.get('of')}")


def evaluate_models(s: Session) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Every trained model (less --skip-eval) on the evaluation cases: per-case metrics, seconds."""
    for name in s.args.skip_eval.split(","):
        if s.models.pop(name.strip(), None) is not None:
            s.notes.append(f"{name.strip()} not evaluated here (--skip-eval)")
    eval_cases = load_eval_cases(s.split.evaluation)
    results: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for name, model in s.models.items():
        t0 = time.perf_counter()
        s.log(f"evaluating {name} on {len(eval_cases)} cases")
        results[name] = evaluate(model, eval_cases, _paper_stride(s), s.args.largest_component)
        seconds[name] = round(time.perf_counter() - t0, 1)
        dice = float(np.mean([r["dice"] for r in results[name]]))
        s.log(f"  {name}: mean Dice {dice * 100:.2f} ({seconds[name]} s)")
    return results, seconds


def _paper_stride(s: Session) -> bool:
    return s.protocol.paper_stride and not s.args.no_paper_stride


# --------------------------------------------------------------------------- the record


def _evaluation_text(s: Session) -> str:
    text = (
        "window stride (x, y, z) = (18, 18, 4) as the paper, uniform weights"
        if _paper_stride(s)
        else f"overlap {s.config.inference_overlap}, {s.config.inference_weighting} weights"
    )
    return text + (", largest component" if s.args.largest_component else ", no post-processing")


def make_record(
    s: Session, summary: dict[str, Any], n_test: int, eval_seconds: dict[str, float]
) -> dict[str, Any]:
    """result.json's content; its headline (all but `summary`) is the JSON line printed last."""
    config = s.config

    def mean_dice(name: str) -> float | None:
        return round(summary[name]["dice"]["mean"], 6) if name in summary else None

    student_key, teacher_key = (
        ("student", "teacher")
        if s.methods[0] == "reciprocal"
        else ("mean_teacher_student", "mean_teacher_ema")
    )
    return {
        "method": "+".join(s.methods),
        "protocol": s.protocol.name,
        "preset": config.preset,
        "student_dice": mean_dice(student_key),
        "teacher_dice": mean_dice(teacher_key),
        "supervised_dice": mean_dice("supervised"),
        "mean_teacher_dice": mean_dice("mean_teacher_student"),
        "mean_teacher_ema_dice": mean_dice("mean_teacher_ema"),
        "control_dice": mean_dice("control"),
        "n_test": n_test,
        "n_labeled": len(s.split.labeled),
        "n_unlabeled": len(s.split.unlabeled),
        "split": s.split.description,
        "evaluation_source": s.split.source,
        "device": s.device_name,
        "host": platform.node(),
        "iterations": {
            "supervised": config.supervised_iterations,
            "reciprocal": config.reciprocal_iterations,
            "finetune": config.finetune_iterations,
        },
        "runs": s.runs,
        "cut": any(r["cut"] for r in s.runs.values()),
        "train_seconds": {k: round(v, 1) for k, v in s.train_seconds.items()},
        "eval_seconds": eval_seconds,
        "dice_unit": "fraction",
        "summary": summary,
        "out": str(s.out),
    }


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    methods = _methods(args)
    out = args.out or Path(f"/tmp/la-{PROTOCOLS[args.protocol].name}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a", buffering=1, encoding="utf-8") as log_file:

        def log(msg: str) -> None:
            line = f"[{time.strftime('%H:%M:%S')}] {msg}"
            print(line, file=sys.stderr, flush=True)
            log_file.write(line + "\n")

        s = _open_session(args, methods, out, log)
        needs_phase1 = "control" in methods or (args.mt_init == "supervised" and "mean_teacher" in methods)
        if "reciprocal" in methods or needs_phase1:
            run_reciprocal(s)
        if "mean_teacher" in methods:
            run_mean_teacher(s)
        if "control" in methods:
            run_control(s)
        results, eval_seconds = evaluate_models(s)
        summary = summaries(results)
        header = {
            "protocol": s.protocol.name,
            "preset": s.config.preset,
            "split": s.split.description,
            "device": s.device_name,
            "evaluation": _evaluation_text(s),
            "iterations": (
                f"supervised {s.config.supervised_iterations}, reciprocal {s.config.reciprocal_iterations}, "
                f"finetune {s.config.finetune_iterations}; runs: {json.dumps(s.runs)}"
            ),
            "command": "python -m benchmarks.la " + " ".join(sys.argv[1:] if argv is None else argv),
            "notes": s.notes,
        }
        write_outputs(out, results, summary, header)
        record = make_record(s, summary, len(s.split.evaluation), eval_seconds)
        atomic_write_json(out / "result.json", record)
        log(f"wrote {out}/per_case.csv, summary.csv, results.md, result.json")
        log("\n" + markdown_table(results, summary))
    headline = {k: v for k, v in record.items() if k != "summary"}
    print(json.dumps(headline), flush=True)
    return record


if __name__ == "__main__":
    try:
        main()
    except ReciprocalSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
