"""Which Python packages the ReciprocalSeg Slicer module must install into Slicer's Python.

Pure standard library (the Slicer module imports it before anything is installed), and
compatible with Python 3.9 (Slicer 5.8) so that the module can at least explain itself there.

Rules:

* ``REQUIREMENTS`` mirrors ``[project].dependencies`` of pyproject.toml (a test checks it).
* Packages that 3D Slicer bundles are never installed or upgraded, whatever their version:
  reinstalling numpy, SimpleITK, vtk or requests with pip can break Slicer itself.
  ``SLICER_BUNDLED`` was read from Slicer's SuperBuild (``SuperBuild/External_python-*.cmake``,
  ``External_SimpleITK.cmake``, ``External_VTK.cmake``) at tags v5.8.1, v5.10.0 and v5.12.3;
  only packages bundled in *all three* are listed.
* Installing uses Slicer's own installer: ``slicer.packaging.pip_ensure`` where the Slicer
  version has it (``Base/Python/slicer/packaging.py`` exists from v5.12.0; checked at v5.12.0 and
  v5.12.3, same signature), ``slicer.util.pip_install`` otherwise (v5.8.1, v5.10.0); see
  :func:`install_with_slicer`.
* The in-Slicer self-test never installs anything (an extension build machine must not download
  torch): it skips with the reason :func:`missing_for_test` gives.
* torch is installed through the PyTorch extension (``PyTorchUtils``), which picks the CUDA
  build that fits the GPU driver; pip gets everything else, with the bundled packages pinned
  to their installed versions by a constraints file (:func:`constraints_for_bundled`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType

__all__ = [
    "NEVER_INSTALL",
    "REQUIREMENTS",
    "SLICER_BUNDLED",
    "TORCH",
    "canonical_name",
    "constraints_for_bundled",
    "install_with_slicer",
    "installer_name",
    "installed_version",
    "missing_for_test",
    "missing_requirements",
    "requirement_name",
    "split_requirement",
    "split_torch",
    "version_satisfies",
]

TORCH = "torch"

# Same entries and order as pyproject.toml [project].dependencies.
REQUIREMENTS: tuple[str, ...] = (
    "torch>=2.1",
    "numpy>=1.24",
    "SimpleITK>=2.2",
    "scikit-image>=0.21",
    "scipy>=1.10",
    "fastapi>=0.110",
    "uvicorn>=0.27",
    "pydantic>=2.5",
    "python-multipart>=0.0.9",
    "requests>=2.31",
    "psutil>=5.9",
)

# The four whose reinstallation is known to break Slicer (its own C++ links against them).
NEVER_INSTALL: frozenset[str] = frozenset({"numpy", "simpleitk", "vtk", "requests"})

# Python packages shipped with Slicer 5.8.1, 5.10.0 and 5.12.3 (canonical names).
SLICER_BUNDLED: frozenset[str] = NEVER_INSTALL | frozenset(
    {
        # SuperBuild/External_python-scipy.cmake
        "scipy",
        # External_python-requests-requirements.cmake
        "certifi",
        "idna",
        "charset-normalizer",
        "urllib3",
        # External_python-dicom-requirements.cmake
        "pydicom",
        "pillow",
        "six",
        "retrying",
        "dicomweb-client",
        # External_python-pythonqt-requirements.cmake
        "packaging",
        "pyparsing",
        # External_python-extension-manager(-ssl)-requirements.cmake
        "chardet",
        "couchdb",
        "gitdb",
        "smmap",
        "gitpython",
        "cryptography",
        "pycparser",
        "cffi",
        "pynacl",
        "python-dateutil",
        "typing-extensions",
        "wrapt",
        "deprecated",
        "pygithub",
        # External_python-pip/setuptools/wheel.cmake
        "pip",
        "setuptools",
        "wheel",
    }
)

_REQ_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][0-9A-Za-z.+!-]*))?\s*$")


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name: lower case, runs of ``-_.`` become ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(spec: str) -> tuple[str, str | None]:
    """``"fastapi>=0.110"`` -> ``("fastapi", "0.110")``; ``"psutil"`` -> ``("psutil", None)``.

    Only the forms used in :data:`REQUIREMENTS` (a name, optionally ``>=version``) are accepted;
    anything else raises ValueError so that a new dependency syntax is noticed, not ignored.
    """
    m = _REQ_RE.match(spec)
    if not m:
        raise ValueError(f"unsupported requirement {spec!r}: use 'name' or 'name>=version'")
    return m.group(1), m.group(2)


def requirement_name(spec: str) -> str:
    """Canonical distribution name of a requirement specifier."""
    return canonical_name(split_requirement(spec)[0])


def _release(version: str) -> tuple[int, ...]:
    """Leading numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``."""
    parts = []
    for piece in version.strip().split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group(0)))
        if m.group(0) != piece:
            break
    return tuple(parts)


def version_satisfies(installed: str, minimum: str | None) -> bool:
    """Whether ``installed`` is at least ``minimum`` (release numbers only, padded with zeros)."""
    if minimum is None:
        return True
    have, need = _release(installed), _release(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def installed_version(name: str) -> str | None:
    """Installed version of distribution ``name`` in this interpreter, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(
    requirements: Iterable[str] = REQUIREMENTS,
    version_of: Callable[[str], str | None] = installed_version,
    bundled: Iterable[str] = SLICER_BUNDLED,
) -> list[str]:
    """Requirement specifiers that must be installed (or upgraded) in Slicer's Python.

    A requirement is missing when its distribution is not installed or older than the
    minimum. Packages that Slicer bundles are never returned, even if they look missing or
    old (Slicer 5.8/5.10 build SimpleITK and vtk themselves, without pip metadata).
    ``torch`` is included when missing; install it with the PyTorch extension
    (see :func:`split_torch`). The order of ``requirements`` is kept.
    """
    skip = {canonical_name(n) for n in bundled}
    missing = []
    for spec in requirements:
        name, minimum = split_requirement(spec)
        if canonical_name(name) in skip:
            continue
        have = version_of(name)
        if have is None or not version_satisfies(have, minimum):
            missing.append(spec)
    return missing


