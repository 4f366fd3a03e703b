"""A harness that plays the machines of the ARM fake's scale sets: it runs the real agent where
instances would be.

The fake (:mod:`.fake_arm`) keeps a scale set's instances as records. :class:`VmssPlayer`
polls it (and lets its time pass: :meth:`~.fake_arm.FakeArm.tick`, so evictions fall due and
autoscale's fixed-date profiles apply) and, for each new instance of a scale set tagged
``tpi-managed``, reads the scale set's custom data (the boot script), starts the real agent with
what the script carries (the unit's own command line and environment) and a metadata service of
its own (:class:`.fake_imds.FakeImds`: the instance's identity tokens, compute metadata and
scheduled events), reached through ``AZURE_POD_IDENTITY_AUTHORITY_HOST``. An instance that
leaves its scale set takes its agent with it (SIGTERM, as a shutdown does).
:meth:`VmssPlayer.evict` plays a spot eviction: a ``Preempt`` event, which the agent
acknowledges before it exits; then the instance goes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tpi_core.boot.script import agent_argv, parse
from tpi_core.testing.player import PlayedMachine, Player, start_agent

from .fake_arm import VMSS, FakeArm
from .fake_imds import FakeImds

IMDS_ENV = "AZURE_POD_IDENTITY_AUTHORITY_HOST"


@dataclass
class VmssPlayer(Player):
    """Runs the agent for every instance of a tpi scale set in the fake (see the module doc)."""

    arm: FakeArm
    root: Path
    env: dict[str, str]
    where: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    """Machine name -> (scale set id, instanceId)."""

    def step(self) -> None:
        """Let time pass in the fake; start agents for new instances; stop those of instances
        gone."""
        self.arm.tick()
        instances = self._instances()
        for name, (vmss, instance_id) in instances.items():
            if name not in self.machines:
                self.machines[name] = self._start(name, vmss, instance_id)
                self.where[name] = (vmss["id"], instance_id)
        for name, machine in self.machines.items():
            if name not in instances and machine.exit_code is None:
                machine.stop()

    def _instances(self) -> dict[str, tuple[dict, str]]:
        """Every instance of a tpi scale set: name -> (its scale set, its instanceId)."""
        found = {}
        for vmss_id in self.arm.resources().get(VMSS, []):
            vmss = self.arm.get(vmss_id)
            if vmss and (vmss.get("tags") or {}).get("tpi-managed") == "true":
                for record in self.arm.instances(vmss_id):
                    found[record["name"]] = (vmss, record["instanceId"])
        return found

    def _start(self, name: str, vmss: dict, instance_id: str) -> PlayedMachine:
        boot = parse(custom_data(vmss))
        imds = FakeImds(self.arm, vmss["id"], instance_id, location=vmss["location"])
        workdir = self.root / name / "task"
        workdir.mkdir(parents=True)
        log = self.root / name / "agent.log"
        env = {**self.env, **boot["environment"], IMDS_ENV: imds.url}
        process = start_agent(agent_argv(boot, sys.executable, str(workdir)), env, log)
        return PlayedMachine(name, process, imds, log)

    def evict(self, name: str, grace: float = 60) -> int:
        """A spot eviction of machine ``name``: the ``Preempt`` event, the agent's flush, its
        acknowledgement and exit (the instance then goes). Returns the agent's exit code."""
        machine = self.machines[name]
        self.arm.evict(*self.where[name])
        machine.process.wait(grace)
        return machine.process.returncode


def custom_data(vmss: dict) -> str:
    """A scale set's ``customData`` (base64, as the model holds it; :func:`parse` reads it)."""
    return vmss["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
