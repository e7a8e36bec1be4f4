"""The in-Slicer test's scenario (ReciprocalSegLib.loop_check, run by ReciprocalSegTest inside
Slicer) on slicer-core's real MRML and a real service, so CI runs the whole loop too."""

from __future__ import annotations

from pathlib import Path

from service_helpers import start_service


def test_whole_loop_of_the_in_slicer_test(loop_factory, tmp_path: Path):
    from ReciprocalSegLib.loop_check import check_whole_loop, write_phantoms
    from ReciprocalSegLib.volume_files import read_volume

    run = start_service(tmp_path / "workspace", device="cpu")
    try:
        loop = loop_factory(run)
        paths, truths = write_phantoms(tmp_path)
        # Read as Slicer's loadVolume reads them (the volumes logic's archetype reader).
        volumes = [read_volume(loop.logics.volumes, path, path.name.split(".")[0]) for path in paths]
        said = []
        check_whole_loop(loop, volumes, truths, tmp_path, say=said.append)
        assert said == [
            "Submitting two labels",
            "Training a few iterations",
            "Predicting",
            "Submitting scribbles",
            "Refining from the scribbles, then accepting",
        ]
    finally:
        run.launcher.stop()
