"""Binding and token rules, the workspace lock, and the client's connection errors."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from service_helpers import start_service

from reciprocalseg.client import Client, ServiceError
from reciprocalseg.common.processes import child_env
from reciprocalseg.service.server import check_bind, is_loopback


def serve(workspace: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "reciprocalseg.service.server", "--workspace", str(workspace), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def wait_url(workspace: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    url_file = workspace / ".service" / "url"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if url_file.exists():
            return url_file.read_text().strip()
        time.sleep(0.05)
    raise AssertionError("no url file")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_loopback_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a-long-token")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_non_loopback_without_token_is_refused(tmp_path: Path, host: str) -> None:
    proc = serve(tmp_path / "ws", "--host", host)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "refusing to listen" in err and "--token" in err
    assert not (tmp_path / "ws" / ".service" / "url").exists()


def test_short_token_is_refused(tmp_path: Path) -> None:
    proc = serve(tmp_path / "ws", "--token", "abc")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "too short" in err


def test_non_loopback_with_token(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    proc = serve(ws, "--host", "0.0.0.0", "--token", "s3cret-token-123")
    try:
        url = wait_url(ws, proc)
        assert url.startswith("http://127.0.0.1:")
        ok = False
        for _ in range(100):
            try:
                r = requests.get(url + "/info", timeout=5)
                ok = True
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert ok and r.status_code == 401
        assert (
            requests.get(url + "/info", headers={"Authorization": "Bearer s3cret-token-123"}).status_code
            == 200
        )
        # the token is kept for Client(workspace=...), readable by the user only
        token_file = ws / ".service" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert Client(workspace=ws).info().auth
    finally:
        stop(proc)
    assert not (ws / ".service" / "url").exists()


def test_tokens_and_lock(tmp_path: Path) -> None:
    run = start_service(tmp_path / "ws")
    try:
        url = run.client.url
        token_file = run.workspace / ".service" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert run.client.token not in " ".join(run.launcher.command(token_file))  # not on the command line
        # no token, wrong token, wrong scheme: 401 with a message
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {run.client.token}"},
        ):
            r = requests.get(url + "/cases", headers=headers, timeout=10)
            assert r.status_code == 401 and "token" in r.json()["detail"]
            assert r.headers.get("www-authenticate") == "Bearer"
        r = requests.post(url + "/cases", files={"file": ("a.nrrd", b"x")}, timeout=10)
        assert r.status_code == 401
        assert requests.get(url + "/openapi.json", timeout=10).status_code == 401
        # right token
        ok = requests.get(url + "/cases", headers={"Authorization": f"Bearer {run.client.token}"}, timeout=10)
        assert ok.status_code == 200 and ok.json() == {"cases": []}
        schema = requests.get(url + "/openapi.json", headers={"Authorization": f"Bearer {run.client.token}"})
        assert schema.status_code == 200 and "/cases/{case_id}/label" in schema.json()["paths"]
        assert requests.get(url + "/health", timeout=10).status_code == 200  # liveness needs no token
        # Client(workspace=...) finds URL and token; a wrong token raises ServiceError 401
        assert Client(workspace=run.workspace).list_cases() == []
        with pytest.raises(ServiceError) as err:
            Client(url, token="wrong-token").list_cases()
        assert err.value.status_code == 401 and "token" in err.value.message
        # a second service on the same workspace is refused
        proc = serve(run.workspace, "--token", "another-token-1")
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "already using the workspace" in stderr
        assert run.client.health()
    finally:
        run.launcher.stop()
    assert not run.launcher.running


def test_client_connection_error() -> None:
    with pytest.raises(ServiceError) as err:
        Client("http://127.0.0.1:9", timeout=5).info()
    assert err.value.status_code == 0 and "http://127.0.0.1:9" in err.value.message


def test_client_without_service(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as err:
        Client(workspace=tmp_path)
    assert "no running service" in err.value.message
