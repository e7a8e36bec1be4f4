"""The `train` command's options and what follows from them: case lists, config, a run.

Shared by the CLI (`reciprocalseg train`) and the torchrun entry (`python -m
reciprocalseg.training.distributed train`), which take the same arguments; both import this module,
neither imports the other.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..common.errors import ReciprocalSegError
from ..config import TrainConfig, make_config
from .progress import progress_listener

if TYPE_CHECKING:  # torch and SimpleITK load when a command runs, not when the parser is built
    from ..data.io import Case
    from ..planning.planner import Plan
    from .runner import RunResult


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `reciprocalseg train`."""
    src = p.add_argument_group("cases (folders, or a JSON manifest)")
    src.add_argument("--images", type=Path, help="folder of labelled scans (or <ID>_image/<ID>_label pairs)")
    src.add_argument("--labels", type=Path, help="folder of label maps matched to --images by case ID")
    src.add_argument("--unlabeled", type=Path, help="folder of unlabelled scans")
    src.add_argument(
        "--manifest", type=Path, help='JSON {"labeled": [{id, image, label}], "unlabeled": [...]}'
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (rerun the same command to resume)")
    p.add_argument(
        "--preset",
        default="auto",
        help="auto (default: planned from the data, written to OUT/plan.json), paper, lite, demo or improved",
    )
    p.add_argument(
        "--minutes",
        type=float,
        help="time budget: each phase sized from its measured speed to fit (instead of iteration counts)",
    )
    p.add_argument("--plan", type=Path, help="with auto: use this plan.json (e.g. an edited one)")
    p.add_argument("--class-crop-share", type=float, help="share of labelled crops centred on a class")
    p.add_argument("--iterations", type=int, help="reciprocal iterations")
    p.add_argument("--supervised-iterations", type=int, help="supervised teacher iterations")
    p.add_argument("--finetune-iterations", type=int, help="student fine-tune iterations at the end")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--n-classes", type=int, help="classes including background (default: from the labels)")
    p.add_argument("--n-filters", type=int)
    p.add_argument("--normalization", choices=["batchnorm", "groupnorm", "instancenorm", "none"])
    p.add_argument("--target-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--intensity", choices=["zscore", "ct", "ct_dataset"])
    p.add_argument("--step-mode", choices=["fast", "reference"])
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="train on N local GPUs with torch.distributed (with --device cpu: N CPU processes)",
    )
    p.add_argument(
        "--sync-bn", action="store_true", help="with --gpus N: batch-norm statistics over all GPUs"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument(
        "--warm-start",
        type=Path,
        help="start from a previous run folder (both networks) or a model file (the teacher)",
    )
    p.add_argument("--json", action="store_true", help="print progress events as JSON lines on stdout")


def train_parser(prog: str) -> argparse.ArgumentParser:
    """A parser of the `train` options alone (the torchrun entry)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="supervised teacher phase, then reciprocal learning"
    )
    add_train_arguments(parser)
    return parser


def load_cases(args: argparse.Namespace) -> tuple[list[Case], list[Case]]:
    """Labelled and unlabelled cases from --manifest, or from --images/--labels/--unlabeled."""
    from ..data.io import discover_cases, load_case_list, require_labels

    if args.manifest:
        return load_case_list(args.manifest)
    if not args.images:
        raise ReciprocalSegError("give --images (and --labels) or --manifest")
    labeled = discover_cases(args.images, args.labels)
    require_labels(labeled)
    unlabeled = discover_cases(args.unlabeled) if args.unlabeled else []
    ids = {c.case_id for c in labeled} & {c.case_id for c in unlabeled}
    if ids:
        raise ReciprocalSegError(
            f"cases {sorted(ids)} are both labelled and unlabelled; remove them from one folder"
        )
    return labeled, unlabeled


def n_classes_from_labels(labeled: list[Case]) -> int:
    """Classes including background, from the largest label value found in the label maps."""
    import SimpleITK as sitk

    from ..common.file_formats import UNANNOTATED
    from ..data.io import read_image
    from ..data.validation import infer_n_classes, present_values

    # GetArrayFromImage (a copy): a view of a temporary image would read freed memory. 255 marks
    # unannotated voxels of a partial label, never a class.
    present: set[int] = set()
    for case in labeled:
        present.update(int(v) for v in present_values(sitk.GetArrayFromImage(read_image(case.label))))
    present.discard(UNANNOTATED)
    refuse_class_gaps(present)
    return infer_n_classes(max(present, default=0)) + 1


def refuse_class_gaps(present: Iterable[int]) -> None:
    """Without --n-classes the class count comes from the largest label value; refuse labels whose
    classes skip values (254 from another tool, a scan saved as a label), which would otherwise
    train that many output channels, most of them never labelled."""
    classes = {int(c) for c in present if c != 0}
    missing = sorted(set(range(1, max(classes, default=0))) - classes)
    if missing:
        shown = f"{missing[0]}..{missing[-1]}" if len(missing) > 3 else ", ".join(map(str, missing))
        largest = max(classes)
        raise ReciprocalSegError(
            f"the labels hold class {largest}, but no label has class {shown}: is a label a scan, or "
            "another tool's class numbering? Remap the labels to consecutive classes 1..K, or give "
            f"--n-classes {largest + 1} to train {largest + 1} classes (background included) anyway"
        )


def build_config(
    args: argparse.Namespace, labeled: list[Case], unlabeled: list[Case] | None = None
) -> TrainConfig:
    """The run's configuration: the preset (for `auto`, the plan from the cases, written to
    OUT/plan.json and shown), with every option given on the command line over it."""
    if args.preset == "auto":
        return _planned_config(args, labeled, unlabeled or [])
    return make_config(
        args.preset, n_classes=args.n_classes or n_classes_from_labels(labeled), **_overrides(args)
    )


def _planned_config(args: argparse.Namespace, labeled: list[Case], unlabeled: list[Case]) -> TrainConfig:
    import sys

    from ..common.device import resolve_device
    from ..planning.fingerprint import MAX_LABEL_CASES
    from ..planning.planner import Plan, plan_for_run, planned_config

    if getattr(args, "plan", None) is not None:
        plan = Plan.load(args.plan)
    else:
        plan = plan_for_run(args.out, labeled, unlabeled, resolve_device(args.device or "auto"))
    if len(labeled) > MAX_LABEL_CASES:  # the fingerprint read a sample of the label maps
        if args.n_classes is None:  # (with --n-classes the labels' own count is not used)
            plan.values["n_classes"] = max(plan.values["n_classes"], n_classes_from_labels(labeled))
    elif args.n_classes is None:
        refuse_class_gaps(int(c) for c in plan.fingerprint.get("classes", {}))
    warm = getattr(args, "warm_start", None)
    if warm is not None and (Path(warm) / "config.json").is_file():
        keep_architecture(plan, Path(warm) / "config.json")
    config = planned_config(plan, {"n_classes": args.n_classes, **_overrides(args)})
    args.out.mkdir(parents=True, exist_ok=True)
    plan.save(args.out / "plan.json")
    print(plan.describe(), file=sys.stderr)  # stderr: with --json, stdout carries events only
    return config


# What a warm start needs unchanged (the weights' shapes and what they were trained to see).
ARCHITECTURE = ("patch_size", "downsampling", "n_filters", "normalization", "dropout", "target_spacing")
ARCHITECTURE += ("intensity", "intensity_clip", "intensity_mean_std")


def keep_architecture(plan: Plan, previous_config: Path) -> None:
    """A round warm-started from a run keeps that run's network and grid, whatever the new
    cases would plan (a new fingerprint must not make the warm start impossible)."""
    import json

    previous = json.loads(previous_config.read_text(encoding="utf-8"))
    for key in ARCHITECTURE:
        if key in previous and key in plan.values and plan.values[key] != previous[key]:
            plan.values[key] = previous[key]
            plan.reasons[key] = f"kept from the warm-start run {previous_config.parent.name}"


def _overrides(args: argparse.Namespace) -> dict:
    """Config fields set on the command line (None: not given)."""
    return dict(
        minutes=getattr(args, "minutes", None),
        class_crop_share=getattr(args, "class_crop_share", None),
        reciprocal_iterations=args.iterations,
        supervised_iterations=args.supervised_iterations,
        finetune_iterations=args.finetune_iterations,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        n_filters=args.n_filters,
        normalization=args.normalization,
        target_spacing=tuple(args.target_spacing) if args.target_spacing else None,
        intensity=args.intensity,
        step_mode=args.step_mode,
        device=args.device,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.num_workers,
    )


def train_in_process(
    args: argparse.Namespace, config: TrainConfig, labeled: list[Case], unlabeled: list[Case]
) -> RunResult:
    """Train in this process; SIGINT/SIGTERM or a CANCEL file in the run folder stop it cleanly."""
    from .runner import CancelToken, train

    cancel = CancelToken(args.out / "CANCEL")
    cancel.install_signal_handlers()
    listener = progress_listener(args.json)
    # A time budget counts from the command's start (`started`, set by the entry point): the user
    # asked for the round to take that long, imports and planning included.
    started = getattr(args, "started", None)
    return train(config, labeled, unlabeled, args.out, [listener], cancel, args.warm_start, started=started)


def print_result(args: argparse.Namespace, result: RunResult) -> None:
    """Where the models are (not with --json, whose stdout is events only)."""
    if not args.json:
        print(f"teacher: {result.teacher}\nstudent: {result.student}\ndevice: {result.device}")
