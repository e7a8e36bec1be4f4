"""`reciprocalseg` command line: train, predict, evaluate, demo, serve.

Exit codes: 0 success, 1 error (message on stderr), 2 usage error, 3 cancelled (a
checkpoint was written; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EXIT_CANCELLED, EXIT_ERROR, CancelledError, ReciprocalSegError
from .train_command import add_train_arguments, build_config, load_cases, print_result, train_in_process

__all__ = ["EXIT_CANCELLED", "EXIT_ERROR", "evaluate_folders", "main", "make_parser"]


# -- train -------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="supervised teacher phase, then reciprocal learning")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    labeled, unlabeled = load_cases(args)
    config = build_config(args, labeled, unlabeled)
    if args.gpus > 1:
        from .distributed import launch_local

        return launch_local(args, config, labeled, unlabeled)
    print_result(args, train_in_process(args, config, labeled, unlabeled))
    return 0


# -- predict -----------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment scans with a run's teacher and/or student")
    p.add_argument("--run", type=Path, required=True, help="run folder (or a model .pt file)")
    p.add_argument("--images", type=Path, required=True, help="a scan file or a folder of scans")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", choices=["teacher", "student", "both", "supervised"], default="student")
    p.add_argument("--overlap", type=float)
    p.add_argument(
        "--paper-stride", action="store_true", help="the published (18, 18, 4) stride, for comparison"
    )
    p.add_argument(
        "--largest-component", action="store_true", help="keep the largest connected component per class"
    )
    p.add_argument(
        "--disagreement", action="store_true", help="also write the teacher-student disagreement map"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--format", default=".nii.gz", help="output extension (.nii.gz, .nrrd, .mha)")
    p.set_defaults(func=cmd_predict)


def _model_paths(run: Path, which: str) -> dict[str, Path]:
    if run.is_file():
        return {run.stem: run}
    names = ["teacher", "student"] if which == "both" else [which]
    paths = {n: run / f"{n}.pt" for n in names}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ReciprocalSegError(
            f"no model file {missing}: has the run in {run} finished? (see {run}/events.jsonl)"
        )
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .data.io import discover_cases, read_image, write_image
    from .inference import disagreement, load_model, predict_image

    cases = discover_cases(args.images) if args.images.is_dir() else None
    sources = (
        [(c.case_id, c.image) for c in cases] if cases is not None else [(_case_id(args.images), args.images)]
    )
    models = {
        name: load_model(path, args.device) for name, path in _model_paths(args.run, args.model).items()
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for case_id, path in sources:
        image = read_image(path)
        probs = {}
        for name, model in models.items():
            pred = predict_image(
                model,
                image,
                overlap=args.overlap,
                paper_stride=args.paper_stride,
                largest_component=args.largest_component,
                return_probabilities=args.disagreement,
            )
            suffix = f"_{name}" if len(models) > 1 else ""
            write_image(pred.labels, args.out / f"{case_id}{suffix}{args.format}")
            probs[name] = pred.probabilities
        if args.disagreement and len(probs) == 2:
            voxel, score = disagreement(*probs.values())
            img = sitk.GetImageFromArray(voxel)
            img.CopyInformation(image)
            write_image(img, args.out / f"{case_id}_disagreement{args.format}")
            print(f"{case_id}: disagreement score {score:.4f}")
        print(f"{case_id}: written to {args.out}")
    return 0


def _case_id(path: Path) -> str:
    from .data.io import case_id_from_path

    return case_id_from_path(path)


# -- evaluate ----------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, Jaccard, 95HD, ASD of predictions against labels")
    p.add_argument("--pred", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--csv", type=Path, help="CSV file to write (default: PRED/metrics.csv)")
    p.set_defaults(func=cmd_evaluate)


def _label_files(label_dir: Path) -> dict[str, Path]:
    """Labels by case ID, from `<ID>_image`/`<ID>_label` pairs or a folder of label maps alone."""
    from .data.io import discover_cases, files_by_case_id
    from .errors import DataError

    try:
        return {c.case_id: (c.label or c.image) for c in discover_cases(label_dir)}
    except DataError:
        return files_by_case_id(label_dir, "labels")


def evaluate_folders(pred_dir: Path, label_dir: Path) -> list[dict[str, Any]]:
    """Per-case, per-class metrics for predictions and labels matched by case ID."""
    import SimpleITK as sitk

    from .data.io import discover_cases, read_image
    from .data.validation import check_same_grid
    from .metrics import evaluate_case

    preds = {c.case_id: c.image for c in discover_cases(pred_dir)}
    labels = _label_files(label_dir)
    missing = sorted(set(labels) - set(preds))
    if not preds.keys() & labels.keys():
        raise ReciprocalSegError(f"no case IDs in common between {pred_dir} and {label_dir}")
    rows = []
    for case_id in sorted(preds.keys() & labels.keys()):
        pred, ref = read_image(preds[case_id]), read_image(labels[case_id])
        problems = check_same_grid(pred, ref)
        if problems:
            raise ReciprocalSegError(f"{case_id}: prediction and label grids differ: {'; '.join(problems)}")
        per_class = evaluate_case(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref), ref.GetSpacing())
        for cls, m in per_class.items():
            rows.append({"case": case_id, "class": cls, **vars(m)})
    if missing:
        print(f"warning: no prediction for {len(missing)} labelled cases: {missing[:10]}", file=sys.stderr)
    return rows


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import summarize

    rows = evaluate_folders(args.pred, args.labels)
    keys = [k for k in rows[0] if k not in ("case", "class")]
    out = args.csv or args.pred / "metrics.csv"
    _write_csv(out, rows)
    print(f"{'case':<28}{'class':>6}" + "".join(f"{k:>12}" for k in keys))
    for r in rows:
        print(f"{r['case']:<28}{r['class']:>6}" + "".join(f"{r[k]:>12.4f}" for k in keys))
    summary = summarize([{k: r[k] for k in keys} for r in rows])
    print(f"{'mean':<28}{'':>6}" + "".join(f"{summary[k][0]:>12.4f}" for k in keys))
    print(f"{'std':<28}{'':>6}" + "".join(f"{summary[k][1]:>12.4f}" for k in keys))
    print(f"CSV written to {out}")
    return 0


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from .atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# -- demo / serve ------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole loop on a built-in phantom cohort (CPU, a few minutes)")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--device", default="auto")
    p.add_argument("--iterations", type=int, help="reciprocal iterations (default: the demo preset's)")
    p.add_argument("--supervised-iterations", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        args.out,
        device=args.device,
        reciprocal_iterations=args.iterations,
        supervised_iterations=args.supervised_iterations,
        seed=args.seed,
        json_events=args.json,
    )
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .service.server import add_serve_arguments, run_serve

    p = sub.add_parser("serve", help="the local backend service (FastAPI) for the Slicer module and scripts")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reciprocalseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"reciprocalseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except CancelledError as exc:
        print(f"cancelled: {exc}. Rerun the same command to resume.", file=sys.stderr)
        return EXIT_CANCELLED
    except ReciprocalSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
