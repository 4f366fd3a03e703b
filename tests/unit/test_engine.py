"""The engine on the fake backend: plan, apply, idempotence, replace, status, destroy."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tpi_core import config, layout
from tpi_core.backend import TaskRef
from tpi_core.engine import Action, Engine
from tpi_core.errors import TaskNotFound
from tpi_core.model import ReplicaState, ReplicaStatus, State
from tpi_core.testing.fake import FakeBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake():
    FakeBackend.reset()
    yield FakeBackend
    FakeBackend.reset()


def write_tasks(tmp_path: Path, body: str = "", parallelism: int = 1) -> list:
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "input.txt").write_text("hello")
    (tmp_path / "tasks.toml").write_text(textwrap.dedent(f"""
        [task.train]
        cloud = "local"
        parallelism = {parallelism}
        script = "echo hi"
        {body}
        [task.train.storage]
        workdir = "work"
        output = "results"
    """))
    return [t for t in config.load(tmp_path / "tasks.toml")]


def fake_tasks(tasks):
    from dataclasses import replace

    return [replace(t, cloud="fake") for t in tasks]


async def test_apply_creates_then_second_apply_is_a_noop(tmp_path, fake):
    tasks = fake_tasks(write_tasks(tmp_path))
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        planned = await engine.plan(tasks)
        assert [p.action for p in planned] == [Action.CREATE]
        await engine.apply(planned)
        calls_after_first = list(fake.calls)
        again = await engine.plan(tasks)
        assert [p.action for p in again] == [Action.UNCHANGED]
        await engine.apply(again)
    storage = fake.storages[tasks[0].id]
    spec = json.loads(await storage.read(layout.SPEC))
    assert spec["id"] == tasks[0].id and spec["parallelism"] == 1
    assert await storage.read("data/input.txt") == b"hello"
    assert fake.groups == {tasks[0].id: 1}
    new_calls = fake.calls[len(calls_after_first):]
    assert ("create", tasks[0].id) not in new_calls


async def test_spec_holds_no_environment_value(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t-value")
    tasks = fake_tasks(write_tasks(tmp_path, 'environment = { SECRET_TOKEN = "" }'))
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
    raw = await fake.storages[tasks[0].id].read(layout.SPEC)
    assert b"s3cr3t-value" not in raw
    assert "SECRET_TOKEN" in json.loads(raw)["environment_keys"]


async def test_environment_values_are_compared_by_a_keyed_digest_only(tmp_path, fake,
                                                                      monkeypatch):
    import hashlib
    import hmac

    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    tasks = fake_tasks(write_tasks(tmp_path, 'environment = { SECRET_TOKEN = "" }'))
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
        spec = json.loads(await fake.storages[tasks[0].id].read(layout.SPEC))
        key_file = tmp_path / ".tpi" / "files" / f"{tasks[0].id}.key"
        assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
        # the spec holds nothing a guess of the secret could be checked against offline
        values = json.dumps(dict(tasks[0].environment), sort_keys=True).encode()
        unkeyed = hashlib.sha256(values).hexdigest()
        assert unkeyed not in json.dumps(spec) and b"hunter2" not in json.dumps(spec).encode()
        assert spec["environment_digest"] == hmac.new(key_file.read_bytes(), values,
                                                      hashlib.sha256).hexdigest()
        # (the spec's hash holds the environment's names, not its values)
        other = _with_env(tasks[0], {**tasks[0].environment, "SECRET_TOKEN": "other"})
        assert other.spec_hash() == tasks[0].spec_hash()
        # a changed value still replaces the task
        monkeypatch.setenv("SECRET_TOKEN", "changed")
        changed = fake_tasks(write_tasks(tmp_path, 'environment = { SECRET_TOKEN = "" }'))
        [planned] = await engine.plan(changed)
        assert (planned.action, planned.reason) == (Action.REPLACE, "changed: environment values")
        # where the key is not (applied from another computer), values cannot be compared
        key_file.unlink()
        assert [p.action for p in await engine.plan(changed)] == [Action.UNCHANGED]


def _with_env(task, environment):
    from dataclasses import replace

    from tpi_core.model import Secrets

    return replace(task, environment=Secrets(environment))


async def test_a_spec_written_before_the_keyed_digest_is_not_replaced(tmp_path, fake):
    tasks = fake_tasks(write_tasks(tmp_path))
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
        storage = fake.storages[tasks[0].id]
        spec = json.loads(await storage.read(layout.SPEC))
        del spec["environment_digest"]
        spec["spec_hash"] = tasks[0].legacy_spec_hash()
        await storage.write(layout.SPEC, json.dumps(spec).encode())
        assert [p.action for p in await engine.plan(tasks)] == [Action.UNCHANGED]
        spec["spec_hash"] = "0" * 16  # an older spec of other settings is replaced
        await storage.write(layout.SPEC, json.dumps(spec).encode())
        assert [p.action for p in await engine.plan(tasks)] == [Action.REPLACE]


async def test_changed_task_needs_replace_and_output_change_updates(tmp_path, fake):
    tasks = fake_tasks(write_tasks(tmp_path))
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
        bigger = fake_tasks(write_tasks(tmp_path, parallelism=2))
        assert [p.action for p in await engine.plan(bigger)] == [Action.REPLACE]
        from dataclasses import replace

        other_output = [replace(tasks[0], storage=replace(tasks[0].storage, output="out2"))]
        planned = await engine.plan(other_output)
        assert [p.action for p in planned] == [Action.UPDATE]
        await engine.apply(planned)
        spec = json.loads(await fake.storages[tasks[0].id].read(layout.SPEC))
        assert spec["output"] == "out2"
        replaced = await engine.apply(await engine.plan(bigger))
        assert replaced[0].action == Action.REPLACE
    assert fake.groups[tasks[0].id] == 2
    assert ("delete", tasks[0].id) in fake.calls


async def write_status(storage, index, state, attempt=1, exit_code=None):
    status = ReplicaStatus(index, state, attempt, exit_code)
    await storage.write(layout.status_key(index), json.dumps(status.to_json()).encode())


async def test_status_derives_from_reports(tmp_path, fake):
    tasks = fake_tasks(write_tasks(tmp_path, parallelism=3))
    ref = TaskRef.of(tasks[0])
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
        storage = fake.storages[tasks[0].id]
        assert (await engine.status(ref)).state == State.PROVISIONING
        await write_status(storage, 0, ReplicaState.RUNNING)
        assert (await engine.status(ref)).state == State.RUNNING
        await write_status(storage, 1, ReplicaState.PREEMPTED, attempt=1)
        assert (await engine.status(ref)).state == State.RECOVERING
        await write_status(storage, 0, ReplicaState.SUCCEEDED, exit_code=0)
        await write_status(storage, 1, ReplicaState.SUCCEEDED, attempt=2, exit_code=0)
        await write_status(storage, 2, ReplicaState.TIMED_OUT)
        status = await engine.status(ref)
    assert status.state == State.TIMED_OUT
    assert status.recoveries == 1
    assert [r.index for r in status.replicas] == [0, 1, 2]
    assert status.count(ReplicaState.SUCCEEDED) == 2


async def test_stop_is_counted_so_the_boot_start_brings_is_no_recovery(tmp_path, fake):
    tasks = fake_tasks(write_tasks(tmp_path, parallelism=2))
    ref = TaskRef.of(tasks[0])
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
        storage = fake.storages[tasks[0].id]
        await engine.stop(ref)
        await engine.start(tasks[0])
        await engine.stop(ref)
        assert json.loads(await storage.read(layout.STOPS)) == {"stops": 2}
        # replica 0 resumed after a stop, then was lost once; replica 1 only resumed
        for status in (ReplicaStatus(0, ReplicaState.RUNNING, attempt=3, stops=2, resumes=1),
                       ReplicaStatus(1, ReplicaState.RUNNING, attempt=2, stops=2, resumes=1)):
            await storage.write(layout.status_key(status.index),
                                json.dumps(status.to_json()).encode())
        assert (await engine.status(ref)).recoveries == 1


async def test_destroy_pulls_only_output_then_deletes_everything(tmp_path, fake):
    tasks = fake_tasks(write_tasks(tmp_path))
    task = tasks[0]
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
        storage = fake.storages[task.id]
        await storage.write("data/results/model.txt", b"weights")
        await storage.write("data/cache/big.bin", b"not wanted")
        (tmp_path / "work" / "results").mkdir()
        (tmp_path / "work" / "results" / "mine.txt").write_text("keep me")
        await engine.destroy(TaskRef.of(task), task.workdir, task.storage.output)
        assert (await engine.status(TaskRef.of(task))).state == State.DESTROYED
        with pytest.raises(TaskNotFound):
            await engine.pull(TaskRef.of(task), task.workdir, "results")
    assert (tmp_path / "work" / "results" / "model.txt").read_text() == "weights"
    assert (tmp_path / "work" / "results" / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "work" / "cache").exists()
    assert [k async for k in _keys(storage)] == []
    assert task.id not in fake.groups


async def _keys(storage):
    async for info in storage.list(""):
        yield info.key


async def test_many_tasks_apply_concurrently_and_one_failure_spares_the_others(tmp_path, fake):
    from dataclasses import replace

    base = fake_tasks(write_tasks(tmp_path))[0]
    tasks = [replace(base, name=f"t{i}", id=f"{base.id}-{i}") for i in range(5)]
    broken = replace(base, name="broken", id="x", cloud="nope")
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        planned = await engine.plan(tasks)
        with pytest.raises(Exception, match="nope"):
            await engine.plan([*tasks, broken])
        await engine.apply(planned)
    assert sorted(fake.groups) == sorted(t.id for t in tasks)


class FailingBackend(FakeBackend):
    """A fake whose group step fails, and which refuses machine "huge"."""

    def validate(self, task):
        from tpi_core.errors import UsageError

        if task.machine == "huge":
            raise UsageError("machine 'huge' is not a size alias")

    def create_steps(self, task, launch):
        from tpi_core.steps import Step

        async def boom():
            raise RuntimeError("capacity")

        return [Step("group", boom)]


async def test_failed_create_leaves_an_unapplied_spec_so_the_next_apply_creates_again(
        tmp_path, fake):
    tasks = fake_tasks(write_tasks(tmp_path))
    async with Engine(backends={"fake": FailingBackend()}) as engine:
        with pytest.raises(RuntimeError, match="capacity"):
            await engine.apply(await engine.plan(tasks))
        planned = await engine.plan(tasks)
        assert [(p.action, p.reason) for p in planned] == [
            (Action.CREATE, "an earlier apply did not finish")]
        status = await engine.status(TaskRef.of(tasks[0]))
        assert status.state == State.QUEUED and "did not finish" in status.reason


async def test_backend_validation_runs_before_anything_is_created(tmp_path, fake):
    from dataclasses import replace

    from tpi_core.errors import UsageError

    tasks = [replace(t, machine="huge") for t in fake_tasks(write_tasks(tmp_path))]
    async with Engine(backends={"fake": FailingBackend()}) as engine:
        with pytest.raises(UsageError, match="huge"):
            await engine.plan(tasks)
    assert fake.storages == {}


@pytest.mark.parametrize("key", ["data/results/../../escape.txt", "data/results/../../../x",
                                 "data//etc/x", "data/results/a\\..\\..\\x"])
async def test_pull_skips_hostile_keys_and_writes_nothing_outside(tmp_path, fake, key):
    tasks = fake_tasks(write_tasks(tmp_path))
    task = tasks[0]
    async with Engine(backends={"fake": FakeBackend()}) as engine:
        await engine.apply(await engine.plan(tasks))
        storage = fake.storages[task.id]
        await storage.write(key, b"evil")
        before = {p for p in tmp_path.rglob("*")}
        output = "" if key.startswith("data//") else "results"
        result = await engine.pull(TaskRef.of(task), task.workdir, output or "/")
    # skipped and named, never written; the pull itself goes on
    assert [line for line in result.skipped if "not a safe local path" in line], result
    after = {p for p in tmp_path.rglob("*")}
    assert not [p for p in after - before if p.is_file()]
    assert not (tmp_path / "escape.txt").exists()


def test_elapsed_stops_when_the_task_ends():
    from tpi_core.model import TaskStatus
    from tpi_core.reports import elapsed

    replicas = (ReplicaStatus(0, ReplicaState.SUCCEEDED, finished=150.0),
                ReplicaStatus(1, ReplicaState.FAILED, finished=160.0))
    ended = TaskStatus("t", "n", "local", State.FAILED, 2, replicas, created=100.0)
    assert elapsed(ended, now=10_000.0) == 60.0  # not 9,900: its clock stopped at 160
    running = TaskStatus("t", "n", "local", State.RUNNING, 2,
                         (replicas[0], ReplicaStatus(1, ReplicaState.RUNNING)), created=100.0)
    assert elapsed(running, now=500.0) == 400.0


def test_plan_names_the_fields_that_changed(tmp_path):
    from tpi_core.engine import changed_fields

    def task(**fields):
        text = "\n".join(f"{k} = {v}" for k, v in fields.items())
        (tmp_path / "tasks.toml").write_text(f'[task.t]\nscript = "true"\n{text}\n')
        return config.load(tmp_path / "tasks.toml")[0]

    before = task(machine='"m"', parallelism=1)
    spec = {"cloud": before.cloud, "region": before.region, "machine": "m", "parallelism": 1,
            "spot": before.spot, "timeout": before.timeout, "script": "true", "tags": {},
            "environment_keys": sorted(before.environment), "image": before.image,
            "disk_size": -1, "permission_set": "", "workdir": "", "container": ""}
    assert changed_fields(spec, task(machine='"l"', parallelism=2)) == ["machine", "parallelism"]
    assert changed_fields(spec, before) == ["environment values"]  # nothing else to name
