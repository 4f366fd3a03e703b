"""The agent's AWS hooks: IMDSv2 spot notice, replica leases, leaving the group, environment."""

from __future__ import annotations

import http.server
import json
import threading

import anyio
import pytest

from tpi_aws import agent as hooks_module
from tpi_aws.agent import AwsHooks, Imds
from tpi_core.agent.lease import lease_key
from tpi_core import layout
from tpi_core.errors import BackendError
from tpi_core.model import ReplicaState, ReplicaStatus
from tpi_core.storage.local import LocalStorage


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeImds(http.server.ThreadingHTTPServer):
    """IMDSv2 on 127.0.0.1: a token first, then metadata with that token only."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.items = {"instance-id": "i-self", "placement/region": "us-west-1"}
        self.tokens_issued = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        assert self.path == "/latest/api/token"
        self.server.tokens_issued += 1
        self._reply(200, f"token-{self.server.tokens_issued}")

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != f"token-{self.server.tokens_issued}":
            return self._reply(401, "")
        value = self.server.items.get(self.path.removeprefix("/latest/meta-data/"))
        self._reply(404, "") if value is None else self._reply(200, value)

    def _reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def imds():
    server = FakeImds()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.anyio
async def test_imds_token_and_missing_items(imds, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    client = Imds()
    assert await client.get("instance-id") == "i-self"
    assert await client.get("spot/instance-action") is None
    imds.tokens_issued += 1  # the token expires: the client asks for a new one
    assert await client.get("placement/region") == "us-west-1"


@pytest.mark.anyio
async def test_spot_notice_ends_the_wait(imds):
    hooks = AwsHooks(Imds(imds.url))
    hooks.notice_interval = 0.05
    returned = anyio.Event()

    async def wait() -> None:
        await hooks.wait_for_preemption()
        returned.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.3)
            assert not returned.is_set()
            imds.items["spot/instance-action"] = '{"action": "terminate"}'
    assert returned.is_set()


class Group:
    """Which instances the fake Auto Scaling group holds."""

    def __init__(self, *members: str):
        self.members = set(members)
        self.left: list[str] = []


def make_hooks(instance: str, group: Group) -> AwsHooks:
    hooks = AwsHooks(Imds("http://127.0.0.1:9"))
    hooks._machine = instance
    hooks.claim_settle = 0.05
    hooks.claim_patience = 0.3

    async def alive(other: str) -> bool:
        return other in group.members

    async def on_exit(status):
        group.left.append(instance)
        group.members.discard(instance)

    hooks.alive = alive
    hooks.on_exit = on_exit
    return hooks


@pytest.mark.anyio
async def test_machines_booting_together_get_distinct_replicas(tmp_path):
    storage, group = LocalStorage(tmp_path), Group("i-1", "i-2", "i-3")
    got: dict[str, int] = {}

    async def boot(instance: str) -> None:
        got[instance] = await make_hooks(instance, group).replica_index(
            storage, {"parallelism": 3})

    async with anyio.create_task_group() as tg:
        for instance in sorted(group.members):
            tg.start_soon(boot, instance)
    assert sorted(got.values()) == [0, 1, 2]


@pytest.mark.anyio
async def test_replacement_takes_over_the_index_of_a_dead_machine(tmp_path):
    storage, group = LocalStorage(tmp_path), Group("i-1", "i-2", "i-new")
    await storage.write(lease_key(0), json.dumps({"instance": "i-1"}).encode())
    await storage.write(lease_key(1), json.dumps({"instance": "i-gone"}).encode())
    assert await make_hooks("i-new", group).replica_index(storage, {"parallelism": 2}) == 1
    # a reboot keeps its own replica
    assert await make_hooks("i-1", group).replica_index(storage, {"parallelism": 2}) == 0


@pytest.mark.anyio
async def test_finished_replicas_are_not_run_again(tmp_path):
    storage, group = LocalStorage(tmp_path), Group("i-extra")
    done = ReplicaStatus(0, ReplicaState.SUCCEEDED, 1, 0)
    await storage.write(layout.status_key(0), json.dumps(done.to_json()).encode())
    await storage.write(lease_key(0), json.dumps({"instance": "i-extra"}).encode())
    hooks = make_hooks("i-extra", group)
    assert await hooks.replica_index(storage, {"parallelism": 1}) is None
    assert group.left == ["i-extra"]  # a machine with nothing to do leaves the group


@pytest.mark.anyio
async def test_on_exit_leaves_the_group_and_tolerates_being_gone(monkeypatch):
    calls: list[str] = []
    alive = {"i-self": True}

    async def leave_group(client, instance):
        calls.append(instance)
        if not alive[instance]:
            raise BackendError("HTTP 500 from moto: not in the group")

    async def group_of_instance(client, instance):
        return {"LifecycleState": "InService"} if alive[instance] else None

    monkeypatch.setattr(hooks_module.scaling, "leave_group", leave_group)
    monkeypatch.setattr(hooks_module.scaling, "group_of_instance", group_of_instance)
    hooks = AwsHooks(Imds("http://127.0.0.1:9"), client=object())
    hooks._machine = "i-self"
    await hooks.on_exit(ReplicaStatus(0, ReplicaState.SUCCEEDED))
    alive["i-self"] = False
    await hooks.on_exit(ReplicaStatus(0, ReplicaState.SUCCEEDED))
    assert calls == ["i-self", "i-self"]


@pytest.mark.anyio
async def test_environment_comes_from_the_tasks_parameter(monkeypatch):
    asked: list[str] = []

    async def get_environment(client, name):
        asked.append(name)
        return {"TOKEN": "v"}

    monkeypatch.setattr(hooks_module.resources, "get_environment", get_environment)
    hooks = AwsHooks(Imds("http://127.0.0.1:9"), client=object())
    assert await hooks.environment({"id": "tpi-x", "environment_keys": []}) == {}
    assert await hooks.environment({"id": "tpi-x", "environment_keys": ["TOKEN"]}) == {
        "TOKEN": "v"}
    assert asked == ["/tpi/tpi-x/environment"]
