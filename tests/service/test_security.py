"""Issue 15, security: no file leaks through image headers or /cases/register, no browser-driven
requests, no decompression bombs. Real services on loopback, real files."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
import requests
import SimpleITK as sitk
from service_helpers import start_service

from reciprocalseg.common.errors import DataError
from reciprocalseg.data.io import Case, ForeignDataFile, TooManyVoxels, read_image

SECRET = "top-secret-content-0123456789abcdef"


def _secret(tmp_path: Path) -> Path:
    """A file the service's user can read but no client should ever see."""
    p = tmp_path / "secret.txt"
    p.write_text(SECRET * 8)
    return p


def _nrrd_pointing_at(target: Path, n: int = 4) -> bytes:
    return (
        f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {n} {n} {n}\nencoding: raw\ndata file: {target}\n\n"
    ).encode()


def _mha_pointing_at(target: Path, n: int = 4) -> bytes:
    return (
        f"ObjectType = Image\nNDims = 3\nDimSize = {n} {n} {n}\nElementType = MET_UCHAR\n"
        f"ElementDataFile = {target}\n"
    ).encode()


# --------------------------------------------------------------------------- the read path (CLI too)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_read_image_refuses_a_header_naming_another_file(tmp_path: Path, suffix: str) -> None:
    secret = _secret(tmp_path)
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(_nrrd_pointing_at(secret) if suffix == ".nrrd" else _mha_pointing_at(secret))
    field = "data file" if suffix == ".nrrd" else "ElementDataFile"
    with pytest.raises(ForeignDataFile, match=field):
        read_image(path)


def _padded(lines: list[str], comment: str, n: int) -> list[str]:
    """``lines`` with ``n`` long comment lines before the last one (a header longer than 64 KiB)."""
    return lines[:-1] + [comment + "x" * 100] * n + lines[-1:]


def _tricky_headers(target: Path) -> dict[str, bytes]:
    """Headers naming ``target`` that ITK honours but a naive header scan misses."""
    nrrd = [
        "NRRD0004",
        "type: uint8",
        "dimension: 3",
        "sizes: 4 4 4",
        "encoding: raw",
        f"data file: {target}",
    ]
    mha = [
        "ObjectType = Image",
        "NDims = 3",
        "DimSize = 4 4 4",
        "ElementType = MET_UCHAR",
        f"ElementDataFile = {target}",
    ]
    return {
        # teem ends a header line at CR as well as LF (old Mac line endings).
        "nrrd_cr_lines.nrrd": ("\r".join(nrrd) + "\r\r").encode(),
        "nrrd_crlf_lines.nrrd": ("\r\n".join(nrrd) + "\r\n\r\n").encode(),
        # Headers have no length limit in teem or MetaIO; the field may come after 64 KiB.
        "nrrd_long_header.nrrd": ("\n".join(_padded(nrrd, "# ", 700)) + "\n\n").encode(),
        "mha_long_header.mha": ("\n".join(_padded(mha, "Comment = ", 700)) + "\n").encode(),
    }


@pytest.mark.parametrize("name", list(_tricky_headers(Path("/x"))))
def test_read_image_finds_the_data_file_field_in_any_header(tmp_path: Path, name: str) -> None:
    """Line endings and header length do not hide a 'data file' / 'ElementDataFile' field."""
    secret = _secret(tmp_path)
    path = tmp_path / name
    path.write_bytes(_tricky_headers(secret)[name])
    # What ITK itself does with the file: it reads the secret (so the check is what stops it).
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes() == (SECRET * 8).encode()[:64]
    for attached_only in (True, False):
        with pytest.raises(ForeignDataFile):
            read_image(path, attached_only=attached_only)


def test_read_image_refuses_a_header_too_long_to_scan_but_reads_a_long_real_one(
    tmp_path: Path, phantoms: list[Case]
) -> None:
    secret = _secret(tmp_path)
    huge = tmp_path / "huge.mha"  # the field comes after more than 1 MiB of header
    huge.write_bytes(_tricky_headers(secret)["mha_long_header.mha"].replace(b"x" * 100, b"x" * 2000))
    with pytest.raises(DataError, match="header does not end within the first 1 MiB"):
        read_image(huge)
    # A real image with 100 kB of key/value fields (like a segmentation with many segments) reads.
    img = sitk.ReadImage(str(phantoms[0].image))
    for i in range(1000):
        img.SetMetaData(f"Segment{i}_Name", "y" * 80)
    sitk.WriteImage(img, str(tmp_path / "long_fields.nrrd"))
    assert read_image(tmp_path / "long_fields.nrrd").GetSize() == img.GetSize()


