"""A harness that plays the machines of a regional MIG for the GCE fake: it runs the real
agent where instances would be.

The fake (:mod:`.fake_gce`) keeps a MIG's instances as records. :class:`MigPlayer` polls it
and, for each new instance, reads the startup script of the group's instance template,
starts the real agent with what the script carries (the unit's own command line, the
unit's environment), with a fake metadata server of its own on 127.0.0.1 (the instance's
name and zone, its service account's token, ``instance/preempted``) and the fakes as every
Google endpoint. An instance that leaves the group takes its agent with it (SIGTERM, as a
shutdown does). :meth:`MigPlayer.preempt` plays a spot preemption: ``instance/preempted``
turns TRUE, the agent flushes and exits, then the instance goes and the group recreates it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tpi_core.boot.script import agent_argv, parse

from .fake_gce import FakeGce

_spec = importlib.util.spec_from_file_location(
    "fake_metadata", Path(__file__).parents[3] / "plugins/tpi-gcp/tests/fake_metadata.py")
fake_metadata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_metadata)


@dataclass
class Machine:
    """One instance played locally: its agent process and its metadata server."""

    name: str
    process: subprocess.Popen
    metadata: object
    log: Path
    exit_code: int | None = None

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the agent's session (a shutdown), then SIGKILL after ``grace``."""
        if self.process.poll() is None:
            _signal(self.process, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(self.process, signal.SIGKILL)
                self.process.wait(10)
        _signal(self.process, signal.SIGKILL)  # whatever the script left behind
        self.exit_code = self.process.returncode
        self.metadata.close()


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class MigPlayer:
    """Runs the agent for every instance of a tpi group in the fake (see the module doc)."""

    gce: FakeGce
    project: str
    root: Path
    env: dict[str, str]
    machines: dict[str, Machine] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MigPlayer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        for machine in list(self.machines.values()):
            machine.stop(grace=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.step()
            except Exception as exc:  # keep playing; the test reads the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def step(self) -> None:
        """Start agents for new instances; stop those of instances gone."""
        instances = self._instances()
        with self._lock:
            for name, (zone, template) in instances.items():
                if name not in self.machines:
                    self.machines[name] = self._start(name, zone, template)
            for name, machine in self.machines.items():
                if name not in instances and machine.exit_code is None:
                    machine.stop()

    def _instances(self) -> dict[str, tuple[str, dict]]:
        """Every managed instance of the fake: name -> (zone, its group's template)."""
        found = {}
        held = self.gce.resources()
        for path in held.get("instances", []):
            parts = path.split("/")  # projects/P/zones/Z/instances/NAME
            found[parts[-1]] = parts[3]
        templates = {}
        for path in held.get("instanceTemplates", []):
            name = path.rsplit("/", 1)[-1]
            templates[name] = self.gce.handle("GET", f"/compute/v1/{path}", b"")[1]
        return {name: (zone, templates[_group_of(name, templates)])
                for name, zone in found.items() if _group_of(name, templates)}

    def _start(self, name: str, zone: str, template: dict) -> Machine:
        items = template["properties"]["metadata"]["items"]
        script = next(i["value"] for i in items if i["key"] == "startup-script")
        boot = parse(script)
        metadata = fake_metadata.FakeMetadata()
        group = boot["environment"]["TPI_GCP_GROUP"]
        region = boot["environment"]["TPI_GCP_REGION"]
        metadata.set("instance/name", name)
        metadata.set("instance/zone", f"projects/123456789012/zones/{zone}")
        metadata.set("instance/attributes/created-by",
                     f"projects/123456789012/regions/{region}/instanceGroupManagers/{group}")
        metadata.set("project/project-id", self.project)
        workdir = self.root / name / "task"
        workdir.mkdir(parents=True)
        log = self.root / name / "agent.log"
        env = {**self.env, **boot["environment"], "GCE_METADATA_HOST": metadata.host}
        with log.open("wb") as out:
            process = subprocess.Popen(agent_argv(boot, sys.executable, str(workdir)),
                                       env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return Machine(name, process, metadata, log)

    def preempt(self, name: str, grace: float = 60) -> int:
        """A spot preemption: the notice, the agent's flush and exit, the instance gone (the
        group makes another)."""
        machine = self.machines[name]
        machine.metadata.set("instance/preempted", "TRUE")
        machine.process.wait(grace)
        self.gce.preempt(name)
        return machine.process.returncode

    def wait_for(self, predicate, timeout: float, what: str):
        """Poll ``predicate`` until it returns something true."""
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            value = predicate()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; harness errors: {self.errors}; "
                             f"agent logs: {self.agent_logs()}")

    def agent_logs(self) -> dict[str, str]:
        """What each agent printed (for failure messages)."""
        return {n: m.log.read_text(errors="replace")[-2000:] for n, m in self.machines.items()}


def _group_of(instance: str, templates: dict[str, dict]) -> str | None:
    """The template (named as its group) an instance belongs to: ``{group}-xxxx``."""
    return next((t for t in templates if instance.startswith(t + "-")), None)
