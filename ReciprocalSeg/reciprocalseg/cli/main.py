"""`reciprocalseg` command line: train, predict, evaluate, export-onnx, demo, serve.

Exit codes: 0 success, 1 error (message on stderr), 2 usage error, 3 cancelled (a
checkpoint was written; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..common.errors import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    DataError,
    ReciprocalSegError,
    UsageError,
    exit_code_of,
)
from ..training.command import add_train_arguments, request_from_args

__all__ = ["EXIT_CANCELLED", "EXIT_ERROR", "main", "make_parser"]


# -- train -------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="supervised teacher phase, then reciprocal learning")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Build the training request in process (the final plan made here) and train it."""
    started = time.perf_counter()  # a time budget counts the start-up too (training/budget.py)
    from ..training.run_request import run

    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        raise UsageError(f"--minutes {args.minutes}: a time budget is a finite number of minutes > 0")
    return run(request_from_args(args, started))


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
    p.add_argument(
        "--format",
        default=None,
        help="output extension (.nrrd, .nii.gz, .mha ...; default: each scan's own format)",
    )
    p.add_argument(
        "--reference-labels",
        type=Path,
        help="labelled cases the QA flags compare with (default: the run's labelled cases)",
    )
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


def _reference_label_paths(args: argparse.Namespace) -> tuple[list[Path], str]:
    """Label maps the QA flags compare with, and where they came from."""
    from ..data.io import load_case_list

    if args.reference_labels is not None:
        from ..evaluation.evaluate import label_files

        return list(label_files(args.reference_labels).values()), str(args.reference_labels)
    cases_json = args.run / "cases.json"
    if not (args.run.is_dir() and cases_json.exists()):
        return [], "the run lists no labelled cases"
    try:
        labeled, _ = load_case_list(cases_json)
    except DataError as exc:  # moved or deleted training files must not stop a prediction
        return [], f"the run's labelled cases cannot be read ({exc})"
    return [c.label for c in labeled if c.label is not None], f"the run's labelled cases ({cases_json})"


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data.io import Case, case_id_from_path, discover_cases
    from ..evaluation.qa import (
        background_only_message,
        predicts_only_background,
        reference_ranges_from_files,
        structure_qa,
        write_qa,
    )
    from ..inference.model_check import MAX_OVERLAP
    from ..inference.sliding_window import load_model

    require_folder(args.out, "--out")
    if args.overlap is not None and not 0 <= args.overlap <= MAX_OVERLAP:
        raise UsageError(
            f"--overlap {args.overlap}: a share of the window in [0, {MAX_OVERLAP}] (default 0.5)"
        )
    if args.images.is_dir():
        sources = discover_cases(args.images)  # nnU-Net channel files: cases with their channels
    else:
        sources = [Case(case_id_from_path(args.images), args.images)]
    model_paths = _model_paths(args.run, args.model)
    if args.disagreement and len(model_paths) != 2:
        raise ReciprocalSegError(
            "--disagreement compares the teacher with the student: use it with --model both"
        )
    _refuse_overwriting_scans(args, sources, list(model_paths))
    args.out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, before any work
    models = {name: load_model(path, args.device) for name, path in model_paths.items()}
    n_classes = next(iter(models.values())).n_classes
    ref_paths, ref_source = _reference_label_paths(args)
    ranges = reference_ranges_from_files(ref_paths, n_classes) if ref_paths else None
    if ranges is not None:
        print(f"QA reference: {ranges.cases} labelled cases, {ref_source}")
    else:
        print(f"QA reference: none, {ref_source}; give --reference-labels DIR to flag unusual structures")
    qa_rows, found_something = [], dict.fromkeys(models, False)
    for case in sources:
        case_id = case.case_id
        labels, spacing = _predict_case(args, case, models)
        for name, array in labels.items():
            found_something[name] |= not predicts_only_background([array])
        rows = structure_qa(case_id, labels, spacing, n_classes, ranges)
        _print_qa(rows)
        qa_rows += rows
    json_path, csv_path = write_qa(qa_rows, ranges, args.out)
    print(f"QA per structure: {csv_path} and {json_path}")
    for name, found in found_something.items():
        if not found:
            print(f"warning: {background_only_message(name, len(sources))}", file=sys.stderr)
    return 0


def _refuse_overwriting_scans(args: argparse.Namespace, sources: list[Any], models: list[str]) -> None:
    """Stop before anything is written when a prediction would take a scan's own file name.

    Outputs keep the input's format, so with one model (``<ID>.<ext>``) and ``--out`` the scans'
    folder, the prediction of ``<ID>.nrrd`` would replace the scan itself.
    """
    from ..inference.prediction_files import DISAGREEMENT, output_format, prediction_path

    def same(p: Path) -> set[Path]:
        return {p.absolute(), p.resolve()}

    scans = set().union(*(same(path) for case in sources for path in case.image_files)) if sources else set()
    names: list[str | None] = list(models) if len(models) > 1 else [None]
    if args.disagreement:
        names.append(DISAGREEMENT)
    for case in sources:
        case_id, path = case.case_id, case.image
        fmt = output_format(path, args.format)
        for name in names:
            target = prediction_path(args.out, case_id, name, fmt)
            if same(target) & scans:
                raise ReciprocalSegError(
                    f"{target}: the prediction would overwrite the scan {path}; choose an --out folder "
                    "other than the scans' own (or --model both, whose files are <ID>_teacher/<ID>_student)"
                )


