"""``reciprocalseg serve``: bind, write the URL file, check the token rules, run uvicorn.

Hook for the command line (``cli.py``)::

    from reciprocalseg.service.server import add_serve_arguments, run_serve
    p = subparsers.add_parser("serve", help="run the local service")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)       # run_serve(args) -> exit code

or call :func:`serve_main` with an argv list.  ``python -m reciprocalseg.service.server`` works too
(the launcher, ``client/local_service.py``, uses it, so it does not depend on the CLI).

Start-up order: check the host/token rules; take the workspace lock (a second service on the same
workspace is refused); open the workspace and resume interrupted training; bind and listen on the
socket; write ``WORKSPACE/.service/url`` atomically; hand the socket to uvicorn.  Launchers poll the
URL file, then ``GET /health``.  Connections made before uvicorn runs wait in the listen backlog.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from reciprocalseg.common.atomic import atomic_write_text
from reciprocalseg.common.service_files import (
    LOCK_FILE,
    PID_FILE,
    SERVICE_DIR,
    TOKEN_FILE,
    URL_FILE,
    ServeError,
    WorkspaceLock,
    write_private,
)

from .lifecycle import ParentWatch, add_stop_route, stale_service_note
from .middleware import LOOPBACK_HOSTS
from .service_log import start_log_file
from .workspace import DEFAULT_MAX_VOXELS, MAX_CLASSES

log = logging.getLogger("reciprocalseg.service")


class _Terminated(BaseException):
    """Raised by our SIGTERM handler so that clean-up (``finally``) runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument("--workspace", required=True, help="workspace folder (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument(
        "--port", type=int, default=0, help="port (0: pick a free one; see WORKSPACE/.service/url)"
    )
    parser.add_argument(
        "--token", default=None, help="require 'Authorization: Bearer TOKEN' on every request"
    )
    parser.add_argument(
        "--token-file", default=None, help="read the token from this file (keep it mode 0600)"
    )
    parser.add_argument(
        "--n-classes",
        type=int,
        default=None,
        help="classes including background, as for `train` (labels 0..N-1); fixes the count "
        "(default: it follows the labels, starting at 2)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest accepted upload (MiB)")
    parser.add_argument(
        "--max-voxels",
        type=int,
        default=DEFAULT_MAX_VOXELS,
        help=f"largest image (voxels), checked from its header before reading (default {DEFAULT_MAX_VOXELS})",
    )
    parser.add_argument(
        "--register-root",
        action="append",
        default=[],
        metavar="FOLDER",
        help="a folder whose files POST /cases/register may read (repeatable; default: none, register off)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this Host header name (repeatable; '*' accepts any; default: loopback names "
        "and the bound address)",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="accept state-changing requests from web pages of this origin, e.g. http://viewer.local:3000",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="default device for training and prediction",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="stop gracefully (checkpointing training) when this process ends (the launcher passes its own)",
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(args: argparse.Namespace) -> str | None:
    """The token from ``--token`` or ``--token-file`` (``ServeError`` if unusable)."""
    token = args.token
    if getattr(args, "token_file", None):
        if token:
            raise ServeError("give either --token or --token-file, not both")
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ServeError(f"cannot read the token file {args.token_file}: {exc}") from None
        if not token:
            raise ServeError(f"the token file {args.token_file} is empty")
        warning = token_file_warning(Path(args.token_file))
        if warning:
            log.warning(warning)
    if token is not None:
        token = token.strip()
        if len(token) < 8:
            raise ServeError(
                "the token is too short: use at least 8 characters (e.g. secrets.token_urlsafe())"
            )
        if any(c.isspace() for c in token) or not token.isprintable():
            raise ServeError("the token must be printable and contain no spaces")
    return token


def token_file_warning(path: Path) -> str | None:
    """A warning when other users may read the token file (the token is the key to the workspace)."""
    if os.name != "posix":
        return None  # Windows: permissions are ACLs, not mode bits
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"the token file {path} can be read by other users of this machine (mode {mode:o}), who could then "
        f"use the service; make it private: chmod 600 {path}"
    )


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token."""
    if not is_loopback(host) and not token:
        raise ServeError(
            f"refusing to listen on {host!r} without a token: anyone who can reach this address could read "
            "and change the workspace. Pass --token or --token-file, or bind to 127.0.0.1."
        )


def check_any_host(allowed: list[str], token: str | None) -> None:
    """Refuse ``--allowed-host '*'`` without a token.

    With every Host accepted, a page that resolves its own name to this machine (DNS rebinding)
    sends an Origin that matches the Host it sends, so the Origin check takes it for the
    service's own page: only a token keeps it out.
    """
    if "*" in allowed and not token:
        raise ServeError(
            "--allowed-host '*' accepts any Host header, so any web page could drive the service through "
            "DNS rebinding; also pass --token or --token-file (or list the names with --allowed-host NAME)"
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen; ``port=0`` picks a free port."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "posix":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def url_for(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host.strip("[]")
    if shown in ("0.0.0.0", "::"):
        shown = "127.0.0.1" if shown == "0.0.0.0" else "::1"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def allowed_hosts(bind_host: str, extra: list[str]) -> tuple[str, ...]:
    """Host header names to accept: the loopback names, the bound address, ``extra``.

    Bound to every interface (``0.0.0.0``/``::``), remote clients reach the service by this
    machine's host name or one of its addresses: those are accepted too. A DNS-rebinding page
    can only send a name of its own, which stays refused.
    """
    hosts = list(LOOPBACK_HOSTS)
    bound = bind_host.strip("[]")
    if bound in ("0.0.0.0", "::", ""):
        hosts += _machine_names()
    else:
        hosts.append(bound)
    return tuple(dict.fromkeys([*hosts, *extra]))


def _machine_names() -> list[str]:
    """This machine's host name and interface addresses (no DNS lookup: it could hang)."""
    import psutil

    names = [socket.gethostname()]
    for addrs in psutil.net_if_addrs().values():
        names += [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
    return [n.lower() for n in names if n]


def register_roots(folders: list[str]) -> tuple[Path, ...]:
    """The ``--register-root`` folders, resolved; ``ServeError`` for one that is not a folder."""
    roots = []
    for folder in folders:
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise ServeError(f"--register-root {folder}: not a folder")
        roots.append(root)
    return tuple(roots)


def _check_options(args: argparse.Namespace) -> None:
    if args.max_upload_mb <= 0:
        raise ServeError("--max-upload-mb must be positive")
    if args.max_voxels <= 0:
        raise ServeError("--max-voxels must be positive")
    if args.n_classes is not None and not 2 <= args.n_classes <= MAX_CLASSES:
        raise ServeError(
            f"--n-classes {args.n_classes}: counts the background too (as for `train`), so 2..{MAX_CLASSES} "
            "(label value 255 marks unannotated voxels)"
        )


def _fail(exc: BaseException) -> int:
    """Report a start-up error in one line (no traceback); the exit code is 2."""
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        text = f"cannot write the workspace{where}: {exc.strerror or exc}"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            text += " (read-only or not yours? use a writable --workspace folder)"
    else:
        text = str(exc)
    print(f"reciprocalseg serve: error: {text}", file=sys.stderr)
    return 2


def run_serve(args: argparse.Namespace) -> int:
    """Run the service until interrupted; returns the process exit code (2 for start-up errors)."""
    import uvicorn

    from .app import Service, ServiceConfig, create_app

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        token = resolve_token(args)
        check_bind(args.host, token)
        check_any_host(args.allowed_host, token)
        _check_options(args)
        roots = register_roots(args.register_root)
        ws_root = Path(args.workspace).expanduser().resolve()
        service_dir = ws_root / SERVICE_DIR
        lock = WorkspaceLock(service_dir / LOCK_FILE)
        lock.acquire()
        start_log_file(ws_root, getattr(logging, args.log_level.upper(), logging.INFO))
        stale = stale_service_note(service_dir / PID_FILE)
        if stale:
            log.warning(stale)
    except (ServeError, OSError) as exc:
        return _fail(exc)
    url_file = service_dir / URL_FILE
    sock: socket.socket | None = None
    service: Any = None
    # uvicorn handles SIGTERM/SIGINT while it runs and re-raises them once it has shut down
    # gracefully; this handler turns that (or a signal during start-up) into a clean exit.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT from the launcher
            signal.signal(signal.SIGBREAK, _on_sigterm)
    try:
        try:
            url_file.unlink(missing_ok=True)
            atomic_write_text(service_dir / PID_FILE, f"{os.getpid()}\n")
            config = ServiceConfig(
                workspace=ws_root,
                n_classes=args.n_classes,
                max_upload_mb=args.max_upload_mb,
                token=token,
                device=args.device,
                allowed_hosts=allowed_hosts(args.host, args.allowed_host),
                allowed_origins=tuple(args.allowed_origin),
                register_roots=roots,
                max_voxels=args.max_voxels,
            )
            service = Service(config)
            _write_token_file(service_dir, token, args.token_file)
            sock = bind_socket(args.host, args.port)
        except (ServeError, OSError) as exc:
            return _fail(exc)
        except Exception as exc:  # unreadable workspace settings and the like
            return _fail(exc)
        url = url_for(sock, args.host)
        service.start()
        app = create_app(service)
        atomic_write_text(url_file, url + "\n")
        log.info("ReciprocalSeg service for %s at %s%s", ws_root, url, " (token required)" if token else "")
        server = uvicorn.Server(
            uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug", lifespan="on")
        )

        def request_stop() -> None:  # the same graceful path as SIGTERM, from any thread
            server.should_exit = True

        add_stop_route(app, request_stop)
        if args.parent_pid is not None:
            ParentWatch(args.parent_pid, request_stop).start()
        server.run(sockets=[sock])
        return 0
    except (_Terminated, KeyboardInterrupt):
        log.info("service stopped")
        return 0
    finally:
        if service is not None and not getattr(service, "closed", True):
            service.close()
        for p in (url_file, service_dir / PID_FILE):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        if sock is not None:
            sock.close()
        lock.release()


def _write_token_file(service_dir: Path, token: str | None, token_file: str | None) -> None:
    token_path = service_dir / TOKEN_FILE
    if token:
        given = Path(token_file).resolve() if token_file else None
        if given != token_path.resolve():
            write_private(token_path, token + "\n")
    else:
        token_path.unlink(missing_ok=True)


def serve_main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) as ``serve`` options and run the service."""
    parser = argparse.ArgumentParser(prog="reciprocalseg serve", description="Run the ReciprocalSeg service.")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve_main())
