"""The packages the module installs into Slicer's Python (service/slicer_requirements.py)."""

from __future__ import annotations

import pytest
from static_checks import REPO

from reciprocalseg.service import slicer_requirements as sr

# --------------------------------------------------------------------------- (6) slicer_requirements


def test_requirements_mirror_pyproject_dependencies():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert list(sr.REQUIREMENTS) == pyproject["project"]["dependencies"]


def test_bundled_packages_are_never_installed():
    def nothing_installed(name):
        return None

    missing = sr.missing_requirements(version_of=nothing_installed)
    names = [sr.requirement_name(spec) for spec in missing]
    assert not set(names) & sr.SLICER_BUNDLED
    assert not {"numpy", "simpleitk", "requests", "scipy"} & set(names)
    assert names == ["torch", "scikit-image", "fastapi", "uvicorn", "pydantic", "python-multipart", "psutil"]
    assert sr.NEVER_INSTALL <= sr.SLICER_BUNDLED
    # Even an old bundled package is left alone.
    old = {"numpy": "1.0", "scipy": "0.1", "SimpleITK": None}
    assert not sr.missing_requirements(["numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.2"], version_of=old.get)


def test_missing_and_outdated_packages_are_found_in_order():
    installed = {"torch": "2.13.0+cpu", "fastapi": "0.100.0", "uvicorn": "0.30", "pydantic": "2.5",
                 "python-multipart": "0.0.34", "psutil": "7.2.2"}  # fmt: skip
    missing = sr.missing_requirements(version_of=installed.get)
    assert missing == ["scikit-image>=0.21", "fastapi>=0.110"]
    everything = {sr.split_requirement(s)[0]: "99" for s in sr.REQUIREMENTS}
    assert sr.missing_requirements(version_of=everything.get) == []


def test_version_comparison():
    assert sr.version_satisfies("2.13.0+cpu", "2.1")
    assert sr.version_satisfies("0.0.34", "0.0.9")
    assert sr.version_satisfies("1.10", "1.10.0")
    assert not sr.version_satisfies("1.9", "1.10")
    assert not sr.version_satisfies("0.27rc1", "0.28")
    assert sr.version_satisfies("2.5.0.post1", "2.5")
    assert sr.version_satisfies("anything", None)


def test_requirement_parsing():
    assert sr.split_requirement("fastapi>=0.110") == ("fastapi", "0.110")
    assert sr.split_requirement("psutil") == ("psutil", None)
    assert sr.requirement_name("Python_Multipart>=1") == "python-multipart"
    assert sr.canonical_name("SimpleITK") == "simpleitk"
    with pytest.raises(ValueError):
        sr.split_requirement("torch==2.1")
    with pytest.raises(ValueError):
        sr.split_requirement("torch; python_version<'3.10'")


def test_torch_goes_to_the_pytorch_extension():
    torch_req, rest = sr.split_torch(["torch>=2.1", "fastapi>=0.110"])
    assert torch_req == ">=2.1" and rest == ["fastapi>=0.110"]
    assert sr.split_torch(["torch"]) == ("", [])
    assert sr.split_torch(["psutil>=5.9"]) == (None, ["psutil>=5.9"])


def test_constraints_pin_installed_bundled_packages():
    installed = {"numpy": "1.26.4", "requests": "2.32.3", "vtk": None, "simpleitk": "2.5.5"}
    lines = sr.constraints_for_bundled(version_of=installed.get)
    assert lines == ["numpy==1.26.4", "requests==2.32.3", "simpleitk==2.5.5"]


def test_missing_requirements_in_this_environment_uses_real_metadata():
    """Against this interpreter: whatever is reported missing really has no (new enough) distribution."""
    for spec in sr.missing_requirements():
        name, minimum = sr.split_requirement(spec)
        have = sr.installed_version(name)
        assert have is None or not sr.version_satisfies(have, minimum)
    assert sr.installed_version("pytest") is not None
    assert sr.installed_version("surely-not-a-real-distribution-name") is None