def split_torch(specs: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split ``specs`` into (torch version requirement such as ``">=2.1"`` or None, the rest).

    The first item is meant for ``PyTorchUtilsLogic().installTorch(torchVersionRequirement=...)``;
    it is ``""`` when torch is required without a minimum version.
    """
    torch_req: str | None = None
    rest = []
    for spec in specs:
        name, minimum = split_requirement(spec)
        if canonical_name(name) == TORCH:
            torch_req = f">={minimum}" if minimum else ""
        else:
            rest.append(spec)
    return torch_req, rest


def constraints_for_bundled(
    version_of: Callable[[str], str | None] = installed_version,
    names: Iterable[str] = NEVER_INSTALL,
) -> list[str]:
    """pip constraint lines (``numpy==1.26.4``) pinning the bundled packages that are installed.

    Passed to pip with ``-c`` so that installing, say, scikit-image cannot upgrade Slicer's
    numpy as a side effect: pip then picks versions compatible with what Slicer ships, or fails
    with a clear resolver message instead of breaking Slicer.
    """
    lines = []
    for name in sorted(names):
        have = version_of(name)
        if have:
            lines.append(f"{name}=={have}")
    return lines


def missing_for_test(
    requirements: Iterable[str] = REQUIREMENTS,
    version_of: Callable[[str], str | None] = installed_version,
) -> str | None:
    """Why the in-Slicer self-test must skip, or None when everything it needs is installed.

    The test never installs packages itself: on an extension build machine that would download
    torch and the server stack into the build's Slicer.  Use it as
    ``reason = missing_for_test(); if reason: self.skipTest(reason)``.
    """
    missing = missing_requirements(requirements, version_of)
    if not missing:
        return None
    return (
        "ReciprocalSeg's Python packages are not installed in this Slicer ("
        + ", ".join(missing)
        + "); the test does not install them. Install them once from the module (Start / connect), "
        "then run the test again."
    )


def _slicer_packaging(import_module: Callable[[str], ModuleType]) -> ModuleType | None:
    try:
        packaging = import_module("slicer.packaging")
    except ImportError:
        return None
    return packaging if callable(getattr(packaging, "pip_ensure", None)) else None


def installer_name(import_module: Callable[[str], ModuleType] = importlib.import_module) -> str:
    """Which installer :func:`install_with_slicer` uses in this Slicer."""
    if _slicer_packaging(import_module) is not None:
        return "slicer.packaging.pip_ensure"
    return "slicer.util.pip_install"


def install_with_slicer(
    specs: Sequence[str],
    constraints_file: str | None = None,
    requester: str = "ReciprocalSeg",
    import_module: Callable[[str], ModuleType] = importlib.import_module,
) -> str:
    """Install ``specs`` (not torch: see :func:`split_torch`) with Slicer's own installer.

    ``constraints_file``: the pins of :func:`constraints_for_bundled` written to a file.  Call it on
    Slicer's main thread (pip installs must run there) after asking the user: pip_ensure's own
    prompt is turned off.  pip_ensure skips installing in Slicer's testing mode.  Returns the name
    of the installer used.
    """
    packaging = _slicer_packaging(import_module)
    if packaging is not None:  # Slicer >= 5.12
        packaging.pip_ensure(
            list(specs), constraints=constraints_file, prompt_install=False, requester=requester
        )
        return "slicer.packaging.pip_ensure"
    util = import_module("slicer.util")  # Slicer 5.8, 5.10: pip_install(list of pip arguments)
    args = list(specs) if constraints_file is None else ["-c", constraints_file, *specs]
    util.pip_install(args)
    return "slicer.util.pip_install"