def test_read_image_keeps_detached_headers_next_to_their_data(tmp_path: Path, phantoms: list[Case]) -> None:
    """A .nhdr/.mhd naming its own data file by bare name still reads (the CLI's two-file formats)."""
    img = sitk.ReadImage(str(phantoms[0].image))
    for suffix in (".nhdr", ".mhd"):
        sitk.WriteImage(img, str(tmp_path / f"pair{suffix}"))
        back = read_image(tmp_path / f"pair{suffix}")
        assert back.GetSize() == img.GetSize()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.raw").write_bytes(b"\0" * 64)
    (tmp_path / "escape.nhdr").write_bytes(
        b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: sub/x.raw\n\n"
    )
    with pytest.raises(ForeignDataFile, match="outside the header's own folder"):
        read_image(tmp_path / "escape.nhdr")


def test_read_image_refuses_a_data_file_that_links_elsewhere(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "x.raw").symlink_to(secret)
    (folder / "x.nhdr").write_bytes(
        b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: x.raw\n\n"
    )
    with pytest.raises(ForeignDataFile, match="is a link to another folder"):
        read_image(folder / "x.nhdr")


def test_read_image_checks_the_declared_size_before_reading(tmp_path: Path) -> None:
    n = 640
    body = io.BytesIO()
    with gzip.GzipFile(fileobj=body, mode="wb") as gz:
        gz.write(b"\0" * 64)  # far less data than declared: nothing may try to inflate 262 M voxels
    path = tmp_path / "bomb.nrrd"
    header = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {n} {n} {n}\nencoding: gzip\n\n"
    path.write_bytes(header.encode() + body.getvalue())
    with pytest.raises(TooManyVoxels, match="640 x 640 x 640"):
        read_image(path, max_voxels=10**6)


# --------------------------------------------------------------------------- uploads and register


@pytest.fixture
def roots(tmp_path: Path, phantoms: list[Case]) -> dict[str, Path]:
    """A register root holding one good scan, and a folder outside it holding another."""
    inside, outside = tmp_path / "allowed", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (inside / "good.nrrd").write_bytes(phantoms[0].image.read_bytes())
    (outside / "other.nrrd").write_bytes(phantoms[1].image.read_bytes())
    (inside / "leak.nrrd").write_bytes(_nrrd_pointing_at(_secret(tmp_path)))
    return {"inside": inside, "outside": outside}


def test_uploads_and_registered_files_never_read_another_file(tmp_path: Path, roots: dict[str, Path]) -> None:
    run = start_service(tmp_path / "ws", device="cpu", extra_args=["--register-root", str(roots["inside"])])
    try:
        s, u = run.client.session, run.client.url
        secret = tmp_path / "secret.txt"
        for name, data in (("a.nrrd", _nrrd_pointing_at(secret)), ("a.mha", _mha_pointing_at(secret))):
            r = s.post(f"{u}/cases", files={"file": (name, data)})
            assert r.status_code == 422, r.text
            assert ("data file" in r.json()["detail"]) or ("ElementDataFile" in r.json()["detail"])
        r = s.post(f"{u}/cases/register", json={"path": str(roots["inside"] / "leak.nrrd")})
        assert r.status_code == 422 and "data file" in r.json()["detail"], r.text
        linked = roots["inside"] / "series"
        linked.mkdir()
        (linked / "IM0001").symlink_to(secret)  # a "DICOM folder" whose file lives elsewhere
        r = s.post(f"{u}/cases/register", json={"path": str(linked)})
        assert r.status_code == 422 and "links to files outside" in r.json()["detail"], r.text
        assert run.client.list_cases() == []
        for p in (run.workspace / "cases").rglob("*"):
            assert SECRET.encode() not in p.read_bytes() if p.is_file() else True
        # The register root itself works.
        assert run.client.add_case(roots["inside"] / "good.nrrd", upload=False).id == "good"
    finally:
        run.launcher.stop()


def test_register_answers_missing_and_forbidden_alike(tmp_path: Path, roots: dict[str, Path]) -> None:
    run = start_service(tmp_path / "ws", device="cpu", extra_args=["--register-root", str(roots["inside"])])
    try:
        s, u = run.client.session, run.client.url
        answers = []
        for path in (
            roots["outside"] / "other.nrrd",  # exists, outside the root
            roots["outside"] / "none.nrrd",  # missing, outside
            roots["inside"] / "none.nrrd",  # missing, inside
            Path("/etc/passwd"),
        ):
            r = s.post(f"{u}/cases/register", json={"path": str(path)})
            answers.append((r.status_code, r.json()["detail"].replace(str(path), "<path>")))
        assert len(set(answers)) == 1, answers
        assert answers[0][0] == 404 and "registrable folders" in answers[0][1]
    finally:
        run.launcher.stop()


def test_register_is_off_without_a_root(service_no_root: tuple, roots: dict[str, Path]) -> None:
    run = service_no_root[0]
    r = run.client.session.post(
        f"{run.client.url}/cases/register", json={"path": str(roots["inside"] / "good.nrrd")}
    )
    assert r.status_code == 403 and "--register-root" in r.json()["detail"], r.text


