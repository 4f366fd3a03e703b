"""API server answers mapped into the tpi error tree."""

from __future__ import annotations

import json

import pytest

from tpi_core import errors
from tpi_k8s.errors import translate


def status(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"kind": "Status", "code": code, "reason": reason,
                       "message": message}).encode()


@pytest.mark.parametrize(("code", "reason", "message", "expected"), [
    (403, "Forbidden", 'jobs.batch is forbidden: User "ci" cannot create resource "jobs" '
     'in API group "batch" in the namespace "ml"', errors.PermissionDenied),
    (403, "Forbidden", 'persistentvolumeclaims "x" is forbidden: exceeded quota: '
     "storage, requested: requests.storage=10Gi", errors.QuotaExceeded),
    (404, "NotFound", 'jobs.batch "x" not found', errors.ResourceNotFound),
    (409, "Conflict", "the object has been modified", errors.TransientError),
    (429, "TooManyRequests", "slow down", errors.TransientError),
    (500, "InternalError", "etcd", errors.TransientError),
    (503, "ServiceUnavailable", "", errors.TransientError),
    (422, "Invalid", 'Job.batch "x" is invalid: spec.parallelism: Invalid value',
     errors.BackendError),
])
def test_statuses(code, reason, message, expected):
    error = translate(code, status(code, reason, message), "create jobs x")
    assert type(error) is expected
    assert str(error).startswith("create jobs x: ")
    if message:
        assert message in str(error)


def test_unauthorized_names_the_kubeconfig():
    error = translate(401, status(401, "Unauthorized", "Unauthorized"))
    assert isinstance(error, errors.PermissionDenied)
    assert "kubeconfig's credentials" in str(error)


def test_a_body_that_is_not_a_status():
    error = translate(502, b"<html>bad gateway</html>\n", "GET /x")
    assert isinstance(error, errors.TransientError)
    assert "bad gateway" in str(error)
