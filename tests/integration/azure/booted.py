"""Azure scale sets played with real boots: each instance is a Debian machine that runs its
CustomData.

:class:`BootedVmss` polls the ARM fake for the instances of tpi scale sets, as
:class:`.harness.VmssPlayer` does, but boots each one: an nspawn container of the Debian root
(:mod:`tests.boot`), systemd as PID 1, which runs the scale set's CustomData (unpacked, as
cloud-init does: it is gzipped) once the network is up. Nothing of tpi is preinstalled: the
script fetches the agent bundle from Azurite with the token the instance's IMDS hands out,
installs it and starts the agent under systemd. What the machine gets from the harness is
what Azure gives one: its IMDS (``AZURE_POD_IDENTITY_AUTHORITY_HOST``), the ARM endpoint
(``TPI_AZURE_ENDPOINT``: the fake), and a CA bundle that trusts Azurite's certificate beside
the system's. An instance that leaves its scale set is powered off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.boot.cloud import machine_cache
from tests.boot.nspawn import NspawnMachine
from tpi_core.boot.script import unpack

from .fake_imds import FakeImds
from .harness import IMDS_ENV, VmssPlayer, custom_data

CA_INSIDE = "/etc/tpi-test/ca-bundle.pem"
"""Where a machine finds the CA bundle (its ``SSL_CERT_FILE``)."""


@dataclass
class BootedInstance:
    """One instance, booted."""

    name: str
    machine: NspawnMachine
    metadata: FakeImds
    exit_code: int | None = None

    def stop(self, grace: float = 30) -> None:
        """The instance deleted: an orderly poweroff, then a kill after ``grace`` seconds."""
        if self.machine.process is not None:
            self.exit_code = self.machine.stop(grace)
        self.metadata.close()


@dataclass
class BootedVmss(VmssPlayer):
    """Boots every instance of a tpi scale set in the fake (see the module doc); ``image``
    is the Debian root they boot, ``ca_bundle`` the CA file they trust."""

    image: Path | None = None
    ca_bundle: Path | None = None

    def _start(self, name: str, vmss: dict, instance_id: str) -> BootedInstance:
        imds = FakeImds(self.arm, vmss["id"], instance_id, location=vmss["location"])
        binds = {str(machine_cache()): "/var/cache/tpi", str(self.ca_bundle): CA_INSIDE}
        machine = NspawnMachine(self.image, name, unpack(custom_data(vmss)),
                                {**self.env, IMDS_ENV: imds.url, "SSL_CERT_FILE": CA_INSIDE},
                                self.root / name, binds)
        return BootedInstance(name, machine.start(), imds)

    def agent_logs(self) -> dict[str, str]:
        """The tail of each machine's console (for failure messages)."""
        return {n: b.machine.console()[-3000:] for n, b in self.machines.items()}
