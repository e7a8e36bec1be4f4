"""Staging the left-atrium data for a GPU lease (benchmarks/stage_la.py, benchmarks/gpu_stage.sh).

Real files, a real git repository and the real device-side bash script; only the data is small.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks.stage_la import (
    StageError,
    calls,
    case_groups,
    pack,
    require_ignored,
    travelling_tree_bytes,
    write_parts,
)

REPO = Path(__file__).resolve().parents[2]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _fake_data(folder: Path, n_cases: int = 6, seed: int = 0) -> list[str]:
    """Case pairs of random sizes (20-60 KB each file) and their train.list."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ids = [f"CASE{i:02d}" for i in range(n_cases)]
    for case_id in ids:
        for kind in ("image", "label"):
            size = int(rng.integers(20_000, 60_000))
            (folder / f"{case_id}_{kind}.nrrd").write_bytes(rng.bytes(size))
    (folder / "train.list").write_text("\n".join(ids) + "\n")
    (folder / "cases.csv").write_text("id\n" + "\n".join(ids) + "\n")
    return ids


def _git_repo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    return folder


def test_parts_fit_and_hold_every_case_once(tmp_path: Path) -> None:
    ids = _fake_data(tmp_path / "la")
    first_room, room = 100_000, 150_000
    parts = pack(case_groups(tmp_path / "la"), [first_room], room)

    assert len(parts) > 1
    assert parts[0].size <= first_room
    assert all(p.size <= room for p in parts[1:])
    names = [f.name for p in parts for f in p.files]
    assert sorted(names) == sorted(f.name for f in (tmp_path / "la").iterdir())  # each file once
    assert len(names) == len(set(names))
    assert parts[0].files[0].name == "train.list"
    for case_id in ids:  # a part holds whole cases
        holders = {p.name for p in parts for f in p.files if f.name.startswith(case_id)}
        assert len(holders) == 1, case_id


def test_a_case_too_big_for_a_call_is_refused_by_name(tmp_path: Path) -> None:
    _fake_data(tmp_path / "la")
    with pytest.raises(StageError, match=r"CASE00_image.nrrd and its label take"):
        pack(case_groups(tmp_path / "la"), [1_000], 1_000)


def test_a_missing_label_is_named(tmp_path: Path) -> None:
    _fake_data(tmp_path / "la")
    (tmp_path / "la" / "CASE03_label.nrrd").unlink()
    with pytest.raises(StageError, match=r"case CASE03 of train.list lacks CASE03_label.nrrd"):
        case_groups(tmp_path / "la")
    with pytest.raises(StageError, match="train.list not found"):
        case_groups(tmp_path)


@needs_git
def test_data_is_only_staged_where_git_ignores_it(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo")
    with pytest.raises(StageError, match=r"\.stage/ is not ignored by git .* '/\.stage/'"):
        require_ignored(repo, ".stage")
    (repo / ".git" / "info" / "exclude").write_text("/.stage/\n")
    require_ignored(repo, ".stage")


@needs_git
def test_the_travelling_tree_counts_tracked_and_untracked_files_not_ignored_ones(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo")
    (repo / ".git" / "info" / "exclude").write_text("/.stage/\n")
    (repo / "tracked.txt").write_bytes(b"x" * 1000)
    subprocess.run(["git", "add", "tracked.txt"], cwd=repo, check=True)
    (repo / "untracked.txt").write_bytes(b"y" * 300)
    (repo / ".stage").mkdir()
    (repo / ".stage" / "big.bin").write_bytes(b"z" * 100_000)
    assert travelling_tree_bytes(repo) == 1300


def test_the_wheel_rides_with_the_first_part_and_the_benchmark_with_the_last(tmp_path: Path) -> None:
    _fake_data(tmp_path / "la")
    parts = pack(case_groups(tmp_path / "la"), [100_000], 150_000)
    plan = calls(parts, ".whl", ".stage", 8.3)
    assert len(plan) == len(parts)
    assert plan[0][0] == [".stage/part1", ".whl"]
    assert all(".whl" not in carry for carry, _ in plan[1:])
    assert all(cmd.startswith("bash benchmarks/gpu_stage.sh") for _, cmd in plan)
    assert plan[-1][1].endswith("bash benchmarks/gpu_la.sh 8.3")
    assert "gpu_la.sh" not in " ".join(cmd for _, cmd in plan[:-1])


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_device_side_reassembles_every_case(tmp_path: Path) -> None:
    """The parts, copied call by call as the device does, give back the data folder byte for byte."""
    ids = _fake_data(tmp_path / "la")
    parts = pack(case_groups(tmp_path / "la"), [100_000], 150_000)
    checkout = tmp_path / "checkout"
    write_parts(parts, checkout / ".stage")
    target = tmp_path / "device_tmp_la"
    script = REPO / "benchmarks" / "gpu_stage.sh"
    outputs = []
    for part in parts:  # each call carries one part only: the others are not in its checkout
        call_dir = tmp_path / f"call_{part.name}"
        shutil.copytree(checkout / ".stage" / part.name, call_dir / ".stage" / part.name)
        run = subprocess.run(
            ["bash", str(script)],
            cwd=call_dir,
            env={"PATH": "/usr/bin:/bin", "LA_DATA": str(target)},
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(run.stdout)
    assert f"{len(ids)} of {len(ids)} cases of train.list complete" in outputs[-1]
    assert f"of {len(ids)} cases of train.list complete" in outputs[0]
    assert f"{len(ids)} of {len(ids)}" not in outputs[0]  # the first call alone is not enough
    same, different, missing = filecmp.cmpfiles(
        tmp_path / "la", target, [f.name for f in (tmp_path / "la").iterdir()], shallow=False
    )
    assert not different and not missing and len(same) == 2 * len(ids) + 2
