"""A catalogue of malformed requests and files: each answered 4xx with a message, nothing stored changes."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from service_helpers import Running, snapshot, start_service

from reciprocalseg.data.io import Case


def _nrrd_bytes(img: sitk.Image, tmp: Path, name: str = "x.nrrd") -> bytes:
    p = tmp / name
    sitk.WriteImage(img, str(p))
    return p.read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, phantoms: list[Case]) -> dict[str, bytes]:
    """Malformed and valid files, as bytes."""
    tmp = tmp_path_factory.mktemp("bad")
    label = sitk.ReadImage(str(phantoms[0].label))
    arr = sitk.GetArrayFromImage(label)
    out: dict[str, bytes] = {"image": phantoms[0].image.read_bytes(), "label": phantoms[0].label.read_bytes()}
    out["truncated"] = out["image"][: len(out["image"]) // 2]
    out["garbage"] = b"NRRD0004\nthis is not a header\n" + bytes(range(256)) * 4
    out["image2d"] = _nrrd_bytes(sitk.Image(16, 16, sitk.sitkFloat32), tmp, "2d.nrrd")
    out["vector"] = _nrrd_bytes(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), tmp, "v.nrrd")
    small = sitk.GetImageFromArray(arr[:, :, :-4])
    small.SetSpacing(label.GetSpacing())
    small.SetOrigin(label.GetOrigin())
    out["label_small"] = _nrrd_bytes(small, tmp, "small.nrrd")
    spaced = sitk.Image(label)
    spaced.SetSpacing([s * 2 for s in label.GetSpacing()])
    out["label_spacing"] = _nrrd_bytes(spaced, tmp, "spacing.nrrd")
    shifted = sitk.Image(label)
    shifted.SetOrigin([o + 10 for o in label.GetOrigin()])
    out["label_origin"] = _nrrd_bytes(shifted, tmp, "origin.nrrd")

    def like(a: np.ndarray) -> bytes:
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(label)
        return _nrrd_bytes(img, tmp, "like.nrrd")

    out["label_classes"] = like(np.where(arr > 0, 3, 0).astype(np.uint8))
    out["label_float"] = like(arr.astype(np.float32) * 0.5)
    out["label_negative"] = like(np.where(arr > 0, -1, 0).astype(np.int16))
    out["label_nan"] = like(np.where(arr > 0, np.nan, 0).astype(np.float32))
    out["big"] = b"\0" * (1024 * 1024 + 4096)  # over the limit, but not the request limit (limit + 1 MiB)
    out["huge"] = b"\0" * (3 * 1024 * 1024)  # refused from Content-Length, before the body is read
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("teacher.pt", b"x")
    out["zip_missing"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("teacher.pt", b"x")
        zf.writestr("student.pt", b"x")
        zf.writestr("meta.json", "{not json")
    out["zip_badmeta"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("teacher.pt", b"not a torch file")
        zf.writestr("student.pt", b"not a torch file")
        zf.writestr("meta.json", json.dumps({"format": "reciprocalseg-models", "n_classes": 1}))
    out["zip_badpt"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("teacher.pt", b"x")
        zf.writestr("student.pt", b"x")
        zf.writestr("meta.json", json.dumps({"format": "reciprocalseg-models", "n_classes": 5}))
    out["zip_classes"] = buf.getvalue()
    (tmp / "notes.txt").write_text("hello")
    out["txt_path"] = str(tmp / "notes.txt").encode()
    return out


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, phantoms: list[Case]) -> Iterator[Running]:
    """A service with one labelled and one unlabelled case and a 1 MiB upload limit."""
    run = start_service(tmp_path_factory.mktemp("cat") / "ws", device="cpu", max_upload_mb=1)
    run.client.add_case(phantoms[0].image)
    run.client.put_label(phantoms[0].case_id, phantoms[0].label, author="a")
    run.client.add_case(phantoms[1].image)
    try:
        yield run
    finally:
        run.launcher.stop()


Req = Callable[[requests.Session, str, dict[str, bytes]], requests.Response]
C0 = "phantom_000"  # labelled
C1 = "phantom_001"  # unlabelled


def up(name: str, data: bytes) -> dict:
    return {"file": (name, data, "application/octet-stream")}


CATALOGUE: dict[str, tuple[int, Req]] = {
    # --- cases: uploads
    "upload without file": (422, lambda s, u, f: s.post(f"{u}/cases", data={"case_id": "x1"})),
    "upload .txt": (415, lambda s, u, f: s.post(f"{u}/cases", files=up("scan.txt", f["image"]))),
    "upload .nhdr (two-file format)": (
        415,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nhdr", f["image"])),
    ),
    "upload without extension": (415, lambda s, u, f: s.post(f"{u}/cases", files=up("scan", f["image"]))),
    "upload empty file": (422, lambda s, u, f: s.post(f"{u}/cases", files=up("e.nrrd", b""))),
    "upload garbage nrrd": (422, lambda s, u, f: s.post(f"{u}/cases", files=up("g.nrrd", f["garbage"]))),
    "upload truncated nrrd": (422, lambda s, u, f: s.post(f"{u}/cases", files=up("t.nrrd", f["truncated"]))),
    "upload nrrd bytes as .nii.gz": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("n.nii.gz", f["image"])),
    ),
    "upload 2D image": (422, lambda s, u, f: s.post(f"{u}/cases", files=up("flat.nrrd", f["image2d"]))),
    "upload vector image": (422, lambda s, u, f: s.post(f"{u}/cases", files=up("rgb.nrrd", f["vector"]))),
    "upload case_id traversal": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "../evil"}),
    ),
    "upload case_id with slash": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "a/b"}),
    ),
    "upload case_id too long": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "a" * 65}),
    ),
    "upload unusable name, no case_id": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("bad name!.nrrd", f["image"])),
    ),
    "upload duplicate case": (
        409,
        lambda s, u, f: s.post(f"{u}/cases", files=up(f"{C0}_image.nrrd", f["image"])),
    ),
    "upload over the size limit": (413, lambda s, u, f: s.post(f"{u}/cases", files=up("big.nrrd", f["big"]))),
    "upload far over the limit": (413, lambda s, u, f: s.post(f"{u}/cases", files=up("h.nrrd", f["huge"]))),
    # --- cases: register / get / delete
    "register relative path": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": "rel/a.nrrd"}),
    ),
    "register missing path": (
        404,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": "/nonexistent/a.nrrd"}),
    ),
    "register .txt path": (
        415,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["txt_path"].decode()}),
    ),
    "register unknown field": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": "/x.nrrd", "copy": False}),
    ),
    "register bad case_id": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": "/x.nrrd", "case_id": "..\\x"}),
    ),
    "register body not JSON": (
        422,
        lambda s, u, f: s.post(
            f"{u}/cases/register", data=b"{nope", headers={"Content-Type": "application/json"}
        ),
    ),
    "get unknown case": (404, lambda s, u, f: s.get(f"{u}/cases/nope")),
    "get case dot-dot": (422, lambda s, u, f: s.get(f"{u}/cases/%2E%2E/image")),
    "get case id with bad chars": (422, lambda s, u, f: s.get(f"{u}/cases/a%20b")),
    "delete unknown case": (404, lambda s, u, f: s.delete(f"{u}/cases/nope")),
    # --- labels
    "label unknown case": (
        404,
        lambda s, u, f: s.put(f"{u}/cases/nope/label", files=up("l.nrrd", f["label"])),
    ),
    "label without file": (422, lambda s, u, f: s.put(f"{u}/cases/{C1}/label", data={"author": "a"})),
    "label .png": (415, lambda s, u, f: s.put(f"{u}/cases/{C1}/label", files=up("l.png", f["label"]))),
    "label empty": (422, lambda s, u, f: s.put(f"{u}/cases/{C1}/label", files=up("l.nrrd", b""))),
    "label corrupt": (422, lambda s, u, f: s.put(f"{u}/cases/{C1}/label", files=up("l.nrrd", f["garbage"]))),
    "label wrong size": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label_small"])),
    ),
    "label wrong spacing": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label_spacing"])),
    ),
    "label wrong origin": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label_origin"])),
    ),
    "label classes beyond n_classes": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label_classes"])),
    ),
    "label fractional values": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label_float"])),
    ),
    "label negative values": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label_negative"])),
    ),
    "label NaN values": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label_nan"])),
    ),
    "label 2D": (422, lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["image2d"]))),
    "label unknown kind": (
        422,
        lambda s, u, f: s.put(
            f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label"]), data={"kind": "final"}
        ),
    ),
    "label author too long": (
        422,
        lambda s, u, f: s.put(
            f"{u}/cases/{C0}/label", files=up("l.nrrd", f["label"]), data={"author": "x" * 201}
        ),
    ),
    "label over the size limit": (
        413,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nrrd", f["big"])),
    ),
    "get label of unlabelled case": (404, lambda s, u, f: s.get(f"{u}/cases/{C1}/label")),
    "get label version 99": (404, lambda s, u, f: s.get(f"{u}/cases/{C0}/label", params={"version": 99})),
    "get label version 0": (422, lambda s, u, f: s.get(f"{u}/cases/{C0}/label", params={"version": 0})),
    "get label version text": (422, lambda s, u, f: s.get(f"{u}/cases/{C0}/label", params={"version": "x"})),
    "draft without prediction": (404, lambda s, u, f: s.post(f"{u}/cases/{C1}/label/from-prediction")),
    # --- prediction
    "predict without a model": (409, lambda s, u, f: s.post(f"{u}/cases/{C1}/predict")),
    "predict unknown case": (404, lambda s, u, f: s.post(f"{u}/cases/nope/predict")),
    "next case without a model": (409, lambda s, u, f: s.get(f"{u}/next-case")),
    "prediction not made": (404, lambda s, u, f: s.get(f"{u}/cases/{C1}/prediction")),
    "prediction unknown kind": (422, lambda s, u, f: s.get(f"{u}/cases/{C1}/prediction/probabilities")),
    # --- training
    "train unknown preset": (422, lambda s, u, f: s.post(f"{u}/training", json={"preset": "huge"})),
    "train negative iterations": (422, lambda s, u, f: s.post(f"{u}/training", json={"iterations": -5})),
    "train unknown device": (422, lambda s, u, f: s.post(f"{u}/training", json={"device": "tpu"})),
    "train unknown field": (422, lambda s, u, f: s.post(f"{u}/training", json={"epochs": 3})),
    "train body is a list": (422, lambda s, u, f: s.post(f"{u}/training", json=[1, 2])),
    "train iterations as text": (422, lambda s, u, f: s.post(f"{u}/training", json={"iterations": "many"})),
    "stop with nothing running": (409, lambda s, u, f: s.post(f"{u}/training/stop")),
    "resume with no run": (404, lambda s, u, f: s.post(f"{u}/training/resume", json={})),
    "resume unknown run": (404, lambda s, u, f: s.post(f"{u}/training/resume", json={"run_id": "run-x"})),
    "status of unknown run": (404, lambda s, u, f: s.get(f"{u}/training", params={"run_id": "run-x"})),
    "events since -1": (422, lambda s, u, f: s.get(f"{u}/training/events", params={"since": -1})),
    # --- models
    "export without a model": (409, lambda s, u, f: s.get(f"{u}/models/export")),
    "export unknown round": (404, lambda s, u, f: s.get(f"{u}/models/export", params={"round": 7})),
    "set current unknown round": (404, lambda s, u, f: s.put(f"{u}/models/current", json={"round": 7})),
    "set current round 0": (422, lambda s, u, f: s.put(f"{u}/models/current", json={"round": 0})),
    "import not a zip name": (
        415,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.tar", f["image"])),
    ),
    "import corrupt zip": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["garbage"])),
    ),
    "import zip missing members": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["zip_missing"])),
    ),
    "import zip bad meta": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["zip_badmeta"])),
    ),
    "import zip bad model files": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["zip_badpt"])),
    ),
    "import zip other class count": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["zip_classes"])),
    ),
    # --- protocol
    "unknown endpoint": (404, lambda s, u, f: s.get(f"{u}/no/such/thing")),
    "wrong method": (405, lambda s, u, f: s.patch(f"{u}/cases")),
    "malformed multipart": (
        422,
        lambda s, u, f: s.post(
            f"{u}/cases", data=b"--xx\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=xx"}
        ),
    ),
}


def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 25


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_malformed_request(name: str, svc: Running, files: dict[str, bytes]) -> None:
    expected, make = CATALOGUE[name]
    before = snapshot(svc.workspace)
    cases_before = [c.id for c in svc.client.list_cases()]
    r = make(svc.client.session, svc.client.url, files)
    assert r.status_code == expected, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body.get("detail"), str) and len(body["detail"]) > 5, body
    assert snapshot(svc.workspace) == before
    assert [c.id for c in svc.client.list_cases()] == cases_before
    assert svc.client.health()
    leftovers = list((svc.workspace / "tmp").iterdir())
    assert leftovers == [], leftovers
