"""A catalogue of malformed requests and files: each answered 4xx with a message, nothing stored changes."""

from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from service_helpers import Running, snapshot, start_service, write_models

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
    # ITK's NIfTI reader pads a short file with zeros instead of failing.
    for key, source in (("image", phantoms[0].image), ("label", phantoms[0].label)):
        whole = _nrrd_bytes(sitk.ReadImage(str(source)), tmp, f"{key}.nii.gz")
        out[f"{key}_nii_gz_truncated"] = whole[: len(whole) // 2]
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
    out.update(_foreign_data_files(tmp))
    out["bomb"] = _decompression_bomb()
    img = sitk.ReadImage(str(phantoms[0].image), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(img)
    for name, bad in (("image_nan", np.nan), ("image_inf", np.inf)):
        arr = values.copy()
        arr[3, 4, 5] = bad
        poisoned = sitk.GetImageFromArray(arr)
        poisoned.CopyInformation(img)
        out[name] = _nrrd_bytes(poisoned, tmp, f"{name}.nrrd")
    out["bundle_nan"] = _bundle_with_nan_weights(tmp)
    # Inside the register root but reading from outside it: a symlink to an image elsewhere.
    os.symlink(phantoms[1].image, tmp / "link_out.nrrd")
    out["outside_path"] = str(phantoms[1].image).encode()
    out["root"] = str(tmp).encode()
    out.update(_constant_scans(tmp, img))
    (tmp / "good.nrrd").write_bytes(phantoms[1].image.read_bytes())  # registrable, a valid scan
    out["good_path"] = str(tmp / "good.nrrd").encode()
    out.update(_forged_bundles(tmp))
    return out


def _constant_scans(tmp: Path, like: sitk.Image) -> dict[str, bytes]:
    """A scan with one value everywhere (a blank export), as bytes and as a registrable path."""
    blank = sitk.Image(like.GetSize(), sitk.sitkInt16) + 7
    blank.CopyInformation(like)
    data = _nrrd_bytes(blank, tmp, "blank.nrrd")
    return {"image_constant": data, "constant_path": str(tmp / "blank.nrrd").encode()}


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _damaged_member(data: bytes, member: str) -> bytes:
    """The bundle ``data`` deflated again, with the start of ``member``'s compressed data overwritten:
    zlib fails while it inflates ("invalid block type"), not the zip's CRC check."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        data = _zip({n: zf.read(n) for n in zf.namelist()}, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    return data[:start] + bytes([255] * 64) + data[start + 64 :]


def _forged_bundles(tmp: Path) -> dict[str, bytes]:
    """Bundles that pass the old checks (a zip, the members, torch files with finite weights) but
    hold models that cannot work, or unpack to far more than their networks need (issue 23)."""
    import torch

    from reciprocalseg.inference.model_check import network_description

    folder = tmp / "models"
    folder.mkdir()
    files = write_models(folder)
    good = {m: files[m.removesuffix(".pt")].read_bytes() for m in ("teacher.pt", "student.pt")}
    meta = {"format": "reciprocalseg-models", "format_version": 2, "n_classes": 2, "preset": "demo"}

    def bundle(teacher: bytes, meta_json: dict | bytes = meta) -> bytes:
        raw = meta_json if isinstance(meta_json, bytes) else json.dumps(meta_json).encode()
        return _zip({"teacher.pt": teacher, "student.pt": good["student.pt"], "meta.json": raw})

    def forged_teacher(change: Callable[[dict], None]) -> bytes:
        data = torch.load(files["teacher"], weights_only=True)
        change(data)
        path = folder / "forged.pt"
        torch.save(data, path)
        return path.read_bytes()

    def reshape(data: dict) -> None:
        data["state_dict"]["head.weight"] = torch.zeros(2, 2, 1, 1, 1)

    def drop_key(data: dict) -> None:
        del data["state_dict"]["head.bias"]

    def bogus_strides(data: dict) -> None:
        data["meta"]["strides"] = [[3, 3, 3]] * 4

    def three_classes(data: dict) -> None:  # the description and the head of a 3-class network
        data["meta"]["n_classes"] = 3
        data["state_dict"]["head.weight"] = torch.zeros(3, *data["state_dict"]["head.weight"].shape[1:])
        data["state_dict"]["head.bias"] = torch.zeros(3)

    network = {
        "n_classes": 2,
        "n_filters": 1,
        "normalization": "batchnorm",
        "dropout": False,
        "strides": None,
    }
    # 40 MB of zeros deflate to ~40 kB: under the 1 MiB upload limit, far over what width 1 needs.
    bomb = _zip(
        {"teacher.pt": bytes(40 << 20), "student.pt": good["student.pt"], "meta.json": json.dumps(
            {**meta, "network": network}).encode()},
        zipfile.ZIP_DEFLATED,
    )  # fmt: skip
    # Each model file as exported; beside them a member of 40 MB of zeros the import never
    # unpacks: the members summed are over what the networks need.
    own = network_description(torch.load(files["teacher"], weights_only=True)["meta"], "teacher")
    padded = _zip(
        {**good, "meta.json": json.dumps({**meta, "network": own}).encode(), "notes.bin": bytes(40 << 20)},
        zipfile.ZIP_DEFLATED,
    )
    return {
        "bundle_padded": padded,
        "bundle_damaged_deflate": _damaged_member(bundle(good["teacher.pt"]), "teacher.pt"),
        "bundle_version_text": bundle(good["teacher.pt"], {**meta, "format_version": "two"}),
        "bundle_version_99": bundle(good["teacher.pt"], {**meta, "format_version": 99}),
        "bundle_wrong_shape": bundle(forged_teacher(reshape)),
        "bundle_missing_key": bundle(forged_teacher(drop_key)),
        "bundle_bogus_strides": bundle(forged_teacher(bogus_strides)),
        "bundle_three_classes": bundle(forged_teacher(three_classes)),
        "bundle_bomb": bomb,
        "bundle_big_meta": bundle(good["teacher.pt"], json.dumps({**meta, "pad": "x" * 70_000}).encode()),
        "bundle_network_lies": bundle(good["teacher.pt"], {**meta, "network": {**network, "n_filters": 2}}),
    }


def _foreign_data_files(tmp: Path) -> dict[str, bytes]:
    """Headers whose voxels would come from /etc/passwd (the file leak of issue 15)."""
    header = "type: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
    nrrd = f"NRRD0004\n{header}data file: /etc/passwd\n\n".encode()
    nrrd_rel = f"NRRD0004\n{header}data file: ../../../../etc/passwd\n\n".encode()
    mha = (
        b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
        b"ElementDataFile = /etc/passwd\n"
    )
    # The same fields hidden from a naive scan: CR line endings, a header longer than 64 KiB.
    nrrd_cr = nrrd.replace(b"\n", b"\r")
    mha_long = mha.replace(
        b"ElementDataFile", (b"Comment = " + b"x" * 100 + b"\n") * 700 + b"ElementDataFile"
    )
    (tmp / "leak.nrrd").write_bytes(nrrd)
    (tmp / "leak.mha").write_bytes(mha)
    (tmp / "leak.nhdr").write_bytes(nrrd_rel)
    (tmp / "leak_cr.nrrd").write_bytes(nrrd_cr)
    (tmp / "leak_long.mha").write_bytes(mha_long)
    return {
        "nrrd_leak_cr": nrrd_cr,
        "mha_leak_long": mha_long,
        "nrrd_leak_cr_path": str(tmp / "leak_cr.nrrd").encode(),
        "mha_leak_long_path": str(tmp / "leak_long.mha").encode(),
        "nrrd_leak": nrrd,
        "nrrd_leak_rel": nrrd_rel,
        "mha_leak": mha,
        "nrrd_leak_path": str(tmp / "leak.nrrd").encode(),
        "mha_leak_path": str(tmp / "leak.mha").encode(),
        "nhdr_leak_path": str(tmp / "leak.nhdr").encode(),
    }


def _decompression_bomb() -> bytes:
    """A gzip NRRD of ~0.3 MB that declares 640^3 voxels (262 M, over the default limit)."""
    n = 640
    header = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {n} {n} {n}\nencoding: gzip\n\n".encode()
    body = io.BytesIO()
    with gzip.GzipFile(fileobj=body, mode="wb", compresslevel=9) as gz:
        zeros = bytes(n * n)
        for _ in range(n):
            gz.write(zeros)
    return header + body.getvalue()


def _bundle_with_nan_weights(tmp: Path) -> bytes:
    """A well-formed model bundle whose teacher holds NaN weights."""
    import torch

    from reciprocalseg.config import make_config
    from reciprocalseg.model.vnet import VNet
    from reciprocalseg.training.checkpoint import save_model

    config = make_config("demo", n_filters=1)  # small: under the catalogue's 1 MiB upload limit
    paths = {}
    for name in ("teacher", "student"):
        torch.manual_seed(0)
        model = VNet(1, config.n_classes, config.n_filters, config.normalization)
        if name == "teacher":
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        paths[name] = tmp / f"{name}.pt"
        save_model(model, config, paths[name])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(paths["teacher"], "teacher.pt")
        zf.write(paths["student"], "student.pt")
        zf.writestr("meta.json", json.dumps({"format": "reciprocalseg-models"}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, phantoms: list[Case], files: dict[str, bytes]
) -> Iterator[Running]:
    """A service with one labelled and one unlabelled case, a 1 MiB upload limit and one register root."""
    run = start_service(
        tmp_path_factory.mktemp("cat") / "ws",
        device="cpu",
        max_upload_mb=1,
        n_classes=2,  # fixed: background + 1, so a label with value 3 is refused
        extra_args=["--register-root", files["root"].decode()],
    )
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
MAX_ERROR_BYTES = 4096  # an error answer quotes at most an excerpt of what was sent


JSON = {"Content-Type": "application/json"}


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
    "upload truncated nii.gz": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("t.nii.gz", f["image_nii_gz_truncated"])),
    ),
    "label truncated nii.gz": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C0}/label", files=up("l.nii.gz", f["label_nii_gz_truncated"])),
    ),
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
    "upload nrrd with data file /etc/passwd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("leak.nrrd", f["nrrd_leak"])),
    ),
    "upload nrrd with a relative data file": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("leak.nrrd", f["nrrd_leak_rel"])),
    ),
    "upload mha with ElementDataFile /etc/passwd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("leak.mha", f["mha_leak"])),
    ),
    "upload nrrd with CR line endings and data file /etc/passwd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("leak.nrrd", f["nrrd_leak_cr"])),
    ),
    "upload mha with ElementDataFile /etc/passwd after 70 kB of header": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("leak.mha", f["mha_leak_long"])),
    ),
    "register nrrd with CR line endings and data file /etc/passwd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["nrrd_leak_cr_path"].decode()}),
    ),
    "register mha with ElementDataFile /etc/passwd after 70 kB of header": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["mha_leak_long_path"].decode()}),
    ),
    "upload MetaImage header named .nrrd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("leak.nrrd", f["mha_leak"])),
    ),
    "upload .mhd (two-file format)": (
        415,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.mhd", f["mha_leak"])),
    ),
    "upload decompression bomb (640^3 declared)": (
        413,
        lambda s, u, f: s.post(f"{u}/cases", files=up("bomb.nrrd", f["bomb"])),
    ),
    "upload image with a NaN voxel": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("nan.nrrd", f["image_nan"])),
    ),
    "upload image with an inf voxel": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("inf.nrrd", f["image_inf"])),
    ),
    "upload case_id CON (reserved on Windows)": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "CON"}),
    ),
    "upload file named com1.nrrd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("com1.nrrd", f["image"])),
    ),
    "upload case_id lpt9.txt": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "lpt9.txt"}),
    ),
    "upload empty case_id": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("new.nrrd", f["image"]), data={"case_id": ""}),
    ),
    "upload from another web site (Origin)": (
        403,
        lambda s, u, f: s.post(
            f"{u}/cases", files=up("new.nrrd", f["image"]), headers={"Origin": "http://evil.example"}
        ),
    ),
    "upload from another web site (Sec-Fetch-Site)": (
        403,
        lambda s, u, f: s.post(
            f"{u}/cases", files=up("new.nrrd", f["image"]), headers={"Sec-Fetch-Site": "cross-site"}
        ),
    ),
    "upload with Origin null (sandboxed page)": (
        403,
        lambda s, u, f: s.post(f"{u}/cases", files=up("new.nrrd", f["image"]), headers={"Origin": "null"}),
    ),
    "upload with a foreign Host (DNS rebinding)": (
        403,
        lambda s, u, f: s.post(
            f"{u}/cases", files=up("new.nrrd", f["image"]), headers={"Host": "evil.example:8765"}
        ),
    ),
    "read cases with a foreign Host": (
        403,
        lambda s, u, f: s.get(f"{u}/cases", headers={"Host": "attacker.test"}),
    ),
    "next case from another web site": (
        403,
        lambda s, u, f: s.get(f"{u}/next-case", headers={"Origin": "https://evil.example"}),
    ),
    "start training from another web site": (
        403,
        lambda s, u, f: s.post(f"{u}/training", json={}, headers={"Origin": "https://evil.example"}),
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
    "register nrrd with data file /etc/passwd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["nrrd_leak_path"].decode()}),
    ),
    "register mha with ElementDataFile /etc/passwd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["mha_leak_path"].decode()}),
    ),
    "register nhdr with data file ../../etc/passwd": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["nhdr_leak_path"].decode()}),
    ),
    "register existing file outside the roots": (
        404,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["outside_path"].decode()}),
    ),
    "register /etc/passwd": (
        404,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": "/etc/passwd"}),
    ),
    "register symlink leading outside the roots": (
        404,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["root"].decode() + "/link_out.nrrd"}),
    ),
    "register root/../ escape": (
        404,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["root"].decode() + "/../" + "x.nrrd"}),
    ),
    "register empty case_id": (
        422,
        lambda s, u, f: s.post(
            f"{u}/cases/register", json={"path": f["nrrd_leak_path"].decode(), "case_id": ""}
        ),
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
    "label classes beyond a fixed n_classes": (
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
    "label nrrd with data file /etc/passwd": (
        422,
        lambda s, u, f: s.put(f"{u}/cases/{C1}/label", files=up("l.nrrd", f["nrrd_leak"])),
    ),
    "label .nhdr (two-file format)": (
        415,
        lambda s, u, f: s.put(f"{u}/cases/{C1}/label", files=up("l.nhdr", f["nrrd_leak"])),
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
    "import bundle with NaN weights": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_nan"])),
    ),
    "import zip other class count": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["zip_classes"])),
    ),
    # --- issue 23: forged bundles are built, loaded and run before they are stored
    "import bundle with a damaged compressed member": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_damaged_deflate"])),
    ),
    "import bundle with format_version 'two'": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_version_text"])),
    ),
    "import bundle with format_version 99": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_version_99"])),
    ),
    "import bundle with a wrong-shaped tensor": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_wrong_shape"])),
    ),
    "import bundle with a missing tensor": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_missing_key"])),
    ),
    "import bundle with bogus strides": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_bogus_strides"])),
    ),
    "import bundle whose model segments another class count": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_three_classes"])),
    ),
    "import bundle unpacking to 40 MB for a width-1 network": (
        413,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_bomb"])),
    ),
    "import bundle whose members sum to 40 MB for width-1 networks": (
        413,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_padded"])),
    ),
    "import bundle with a 70 kB meta.json": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_big_meta"])),
    ),
    "import bundle whose meta.json names another network": (
        422,
        lambda s, u, f: s.post(f"{u}/models/import", files=up("m.zip", f["bundle_network_lies"])),
    ),
    # --- issue 23: non-finite numbers, class counts, rounds with nothing to train
    "settings n_classes NaN": (
        422,
        lambda s, u, f: s.put(f"{u}/settings", data=b'{"n_classes": NaN}', headers=JSON),
    ),
    "settings n_classes Infinity": (
        422,
        lambda s, u, f: s.put(f"{u}/settings", data=b'{"n_classes": Infinity}', headers=JSON),
    ),
    "settings n_classes 256 (255 marks unannotated voxels)": (
        422,
        lambda s, u, f: s.put(f"{u}/settings", json={"n_classes": 256}),
    ),
    "train minutes Infinity": (
        422,
        lambda s, u, f: s.post(f"{u}/training", data=b'{"minutes": Infinity}', headers=JSON),
    ),
    "train minutes NaN": (
        422,
        lambda s, u, f: s.post(f"{u}/training", data=b'{"minutes": NaN}', headers=JSON),
    ),
    "train with both phases at 0 iterations": (
        422,
        lambda s, u, f: s.post(
            f"{u}/training", json={"preset": "demo", "iterations": 0, "supervised_iterations": 0}
        ),
    ),
    "train minutes with both phases at 0 iterations": (
        422,
        lambda s, u, f: s.post(
            f"{u}/training", json={"minutes": 2, "iterations": 0, "supervised_iterations": 0}
        ),
    ),
    # --- issue 23: case IDs (no control characters or spaces, unique regardless of case)
    "upload case_id ending in a newline": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "abc\n"}),
    ),
    "upload case_id with a tab": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "a\tb"}),
    ),
    "upload case_id with a leading space": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": " abc"}),
    ),
    "upload case_id with a trailing space": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": "abc "}),
    ),
    "upload case_id that differs from a case only in case": (
        409,
        lambda s, u, f: s.post(f"{u}/cases", files=up("a.nrrd", f["image"]), data={"case_id": C0.upper()}),
    ),
    "upload file whose name differs from a case only in case": (
        409,
        lambda s, u, f: s.post(f"{u}/cases", files=up("Phantom_001.nrrd", f["image"])),
    ),
    "register case_id that differs from a case only in case": (
        409,
        lambda s, u, f: s.post(
            f"{u}/cases/register", json={"path": f["good_path"].decode(), "case_id": "Phantom_000"}
        ),
    ),
    "register case_id ending in a newline": (
        422,
        lambda s, u, f: s.post(
            f"{u}/cases/register", json={"path": f["good_path"].decode(), "case_id": "g\n"}
        ),
    ),
    "get case id with a newline": (422, lambda s, u, f: s.get(f"{u}/cases/{C0}%0A")),
    "delete case id with a newline": (422, lambda s, u, f: s.delete(f"{u}/cases/{C0}%0A")),
    # --- issue 23: blank scans, body sizes, short error answers
    "upload a constant scan": (
        422,
        lambda s, u, f: s.post(f"{u}/cases", files=up("blank.nrrd", f["image_constant"])),
    ),
    "register a constant scan": (
        422,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": f["constant_path"].decode()}),
    ),
    "JSON body over 64 KiB": (
        413,
        lambda s, u, f: s.post(f"{u}/training", data=b'{"preset": "' + b"x" * 70_000 + b'"}', headers=JSON),
    ),
    "JSON body over 64 KiB, chunked (no Content-Length)": (
        413,
        lambda s, u, f: s.post(f"{u}/training", data=(b"x" * 8192 for _ in range(10)), headers=JSON),
    ),
    "multipart body over 64 KiB to a route without a file": (
        413,
        lambda s, u, f: s.put(f"{u}/settings", files=up("a.nrrd", f["big"])),
    ),
    "register a 4080-character path (the answer quotes an excerpt)": (
        404,
        lambda s, u, f: s.post(f"{u}/cases/register", json={"path": "/a" * 2040}),
    ),
    "60 kB invalid value (the answer quotes an excerpt)": (
        422,
        lambda s, u, f: s.put(f"{u}/settings", json={"n_classes": "9" * 60_000}),
    ),
    "60 kB of invalid list items (the answer lists a few)": (
        422,
        lambda s, u, f: s.post(f"{u}/training", json=list(range(10_000))),
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
    assert len(CATALOGUE) >= 149  # 113 before issue 23, 148 before its audit


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_malformed_request(name: str, svc: Running, files: dict[str, bytes]) -> None:
    expected, make = CATALOGUE[name]
    before = snapshot(svc.workspace)
    cases_before = [c.id for c in svc.client.list_cases()]
    r = make(svc.client.session, svc.client.url, files)
    assert r.status_code == expected, (r.status_code, r.text[:2000])
    assert len(r.content) <= MAX_ERROR_BYTES, f"a {len(r.content)}-byte answer: {r.text[:300]}"
    body = r.json()
    assert isinstance(body.get("detail"), str) and len(body["detail"]) > 5, body
    assert snapshot(svc.workspace) == before
    assert [c.id for c in svc.client.list_cases()] == cases_before
    assert svc.client.health()
    leftovers = list((svc.workspace / "tmp").iterdir())
    assert leftovers == [], leftovers
