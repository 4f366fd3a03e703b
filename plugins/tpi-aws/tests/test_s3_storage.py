"""S3Storage against moto server on 127.0.0.1: the storage contract, then what is S3's own."""

from __future__ import annotations

import hashlib
import time
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial

import anyio
import pytest

from tpi_core.testing.emulators import unique_bucket
from tpi_core.testing.faultproxy import FaultProxy
from tpi_aws.storage import S3Storage
from tpi_core.errors import (IntegrityError, PermissionDenied, ResourceNotFound, TpiError,
                             TransientError, UnsafePathError, UsageError)
from tpi_core.registry import open_storage
from tpi_core.storage.sync import download_tree
from tpi_core.sync.retry import RetryPolicy, retrying
from tpi_core.testing.contract import StorageContract

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
MiB = 1 << 20





@pytest.fixture
def proxy(moto_server) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.url, seed=3) as proxy:
        yield proxy


@pytest.fixture
async def via_proxy(bucket, proxy) -> AsyncIterator[S3Storage]:
    async with S3Storage.from_url(f"s3://{bucket}/root", endpoint_url=proxy.url) as storage:
        yield storage


class _Contract(StorageContract):
    async def test_url_opens_the_same_root(self, storage) -> None:
        # the contract's version leaves the second storage open: its aiohttp pool warns
        child = storage.child("via-url")
        await child.write("k", b"same")
        async with type(storage).from_url(child.url) as again:
            assert await again.read("k") == b"same"

    async def test_concurrent_writes_to_one_key_never_mix(self, storage) -> None:
        # moto 5.2.5 answers 500 now and then when PUTs of one key overlap (it closes the
        # replaced object's buffer while the other answer still reads its md5): retried here
        versions = [bytes([i]) * (10_000 + i) for i in range(10)]
        policy = RetryPolicy(attempts=5, base=0.01)
        async with anyio.create_task_group() as group:
            for data in versions:
                group.start_soon(retrying, policy, partial(_write, storage, "same", data))
        assert await storage.read("same") in versions
        assert [info.key async for info in storage.list()] == ["same"]


async def _write(storage: S3Storage, key: str, data: bytes, _moved: object) -> None:
    await storage.write(key, data)


class TestS3Contract(_Contract):
    @pytest.fixture
    async def storage(self, bucket) -> AsyncIterator[S3Storage]:
        async with S3Storage.from_url(f"s3://{bucket}/task/prefix") as storage:
            yield storage


class TestS3ContractAtBucketRoot(_Contract):
    @pytest.fixture
    async def storage(self, bucket) -> AsyncIterator[S3Storage]:
        async with S3Storage.from_url(f"s3://{bucket}") as storage:
            yield storage


# signing ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize(("method", "path", "query", "headers"), [
    ("PUT", "/bucket/dir/a%20b%2Bc.txt", "", {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}),
    ("GET", "/bucket/k", "", {"Range": "bytes=0-9", "If-Match": '"abc"'}),
    ("PUT", "/bucket/big", "partNumber=3&uploadId=a%2Fb~c", {}),
    ("GET", "/bucket", "continuation-token=x%3D&encoding-type=url&list-type=2&prefix=p%2F", {}),
])
def test_signature_matches_botocore(method, path, query, headers, token) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tpi_aws._sigv4 import Signer

    now = 1_790_000_000.0
    ours = Signer("AKIDEXAMPLE", "secret/key", token, "eu-west-3").sign(
        method, "127.0.0.1:9000", path, query, headers, now=now)
    url = f"http://127.0.0.1:9000{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers={
        **headers, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
        "X-Amz-Date": ours["x-amz-date"], **({"X-Amz-Security-Token": token} if token else {})})
    request.context["timestamp"] = ours["x-amz-date"]
    signer = S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key", token), "s3", "eu-west-3")
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert ours["authorization"].endswith(f"Signature={expected}")
    assert f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}," in \
        ours["authorization"]


