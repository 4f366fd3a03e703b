"""GCE played with real boots: each instance is a Debian machine that runs its startup script.

:class:`BootedMig` polls the Compute Engine fake for the instances of tpi groups, as
:class:`.harness.MigPlayer` does, but boots each one: an nspawn container of the Debian root
(:mod:`tests.boot`), systemd as PID 1, which runs the group's template's ``startup-script`` as
GCE's guest agent does (as root, once the network is up). Nothing of tpi is preinstalled: the
script fetches the agent bundle from fake-gcs-server with the token the instance's metadata
server hands out, installs it and starts the agent under systemd. What the machine gets from
the harness is what GCE gives one: its metadata server (``GCE_METADATA_HOST``) and the
endpoints of the services (``STORAGE_EMULATOR_HOST``: fake-gcs-server; ``TPI_GCE_ENDPOINT``:
the fake), set for every unit by a systemd drop-in, plus the CA bundle that reaches the
package index from this machine. An instance that leaves the group is powered off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.boot.cloud import machine_cache
from tests.boot.nspawn import NspawnMachine
from tpi_core.boot.script import parse

from .harness import MigPlayer, fake_metadata, startup_script


@dataclass
class BootedInstance:
    """One instance, booted."""

    name: str
    machine: NspawnMachine
    metadata: fake_metadata.FakeMetadata
    exit_code: int | None = None

    def stop(self, grace: float = 30) -> None:
        """The instance deleted: an orderly poweroff, then a kill after ``grace`` seconds."""
        if self.machine.process is not None:
            self.exit_code = self.machine.stop(grace)
        self.metadata.close()


@dataclass
class BootedMig(MigPlayer):
    """Boots every instance of a tpi group in the fake (see the module doc); ``image`` is
    the Debian root they boot, ``env`` what every unit of a machine sees."""

    image: Path | None = None

    def _start(self, name: str, zone: str, template: dict) -> BootedInstance:
        script = startup_script(template)
        metadata = self._metadata(name, zone, parse(script))
        machine = NspawnMachine(self.image, name, script,
                                {**self.env, "GCE_METADATA_HOST": metadata.host},
                                self.root / name, {str(machine_cache()): "/var/cache/tpi"})
        return BootedInstance(name, machine.start(), metadata)

    def agent_logs(self) -> dict[str, str]:
        """The tail of each machine's console (for failure messages)."""
        return {n: b.machine.console()[-3000:] for n, b in self.machines.items()}
