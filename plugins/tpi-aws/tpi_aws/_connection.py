"""The connection of an S3 storage to its bucket: the fast path, and a botocore client.

The fast path (:class:`~tpi_aws._wire.Wire`) carries listings and bodies, and is all a sync
of small files needs. The botocore client (multipart control, batch deletes) is made on
first use: creating it is a real share of a whole ``tpi sync`` of small files
(benchmarks/README.md). With an endpoint configured (an S3-compatible service, an
emulator) the bucket is addressed path-style, by the wire and the client alike, as rclone
does by default; on AWS the bucket URL comes from botocore's endpoint rules, in the
bucket's own region.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote, urlsplit

import anyio

from tpi_aws import _session
from tpi_aws._wire import Wire
from tpi_aws.errors import aws_errors

POOL = 64
"""Connections kept per bucket: the sync engine's jobs plus the parts of large files."""
PART_SLOTS = 16
"""Parts or ranges in flight per connection, over all files (bounds memory: 16 x 8 MiB)."""
_S3_CONFIG = {"request_checksum_calculation": "when_required",
              "response_checksum_validation": "when_required"}


class Connection:
    """The fast path and the client to one bucket, each opened on first use."""

    def __init__(self, bucket: str, region: str | None, endpoint_url: str | None):
        self.bucket, self.region, self.endpoint_url = bucket, region, endpoint_url
        self.slots = anyio.CapacityLimiter(PART_SLOTS)
        self._wire: Wire | None = None
        self._client: Any = None
        self._session: Any = None
        self._path_style = False
        self._stack: AsyncExitStack | None = None
        self._lock = anyio.Lock()

    @property
    def is_open(self) -> bool:
        return self._stack is not None

    async def wire(self) -> Wire:
        """The fast path (opening the connection if needed)."""
        if self._wire is None:
            async with self._lock:
                if self._wire is None:
                    with aws_errors(f"open s3://{self.bucket}"):
                        await self._open()
        assert self._wire is not None
        return self._wire

    async def client(self) -> Any:
        """The botocore client (made on first use)."""
        await self.wire()
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    with aws_errors(f"open s3://{self.bucket}"):
                        self._client = await self._new_client()
        return self._client

    async def _open(self) -> None:
        self._stack = AsyncExitStack()
        try:
            # keys and an endpoint in the environment alone: the fast path without botocore
            # (the client, if ever needed, still comes from botocore's own session)
            env = _session.env_settings(self.region)
            if env is None:
                self._session = _session.new_core_session(self.region)
            endpoint = self.endpoint_url or (
                env.endpoint if env else _session.configured_endpoint(self._session, "s3"))
            if endpoint and _use_path_style(self._session, endpoint):
                self._path_style, self.endpoint_url = True, endpoint
                bucket_url = f"{endpoint.rstrip('/')}/{quote(self.bucket, safe='')}"
                if env:
                    self._wire = self._keep(Wire(bucket_url, env.region, env.credentials,
                                                 pool=POOL, ca_bundle=env.ca_bundle))
                else:
                    self._wire = await self._new_wire(bucket_url,
                                                      _session.region_of(self._session))
            else:
                await self._open_aws()
        except BaseException:
            await self.aclose()
            raise

    async def _open_aws(self) -> None:
        self._client = await self._new_client()
        actual = await _aws_bucket_region(self._client, self.bucket, self.region)
        if actual:  # the bucket lives elsewhere: sign for its region
            await self.aclose()
            self.region = actual
            return await self._open()
        # botocore's endpoint rules pick the bucket's URL (virtual host, FIPS, dual stack...)
        signed = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": "k"}, ExpiresIn=60)
        bucket_url = signed.split("?", 1)[0].removesuffix("/k")
        self._wire = await self._new_wire(bucket_url, self._client.meta.region_name)

    async def _new_wire(self, bucket_url: str, region: str | None) -> Wire:
        return self._keep(Wire(bucket_url, region or "us-east-1",
                               await self._session.get_credentials(), pool=POOL,
                               ca_bundle=self._session.get_config_variable("ca_bundle")))

    def _keep(self, wire: Wire) -> Wire:
        self._stack.push_async_callback(wire.aclose)
        return wire

    async def _new_client(self) -> Any:
        if self._session is None:  # opened from the environment: botocore only now
            self._session = _session.new_core_session(self.region)
        s3 = {"payload_signing_enabled": False}
        if self._path_style:
            s3["addressing_style"] = "path"
        factory = _session.client(self._session, "s3", endpoint_url=self.endpoint_url,
                                  concurrency=POOL, s3=s3, **_S3_CONFIG)
        return await self._stack.enter_async_context(factory)

    async def aclose(self) -> None:
        """Close the pool and the client; the next use opens them again."""
        stack, self._stack, self._wire, self._client = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()


def _use_path_style(session: Any, endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    aws = host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")
    # no session: the environment alone decided, with no config file to ask for a style
    return not aws and (session is None or _session.s3_addressing(session) != "virtual")


async def _aws_bucket_region(client: Any, bucket: str, region: str | None) -> str | None:
    """The bucket's region when it differs from the client's (AWS only: emulators have one)."""
    if region or not (client.meta.endpoint_url or "").endswith(".amazonaws.com"):
        return None
    from botocore.exceptions import ClientError

    try:
        response = await client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        response = exc.response
    actual = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(
        "x-amz-bucket-region")
    return actual if actual and actual != client.meta.region_name else None
