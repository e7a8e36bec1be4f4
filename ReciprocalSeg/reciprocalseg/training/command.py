"""The `train` command's options and the training request they make (cases, final plan, settings).

Shared by the CLI (`reciprocalseg train`) and the torchrun entry (`python -m
reciprocalseg.training.distributed train`), which take the same arguments; both import this module,
neither imports the other. Both then train the request with `run_request.run`, as the service's
training child does with the request the service wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..common.errors import ReciprocalSegError, UsageError
from .request import TrainRequest

if TYPE_CHECKING:  # torch and SimpleITK load when a command runs, not when the parser is built
    from ..data.io import Case


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
        help="time budget: each phase runs to its share of the time (instead of iteration counts)",
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
    p.add_argument(
        "--channel-names",
        nargs="+",
        metavar="NAME",
        help="names of the cases' channels, in order (e.g. T2 ADC; default channel_0, channel_1, ...)",
    )
    p.add_argument(
        "--resample-channels",
        choices=["linear", "nearest", "bspline"],
        help="resample a channel that is off its case's channel-0 grid with this interpolation "
        "(default: such a case is refused)",
    )
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


# The smallest value of each whole-number option: a smaller one is refused before any case is
# read, as a usage error (one line, exit 2), not later as the configuration's error (exit 1).
COUNT_MINIMA = {
    "iterations": 0,
    "supervised_iterations": 0,
    "finetune_iterations": 0,
    "n_classes": 2,
    "n_filters": 1,
    "checkpoint_every": 1,
    "num_workers": 0,
    "gpus": 1,
}


def check_counts(args: argparse.Namespace) -> None:
    """Raise UsageError naming the first whole-number option below its minimum."""
    for name, minimum in COUNT_MINIMA.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least {minimum}")
    if args.patch_size is not None and min(args.patch_size) < 1:
        raise UsageError(f"--patch-size {' '.join(map(str, args.patch_size))}: every size must be at least 1")


def request_from_args(args: argparse.Namespace, started: float | None = None) -> TrainRequest:
    """The training request of the `train` options: the cases, and for `auto` the run's final
    plan (made from the cases, or --plan, or the run folder's own on a rerun), written to
    OUT/plan.json and shown; every option given on the command line over the preset or plan.
    `started`: when the command started (time.perf_counter), which a time budget counts from."""
    check_counts(args)
    labeled, unlabeled = load_cases(args)
    names = channel_names(args, labeled, unlabeled)
    overrides = {"n_classes": args.n_classes, **_overrides(args)}
    plan = None
    if args.preset == "auto":
        plan = _final_plan(args, labeled, unlabeled, overrides, names)
    else:
        if not overrides["n_classes"]:
            from ..planning.final_plan import n_classes_from_labels

            overrides["n_classes"] = n_classes_from_labels(labeled)
        if len(names) > 1:
            from ..config import preset_channels

            overrides["channels"] = preset_channels(args.preset, overrides, names)
    return TrainRequest(
        out=args.out,
        labeled=labeled,
        unlabeled=unlabeled,
        preset=args.preset,
        plan=plan,
        config={k: v for k, v in overrides.items() if v is not None},
        warm_start=args.warm_start,
        json_events=args.json,
        gpus=args.gpus,
        sync_bn=bool(getattr(args, "sync_bn", False)),
        cases_file=args.manifest,
        started=started,
    )


def channel_names(args: argparse.Namespace, labeled: list[Case], unlabeled: list[Case]) -> list[str]:
    """The channels' names (--channel-names, else channel_0 ...); one name for single-channel cases.

    Every case must have as many channels as the first labelled one (read from the file names or
    headers); a case with another count is refused by name."""
    from ..data.channels import case_channel_count

    given = getattr(args, "channel_names", None)
    counts = {c.case_id: case_channel_count(c) for c in [*labeled, *unlabeled]}
    n = counts[labeled[0].case_id] if labeled else 1
    odd = sorted(cid for cid, count in counts.items() if count != n)
    if odd:
        shown = ", ".join(f"{cid} ({counts[cid]})" for cid in odd[:10])
        raise ReciprocalSegError(
            f"the cases have {n} channel(s) ({labeled[0].case_id} and others), but these have another "
            f"number: {shown}. Every case needs the same channels, in the same order."
        )
    if given is not None and len(given) != n:
        raise ReciprocalSegError(
            f"--channel-names gives {len(given)} names but the cases have {n} channel(s)"
        )
    return list(given) if given else [f"channel_{k}" for k in range(n)]


def _final_plan(
    args: argparse.Namespace, labeled: list[Case], unlabeled: list[Case], overrides: dict, names: list[str]
) -> Path:
    """Make (or read) the plan, apply the final rules once, write OUT/plan.json; its path."""
    import sys

    from ..common.device import resolve_device
    from ..planning.final_plan import finish_plan
    from ..planning.planner import Plan, plan_for_run

    if getattr(args, "plan", None) is not None:
        plan = Plan.load(args.plan)
    else:
        device = resolve_device(args.device or "auto")
        several = names if len(names) > 1 else None
        plan = plan_for_run(
            args.out, labeled, unlabeled, device, several, getattr(args, "resample_channels", None)
        )
    finish_plan(plan, overrides, labeled, args.warm_start)
    args.out.mkdir(parents=True, exist_ok=True)
    plan.save(args.out / "plan.json")
    print(plan.describe(), file=sys.stderr)  # stderr: with --json, stdout carries events only
    return args.out / "plan.json"


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
        channel_resampling=getattr(args, "resample_channels", None),
    )
