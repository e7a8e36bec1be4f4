"""The training run: events, checkpoints, cancel, resume, warm start, configuration errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reciprocalseg.common.errors import CancelledError, TrainingError
from reciprocalseg.config import make_config
from reciprocalseg.data.io import Case
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.training.checkpoint import load_checkpoint, load_model_file
from reciprocalseg.training.events import read_events
from reciprocalseg.training.runner import CancelToken, lr_at, train

REPO = Path(__file__).resolve().parents[2]


def test_events_checkpoints_and_models(tiny_config, cohort, tmp_path: Path) -> None:
    labeled, unlabeled = cohort
    result = train(tiny_config(), labeled, unlabeled, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    progress = [e for e in events if e["event"] == "progress"]
    assert [(e["phase"], e["iteration"]) for e in progress] == [("supervised", i) for i in (1, 2, 3)] + [
        ("reciprocal", i) for i in (1, 2, 3, 4)
    ]
    for e in progress:
        assert {
            "phase",
            "iteration",
            "total",
            "losses",
            "h",
            "lr",
            "sec_per_iter",
            "eta_s",
            "device",
        } <= e.keys()
    assert all(isinstance(e["h"], float) for e in progress if e["phase"] == "reciprocal")
    assert all(e["h"] is None for e in progress if e["phase"] == "supervised")
    assert progress[-1]["eta_s"] == 0.0 and progress[-1]["overall_iteration"] == 7
    assert events[-1]["event"] == "done"
    for path in (result.teacher, result.student, result.supervised):
        data = load_model_file(path)
        assert data["meta"]["n_classes"] == 2 and data["meta"]["n_filters"] == 4
    # The supervised-only model is the teacher before reciprocal learning changed it.
    sup, teacher = load_model_file(result.supervised), load_model_file(result.teacher)
    assert any(not torch.equal(sup["state_dict"][k], teacher["state_dict"][k]) for k in sup["state_dict"])
    assert (tmp_path / "run" / "done.json").exists()
    # A completed run is not redone.
    mtime = result.teacher.stat().st_mtime_ns
    train(tiny_config(), labeled, unlabeled, tmp_path / "run")
    assert result.teacher.stat().st_mtime_ns == mtime


def test_cancel_leaves_a_checkpoint_and_resume_continues(tiny_config, cohort, tmp_path: Path) -> None:
    labeled, unlabeled = cohort
    run = tmp_path / "run"
    token = CancelToken()

    def cancel_at_reciprocal_2(event: dict) -> None:
        if event["event"] == "progress" and event["phase"] == "reciprocal" and event["iteration"] == 1:
            token.cancel()

    with pytest.raises(CancelledError):
        train(tiny_config(checkpoint_every=100), labeled, unlabeled, run, [cancel_at_reciprocal_2], token)
    checkpoint = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert (checkpoint["phase"], checkpoint["iteration"]) == ("reciprocal", 1)
    assert load_model_file(run / "checkpoints" / "student.pt")["info"]["iteration"] == 1
    assert not (run / "done.json").exists()

    train(tiny_config(checkpoint_every=100), labeled, unlabeled, run)
    events = read_events(run / "events.jsonl")
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed and resumed[0]["phase"] == "reciprocal" and resumed[0]["iteration"] == 1
    after = events[events.index(resumed[0]) :]
    iterations = [(e["phase"], e["iteration"]) for e in after if e["event"] == "progress"]
    assert iterations == [("reciprocal", 2), ("reciprocal", 3), ("reciprocal", 4)]
    assert (run / "done.json").exists()


def test_cancel_flag_file_stops_within_one_iteration(tiny_config, cohort, tmp_path: Path) -> None:
    labeled, unlabeled = cohort
    run = tmp_path / "run"

    def touch_flag(event: dict) -> None:
        if event["event"] == "progress" and event["iteration"] == 2 and event["phase"] == "supervised":
            (run / "CANCEL").touch()

    with pytest.raises(CancelledError):
        train(tiny_config(), labeled, unlabeled, run, [touch_flag])
    last = [e for e in read_events(run / "events.jsonl") if e["event"] == "progress"][-1]
    assert (last["phase"], last["iteration"]) == ("supervised", 2)


ENV = {**os.environ, "PYTHONPATH": str(REPO / "ReciprocalSeg")}


def cli_train_command(labeled: list[Case], tmp_path: Path, *extra: str) -> tuple[list[str], Path]:
    """`reciprocalseg train` on a folder of the labelled pairs, a tiny supervised-only run."""
    images = tmp_path / "images"
    images.mkdir()
    for c in labeled:
        os.symlink(c.image, images / c.image.name)
        os.symlink(c.label, images / c.label.name)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "reciprocalseg", "train", "--images", str(images), "--out", str(run)]
    cmd += ["--preset", "demo", "--patch-size", "16", "16", "16", "--n-filters", "4", "--iterations", "0"]
    return [*cmd, "--device", "cpu", "--json", *extra], run


def test_sigkill_then_rerun_resumes_from_last_checkpoint(cohort, tmp_path: Path) -> None:
    """A worker killed with SIGKILL loses at most the iterations since its last checkpoint."""
    cmd, run = cli_train_command(
        cohort[0], tmp_path, "--supervised-iterations", "20", "--checkpoint-every", "3"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "checkpoint" and event["iteration"] >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(run / "checkpoints" / "latest.pt")["iteration"]
    assert 6 <= saved < 20
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    events = read_events(run / "events.jsonl")
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed and resumed[-1]["iteration"] == saved
    assert events[-1]["event"] == "done"


def test_sigterm_cancels_with_exit_code_3(cohort, tmp_path: Path) -> None:
    cmd, run = cli_train_command(cohort[0], tmp_path, "--supervised-iterations", "500")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    for line in proc.stdout:
        if json.loads(line).get("iteration") == 3:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "cancelled" in err and "resume" in err
    checkpoint = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert checkpoint["phase"] == "supervised" and 3 <= checkpoint["iteration"] <= 5


def test_changed_recipe_in_same_folder_is_refused(tiny_config, cohort, tmp_path: Path) -> None:
    labeled, unlabeled = cohort
    train(tiny_config(supervised_iterations=1, reciprocal_iterations=1), labeled, unlabeled, tmp_path / "run")
    with pytest.raises(TrainingError, match="different configuration"):
        train(tiny_config(lr=0.5), labeled, unlabeled, tmp_path / "run")


def test_a_run_folder_from_before_a_new_option_still_resumes(tiny_config, cohort, tmp_path: Path) -> None:
    """config.json written before a field existed lacks its key: the run had its default."""
    labeled, unlabeled = cohort
    run, token = tmp_path / "run", CancelToken()

    def cancel_early(event: dict) -> None:
        if event["event"] == "progress" and event["phase"] == "reciprocal":
            token.cancel()

    with pytest.raises(CancelledError):
        train(tiny_config(checkpoint_every=100), labeled, unlabeled, run, [cancel_early], token)
    older = json.loads((run / "config.json").read_text())
    del older["unlabeled_student_aug"]
    (run / "config.json").write_text(json.dumps(older))
    train(tiny_config(checkpoint_every=100), labeled, unlabeled, run)
    assert (run / "done.json").exists()
    with pytest.raises(TrainingError, match="unlabeled_student_aug"):  # a real change is still refused
        train(tiny_config(unlabeled_student_aug=0.5), labeled, unlabeled, run)


def test_student_view_option_reaches_the_reciprocal_step(tiny_config, cohort, tmp_path: Path) -> None:
    labeled, unlabeled = cohort
    plain = train(tiny_config(), labeled, unlabeled, tmp_path / "plain")
    viewed = train(tiny_config(unlabeled_student_aug=1.0), labeled, unlabeled, tmp_path / "viewed")
    a, b = (load_model_file(r.supervised)["state_dict"] for r in (plain, viewed))
    assert all(torch.equal(a[k], b[k]) for k in a)  # phase 1 is untouched by the option
    a, b = (load_model_file(r.student)["state_dict"] for r in (plain, viewed))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_warm_start_loads_previous_models_and_checks_architecture(
    tiny_config, cohort, tmp_path: Path
) -> None:
    labeled, unlabeled = cohort
    first = train(
        tiny_config(supervised_iterations=2, reciprocal_iterations=2), labeled, unlabeled, tmp_path / "a"
    )
    cfg = tiny_config(supervised_iterations=0, reciprocal_iterations=1)
    second = train(cfg, labeled, unlabeled, tmp_path / "b", warm_start=first.run_dir)
    # With no supervised iterations, the second round's supervised model is the first round's teacher.
    a, b = load_model_file(first.teacher)["state_dict"], load_model_file(second.supervised)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="n_filters"):
        train(tiny_config(n_filters=8), labeled, unlabeled, tmp_path / "c", warm_start=first.run_dir)
    # A single model file (the first round's phase-1 model) warm-starts the teacher.
    third = train(cfg, labeled, unlabeled, tmp_path / "d", warm_start=first.supervised)
    a, c = load_model_file(first.supervised)["state_dict"], load_model_file(third.supervised)["state_dict"]
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not all(torch.equal(b[k], c[k]) for k in b)  # not the first round's final teacher


def test_bad_inputs_are_refused_with_clear_messages(tiny_config, cohort, tmp_path: Path) -> None:
    labeled, unlabeled = cohort
    with pytest.raises(TrainingError, match="unlabelled"):
        train(tiny_config(), labeled, [], tmp_path / "x")
    with pytest.raises(TrainingError, match="labelled case"):
        train(tiny_config(), [], unlabeled, tmp_path / "y")
    with pytest.raises(Exception, match="multiple of 16"):
        tiny_config(patch_size=(20, 16, 16))


def test_paper_learning_rate_schedule() -> None:
    cfg = make_config("paper")
    assert lr_at(cfg, 0) == pytest.approx(0.01)
    assert lr_at(cfg, 2499) == pytest.approx(0.01)
    assert lr_at(cfg, 2500) == pytest.approx(0.001)
    assert lr_at(cfg, 5999) == pytest.approx(0.0001)
    assert (cfg.supervised_iterations, cfg.reciprocal_iterations, cfg.patch_size) == (
        6000,
        6000,
        (112, 112, 80),
    )
    assert (cfg.batch_labeled, cfg.batch_unlabeled, cfg.n_filters, cfg.normalization) == (
        2,
        2,
        16,
        "batchnorm",
    )
    assert (cfg.teacher_dice, cfg.student_ema, cfg.finetune_iterations, cfg.h_baseline) == (
        False,
        0.0,
        0,
        0.0,
    )


def test_multi_class_labels_train_and_predict(tiny_config, tmp_path: Path) -> None:
    """K=2 foreground classes: the class count reaches the network and the predictions."""
    import SimpleITK as sitk

    from reciprocalseg.data.io import read_image
    from reciprocalseg.inference.sliding_window import load_model, predict_image

    cases = write_phantom_cohort(tmp_path / "mc", 3, seed=5, n_classes=2, shape_zyx=(24, 24, 24))
    assert int(sitk.GetArrayFromImage(read_image(cases[0].label)).max()) == 2
    unlabeled = [Case(c.case_id, c.image, None) for c in cases[2:]]
    cfg = tiny_config(n_classes=3, supervised_iterations=2, reciprocal_iterations=1)
    result = train(cfg, cases[:2], unlabeled, tmp_path / "run")
    model = load_model(result.student, "cpu")
    assert model.n_classes == 3
    pred = predict_image(model, read_image(cases[2].image), return_probabilities=True)
    assert pred.probabilities.shape[0] == 3
    with pytest.raises(Exception, match="K=1"):
        train(tiny_config(n_classes=2), cases[:2], unlabeled, tmp_path / "run2")


def test_student_init_teacher_is_opt_in_and_starts_from_the_supervised_teacher(
    tiny_config, cohort, tmp_path: Path
) -> None:
    assert make_config("paper").student_init == "scratch"
    labeled, unlabeled = cohort
    token = CancelToken()

    def stop_before_any_student_step(event: dict) -> None:
        if event["event"] == "progress" and event["phase"] == "supervised" and event["iteration"] == 2:
            token.cancel()

    cfg = tiny_config(supervised_iterations=2, reciprocal_iterations=1, student_init="teacher")
    with pytest.raises(CancelledError):
        train(cfg, labeled, unlabeled, tmp_path / "run", [stop_before_any_student_step], token)
    result = train(cfg, labeled, unlabeled, tmp_path / "run")
    # After one reciprocal step the student is one SGD step away from the supervised teacher,
    # far closer than a freshly initialised network would be.
    sup = load_model_file(result.supervised)["state_dict"]
    student = load_model_file(result.student)["state_dict"]
    weights = [k for k in sup if k.endswith("weight") and sup[k].dim() == 5]
    rel = max(float((student[k] - sup[k]).norm() / sup[k].norm()) for k in weights)
    assert rel < 0.2, rel


def test_supervised_phase_can_use_adam_and_resumes_with_its_state(
    tiny_config, cohort, tmp_path: Path
) -> None:
    """`supervised_optimizer="adam"` (the auto preset's): phase 1 steps the teacher with Adam, its
    state is checkpointed and restored; phase 2 keeps the teacher's SGD (h assumes SGD steps)."""
    labeled, unlabeled = cohort
    run = tmp_path / "run"
    token = CancelToken()

    def cancel_at_supervised_2(event: dict) -> None:
        if event["event"] == "progress" and event["phase"] == "supervised" and event["iteration"] == 2:
            token.cancel()

    config = tiny_config(supervised_optimizer="adam", supervised_iterations=4, checkpoint_every=100)
    with pytest.raises(CancelledError):
        train(config, labeled, unlabeled, run, [cancel_at_supervised_2], token)
    checkpoint = load_checkpoint(run / "checkpoints" / "latest.pt")
    adam_state = checkpoint["supervised_opt"]["state"]
    assert adam_state and all("exp_avg_sq" in s for s in adam_state.values())  # Adam's moments
    assert not checkpoint["teacher_opt"]["state"]  # the teacher's SGD untouched in phase 1
    assert {int(s["step"]) for s in adam_state.values()} == {2}

    train(config, labeled, unlabeled, run)
    final = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert {int(s["step"]) for s in final["supervised_opt"]["state"].values()} == {
        4
    }  # resumed, not restarted
    assert all("momentum_buffer" in s for s in final["teacher_opt"]["state"].values())  # SGD in phase 2
    assert (run / "done.json").exists()


def test_auto_preset_starts_the_teacher_with_adam_and_paper_with_sgd() -> None:
    assert make_config("auto").supervised_optimizer == "adam"
    assert make_config("paper").supervised_optimizer == "sgd"
    with pytest.raises(Exception, match="supervised_optimizer"):
        make_config("demo", supervised_optimizer="rmsprop").validate()
