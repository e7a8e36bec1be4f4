"""ASGI middleware that runs before any request is parsed: Host and browser-origin checks, the
token, and the request body size limit.

Why a Host allow-list: a web page can make the browser resolve its own name to 127.0.0.1 (DNS
rebinding) and then talk to a loopback service as "same origin"; the browser still sends the
page's name in ``Host``, which is not one of ours. Why an Origin check: a page on any site can
send a cross-origin form POST (multipart included) without a CORS preflight; browsers mark such
requests with ``Origin`` and ``Sec-Fetch-Site``, which scripts and the Slicer module do not send.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .uploads import too_large_msg

PUBLIC_PATHS = ("/health",)
#: Host names accepted by default: the loopback names.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Methods a browser may send cross-site without consequence; everything else changes state.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: GET endpoints that still change the workspace (they store predictions).
STATE_CHANGING_GETS = ("/next-case",)
CROSS_SITE = ("cross-site", "same-site")
#: Largest body of a request that uploads no file (JSON such as POST /training): they are a few
#: hundred bytes; without this a 1.5 GB JSON body would be parsed in memory (many GB of objects).
JSON_BODY_LIMIT = 64 * 1024
UploadRoutes = tuple[tuple[str, re.Pattern[str], str], ...]  # method, path pattern, path as shown


def upload_routes(routes: Iterable[Any]) -> UploadRoutes:
    """The routes that take a file (a ``File()`` parameter): the upload limit applies to their
    bodies, 64 KiB to every other. Read from the routers' routes (with their full paths), so a new
    upload route is never refused by the small limit."""
    from fastapi import params
    from fastapi.routing import APIRoute

    out = []
    for route in routes:
        if isinstance(route, APIRoute) and any(
            isinstance(f.field_info, params.File) for f in route.dependant.body_params
        ):
            out += [(method, route.path_regex, route.path) for method in sorted(route.methods)]
    return tuple(out)


def is_upload(method: str, path: str, routes: UploadRoutes) -> bool:
    """Whether a request is one of the file uploads (the only bodies allowed to be large)."""
    return any(method == m and pattern.match(path) for m, pattern, _ in routes)


def body_too_large_msg(limit: int, routes: UploadRoutes) -> str:
    where = ", ".join(f"{m} {shown}" for m, _, shown in routes) or "the upload routes"
    return (
        f"request body too large: at most {limit // 1024} KiB for a request without a file "
        f"(files go to {where})"
    )


class _BodyTooLarge(Exception):
    pass


def host_name(host_header: str) -> str:
    """The host part of a ``Host`` header value (no port, no IPv6 brackets), lower case."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class GuardMiddleware:
    """Host allow-list, cross-site refusal, token check and body size limit, in that order."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        max_body: int,
        upload_limit: int,
        allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
        allowed_origins: Iterable[str] = (),
        uploads: UploadRoutes = (),
    ) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.upload_limit = upload_limit
        self.uploads = uploads
        self.allowed_hosts = {host_name(h) for h in allowed_hosts}
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, detail, extra = refusal
            await send_json(send, status, {"detail": detail}, extra=extra)
            return
        await self._limited(scope, receive, send, *self._body_limit(scope))

    def _body_limit(self, scope: Scope) -> tuple[int, str]:
        """The largest body this request may have, and the 413 message past it."""
        if is_upload(scope.get("method", "GET").upper(), scope.get("path", ""), self.uploads):
            return self.max_body, too_large_msg(self.upload_limit)
        limit = min(self.max_body, JSON_BODY_LIMIT)
        return limit, body_too_large_msg(limit, self.uploads)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, list] | None:
        """``(status, message, extra headers)`` when the request must be refused unread."""
        problem = self._host_problem(headers.get("host")) or self._origin_problem(scope, headers)
        if problem is not None:
            return 403, problem, []
        if self.token and scope.get("path") not in PUBLIC_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                msg = "missing token" if not auth else "wrong token"
                return (
                    401,
                    f"{msg}: send the header 'Authorization: Bearer <token>'",
                    [(b"www-authenticate", b"Bearer")],
                )
        length = headers.get("content-length")
        if length is not None:
            limit, message = self._body_limit(scope)
            try:
                too_big = int(length) > limit
            except ValueError:
                return 400, "invalid Content-Length header", []
            if too_big:
                return 413, message, []
        return None

    def _host_problem(self, host: str | None) -> str | None:
        if "*" in self.allowed_hosts:
            return None
        if not host:
            return "missing Host header"
        if host_name(host) in self.allowed_hosts:
            return None
        return (
            f"Host {host_name(host)!r} is not allowed (allowed: {', '.join(sorted(self.allowed_hosts))}); "
            "start the service with --allowed-host NAME to accept it"
        )

    def _origin_problem(self, scope: Scope, headers: dict[str, str]) -> str | None:
        method = scope.get("method", "GET").upper()
        if method in SAFE_METHODS and scope.get("path") not in STATE_CHANGING_GETS:
            return None
        origin = headers.get("origin")
        if origin is not None:
            origin = origin.strip().rstrip("/").lower()
            if origin in self.allowed_origins or _same_origin(origin, headers.get("host", "")):
                return None
            return (
                f"cross-origin request from {origin!r} refused: a web page cannot change this workspace; "
                "start the service with --allowed-origin ORIGIN to accept it"
            )
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site in CROSS_SITE:
            return (
                f"cross-site browser request refused (Sec-Fetch-Site: {site}); "
                "start the service with --allowed-origin ORIGIN to accept requests from a web page"
            )
        return None

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int, too_large: str) -> None:
        """Pass the request on, answering 413 if the body grows past ``limit`` while it streams
        (a chunked body has no Content-Length to refuse it by).

        The body reader may catch the overflow itself (FastAPI turns any error while it parses a
        JSON body into a 400 "error parsing the body"), so the answer the app then sends is
        replaced by the 413 as well.
        """
        received = 0
        exceeded = started = replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the rest of the app's own answer, replaced by the 413
            if exceeded and not started:
                started = replaced = True
                await send_json(send, 413, {"detail": too_large})
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await send_json(send, 413, {"detail": too_large})


def _same_origin(origin: str, host_header: str) -> bool:
    """Whether ``origin`` is this service's own (a page it served, such as /docs)."""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == host_header.strip().lower()


async def send_json(send: Send, status: int, body: dict[str, Any], extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})
