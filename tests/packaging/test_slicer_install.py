"""How the module installs its packages in Slicer, and when the in-Slicer test skips instead.

Slicer itself cannot run here.  The installers are stand-in modules whose functions have the
signatures read from Slicer's source (``pip_ensure`` in Base/Python/slicer/packaging.py, v5.12.0
and v5.12.3; ``pip_install(requirements)`` in Base/Python/slicer/util.py, v5.8.1 and v5.10.0),
so a wrong keyword fails here as it would in Slicer.
"""

from __future__ import annotations

import types
from pathlib import Path

from reciprocalseg.service import slicer_requirements as sr


class _Slicer512:
    """``slicer.packaging`` (5.12) and ``slicer.util`` with the real signatures, recording calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, dict]] = []
        packaging = types.ModuleType("slicer.packaging")

        def pip_ensure(
            requirements,  # noqa: ANN001
            constraints=None,  # noqa: ANN001
            skip_packages=None,  # noqa: ANN001
            prompt_install=True,  # noqa: ANN001
            prompt_restart=True,  # noqa: ANN001
            requester=None,  # noqa: ANN001
            skip_in_testing=True,  # noqa: ANN001
            show_progress=True,  # noqa: ANN001
        ) -> None:
            self.calls.append(
                ("pip_ensure", requirements, {"constraints": constraints, "prompt_install": prompt_install})
            )

        packaging.pip_ensure = pip_ensure  # type: ignore[attr-defined]
        self.modules = {"slicer.packaging": packaging, "slicer.util": _util(self.calls)}

    def import_module(self, name: str) -> types.ModuleType:
        if name not in self.modules:
            raise ImportError(name)
        return self.modules[name]


def _util(calls: list) -> types.ModuleType:
    util = types.ModuleType("slicer.util")

    def pip_install(requirements) -> None:  # noqa: ANN001 - the 5.8/5.10 signature
        calls.append(("pip_install", requirements, {}))

    util.pip_install = pip_install  # type: ignore[attr-defined]
    return util


class _Slicer510(_Slicer512):
    def __init__(self) -> None:
        super().__init__()
        del self.modules["slicer.packaging"]  # no Base/Python/slicer/packaging.py before 5.12.0


def test_slicer_5_12_installs_with_pip_ensure_and_the_constraints(tmp_path: Path) -> None:
    slicer = _Slicer512()
    constraints = tmp_path / "c.txt"
    used = sr.install_with_slicer(["fastapi>=0.110"], str(constraints), import_module=slicer.import_module)
    assert used == sr.installer_name(slicer.import_module) == "slicer.packaging.pip_ensure"
    name, reqs, kwargs = slicer.calls[0]
    assert (name, reqs) == ("pip_ensure", ["fastapi>=0.110"])
    assert kwargs == {"constraints": str(constraints), "prompt_install": False}


def test_older_slicer_installs_with_util_pip_install_and_the_constraints(tmp_path: Path) -> None:
    slicer = _Slicer510()
    used = sr.install_with_slicer(
        ["fastapi>=0.110", "psutil>=5.9"], "/c.txt", import_module=slicer.import_module
    )
    assert used == sr.installer_name(slicer.import_module) == "slicer.util.pip_install"
    assert slicer.calls == [("pip_install", ["-c", "/c.txt", "fastapi>=0.110", "psutil>=5.9"], {})]


def test_missing_for_test_gives_a_reason_naming_what_is_missing() -> None:
    versions = {"torch": None, "fastapi": "0.100.0"}
    reason = sr.missing_for_test(version_of=lambda name: versions.get(name, "99"))
    assert reason is not None
    assert "torch>=2.1" in reason and "fastapi>=0.110" in reason and "does not install" in reason
    assert "scipy" not in reason  # bundled with Slicer: never reported, never installed


def test_missing_for_test_is_none_in_this_complete_environment() -> None:
    assert sr.missing_for_test() is None  # this venv has every requirement installed