@pytest.mark.parametrize(("endpoint", "style", "path_style"), [
    ("http://127.0.0.1:9000", None, True),
    ("https://minio.example.org", None, True),
    ("https://s3.eu-west-1.amazonaws.com", None, False),  # AWS: botocore's endpoint rules
    ("http://127.0.0.1:9000", "virtual", False),  # the user asked for virtual hosts
])
def test_configured_endpoints_are_addressed_path_style(endpoint, style, path_style, tmp_path,
                                                       monkeypatch) -> None:
    from tpi_aws import _session
    from tpi_aws._connection import _use_path_style

    config = tmp_path / "config"
    config.write_text("[default]\n" + (f"s3 =\n  addressing_style = {style}\n" if style else ""))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert _use_path_style(_session.new_core_session(), endpoint) is path_style


# URLs and options -----------------------------------------------------------------------


def test_url_round_trip_and_children() -> None:
    storage = S3Storage.from_url("s3://my-bucket/a/b/", region="eu-west-1")
    assert (storage.bucket, storage.prefix) == ("my-bucket", "a/b")
    assert storage.url == "s3://my-bucket/a/b"
    assert storage.child("c/d").url == "s3://my-bucket/a/b/c/d"
    assert S3Storage.from_url("s3://my-bucket").child("x").url == "s3://my-bucket/x"
    assert isinstance(open_storage("s3://my-bucket/p"), S3Storage)  # through the entry point


@pytest.mark.parametrize("url", ["s3://", "gs://bucket/x", "s3:///path"])
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        S3Storage.from_url(url)


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="allowed: region, endpoint_url"):
        S3Storage.from_url("s3://b/p", bogus="1")


def test_child_refuses_escaping_prefix() -> None:
    with pytest.raises(UnsafePathError):
        S3Storage.from_url("s3://b/p").child("../q")


