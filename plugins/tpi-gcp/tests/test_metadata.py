"""GceMetadata, the agent's client of the GCE metadata server, against a fake one on
127.0.0.1 (``fake_metadata.py``: 403 without ``Metadata-Flavor: Google``, a blocking
``wait_for_change``)."""

from __future__ import annotations

import importlib.util
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from tpi_gcp import auth
from tpi_gcp.metadata import GceMetadata
from tpi_gcp.resources import SCOPE

from tpi_core.errors import PermissionDenied, TransientError
from tpi_core.testing.emulators import free_port


def _fakes():
    spec = importlib.util.spec_from_file_location(
        "tpi_gcp_fake_metadata", Path(__file__).with_name("fake_metadata.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _fakes()
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server():
    with fakes.FakeMetadata() as fake:
        yield fake


@pytest.fixture
async def client(server, monkeypatch):
    """The client as the agent makes it: the server from ``GCE_METADATA_HOST``."""
    monkeypatch.setenv("GCE_METADATA_HOST", server.host)
    metadata = GceMetadata()
    yield metadata
    await metadata.aclose()


def paths(server) -> list[str]:
    return [p for _m, p, _h, _b in server.requests]


async def test_instance_zone_and_group(client, server):
    assert client.endpoint == server.url
    assert await client.instance_name() == fakes.INSTANCE
    assert await client.zone() == fakes.ZONE
    assert await client.created_by() == (
        f"projects/{fakes.PROJECT_NUMBER}/regions/{fakes.REGION}"
        f"/instanceGroupManagers/{fakes.GROUP}")
    assert paths(server) == ["/computeMetadata/v1/instance/name",
                             "/computeMetadata/v1/instance/zone",
                             "/computeMetadata/v1/instance/attributes/created-by"]


async def test_every_request_has_the_flavor_header(client, server):
    await client.instance_name()
    await client.token()
    await client.preempted()
    assert server.requests
    assert all(h.get("metadata-flavor") == "Google" for _m, _p, h, _b in server.requests)


def test_the_fake_answers_403_without_the_header(server):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "/computeMetadata/v1/instance/name", timeout=5)
    err.value.close()
    assert err.value.code == 403
    request = urllib.request.Request(server.url + "/computeMetadata/v1/instance/name",
                                     headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.read().decode() == fakes.INSTANCE


async def test_a_missing_item_is_none(client, server):
    del server.values["instance/attributes/created-by"]  # not made by a MIG
    assert await client.created_by() is None
    assert await client.get("instance/attributes/no-such-key") is None
    del server.values["instance/name"]
    with pytest.raises(TransientError, match="instance/name: not found"):
        await client.instance_name()


async def test_the_token_is_cached_until_shortly_before_it_expires(client, server):
    first = await client.token()
    assert first == {"access_token": server.access_token(1), "expires_in": 3599,
                     "token_type": "Bearer"}
    assert await client.token() is first
    assert server.tokens == 1
    assert paths(server) == ["/computeMetadata/v1/instance/service-accounts/default/token"]


async def test_a_token_about_to_expire_is_asked_for_again(client, server):
    server.expires_in = 30  # less than the client's margin of a minute
    assert (await client.token())["access_token"] == server.access_token(1)
    assert (await client.token())["access_token"] == server.access_token(2)
    assert server.tokens == 2


async def test_preempted_without_waiting(client, server):
    assert await client.preempted() is False
    server.set("instance/preempted", "TRUE")
    assert await client.preempted() is True
    assert server.waits == 0


async def test_preempted_waits_for_the_change(client, server):
    result = []

    async def wait():
        result.append(await client.preempted(wait=True))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        with anyio.fail_after(10):
            while server.waits == 0:
                await anyio.sleep(0.02)
        await anyio.sleep(0.2)
        assert result == []  # still waiting
        server.set("instance/preempted", "TRUE")
    assert result == [True]
    waited = paths(server)[-1]
    assert waited.startswith("/computeMetadata/v1/instance/preempted?")
    assert "wait_for_change=true" in waited and "timeout_sec=300" in waited


async def test_preempted_already_true_is_answered_at_once(client, server):
    server.set("instance/preempted", "TRUE")
    with anyio.fail_after(5):
        assert await client.preempted(wait=True) is True
    assert server.waits == 0


async def test_a_wait_that_times_out_answers_the_current_value(client, server):
    client.wait_seconds = 1
    with anyio.fail_after(10):
        assert await client.preempted(wait=True) is False
    assert server.waits == 1


async def test_an_unreachable_server_is_transient():
    metadata = GceMetadata(f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TransientError):
            await metadata.instance_name()
    finally:
        await metadata.aclose()


# where tokens come from (tpi_gcp.auth) -------------------------------------------------------


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No credentials file, no metadata server named, and not a Google machine."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (auth.FILE_ENV, "GCE_METADATA_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(auth, "PRODUCT", tmp_path / "product_name")
    return tmp_path


async def test_on_a_machine_the_token_comes_from_the_metadata_server(no_credentials, server,
                                                                     monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", server.host)
    source = auth.token_source(SCOPE)
    try:
        assert isinstance(source, auth.MetadataToken)
        assert await source.get() == server.access_token(1)
        assert await source.get_project() == fakes.PROJECT
    finally:
        await source.close()


async def test_a_google_machine_is_known_by_its_firmware(no_credentials):
    (no_credentials / "product_name").write_text("Google Compute Engine\n")
    source = auth.token_source(SCOPE)
    assert isinstance(source, auth.MetadataToken)
    await source.close()


def test_no_credentials_anywhere_is_said_before_any_request(no_credentials):
    with pytest.raises(PermissionDenied, match="application-default login"):
        auth.token_source(SCOPE)


async def test_a_credentials_file_comes_first(no_credentials, server, monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", server.host)
    monkeypatch.setenv(auth.FILE_ENV, str(no_credentials / "key.json"))
    assert auth.credentials_file() == str(no_credentials / "key.json")
    adc = no_credentials / ".config/gcloud/application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text("{}")
    monkeypatch.delenv(auth.FILE_ENV)
    assert auth.credentials_file() == str(adc)
    source = auth.token_source(SCOPE)  # gcloud-aio-auth's Token, which reads the file on use
    try:
        assert type(source).__module__.startswith("gcloud.aio.auth")
    finally:
        await source.close()
