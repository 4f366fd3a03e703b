"""The compute-side AWS APIs (EC2, Auto Scaling, IAM, SSM, STS) on the core's
:class:`~tpi_core.clients.ServiceClients`: aioboto3 clients of one region, botocore's errors
mapped once (:mod:`tpi_aws.errors`), a permission error naming the IAM action to grant.
"""

from __future__ import annotations

from typing import Any

from tpi_aws import _session
from tpi_aws.errors import translate
from tpi_core.clients import ServiceClients
from tpi_core.errors import TpiError

RETRIES = 6
"""botocore's own attempts for throttling and 5xx (control-plane calls are few and cheap)."""


def error_code(exc: BaseException) -> str:
    """The AWS error code of an SDK exception, or ``""``."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class AwsClient(ServiceClients):
    """The clients of one region (``c.call("ec2", "describe_vpcs", ...)``)."""

    def __init__(self, region: str, session: Any = None):
        super().__init__()
        self.region, self._session = region, session

    def open_client(self, service: str) -> Any:
        if self._session is None:
            self._session = _session.new_session(self.region)
        return self._session.client(service, region_name=self.region, config=_session
                                    .client_config(concurrency=4, retries=RETRIES))

    error_code = staticmethod(error_code)

    def translate(self, exc: BaseException, service: str, operation: str) -> TpiError:
        # the IAM action of the call (ec2, create_security_group -> ec2:CreateSecurityGroup)
        action = "".join(part.capitalize() for part in operation.split("_"))
        return translate(exc, f"{service}:{action}")

    async def pages(self, service: str, operation: str, key: str, **params: Any) -> list:
        """Every item under ``key`` of every page of a paginated operation."""
        items: list = []
        try:
            paginator = (await self.client(service)).get_paginator(operation)
            async for page in paginator.paginate(**params):
                items.extend(page.get(key, []))
        except Exception as exc:
            raise self.translate(exc, service, operation) from exc
        return items
