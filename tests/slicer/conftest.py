"""Fixtures for the real-MRML tests: Slicer's own classes from the ``slicer-core`` wheel, a real
service on loopback, and scenes built the way the Slicer application builds them.

``ReciprocalSeg/`` goes on sys.path (as Slicer does for a scripted module's folder) so that
``ReciprocalSegLib`` imports as it does inside Slicer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ReciprocalSeg"))
sys.path.insert(0, str(REPO / "tests" / "service"))

from mrml_helpers import use_as_application  # noqa: E402
from service_helpers import TRAIN_FAST, Running, start_service  # noqa: E402

from reciprocalseg.data.phantom import write_phantom_cohort  # noqa: E402


def _slicer_core_missing() -> str | None:
    try:
        import slicer  # noqa: F401
        from slicer import vtkMRMLScene  # noqa: F401
    except ImportError as error:
        return f"slicer-core is not installed ({error}); pip install -e '.[test]'"
    return None


@pytest.fixture
def logics():
    """A fresh scene with the module logics wired as the application wires them."""
    missing = _slicer_core_missing()
    if missing and sys.version_info >= (3, 14):
        pytest.skip(missing + " (no slicer-core wheel for this Python)")
    assert missing is None, missing
    from ReciprocalSegLib.slicer_logics import SlicerLogics

    logics = SlicerLogics.standalone()
    use_as_application(logics)
    yield logics
    logics.scene.Clear(1)


@pytest.fixture(scope="session")
def trained_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Four 32^3 phantoms (two labelled) and one tiny CPU round trained (the current model)."""
    run = start_service(tmp_path_factory.mktemp("mrml-ws"), device="cpu")
    try:
        cases = write_phantom_cohort(
            tmp_path_factory.mktemp("mrml-phantoms"), 4, seed=1, shape_zyx=(32, 32, 32)
        )
        for n, case in enumerate(cases):
            run.client.add_case(case.image, case_id=case.case_id)
            if n < 2:
                run.client.put_label(case.case_id, case.label)
        run.client.start_training(**TRAIN_FAST)
        final = run.client.wait_for_training(poll=0.3, timeout=600)
        assert final.state == "completed", final.message
        yield run
    finally:
        run.launcher.stop()


@pytest.fixture(scope="session")
def two_class_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """An empty service whose labels have two foreground classes (for segment-identity tests)."""
    # n_classes counts the background too, as serve --n-classes does
    run = start_service(tmp_path_factory.mktemp("mrml-ws2"), device="cpu", n_classes=3)
    try:
        yield run
    finally:
        run.launcher.stop()


@pytest.fixture
def loop_factory(logics, tmp_path: Path):
    """``loop_factory(service)``: a ReciprocalSegLoop on the test's scene connected to ``service``."""
    from ReciprocalSegLib.logic import ReciprocalSegLoop

    made = []

    def make(service: Running):
        loop = ReciprocalSegLoop(logics, scratch_dir=tmp_path / "scratch")
        loop.connect(service.launcher.url, service.launcher.token)
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.client = None  # the service belongs to the fixture
