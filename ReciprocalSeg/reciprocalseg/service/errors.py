"""The errors the service answers with an HTTP status and a message meant for the user.

Raised anywhere behind the routes (workspace, jobs, models); ``error_handlers`` turns them into
JSON answers ``{"detail": message}`` with their status code.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error the service answers with an HTTP status and a message meant for the user."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(ApiError):
    status_code = 400


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class TooLarge(ApiError):
    status_code = 413


class UnsupportedType(ApiError):
    status_code = 415


class Invalid(ApiError):
    status_code = 422
