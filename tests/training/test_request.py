"""The training request: saved and read back as the service's child reads it; a bad file is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reciprocalseg.common.errors import EXIT_ERROR, ReciprocalSegError
from reciprocalseg.data.io import Case, write_case_list
from reciprocalseg.training.request import TrainRequest
from reciprocalseg.training.run_request import main


def _request(tmp_path: Path) -> TrainRequest:
    for name in ("a.nrrd", "a_label.nrrd", "b.nrrd"):
        (tmp_path / name).write_bytes(b"")
    labeled = [Case("a", tmp_path / "a.nrrd", tmp_path / "a_label.nrrd")]
    unlabeled = [Case("b", tmp_path / "b.nrrd")]
    write_case_list(tmp_path / "cases.json", labeled, unlabeled)
    return TrainRequest(
        out=tmp_path / "run",
        labeled=labeled,
        unlabeled=unlabeled,
        preset="demo",
        config={"n_classes": 3, "minutes": 2.5, "device": "cpu", "seed": None},
        warm_start=tmp_path / "previous",
        json_events=True,
        cases_file=tmp_path / "cases.json",
    )


def test_a_saved_request_reads_back_the_same(tmp_path: Path) -> None:
    request = _request(tmp_path)
    request.save(tmp_path / "request.json")
    back = TrainRequest.load(tmp_path / "request.json")
    assert back.config == {"n_classes": 3, "minutes": 2.5, "device": "cpu"}  # None: not set
    assert (back.out, back.preset, back.plan) == (request.out, "demo", None)
    assert back.warm_start == request.warm_start
    assert [c.case_id for c in back.labeled] == ["a"] and [c.case_id for c in back.unlabeled] == ["b"]
    assert back.json_events and back.gpus == 1 and not back.sync_bn
    config = back.train_config()
    assert (config.preset, config.n_classes, config.minutes, config.device) == ("demo", 3, 2.5, "cpu")


def test_an_auto_request_without_its_plan_is_refused(tmp_path: Path) -> None:
    request = _request(tmp_path)
    request.preset = "auto"
    with pytest.raises(ReciprocalSegError, match="needs its plan"):
        request.train_config()


def test_the_child_names_an_unusable_request_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "request.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    assert main(["--request", str(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(bad) in err and "unusable" in err
