"""Atomic writes: the target is either the old or the complete new file, never partial."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    full_suffix,
)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_text_json(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01abc")
    atomic_write_text(tmp_path / "b.txt", "héllo\nworld\n")
    atomic_write_json(tmp_path / "sub" / "c.json", {"x": [1, 2], "p": tmp_path / "q", "n": np.int64(3)})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01abc"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\nworld\n"
    text = (tmp_path / "sub" / "c.json").read_text()
    assert text.endswith("\n")
    assert json.loads(text) == {"x": [1, 2], "p": str(tmp_path / "q"), "n": 3}
    # No temporaries left behind.
    assert _listing(tmp_path) == ["a.bin", "b.txt", "sub"]
    assert _listing(tmp_path / "sub") == ["c.json"]


def test_overwrite_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"v": 1})
    atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert _listing(tmp_path) == ["state.json"]


def test_temp_path_keeps_double_suffix_and_directory(tmp_path: Path) -> None:
    target = tmp_path / "case.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".case.tmp-")
        assert tmp.name.endswith(".nii.gz")
        assert not target.exists()
        # A writer that picks the format from the extension works on the temporary name.
        sitk.WriteImage(sitk.Image([3, 4, 5], sitk.sitkUInt8), str(tmp), useCompression=True)
        assert tmp.exists()
    assert _listing(tmp_path) == ["case.nii.gz"]
    assert sitk.ReadImage(str(target)).GetSize() == (3, 4, 5)


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("a.nii.gz", ".nii.gz"),
        ("a.nrrd", ".nrrd"),
        ("model.pt", ".pt"),
        ("noext", ""),
        ("x.tar.bz2", ".tar.bz2"),
    ],
)
def test_full_suffix(name: str, suffix: str) -> None:
    assert full_suffix(name) == suffix


def test_failure_leaves_old_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "labels.nrrd"
    target.write_bytes(b"OLD CONTENT")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"NEW PARTI")  # half-written file
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"OLD CONTENT"
    assert _listing(tmp_path) == ["labels.nrrd"]


def test_failure_without_previous_target_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_body_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    assert _listing(tmp_path) == []


def test_unserialisable_json_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "cfg.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert _listing(tmp_path) == ["cfg.json"]


def test_replace_waits_for_a_windows_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows a rename over a file another process has open fails for as long as it is open
    (simulated here: no Windows machine runs the tests); the write waits instead of failing."""
    import os

    from reciprocalseg.common import atomic

    real_replace, calls = os.replace, []

    def busy_twice(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) <= 2:
            raise PermissionError(13, "The process cannot access the file", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", busy_twice)
    monkeypatch.setattr(atomic, "_WINDOWS", True)
    monkeypatch.setattr(atomic, "_REPLACE_WAIT_S", 0.0)
    atomic_write_text(tmp_path / "latest.txt", "new")
    assert (tmp_path / "latest.txt").read_text() == "new" and len(calls) == 3
    monkeypatch.setattr(atomic, "_WINDOWS", False)  # elsewhere a refused rename is an error at once
    calls.clear()
    with pytest.raises(PermissionError):
        atomic_write_text(tmp_path / "other.txt", "x")
    assert len(calls) == 1 and _listing(tmp_path) == ["latest.txt"]
