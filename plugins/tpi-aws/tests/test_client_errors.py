"""SDK errors are mapped once, in AwsClient, into tpi's tree (no botocore type escapes)."""

from __future__ import annotations

import contextlib

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from tpi_aws.client import AwsClient, error_code
from tpi_core import errors


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_error(code: str, status: int = 400, message: str = "nope") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


class FakeSession:
    """A session whose every operation raises (or returns) what the test says."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.opened: list[str] = []

    def client(self, service, **kwargs):
        self.opened.append(service)
        outcome = self.outcome

        class Client:
            def __getattr__(self, name):
                async def operation(**params):
                    if isinstance(outcome, BaseException):
                        raise outcome
                    return outcome
                return operation

        @contextlib.asynccontextmanager
        async def context():
            yield Client()
        return context()


async def call(outcome, *, ok=(), service="ec2", operation="create_security_group"):
    client = AwsClient("us-west-1", FakeSession(outcome))
    try:
        return await client.call(service, operation, ok=ok)
    finally:
        await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(("code", "status", "expected"), [
    ("UnauthorizedOperation", 403, errors.PermissionDenied),
    ("AccessDenied", 403, errors.PermissionDenied),
    ("VcpuLimitExceeded", 400, errors.QuotaExceeded),
    ("InsufficientInstanceCapacity", 500, errors.QuotaExceeded),
    ("RequestLimitExceeded", 503, errors.TransientError),
    ("DependencyViolation", 400, errors.TransientError),
    ("ParameterNotFound", 400, errors.ResourceNotFound),
    ("InvalidGroup.NotFound", 400, errors.ResourceNotFound),
    ("SomethingNew", 400, errors.BackendError),
    ("SomethingNew", 502, errors.TransientError),
])
async def test_codes_map_into_the_tree(code, status, expected):
    with pytest.raises(expected) as caught:
        await call(client_error(code, status))
    assert type(caught.value) is expected
    assert isinstance(caught.value.__cause__, ClientError)


@pytest.mark.anyio
async def test_permission_errors_name_the_iam_action():
    with pytest.raises(errors.PermissionDenied,
                       match=r"^autoscaling:CreateAutoScalingGroup: AccessDenied: "):
        await call(client_error("AccessDenied", 403), service="autoscaling",
                   operation="create_auto_scaling_group")


@pytest.mark.anyio
async def test_expected_codes_come_back_as_none():
    assert await call(client_error("InvalidGroup.Duplicate"), ok=("InvalidGroup.Duplicate",)) \
        is None
    assert await call({"GroupId": "sg-1"}) == {"GroupId": "sg-1"}


@pytest.mark.anyio
async def test_network_and_credential_failures():
    with pytest.raises(errors.TransientError):
        await call(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(errors.PermissionDenied, match="no AWS credentials"):
        await call(NoCredentialsError())


@pytest.mark.anyio
async def test_clients_open_once_per_service():
    session = FakeSession({})
    client = AwsClient("us-west-1", session)
    for _ in range(3):
        await client.call("ec2", "describe_vpcs")
    await client.call("iam", "get_role")
    await client.aclose()
    await client.aclose()
    assert session.opened == ["ec2", "iam"]


def test_error_code_reads_botocore_errors_only():
    assert error_code(client_error("X")) == "X"
    assert error_code(ValueError("x")) == ""


@pytest.mark.parametrize(("code", "status"), [
    ("NoSuchKey", 404), ("NoSuchBucket", 404), ("AccessDenied", 403), ("SlowDown", 503),
    ("InternalError", 500), ("", 404), ("", 429), ("Weird", 400)])
def test_an_error_answer_maps_as_the_sdk_error_would(code: str, status: int) -> None:
    """The S3 fast path maps an error answer without botocore, by the same table."""
    from tpi_aws._wire import service_error
    from tpi_aws.errors import translate

    body = (f"<Error><Code>{code}</Code><Message>nope</Message></Error>".encode()
            if code else b"")
    ours = service_error(status, "nope", body, "GET x")
    sdk = translate(client_error(code or str(status), status), "GET x")
    assert type(ours) is type(sdk) and str(ours) == str(sdk)
    if code == "NoSuchKey":
        assert isinstance(ours, errors.ObjectNotFound)