@pytest.fixture
def service_no_root(tmp_path: Path):  # noqa: ANN201
    run = start_service(tmp_path / "ws_plain", device="cpu")
    try:
        yield (run,)
    finally:
        run.launcher.stop()


def test_voxel_limit_is_configurable_and_answers_413(tmp_path: Path, phantoms: list[Case]) -> None:
    run = start_service(tmp_path / "ws", device="cpu", extra_args=["--max-voxels", "1000"])
    try:
        r = run.client.session.post(
            f"{run.client.url}/cases", files={"file": ("p.nrrd", phantoms[0].image.read_bytes())}
        )
        assert r.status_code == 413, r.text
        detail = r.json()["detail"]
        assert "32 x 32 x 32" in detail and "--max-voxels" in detail and "p.nrrd" in detail
        assert run.client.list_cases() == []
    finally:
        run.launcher.stop()


# --------------------------------------------------------------------------- browsers


def test_host_and_origin_rules_and_their_options(tmp_path: Path, phantoms: list[Case]) -> None:
    run = start_service(
        tmp_path / "ws",
        device="cpu",
        extra_args=["--allowed-host", "rs.example", "--allowed-origin", "http://viewer.example:3000"],
    )
    try:
        s, u = run.client.session, run.client.url
        port = u.rsplit(":", 1)[1]
        assert s.get(f"{u}/info", headers={"Host": f"rs.example:{port}"}).status_code == 200
        assert s.get(f"{u}/info", headers={"Host": f"localhost:{port}"}).status_code == 200
        r = s.get(f"{u}/info", headers={"Host": f"evil.example:{port}"})
        assert r.status_code == 403 and "--allowed-host" in r.json()["detail"]

        def upload(headers: dict[str, str], name: str) -> requests.Response:
            data = phantoms[0].image.read_bytes()
            return s.post(f"{u}/cases", files={"file": (f"{name}.nrrd", data)}, headers=headers)

        r = upload({"Origin": "http://evil.example"}, "c1")
        assert r.status_code == 403 and "--allowed-origin" in r.json()["detail"], r.text
        assert upload({"Origin": "http://viewer.example:3000"}, "c2").status_code == 201
        assert upload({"Origin": u, "Sec-Fetch-Site": "same-origin"}, "c3").status_code == 201  # e.g. /docs
        assert upload({"Sec-Fetch-Site": "cross-site"}, "c4").status_code == 403
        assert upload({}, "c5").status_code == 201  # scripts and the Slicer module send neither header
        # A cross-site GET only reads (the browser withholds the answer without CORS headers).
        assert s.get(f"{u}/cases", headers={"Origin": "http://evil.example"}).status_code == 200
        assert sorted(c.id for c in run.client.list_cases()) == ["c2", "c3", "c5"]
    finally:
        run.launcher.stop()


def test_any_host_when_asked(tmp_path: Path) -> None:
    run = start_service(tmp_path / "ws", device="cpu", extra_args=["--allowed-host", "*"])
    try:
        r = run.client.session.get(f"{run.client.url}/info", headers={"Host": "whatever.example"})
        assert r.status_code == 200
    finally:
        run.launcher.stop()


def _own_address() -> str | None:
    """A non-loopback address of this machine (the one a remote client would use), if any."""
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return None


def test_a_service_bound_to_all_interfaces_answers_to_the_machine_s_names(tmp_path: Path) -> None:
    """docs/SERVICE.md's remote command (--host 0.0.0.0 with a token) must accept clients that reach
    the machine by its address or host name; other names are still refused (DNS rebinding)."""
    import socket

    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    run = start_service(tmp_path / "ws", device="cpu", host="0.0.0.0")
    try:
        s, port = run.client.session, run.client.url.rsplit(":", 1)[1]
        r = s.get(f"http://{address}:{port}/info")
        assert r.status_code == 200, r.text
        r = s.get(f"http://{address}:{port}/info", headers={"Host": f"{socket.gethostname()}:{port}"})
        assert r.status_code == 200, r.text
        r = s.get(f"http://{address}:{port}/info", headers={"Host": f"evil.example:{port}"})
        assert r.status_code == 403 and "--allowed-host" in r.json()["detail"]
    finally:
        run.launcher.stop()


def test_any_host_needs_a_token(tmp_path: Path) -> None:
    """With every Host accepted, a DNS-rebinding page is "same origin" (its Origin matches the Host
    it sends), so only a token keeps it out: `--allowed-host '*'` without one is refused."""
    import subprocess
    import sys

    from reciprocalseg.common.processes import child_env

    cmd = [sys.executable, "-m", "reciprocalseg.service.server", "--workspace", str(tmp_path / "ws")]
    r = subprocess.run(
        [*cmd, "--allowed-host", "*"], capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert r.returncode == 2 and "--allowed-host '*'" in r.stderr and "--token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
