"""Kubernetes API answers mapped into the tpi error tree, once, at the client boundary.

The API server answers every failure with a ``Status`` object (``reason``, ``message``,
``code``); its message already names what is wrong in plain words (``secrets is forbidden:
User "ci" cannot create resource "secrets" in API group "" in the namespace "ml"``), so it
is kept whole. A 403 whose message says ``exceeded quota`` is a quota, not a permission.
"""

from __future__ import annotations

import json

from tpi_core import errors

REASONS: dict[str, type[errors.TpiError]] = {
    "NotFound": errors.ResourceNotFound,
    "Forbidden": errors.PermissionDenied,
    "Unauthorized": errors.PermissionDenied,
    "TooManyRequests": errors.TransientError,
    "ServerTimeout": errors.TransientError,
    "Timeout": errors.TransientError,
    "InternalError": errors.TransientError,
    "ServiceUnavailable": errors.TransientError,
    # "the object has been modified": somebody else wrote it first; read again and retry
    "Conflict": errors.TransientError,
    "Invalid": errors.BackendError,
    "BadRequest": errors.BackendError,
}

STATUSES: dict[int, type[errors.TpiError]] = {
    **errors.STATUS_ERRORS, 401: errors.PermissionDenied, 409: errors.TransientError}

QUOTA_MARKS = ("exceeded quota", "quota exceeded", "forbidden: maximum")


def status_message(body: bytes | str) -> tuple[str, str]:
    """``(reason, message)`` of a ``Status`` body; the raw text when it is not one."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text)
    except ValueError:
        return "", text.strip()[:300]
    if not isinstance(doc, dict):
        return "", text.strip()[:300]
    return str(doc.get("reason") or ""), str(doc.get("message") or "").strip()


def translate(status: int, body: bytes | str, what: str = "") -> errors.TpiError:
    """The tpi error for an HTTP status and the API server's ``Status`` body."""
    reason, message = status_message(body)
    cls = _error_class(status, reason, message)
    if status == 401:
        message = "the API server refused the kubeconfig's credentials" + (
            f" ({message})" if message else "")
    prefix = f"{what}: " if what else ""
    return cls(f"{prefix}{message or reason or f'HTTP {status}'}")


def _error_class(status: int, reason: str, message: str) -> type[errors.TpiError]:
    lowered = message.lower()
    if status == 403 and any(mark in lowered for mark in QUOTA_MARKS):
        return errors.QuotaExceeded
    return errors.error_for(reason, status, REASONS, STATUSES)


def connection_error(exc: BaseException, host: str) -> errors.TransientError:
    """A request that never got an answer (refused, reset, timed out)."""
    return errors.TransientError(f"cannot reach the Kubernetes API server at {host}: "
                                 f"{type(exc).__name__}: {exc}".rstrip(": "))
