"""Collapse guards: a model that loses a class the labelled cases have is named in a warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from reciprocalseg.training.checkpoint import load_model_file, save_torch
from reciprocalseg.training.collapse import CHECK_EVERY, CollapseMonitor, labeled_fractions
from reciprocalseg.training.events import read_events
from reciprocalseg.training.runner import train


def test_monitor_names_the_lost_class_and_no_model_to_trust() -> None:
    reference = labeled_fractions([np.array([0] * 90 + [1] * 5 + [2] * 5)], 3)
    assert np.allclose(reference, [0.9, 0.05, 0.05])
    monitor = CollapseMonitor(reference)
    healthy = torch.tensor([900, 40, 60])
    no_class_2 = torch.tensor([960, 40, 0])
    warnings = []
    for _ in range(CHECK_EVERY):
        warnings += monitor.add(healthy, no_class_2)
    assert [(w["model"], w["class"]) for w in warnings] == [("student", 2)]
    assert "class 2" in warnings[0]["message"]
    # No "trust" verdict (issue 23): a model that lost no class may still be the worse one.
    assert monitor.summary() == {"lost_classes": {"teacher": [], "student": [2]}}
    for _ in range(CHECK_EVERY * 5):  # the student recovers once the window has moved past
        monitor.add(healthy, healthy)
    assert monitor.summary()["lost_classes"]["student"] == []


def test_a_run_whose_networks_predict_background_warns_and_names_the_lost_classes(
    cohort, tiny_config, tmp_path: Path
) -> None:
    labeled, unlabeled = cohort
    config = tiny_config(supervised_iterations=2, reciprocal_iterations=1, checkpoint_every=100)
    first = train(config, labeled, unlabeled, tmp_path / "first")
    # Both networks biased to background: the head's background bias far above the others.
    for name in ("teacher", "student"):
        data = load_model_file(first.run_dir / f"{name}.pt")
        data["state_dict"]["head.bias"] = torch.tensor([50.0, -50.0])
        save_torch(data, first.run_dir / f"{name}.pt")
    collapsed = config.replace(supervised_iterations=0, reciprocal_iterations=CHECK_EVERY * 2, lr=1e-6)
    train(collapsed, labeled, unlabeled, tmp_path / "second", warm_start=first.run_dir)
    warnings = [e for e in read_events(tmp_path / "second" / "events.jsonl") if e["event"] == "warning"]
    assert {(w["model"], w["class"]) for w in warnings} == {("teacher", 1), ("student", 1)}
    done = json.loads((tmp_path / "second" / "done.json").read_text())
    assert done["lost_classes"] == {"teacher": [1], "student": [1]} and "trust" not in done
    healthy = json.loads((first.run_dir / "done.json").read_text())
    assert "lost_classes" in healthy  # a run with a reciprocal phase always says
