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
import sys
from dataclasses import dataclass
from pathlib import Path

from tpi_core.boot.script import agent_argv, parse
from tpi_core.testing.player import PlayedMachine, Player, start_agent

from .fake_gce import FakeGce

_spec = importlib.util.spec_from_file_location(
    "fake_metadata", Path(__file__).parents[3] / "plugins/tpi-gcp/tests/fake_metadata.py")
fake_metadata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_metadata)


@dataclass
class MigPlayer(Player):
    """Runs the agent for every instance of a tpi group in the fake (see the module doc)."""

    gce: FakeGce
    project: str
    root: Path
    env: dict[str, str]

    def step(self) -> None:
        """Start agents for new instances; stop those of instances gone."""
        instances = self._instances()
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

    def _start(self, name: str, zone: str, template: dict) -> PlayedMachine:
        boot = parse(startup_script(template))
        metadata = self._metadata(name, zone, boot)
        workdir = self.root / name / "task"
        workdir.mkdir(parents=True)
        log = self.root / name / "agent.log"
        env = {**self.env, **boot["environment"], "GCE_METADATA_HOST": metadata.host}
        process = start_agent(agent_argv(boot, sys.executable, str(workdir)), env, log)
        return PlayedMachine(name, process, metadata, log)

    def _metadata(self, name: str, zone: str, boot: dict) -> fake_metadata.FakeMetadata:
        """The instance's metadata server: its name, zone, group and project."""
        metadata = fake_metadata.FakeMetadata()
        group = boot["environment"]["TPI_GCP_GROUP"]
        region = boot["environment"]["TPI_GCP_REGION"]
        metadata.set("instance/name", name)
        metadata.set("instance/zone", f"projects/123456789012/zones/{zone}")
        metadata.set("instance/attributes/created-by",
                     f"projects/123456789012/regions/{region}/instanceGroupManagers/{group}")
        metadata.set("project/project-id", self.project)
        return metadata

    def preempt(self, name: str, grace: float = 60) -> int:
        """A spot preemption: the notice, the agent's flush and exit, the instance gone (the
        group makes another)."""
        machine = self.machines[name]
        machine.metadata.set("instance/preempted", "TRUE")
        machine.process.wait(grace)
        self.gce.preempt(name)
        return machine.process.returncode


def startup_script(template: dict) -> str:
    """The ``startup-script`` of an instance template."""
    items = template["properties"]["metadata"]["items"]
    return next(i["value"] for i in items if i["key"] == "startup-script")


def _group_of(instance: str, templates: dict[str, dict]) -> str | None:
    """The template (named as its group) an instance belongs to: ``{group}-xxxx``."""
    return next((t for t in templates if instance.startswith(t + "-")), None)
