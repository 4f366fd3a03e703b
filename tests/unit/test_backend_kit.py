"""What the Backend base class does for every cloud: one list of steps, the storage cache,
tags and task refs, the container check, and the spot capability."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from tpi_core import config
from tpi_core.backend import Backend, Capability, Launch, TaskRef
from tpi_core.engine import Engine
from tpi_core.errors import ConfigError, UsageError
from tpi_core.tags import OwnTags
from tpi_core.testing.fake import FakeBackend
from tpi_core.testing.memory import MemoryStorage

pytestmark = pytest.mark.anyio
TASK_ID = "tpi-train-6a67d3yf-1d4ynmxc"


@pytest.fixture
def fake():
    FakeBackend.reset()
    yield FakeBackend
    FakeBackend.reset()


def one_task(tmp_path, body: str = ""):
    (tmp_path / "tasks.toml").write_text(textwrap.dedent(f"""
        [task.train]
        cloud = "local"
        script = "true"
        {body}
    """))
    [task] = config.load(tmp_path / "tasks.toml")
    return replace(task, cloud="fake")


def test_spot_on_a_backend_without_spot_machines_is_a_config_error(tmp_path):
    task = one_task(tmp_path, "spot = 0")
    assert Capability.SPOT not in FakeBackend.CAPABILITIES
    with pytest.raises(ConfigError) as caught:
        config.check_backend(task, lambda cloud: FakeBackend())
    error = caught.value
    assert (error.file, error.task, error.key, error.exit_code) == (
        str(tmp_path / "tasks.toml"), "train", "spot", 2)
    assert "'fake' has no spot machines" in str(error)
    config.check_backend(one_task(tmp_path), lambda cloud: FakeBackend())  # on-demand: fine


async def test_plan_refuses_spot_on_a_backend_without_it(tmp_path, fake):
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        with pytest.raises(ConfigError, match="key 'spot'"):
            await engine.plan([one_task(tmp_path, "spot = 0.5")])
    assert fake.groups == {}


def test_create_and_delete_steps_come_from_one_list(tmp_path, fake):
    task = one_task(tmp_path)
    backend = FakeBackend()
    creates = backend.create_steps(task, Launch("mem://", 0.0))
    deletes = backend.delete_steps(TaskRef.of(task))
    assert [s.description for s in creates] == [s.description for s in deletes] == ["group"]


class Caching(FakeBackend):
    async def storage(self, ref, *, create=None):
        return self.kept_storage(ref.task_id, MemoryStorage)


async def test_storages_are_kept_per_key_and_closed_with_the_backend(monkeypatch):
    closed: list[MemoryStorage] = []
    monkeypatch.setattr(MemoryStorage, "aclose", lambda self: _record(closed, self))
    backend = Caching()
    ref = TaskRef(TASK_ID, "fake", "")
    first = await backend.storage(ref)
    assert await backend.storage(ref) is first
    renewed = backend.kept_storage(TASK_ID, MemoryStorage, renew=True)
    assert renewed is not first and await backend.storage(ref) is renewed
    await backend.aclose()
    await backend.aclose()  # twice is fine
    assert closed == [renewed]


async def _record(closed: list, storage) -> None:
    closed.append(storage)


def test_a_backend_must_list_its_steps():
    class NoSteps(Backend):
        NAME = "none"

        async def storage(self, ref, *, create=None): ...

        async def observe(self, ref): ...

    with pytest.raises(TypeError, match="steps"):
        NoSteps()


TAGS = OwnTags("t:task", "t:managed", "t:name", "t:container", "t:region")


def test_own_tags_win_over_the_tasks_and_name_the_task():
    tags = TAGS.tags(TASK_ID, {"t:task": "forged", "team": "ml"}, "train", "bkt/p")
    assert tags == {"t:task": TASK_ID, "t:managed": "true", "t:name": "train",
                    "t:container": "bkt/p", "team": "ml"}
    assert TAGS.about(region="eu") == {"t:region": "eu"}


def test_a_task_ref_comes_back_from_its_tags():
    tags = TAGS.tags(TASK_ID, {}, "train", "bkt/p", "pool=a")
    assert TAGS.ref(tags, "x", "ignored") == TaskRef(TASK_ID, "x", "pool=a", "train", "bkt/p")
    plain = OwnTags("k:task", "k:managed", "k:name", "k:container")
    assert plain.ref(plain.ids(TASK_ID), "x", "us-east-1") == TaskRef(TASK_ID, "x", "us-east-1")
    assert TAGS.ref({"t:task": "not a task id"}, "x") is None


@pytest.mark.parametrize(("container", "expected"), [
    ("bkt", ("bkt", TASK_ID)), ("bkt/runs/a/", ("bkt", "runs/a")), ("bkt/p", ("bkt", "p")),
])
def test_a_container_is_a_bucket_and_a_prefix(container, expected):
    assert TaskRef(TASK_ID, "x", "", container=container).container_path() == expected


@pytest.mark.parametrize("container", ["bkt/", "bkt//"])
def test_a_container_naming_a_bucket_root_is_refused(container):
    ref = TaskRef(TASK_ID, "x", "", container=container)
    with pytest.raises(UsageError, match="names a bucket root; destroy deletes"):
        ref.container_path()
    with pytest.raises(UsageError, match="names a claim's root"):
        ref.container_path("a claim's root")
