"""Training on a full disk (issue 15): a clear error, nothing half-written in the cache.

The disk is really full: the CLI runs in its own user and mount namespace on a small tmpfs
(``unshare --user --map-root-user --mount``), so the kernel answers ENOSPC.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reciprocalseg.common.processes import child_env
from reciprocalseg.data.phantom import write_phantom_cohort


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "mkdir -p /tmp/.rs-probe && mount -t tmpfs -o size=64k tmpfs /tmp/.rs-probe"
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", probe], capture_output=True
    )
    return r.returncode == 0


@pytest.mark.skipif(
    not _can_unshare(), reason="needs unprivileged user+mount namespaces to mount a small tmpfs"
)
def test_training_on_a_full_disk_fails_clearly_and_leaves_no_partial_cache(tmp_path: Path) -> None:
    cases = write_phantom_cohort(tmp_path / "data", 4, seed=0, shape_zyx=(32, 32, 32))
    images = tmp_path / "data"
    out = tmp_path / "out"
    out.mkdir()
    # 32^3 float32 = 128 KiB per cached image, 32 KiB per label: room for about two cases.
    script = (
        f"mount -t tmpfs -o size=360k tmpfs {out} && {sys.executable} -m reciprocalseg train "
        f"--images {images} --out {out}/run --preset demo --supervised-iterations 2 --iterations 0 "
        f"--device cpu; code=$?; find {out} -type f | sort; exit $code"
    )
    res = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no space left on the device" in res.stderr and "run the same command again" in res.stderr
    assert "Traceback" not in res.stderr
    cached = [Path(line) for line in res.stdout.splitlines() if "/cache/" in line]
    images_npy = {p.name.replace("-image.npy", "") for p in cached if p.name.endswith("-image.npy")}
    labels_npy = {p.name.replace("-label.npy", "") for p in cached if p.name.endswith("-label.npy")}
    assert labels_npy == images_npy  # every cached case whole: no label without its image
    assert len(images_npy) < len(cases)  # the disk did fill up while caching
    assert all(p.suffix == ".npy" for p in cached)  # no temporary files left behind
