"""The error tree's helpers: a cloud's answer to an error class, foreign errors mapped once."""

from __future__ import annotations

import pytest

from tpi_core import errors
from tpi_core.errors import (
    BackendError,
    ObjectNotFound,
    PermissionDenied,
    QuotaExceeded,
    ResourceNotFound,
    TransientError,
    error_for,
    map_errors,
)

CODES = {"NoSuchKey": ObjectNotFound, "SlowDown": TransientError, "TooMany": QuotaExceeded}


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NoSuchKey", 404, ObjectNotFound),     # the table wins over the status
    ("TooMany", 400, QuotaExceeded),
    ("Unknown", 403, PermissionDenied), ("", 404, ResourceNotFound),
    ("", 429, TransientError), ("", 500, TransientError), ("", 503, TransientError),
    ("", 400, BackendError), ("", 401, BackendError), ("", 409, BackendError),
    ("Unknown", None, BackendError), ("SlowDown", None, TransientError),
])
def test_error_for_a_code_then_a_status(code, status, expected):
    assert error_for(code, status, CODES) is expected


def test_error_for_takes_a_clouds_own_statuses():
    statuses = {**errors.STATUS_ERRORS, 401: PermissionDenied, 409: TransientError}
    assert error_for("", 401, statuses=statuses) is PermissionDenied
    assert error_for("", 409, statuses=statuses) is TransientError
    assert error_for("", 404) is ResourceNotFound


def test_map_errors_picks_the_most_specific_and_keeps_the_cause():
    mapping = {OSError: TransientError, FileNotFoundError: lambda e: ObjectNotFound("gone")}
    with pytest.raises(ObjectNotFound, match="gone") as caught, map_errors(mapping):
        raise FileNotFoundError("x")
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    with pytest.raises(TransientError, match="reset"), map_errors(mapping):
        raise ConnectionResetError("reset")
    with pytest.raises(KeyError), map_errors(mapping):  # not in the mapping: as it is
        raise KeyError("k")
    with pytest.raises(QuotaExceeded), map_errors({Exception: BackendError}):
        raise QuotaExceeded("already ours: untouched")