def _predict_case(
    args: argparse.Namespace, case: Any, models: dict[str, Any]
) -> tuple[dict[str, Any], tuple[float, ...]]:
    """Predict one scan (all its channels) with every model, write the label maps; the (z, y, x)
    arrays and spacing."""
    import SimpleITK as sitk

    from ..common.display import format_numbers, format_size
    from ..data.channels import read_case_image
    from ..data.io import write_image
    from ..inference.prediction_files import DISAGREEMENT, output_format, prediction_path
    from ..inference.sliding_window import disagreement, predict_image

    case_id, path = case.case_id, case.image
    first = next(iter(models.values()))  # teacher and student of a run take the same channels
    image = read_case_image(
        case, first.preprocessing.channel_resampling, first.in_channels, first.channel_names
    )
    fmt = output_format(path, args.format)
    arrays, probs, written = {}, {}, []
    for name, model in models.items():
        pred = predict_image(
            model,
            image,
            overlap=args.overlap,
            paper_stride=args.paper_stride,
            largest_component=args.largest_component,
            return_probabilities=args.disagreement,
        )
        target = prediction_path(args.out, case_id, name if len(models) > 1 else None, fmt)
        write_image(pred.labels, target)
        written.append(target.name)
        arrays[name] = sitk.GetArrayFromImage(pred.labels)
        probs[name] = pred.probabilities
    geometry = f"size {format_size(image.GetSize())}, spacing {format_numbers(image.GetSpacing(), 'mm')}"
    print(f"{case_id}: {', '.join(written)} written to {args.out} ({geometry})")
    if args.disagreement and len(probs) == 2:
        voxel, score = disagreement(*probs.values())
        img = sitk.GetImageFromArray(voxel)
        img.CopyInformation(image)
        write_image(img, prediction_path(args.out, case_id, DISAGREEMENT, fmt))
        print(f"{case_id}: disagreement score {score:.4f}")
    return arrays, image.GetSpacing()


def _print_qa(rows: list[Any]) -> None:
    for r in rows:
        dis = "" if r.disagreement is None else f"  disagreement {r.disagreement:.1%}"
        flags = f"  FLAGS: {'; '.join(r.notes)}" if r.flags else ""
        print(f"  {r.model:<10} class {r.label}: {r.volume_ml:10.3f} mL  {r.pieces:3d} piece(s){dis}{flags}")


# -- evaluate ----------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="Dice, Jaccard, 95HD, ASD of predictions against labels, per class and mean"
    )
    p.add_argument("--pred", type=Path, required=True, help="folder written by `predict`")
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument(
        "--model",
        choices=["teacher", "student", "supervised"],
        help="only <ID>_<model> predictions (default: every model found, each on its own)",
    )
    p.add_argument("--csv", type=Path, help="per-case CSV to write (default: PRED/metrics.csv)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import METRICS, class_summary, evaluate_folders

    rows, missing = evaluate_folders(args.pred, args.labels, args.model)
    summary = class_summary(rows)
    out = args.csv or args.pred / "metrics.csv"
    summary_out = out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")
    _write_csv(out, rows)
    _write_csv(summary_out, summary)
    for model in dict.fromkeys(r["model"] for r in rows):
        _print_metrics(model, [r for r in rows if r["model"] == model], summary, METRICS)
    if missing:
        print(f"warning: no prediction for {len(missing)} labelled cases: {missing[:10]}", file=sys.stderr)
    print(f"CSV written to {out} (per case) and {summary_out} (per class means)")
    return 0


def _print_metrics(model: str, rows: list[dict], summary: list[dict], keys: tuple[str, ...]) -> None:
    cases = len({r["case"] for r in rows})
    print(f"\n{model or 'predictions'}: {cases} case(s)")
    print(f"{'case':<28}{'class':>6}" + "".join(f"{k:>12}" for k in keys))
    for r in rows:
        print(f"{r['case']:<28}{r['class']:>6}" + "".join(f"{r[k]:>12.4f}" for k in keys))
    for entry in (e for e in summary if e["model"] == model):
        cls = entry["class"]
        if isinstance(cls, int):
            print(f"{'mean':<28}{cls:>6}" + "".join(f"{entry[k]:>12.4f}" for k in keys))
            print(f"{'std':<28}{cls:>6}" + "".join(f"{entry[k + '_std']:>12.4f}" for k in keys))
        else:
            print(f"{cls:<34}" + "".join(f"{entry[k]:>12.4f}" for k in keys))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..common.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# -- export-onnx -------------------------------------------------------------------------
def _add_export_onnx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx", help="the run's teacher and student as ONNX, with metadata to run them elsewhere"
    )
    p.add_argument("--run", type=Path, required=True, help="run folder (or a model .pt file)")
    p.add_argument("--out", type=Path, required=True, help="folder for <model>.onnx and metadata.json")
    p.add_argument("--model", choices=["teacher", "student", "both", "supervised"], default="both")
    p.add_argument("--class-names", nargs="+", metavar="NAME", help="names of classes 1..K, in order")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..inference.onnx_export import DEFAULT_OPSET, check_opset, export_run

    check_opset(args.opset or DEFAULT_OPSET)
    require_folder(args.out, "--out")
    which = ("teacher", "student") if args.model == "both" else (args.model,)
    result = export_run(args.run, args.out, which, args.class_names, args.opset or DEFAULT_OPSET)
    for name, path in result.models.items():
        diff = result.max_abs_difference[name]
        check = "not checked (onnxruntime absent)" if diff is None else f"max |difference| {diff:.1e}"
        print(f"{name}: {path} (onnxruntime vs PyTorch on a random batch: {check})")
    print(f"metadata: {result.metadata}")
    return 0


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
    from ..service.server import add_serve_arguments, run_serve

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
    _add_export_onnx(sub)
    _add_demo(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return exit_code_of(lambda: args.func(args), os_errors_are_usage=True)


def require_folder(path: Path, option: str) -> None:
    """``UsageError`` when an output folder option names an existing file."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file; give a folder (it is created if missing)")


if __name__ == "__main__":
    sys.exit(main())