async def test_endpoint_comes_from_the_service_specific_variable(bucket, proxy,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    async with S3Storage.from_url(f"s3://{bucket}/p") as storage:
        await storage.write("k", b"v")
        assert await storage.read("k") == b"v"
    assert proxy.stats["forwarded"] == 2


async def test_missing_credentials_are_permission_denied(bucket, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    async with S3Storage.from_url(f"s3://{bucket}/p") as storage:
        with pytest.raises(PermissionDenied, match="credentials"):
            await storage.read("k")


async def test_a_connection_that_fails_to_open_says_why_each_time(bucket, monkeypatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    async with S3Storage.from_url(f"s3://{bucket}/p") as storage:
        for _ in range(2):
            with pytest.raises(TpiError, match="no-such-profile"):
                await storage.read("k")
        assert not storage._conn.is_open


async def test_missing_bucket_is_resource_not_found(s3_env) -> None:
    async with S3Storage.from_url(f"s3://{unique_bucket('absent')}/p") as storage:
        with pytest.raises(ResourceNotFound, match="NoSuchBucket"):
            await storage.write("k", b"v")
        with pytest.raises(ResourceNotFound):
            [info async for info in storage.list()]


# transfers ------------------------------------------------------------------------------


async def test_small_files_move_in_one_request_each(via_proxy, proxy, tmp_path) -> None:
    source = tmp_path / "small"
    source.write_bytes(os.urandom(4096))
    await via_proxy.upload("s", source)
    await via_proxy.download("s", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == source.read_bytes()
    assert [(m, t.split("?")[0]) for m, t, _ in proxy.log] == [
        ("PUT", f"/{via_proxy.bucket}/root/s"), ("GET", f"/{via_proxy.bucket}/root/s")]


async def test_empty_file_round_trip(via_proxy, tmp_path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    await via_proxy.upload("e", tmp_path / "empty")
    await via_proxy.download("e", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b""


async def test_large_file_goes_in_parts_and_comes_back_in_ranges(via_proxy, proxy, tmp_path,
                                                                  in_parts, in_ranges) -> None:
    data = os.urandom(17 * MiB + 12345)  # three parts of 8 MiB at most
    (tmp_path / "big").write_bytes(data)
    sent: list[int] = []
    await via_proxy.upload("dir/big", tmp_path / "big", sent.append)
    got: list[int] = []
    await via_proxy.download("dir/big", tmp_path / "back", got.append)
    assert (tmp_path / "back").read_bytes() == data
    assert sum(sent) == sum(got) == len(data)
    [info] = [info async for info in via_proxy.list()]
    assert info.key == "dir/big" and info.size == len(data)
    from tpi_aws._multipart import multipart_etag

    parts = [hashlib.md5(data[i:i + 8 * MiB]).hexdigest() for i in range(0, len(data), 8 * MiB)]
    assert info.etag == multipart_etag(parts)  # S3's rule: md5 of the part md5s, "-3"
    methods = [m for m, t, _ in proxy.log if "partNumber=" in t]
    assert methods == ["PUT"] * 3
    gets = [t for m, t, _o in proxy.log if m == "GET" and "list-type" not in t]
    assert len(gets) == 3  # the first 8 MiB, then two ranges of 8 MiB at most


async def test_large_objects_come_back_in_one_stream_after_their_first_mib(
        via_proxy, proxy, tmp_path) -> None:
    data = os.urandom(17 * MiB + 12345)
    (tmp_path / "big").write_bytes(data)
    await via_proxy.upload("big", tmp_path / "big")
    proxy.clear()
    got: list[int] = []
    await via_proxy.download("big", tmp_path / "back", got.append)
    assert (tmp_path / "back").read_bytes() == data
    assert sum(got) == len(data) and len(got) > 2  # progress from the worker thread too
    gets = [(m, t) for m, t, _o in proxy.log]
    assert gets == [("GET", f"/{via_proxy.bucket}/root/big")] * 2  # head, then the rest
    proxy.rate, proxy.kinds = 1.0, ("corrupt",)  # one byte of the rest flipped on the way
    proxy.when = lambda method, target, headers: "bytes=0-" not in headers.get("range", "")
    with pytest.raises(IntegrityError, match="does not match"):
        await via_proxy.download("big", tmp_path / "bad")


async def test_a_large_object_just_listed_comes_whole_in_one_get(s3, via_proxy, proxy,
                                                                 tmp_path) -> None:
    data = os.urandom(9 * MiB + 5)
    s3.put_object(Bucket=via_proxy.bucket, Key="root/big", Body=data)  # ETag: the md5
    seen: list[dict[str, str]] = []
    proxy.when = lambda method, target, headers: seen.append(headers) or False
    [info] = [info async for info in via_proxy.list()]
    proxy.clear()
    got: list[int] = []
    await via_proxy.download("big", tmp_path / "back", got.append)
    assert (tmp_path / "back").read_bytes() == data and sum(got) == len(data)
    assert [(m, t) for m, t, _o in proxy.log] == [("GET", f"/{via_proxy.bucket}/root/big")]
    assert seen[-1]["range"] == "bytes=0-" and seen[-1]["if-match"] == f'"{info.etag}"'

    proxy.clear()  # what the listing said is used once: the next download asks first
    await via_proxy.download("big", tmp_path / "again")
    assert (tmp_path / "again").read_bytes() == data and len(proxy.log) == 2

    [_info] = [info async for info in via_proxy.list()]
    new = os.urandom(9 * MiB)
    (tmp_path / "new").write_bytes(new)
    await via_proxy.upload("big", tmp_path / "new")  # this storage's own write: forgotten
    proxy.clear()
    await via_proxy.download("big", tmp_path / "new-back")
    assert (tmp_path / "new-back").read_bytes() == new and len(proxy.log) == 2  # no 412

    [_info] = [info async for info in via_proxy.list()]
    proxy.rate, proxy.kinds, proxy.when = 1.0, ("corrupt",), None
    with pytest.raises(IntegrityError, match="does not match"):
        await via_proxy.download("big", tmp_path / "bad")


def _put_in_parts(s3, bucket: str, key: str, data: bytes, part: int = 5 * MiB) -> str:
    """Store ``data`` as a multipart upload (as the AWS CLI does above 8 MiB): its ETag is
    then no md5 of the bytes. Returns the ETag."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [{"PartNumber": n + 1, "ETag": s3.upload_part(
        Bucket=bucket, Key=key, UploadId=upload, PartNumber=n + 1,
        Body=data[offset:offset + part])["ETag"]}
        for n, offset in enumerate(range(0, len(data), part))]
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                        MultipartUpload={"Parts": parts})["ETag"].strip('"')


async def test_objects_uploaded_in_parts_come_back_unhashed(s3, via_proxy, tmp_path,
                                                            monkeypatch) -> None:
    # their ETag is no md5 of the bytes: an md5 could be compared with nothing, and costs
    # 0.3 s of CPU per 200 MB
    made: list[object] = []
    real_md5 = hashlib.md5

    def md5(*args, **kwargs):
        made.append(args)
        return real_md5(*args, **kwargs)

    objects = {"listed": os.urandom(9 * MiB + 3), "rest": os.urandom(9 * MiB + 5),
               "streamed": os.urandom(6 * MiB + 7)}
    for key, data in objects.items():
        assert "-" in _put_in_parts(s3, via_proxy.bucket, f"root/{key}", data)
    s3.put_object(Bucket=via_proxy.bucket, Key="root/plain", Body=objects["rest"])
    assert len([info async for info in via_proxy.list()]) == 4  # "listed" then comes in one GET
    monkeypatch.setattr(hashlib, "md5", md5)
    for key, data in objects.items():
        await via_proxy.download(key, tmp_path / key)  # the listed one, then two unlisted
        assert (tmp_path / key).read_bytes() == data
    assert made == []
    await via_proxy.download("plain", tmp_path / "plain")  # a single part's md5 is checked
    assert (tmp_path / "plain").read_bytes() == objects["rest"] and len(made) == 1


async def test_a_large_object_replaced_since_its_listing_is_fetched_again(s3, via_proxy,
                                                                          tmp_path) -> None:
    old, new = os.urandom(9 * MiB), os.urandom(10 * MiB)
    s3.put_object(Bucket=via_proxy.bucket, Key="root/big", Body=old)
    await download_tree(via_proxy, tmp_path / "before")  # lists, then downloads
    assert (tmp_path / "before" / "big").read_bytes() == old
    [_info] = [info async for info in via_proxy.list()]
    s3.put_object(Bucket=via_proxy.bucket, Key="root/big", Body=new)
    with pytest.raises(TransientError, match="PreconditionFailed"):  # If-Match: the listing's
        await via_proxy.download("big", tmp_path / "stale")
    await via_proxy.download("big", tmp_path / "fresh")  # the retry asks first
    assert (tmp_path / "fresh").read_bytes() == new


async def test_the_rest_of_an_object_replaced_since_its_head_is_refused(s3, via_proxy,
                                                                        tmp_path) -> None:
    from tpi_core.transport.download import fetch_rest

    data = os.urandom(3 * MiB)
    s3.put_object(Bucket=via_proxy.bucket, Key="root/obj", Body=data)
    wire, md5 = await via_proxy._conn.wire(), hashlib.md5(data).hexdigest()
    for name in ("ok", "x"):
        (tmp_path / name).write_bytes(data[:MiB])  # the head, already there
    await fetch_rest(wire, "root/obj", tmp_path / "ok", MiB, len(data), md5,
                     hashlib.md5(data[:MiB]), None)
    assert (tmp_path / "ok").read_bytes() == data
    with pytest.raises(TransientError, match="PreconditionFailed"):  # If-Match: another ETag
        await fetch_rest(wire, "root/obj", tmp_path / "x", MiB, len(data), "0" * 32,
                         hashlib.md5(data[:MiB]), None)


async def test_empty_objects_have_no_first_byte_and_still_come_back(s3, via_proxy, proxy,
                                                                    tmp_path) -> None:
    from tpi_aws._connection import POOL

    for index in range(POOL + 16):  # more at once than connections: none may wait on two
        s3.put_object(Bucket=via_proxy.bucket, Key=f"root/empty/{index}", Body=b"")
    with anyio.fail_after(30):
        await download_tree(via_proxy.child("empty"), tmp_path / "got", jobs=POOL + 16)
    assert sorted(p.read_bytes() for p in (tmp_path / "got").iterdir()) == [b""] * (POOL + 16)
    gets = [t for m, t, _o in proxy.log if m == "GET" and "list-type" not in t]
    assert len(gets) == 2 * (POOL + 16)  # moto answers 416 to a range of an empty object


async def test_files_up_to_the_cutoff_go_in_one_streamed_put(via_proxy, proxy,
                                                             tmp_path) -> None:
    data = os.urandom(9 * MiB + 4321)  # above one request's 8 MiB, below STREAM_MAX
    (tmp_path / "big").write_bytes(data)
    sent: list[int] = []
    md5 = await via_proxy.upload("big", tmp_path / "big", sent.append)
    assert md5 == hashlib.md5(data).hexdigest()  # hashed while sent, for the caller
    assert sum(sent) == len(data) and len(sent) > 1  # progress as the chunks go
    assert [(m, t) for m, t, _o in proxy.log] == [("PUT", f"/{via_proxy.bucket}/root/big")]
    [info] = [info async for info in via_proxy.list()]
    assert info.etag == md5
    assert via_proxy._conn._client is None  # no multipart control: no botocore client


async def test_a_damaged_streamed_put_is_an_integrity_error(via_proxy, proxy,
                                                           tmp_path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(9 * MiB))
    proxy.rate, proxy.kinds = 1.0, ("corrupt",)  # moto ignores nothing here: no Content-MD5
    with pytest.raises(IntegrityError, match="does not match"):
        await via_proxy.upload("big", tmp_path / "big")


async def test_a_file_that_shrinks_while_it_streams_is_a_transient_error(
        via_proxy, tmp_path, monkeypatch) -> None:
    from tpi_core.storage import objects

    path = tmp_path / "big"
    path.write_bytes(os.urandom(9 * MiB))
    monkeypatch.setattr(objects, "read_upload",  # the size taken before it shrank
                        partial(_sized, 10 * MiB))
    with pytest.raises(TransientError, match="announced"):
        await via_proxy.upload("big", path)
    assert [info async for info in via_proxy.list()] == []


async def _sized(size: int, _path) -> tuple[int, None, None]:
    return size, None, None


class _CompletedEarlier:
    """A botocore client double: the upload was completed by an attempt whose answer was
    lost, so completing again says NoSuchUpload; head_object shows what is stored."""

    def __init__(self, stored_etag: str):
        self.stored_etag = stored_etag

    async def complete_multipart_upload(self, **params):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "NoSuchUpload", "Message": "gone"},
                           "ResponseMetadata": {"HTTPStatusCode": 404}}, "Complete")

    async def head_object(self, **params):
        return {"ETag": f'"{self.stored_etag}"'}


@pytest.mark.parametrize("same", [True, False])
async def test_complete_after_a_lost_answer_checks_what_is_stored(same) -> None:
    from tpi_aws import _multipart

    etags = ['"' + hashlib.md5(bytes([i])).hexdigest() + '"' for i in range(3)]
    expected = _multipart.multipart_etag(etags)
    assert expected.endswith("-3")
    client = _CompletedEarlier(expected if same else "0" * 32 + "-3")
    target = _multipart.Target(client, None, "b", "k", anyio.CapacityLimiter(1))
    if same:
        await _multipart._complete(target, "upload-id", etags)
    else:
        with pytest.raises(TransientError, match="the object is not it"):
            await _multipart._complete(target, "upload-id", etags)


async def test_large_single_part_object_is_checked_after_ranged_download(
        s3, via_proxy, proxy, tmp_path) -> None:
    data = os.urandom(9 * MiB)
    s3.put_object(Bucket=via_proxy.bucket, Key="root/one", Body=data)  # ETag is the md5
    await via_proxy.download("one", tmp_path / "ok")
    assert (tmp_path / "ok").read_bytes() == data
    proxy.rate, proxy.kinds = 1.0, ("corrupt",)
    with pytest.raises(IntegrityError, match="does not match"):
        await via_proxy.download("one", tmp_path / "bad")


async def test_mid_sized_objects_stream_to_the_file_and_are_checked(s3, via_proxy, proxy,
                                                                    tmp_path) -> None:
    data = os.urandom(5 * MiB + 7)  # above what is held in memory, below ranged downloads
    s3.put_object(Bucket=via_proxy.bucket, Key="root/mid", Body=data)
    got: list[int] = []
    await via_proxy.download("mid", tmp_path / "ok", got.append)
    assert (tmp_path / "ok").read_bytes() == data
    assert sum(got) == len(data) and len(got) > 1  # progress as it is written
    proxy.rate, proxy.kinds = 1.0, ("corrupt",)
    with pytest.raises(IntegrityError, match="does not match"):
        await via_proxy.download("mid", tmp_path / "bad")


async def test_damaged_bodies_are_integrity_errors(via_proxy, proxy) -> None:
    await via_proxy.write("k", b"original bytes")
    proxy.rate, proxy.kinds = 1.0, ("corrupt",)
    with pytest.raises(IntegrityError):
        await via_proxy.read("k")
    with pytest.raises(IntegrityError):  # moto ignores Content-MD5; the ETag gives it away
        await via_proxy.write("k2", b"sent bytes")


@pytest.mark.parametrize("kind", ["slowdown", "internal", "reset", "cut"])
async def test_faults_are_transient_errors(via_proxy, proxy, kind, tmp_path) -> None:
    await via_proxy.write("k", b"v" * 1000)
    proxy.rate, proxy.kinds = 1.0, (kind,)
    with pytest.raises(TransientError):
        await via_proxy.read("k")
    with pytest.raises(TransientError):
        await via_proxy.download("k", tmp_path / "k")
    with pytest.raises(TransientError):  # after a cut the PUT was stored, the answer lost
        await via_proxy.write("k", b"w")


async def test_list_is_one_request_per_page_with_relative_keys_and_plain_etags(
        s3, bucket) -> None:
    s3.put_object(Bucket=bucket, Key="root/a/b", Body=b"hello")
    s3.put_object(Bucket=bucket, Key="root/folder/", Body=b"")  # console folder marker
    s3.put_object(Bucket=bucket, Key="rootless", Body=b"x")
    async with S3Storage.from_url(f"s3://{bucket}/root") as storage:
        listed = [info async for info in storage.list()]
    assert [(i.key, i.size) for i in listed] == [("a/b", 5)]
    assert listed[0].etag == hashlib.md5(b"hello").hexdigest()
    assert listed[0].mtime and listed[0].mtime > 1e9


async def test_a_listing_starts_after_a_key_and_a_sync_reads_it_in_ranges(
        s3, via_proxy, proxy, monkeypatch) -> None:
    from tpi_core.sync import listing

    keys = [f"k{i:04d}" for i in range(450)]
    for key in keys:
        s3.put_object(Bucket=via_proxy.bucket, Key=f"root/{key}", Body=b"x")
    assert [info.key async for info in via_proxy.list(start_after="k0439")] == keys[440:]
    monkeypatch.setattr(listing, "LIST_PAGE", 100)  # ranges of 90 keys, to need few objects

    async def bounds() -> list[str]:
        return listing.every_page(iter(keys), "")

    proxy.clear()
    found = await listing.list_remote(via_proxy, "", RetryPolicy(), bounds=bounds)
    with found:
        assert [key for key, _obj in found] == keys
    targets = [target for _m, target, _o in proxy.log]
    assert len(targets) == 6 and all("list-type=2" in target for target in targets)
    assert sorted(t.split("start-after=")[1] for t in targets if "start-after=" in t) == [
        f"root%2Fk{n:04d}" for n in (89, 179, 269, 359, 449)]


async def test_keys_with_spaces_plus_percent_and_unicode_round_trip(via_proxy, tmp_path):
    keys = ["a b+c%20d/ü é.txt", "sym/~!$&'()*,;=@.bin", "x/%2F.txt"]
    for key in keys:
        await via_proxy.write(key, key.encode())
    assert sorted([info.key async for info in via_proxy.list()]) == sorted(keys)
    for key in keys:
        assert await via_proxy.read(key) == key.encode()
        await via_proxy.download(key, tmp_path / "k")
        assert (tmp_path / "k").read_bytes() == key.encode()


async def test_hostile_keys_are_listed_refused_for_transfer_and_deletable(
        s3, bucket, tmp_path) -> None:
    for key in ("root/../x", "root//etc/x", "root/ok"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    async with S3Storage.from_url(f"s3://{bucket}/root") as storage:
        keys = sorted([info.key async for info in storage.list()])
        assert keys == ["../x", "/etc/x", "ok"]
        for key in ("../x", "/etc/x"):
            with pytest.raises(UnsafePathError):
                await storage.download(key, tmp_path / "x")
            with pytest.raises(UnsafePathError):
                await storage.read(key)
        assert await storage.delete_prefix() == 3
    assert not (tmp_path / "x").exists()
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


async def test_delete_goes_in_batches_of_1000(via_proxy, proxy) -> None:
    await via_proxy.write("kept", b"1")
    await via_proxy.write("gone", b"1")
    await via_proxy.delete(["gone"] + [f"missing-{i}" for i in range(2500)])
    assert [info.key async for info in via_proxy.list()] == ["kept"]
    assert sum(1 for m, t, _o in proxy.log if m == "POST" and "delete" in t) == 3


async def test_children_share_one_connection_that_only_the_parent_closes(bucket) -> None:
    parent = S3Storage.from_url(f"s3://{bucket}/p")
    child = parent.child("c")
    await child.write("k", b"v")
    assert child._conn is parent._conn and parent._conn.is_open
    await child.aclose()
    assert parent._conn.is_open and await parent.read("c/k") == b"v"
    await parent.aclose()
    assert not parent._conn.is_open
    assert await child.read("k") == b"v"  # reopened on use
    await parent.aclose()
    assert not parent._conn.is_open


async def test_small_files_need_no_botocore_client(via_proxy, tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    await via_proxy.upload("f", tmp_path / "f")
    await via_proxy.download("f", tmp_path / "g")
    assert [info.key async for info in via_proxy.list()] == ["f"]
    assert via_proxy._conn._client is None  # made only for multipart and batch deletes
    await via_proxy.delete(["f"])
    assert via_proxy._conn._client is not None


# the tpi command ------------------------------------------------------------------------


def _tpi(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tpi_core", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_tpi_sync_to_s3_and_back_then_nothing_to_send(bucket, s3, tmp_path) -> None:
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "a.txt").write_text("alpha")
    (source / "b.bin").write_bytes(os.urandom(9 * MiB))  # multipart
    first = _tpi("sync", "--json", str(source), f"s3://{bucket}/w")
    assert first.returncode == 0, first.stderr
    again = _tpi("sync", "--json", str(source), f"s3://{bucket}/w")
    assert again.returncode == 0 and json.loads(again.stdout)["sent"] == 0
    back = _tpi("sync", f"s3://{bucket}/w", str(tmp_path / "back"))
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "back" / "d" / "a.txt").read_text() == "alpha"
    assert (tmp_path / "back" / "b.bin").read_bytes() == (source / "b.bin").read_bytes()


def test_tpi_sync_to_a_missing_bucket_is_one_line_not_a_traceback(s3_env, tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    done = _tpi("sync", str(tmp_path), f"s3://{unique_bucket('absent')}/p")
    assert done.returncode == 1
    assert done.stderr.startswith("tpi: error: ") and "NoSuchBucket" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.anyio
async def test_an_empty_object_answered_206_with_a_missing_byte_does_not_stall(
        tmp_path, monkeypatch) -> None:
    """s3rver answers ``Range: bytes=0-...`` of an empty object with 206,
    ``Content-Range: bytes 0-0/0`` and ``Content-Length: 1``, and sends no body: a client
    that waits for the byte stalls until its read timeout (60 s a file)."""
    import http.server
    import threading

    import anyio

    from tpi_aws.storage import S3Storage

    class Stalling(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(206)
            self.send_header("Content-Range", "bytes 0-0/0")
            self.send_header("Content-Length", "1")
            self.send_header("ETag", f'"{hashlib.md5(b"").hexdigest()}"')
            self.end_headers()
            self.wfile.flush()
            time.sleep(30)  # the promised byte never comes

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
                        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    try:
        async with S3Storage.from_url("s3://bucket/p", region="us-east-1") as storage:
            with anyio.fail_after(10):
                await storage.download("empty.txt", tmp_path / "empty.txt")
        assert (tmp_path / "empty.txt").read_bytes() == b""
    finally:
        server.shutdown()
        server.server_close()
