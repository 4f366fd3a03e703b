"""The error tree of tpi.

Every error a user can see is a :class:`TpiError`. Backends translate SDK errors into
this tree once, at the SDK boundary, with :func:`map_errors`; an answer's error code and
HTTP status become an error class through :func:`error_for` and the backend's code table;
nothing else reaches the CLI.

    TpiError                      exit 1 unless stated
    ├── UsageError                exit 2: bad input (tasks.toml, CLI arguments)
    │   ├── ConfigError           tasks.toml: file, task, key, what is allowed
    │   └── FieldError            a backend's check of one task key (made a ConfigError)
    ├── PluginError               exit 2: a backend that is missing or broken
    │   └── BackendNotInstalled   names the `pip install` that fixes it
    ├── TaskNotFound              exit 3: no such task in the index or the cloud
    ├── ReplaceRequired           exit 4: a changed task needs --replace
    ├── BackendError              a cloud said no
    │   ├── PermissionDenied      names the missing permission when the cloud does
    │   ├── QuotaExceeded         a quota or capacity limit
    │   ├── ResourceNotFound      a resource is gone (delete steps treat it as done)
    │   └── TransientError        try again later: throttling, 5xx, connection reset
    └── StorageError              object storage failed
        ├── ObjectNotFound        no object under that key
        ├── UnsafePathError       a key or link that would escape its destination
        └── IntegrityError        downloaded bytes do not match their checksum
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from types import MappingProxyType


class TpiError(Exception):
    """Base of every error tpi reports; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(TpiError):
    """Raised for bad input from the user (arguments, files)."""

    exit_code = 2


class ConfigError(UsageError):
    """Raised by :mod:`tpi_core.config` for a tasks.toml that cannot be used.

    The message is one line: ``FILE[:LINE:COL]: task NAME: key KEY: reason``.
    """

    def __init__(self, file: str, reason: str, *, task: str | None = None,
                 key: str | None = None, line: int | None = None, col: int | None = None):
        self.file, self.task, self.key, self.reason = file, task, key, reason
        self.line, self.col = line, col
        where = file if line is None else f"{file}:{line}:{col}"
        parts = [where]
        if task is not None:
            parts.append(f"task {task!r}")
        if key is not None:
            parts.append(f"key {key!r}")
        super().__init__(": ".join(parts + [reason]))


class FieldError(UsageError):
    """A backend's :meth:`~tpi_core.backend.Backend.validate` refusing one key of a task;
    the core names the file and the task (:func:`tpi_core.config.check_backend`)."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


@contextlib.contextmanager
def field(key: str) -> Iterator[None]:
    """Any :class:`UsageError` raised inside is about the task key ``key``."""
    try:
        yield
    except FieldError:
        raise
    except UsageError as exc:
        raise FieldError(key, str(exc)) from None


def check_fields(values: object, checks: Mapping[str, Callable[[Any], object]]) -> None:
    """Run each check on the attribute it is keyed by (``{"region": region_of, ...}`` on a
    task): a UsageError from one is about that key (:class:`FieldError`)."""
    for key, check in checks.items():
        with field(key):
            check(getattr(values, key))


class PluginError(TpiError):
    """Raised by the registry when a backend cannot be loaded."""

    exit_code = 2


class BackendNotInstalled(PluginError):
    """Raised when a task names a backend whose package is not installed."""


class TaskNotFound(TpiError):
    """Raised when a named task is neither in the local index nor found in the cloud."""

    exit_code = 3


class ReplaceRequired(TpiError):
    """Raised by apply when a task changed and neither --replace nor a confirmation was given."""

    exit_code = 4


class BackendError(TpiError):
    """Raised by a backend when the cloud refuses an operation."""


class PermissionDenied(BackendError):
    """The credentials lack a permission; the message names it when the cloud does."""


class QuotaExceeded(BackendError):
    """A quota or capacity limit of the cloud was hit."""


class ResourceNotFound(BackendError):
    """A resource does not exist; delete steps treat this as already done."""


class TransientError(BackendError):
    """Try again later: throttling, server errors, connection resets."""


class StorageError(TpiError):
    """Raised by storage implementations and the sync engine."""


class ObjectNotFound(StorageError):
    """Raised by :meth:`Storage.read` and :meth:`Storage.download` for a missing key."""


class UnsafePathError(StorageError):
    """A remote key or a link would make a transfer escape its destination."""

    exit_code = 2


class IntegrityError(StorageError):
    """Transferred bytes do not match the checksum they were sent with."""


STATUS_ERRORS: Mapping[int, type[TpiError]] = {
    403: PermissionDenied, 404: ResourceNotFound, 429: TransientError}
"""The error of an HTTP status whose code no table names (any 5xx is a TransientError)."""


def error_for(code: str, status: int | None,
              codes: Mapping[str, type[TpiError]] = MappingProxyType({}),
              statuses: Mapping[int, type[TpiError]] = STATUS_ERRORS) -> type[TpiError]:
    """The error class of a cloud's answer: ``code`` in the backend's table ``codes``
    first, then the HTTP status (``statuses``; 5xx: try again); else :class:`BackendError`
    (also without a status: a request that got no answer is the caller's to name)."""
    if code in codes:
        return codes[code]
    if status is None:
        return BackendError
    if status in statuses:
        return statuses[status]
    return TransientError if status >= 500 else BackendError


ErrorMap = Mapping[type[BaseException], type[TpiError] | Callable[[BaseException], TpiError]]


def unmapped(exc: BaseException, what: str = "",
             transient: tuple[type[BaseException], ...] = ()) -> TpiError:
    """The tpi error for an SDK exception no code table names: a network failure (an
    ``OSError``, or one of the SDK's ``transient`` classes) is transient, the rest a
    :class:`BackendError` that names the exception's class."""
    prefix = f"{what}: " if what else ""
    cls = TransientError if isinstance(exc, (OSError, *transient)) else BackendError
    return cls(f"{prefix}{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def map_errors(mapping: ErrorMap) -> Iterator[None]:
    """Translate foreign exceptions into the tpi tree (httpcore's ``map_exceptions``).

    The most specific matching class wins; a value may be an error class (built from the
    message) or a callable that builds the error. Always raises ``... from exc``.
    """
    try:
        yield
    except TpiError:
        raise
    except Exception as exc:
        target = _most_specific(mapping, exc)
        if target is None:
            raise
        error = target(exc) if not isinstance(target, type) else target(str(exc))
        raise error from exc


def _most_specific(mapping: ErrorMap, exc: BaseException):
    matches = [cls for cls in mapping if isinstance(exc, cls)]
    if not matches:
        return None
    best = min(matches, key=lambda cls: type(exc).__mro__.index(cls))
    return mapping[best]
