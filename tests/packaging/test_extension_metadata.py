"""The extension's catalogue entry and metadata: valid, consistent, no placeholders, real pictures.

``catalog_entry_schema.json`` beside this file was written from reading the Extensions Index's
published schema (v1.0.2); the checks below it follow the index's own ``check_description_files.py``
(category list, URL scheme, repository and extension names).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "ReciprocalSeg.json"
SCHEMA = Path(__file__).with_name("catalog_entry_schema.json")
SCREENSHOTS = REPO / "Resources" / "Screenshots"
RAW_PREFIX = "https://raw.githubusercontent.com/ReciprocalSeg/SlicerReciprocalSeg/main/"
PLACEHOLDERS = re.compile(r"OWNER|placeholder|example\.com|TODO|FIXME|XXX", re.IGNORECASE)
MAX_PNG_BYTES = 300 * 1024

# Categories the index accepts that could fit this extension (check_description_files.py,
# ACCEPTED_EXTENSION_CATEGORIES, Slicer/ExtensionsIndex commit 07f1d1b2).
ACCEPTED_CATEGORIES = {"Segmentation", "Active Learning", "Analysis", "Quantification"}


def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def cmake_meta() -> dict[str, str]:
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'set\(EXTENSION_(\w+) "([^"]*)"\)', cmake))


def s4ext() -> dict[str, str]:
    out = {}
    for line in (REPO / "ReciprocalSeg.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_the_catalogue_entry_is_valid_against_the_index_schema() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry(), schema)
    assert entry()["$schema"].startswith(
        "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json"
    )


def test_the_schema_check_rejects_what_the_index_rejects() -> None:
    """The fixture is not a schema that accepts anything."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    good = entry()
    for bad in (
        {k: v for k, v in good.items() if k != "scm_url"},  # required key missing
        {**good, "description": "not a catalogue field"},  # additionalProperties: false
        {**good, "tier": 7},  # 1..5
        {**good, "scm_type": "svn"},  # git or local
        {**good, "enabled": 1},  # boolean
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_the_catalogue_entry_passes_the_index_naming_rules() -> None:
    e = entry()
    assert e["category"] in ACCEPTED_CATEGORIES
    url = urlsplit(e["scm_url"])
    assert url.scheme in ("git", "https") and url.netloc == "github.com"
    repo_name = Path(url.path).stem
    assert repo_name.startswith("Slicer")  # the index asks repositories to start with "Slicer"...
    assert not ENTRY.stem.lower().startswith("slicer")  # ...and extension names not to


def test_catalogue_entry_agrees_with_cmake_and_s4ext() -> None:
    e, meta, s4 = entry(), cmake_meta(), s4ext()
    assert e["category"] == meta["CATEGORY"] == s4["category"]
    assert e["build_dependencies"] == meta["DEPENDS"].split() == s4["depends"].split()
    assert e["scm_url"] + ".git" == s4["scmurl"]
    assert e["scm_revision"] == s4["scmrevision"]
    assert e["build_subdirectory"] == s4["build_subdirectory"]
    assert e["enabled"] == (s4["enabled"] == "1")
    assert meta["HOMEPAGE"] == s4["homepage"] == e["scm_url"] + "#3d-slicer"


def test_no_placeholder_text_in_metadata() -> None:
    for path in (ENTRY, REPO / "ReciprocalSeg.s4ext", REPO / "CMakeLists.txt"):
        text = path.read_text(encoding="utf-8")
        assert not PLACEHOLDERS.search(text), f"{path.name}: {PLACEHOLDERS.search(text).group(0)}"


def test_every_picture_the_metadata_names_exists_small_and_is_shown_in_the_readme() -> None:
    urls = cmake_meta()["SCREENSHOTURLS"].split()
    assert urls and urls == s4ext()["screenshoturls"].split()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for url in [*urls, cmake_meta()["ICONURL"]]:
        assert url.startswith(RAW_PREFIX), url
        path = REPO / url[len(RAW_PREFIX) :]
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 128 and height >= 128, path
        if path.parent == SCREENSHOTS:
            assert len(data) < MAX_PNG_BYTES, f"{path.name}: {len(data)} bytes"
    assert "Resources/Screenshots/overview.png" in readme
    for stale in re.findall(r"Resources/Screenshots/[\w.-]+\.png", readme):
        assert (REPO / stale).is_file(), f"README shows a missing picture: {stale}"
