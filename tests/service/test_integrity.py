"""Issue 15, data integrity: non-finite images and models, a full disk, a read-only workspace.

The full disk is real: the service runs in its own user and mount namespace
(``unshare --user --map-root-user --mount``) on a small tmpfs, so writes fail with ENOSPC from
the kernel. The test reads that workspace through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.common.processes import child_env
from reciprocalseg.data.io import Case, read_image
from reciprocalseg.service.jobs import TrainingManager
from reciprocalseg.service.workspace import Workspace
from reciprocalseg.training.checkpoint import nonfinite_tensors


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "mkdir -p /tmp/.rs-probe && mount -t tmpfs -o size=64k tmpfs /tmp/.rs-probe"
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", probe], capture_output=True
    )
    return r.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _can_unshare(), reason="needs unprivileged user+mount namespaces (unshare) to mount a small tmpfs"
)


def _serve_on_tmpfs(ws: Path, size_kb: int, log: Path, read_only: bool = False) -> subprocess.Popen:
    ws.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    script = (
        f"mount -t tmpfs -o {opts} tmpfs {ws} && exec {sys.executable} -m reciprocalseg.service.server "
        f"--workspace {ws} --device cpu --log-level info"
    )
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )


def _wait_url(proc: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(r"at (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if m:
            return m.group(1)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError("the service did not start:\n" + log.read_text())


def _noise_nrrd(path: Path, n: int, seed: int = 0) -> Path:
    """A float32 noise volume: it does not compress, so its stored size is about n^3 * 4 bytes."""
    arr = np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@needs_namespaces
def test_full_disk_answers_507_and_stores_nothing(tmp_path: Path, phantoms: list[Case]) -> None:
    ws, log = tmp_path / "ws", tmp_path / "serve.log"
    proc = _serve_on_tmpfs(ws, 1536, log)
    try:
        url = _wait_url(proc, log)
        seen = Path(f"/proc/{proc.pid}/root") / str(ws).lstrip("/")  # the tmpfs, as the service sees it
        # 1 MiB of noise: the upload fits in tmp/, the compressed copy in cases/ does not.
        big = _noise_nrrd(tmp_path / "noise64.nrrd", 64)
        # 2 MiB: already the upload itself does not fit.
        bigger = _noise_nrrd(tmp_path / "noise80.nrrd", 80)
        for path in (big, bigger):
            r = requests.post(f"{url}/cases", files={"file": (path.name, path.read_bytes())}, timeout=120)
            assert r.status_code == 507, r.text
            detail = r.json()["detail"]
            assert "no space left" in detail and "free some disk space" in detail
            assert ".cxx" not in detail and "itk" not in detail.lower()
            assert list((seen / "tmp").iterdir()) == []
            assert [p.name for p in (seen / "cases").iterdir()] == []  # no .incoming-* leftovers
        assert requests.get(f"{url}/cases", timeout=30).json()["cases"] == []
        # The service is still usable: a small scan fits.
        r = requests.post(
            f"{url}/cases", files={"file": ("p.nrrd", phantoms[0].image.read_bytes())}, timeout=120
        )
        assert r.status_code == 201, r.text
        assert (seen / "cases" / "p" / "case.json").exists()
    finally:
        _stop(proc)


@needs_namespaces
def test_serve_on_a_read_only_workspace_says_so_in_one_line(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = _serve_on_tmpfs(tmp_path / "ws", 64, log, read_only=True)
    assert proc.wait(timeout=120) == 2
    text = log.read_text()
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("reciprocalseg serve: error:"), text
    assert "read-only" in lines[0].lower(), text


def test_non_finite_images_are_refused_on_the_read_path(tmp_path: Path, phantoms: list[Case]) -> None:
    """read_image is what the CLI, training and the service read scans with."""
    img = sitk.ReadImage(str(phantoms[0].image), sitk.sitkFloat32)
    for bad in (np.nan, np.inf, -np.inf):
        arr = sitk.GetArrayFromImage(img)
        arr[1, 2, 3] = bad
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        path = tmp_path / "bad.nrrd"
        sitk.WriteImage(out, str(path))
        with pytest.raises(DataError, match="1 voxel\\(s\\) are NaN or infinite"):
            read_image(path)


def _write_models(run: Path, nan_in: str | None) -> None:
    import torch

    from reciprocalseg.config import make_config
    from reciprocalseg.model.vnet import VNet
    from reciprocalseg.training.checkpoint import save_model

    config = make_config("demo", n_filters=1)
    for name in ("teacher", "student"):
        model = VNet(1, config.n_classes, config.n_filters, config.normalization)
        if name == nan_in:
            with torch.no_grad():
                list(model.parameters())[-1].fill_(float("inf"))
        save_model(model, config, run / f"{name}.pt")


@pytest.mark.parametrize("poisoned", ["teacher", "student"])
def test_a_finished_run_with_non_finite_weights_never_becomes_current(tmp_path: Path, poisoned: str) -> None:
    ws = Workspace(tmp_path / "ws")
    run = ws.runs_dir / "run-1"
    run.mkdir()
    _write_models(run, poisoned)
    (run / "done.json").write_text("{}")
    job = {"run_id": "run-1", "state": "running", "pid": 1, "preset": "demo", "n_classes": 2,
           "classes_include_background": True, "n_labeled": 1, "n_unlabeled": 1,
           "created": "2024-01-01T00:00:00+00:00"}  # fmt: skip
    (run / "job.json").write_text(json.dumps(job))
    TrainingManager(ws)._finish(job, 0, stopping=False)
    done = ws.read_job("run-1")
    assert done["state"] == "failed" and "NaN or infinite weights" in done["message"], done
    assert poisoned in done["message"]
    assert ws.registry()["rounds"] == [] and ws.registry()["current"] is None


def test_nonfinite_tensors_names_the_bad_ones() -> None:
    import torch

    state = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.tensor([1, 2])}
    state["d"] = torch.tensor([float("-inf")])
    assert nonfinite_tensors(state) == ["b", "d"]


def test_an_old_round_with_non_finite_weights_cannot_be_made_current(tmp_path: Path) -> None:
    """Rounds registered before the check (an older workspace) are checked when chosen."""
    from service_helpers import start_service

    ws = Workspace(tmp_path / "ws")
    folder = ws.models_dir / "r0001"
    folder.mkdir()
    _write_models(folder, "student")
    ws.add_round(
        lambda n: {"source": "imported", "created": "2024-01-01T00:00:00+00:00", "dir": "models/r0001",
                   "teacher": "models/r0001/teacher.pt", "student": "models/r0001/student.pt"},
        make_current=False,
    )  # fmt: skip
    run = start_service(tmp_path / "ws", device="cpu")
    try:
        r = run.client.session.put(f"{run.client.url}/models/current", json={"round": 1})
        assert r.status_code == 409 and "NaN or infinite weights" in r.json()["detail"], r.text
        assert run.client.list_models().current is None
    finally:
        run.launcher.stop()
