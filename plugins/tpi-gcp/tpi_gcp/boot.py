"""The boot of a GCE task machine: the core's boot script with the GCP fetcher.

``bootfetch.py`` is GCP's half of the machine's fetcher (after the core's shared half,
:mod:`tpi_core.boot.fetchbase`): GCS get/put/count and leaving the regional MIG, with the
instance's service-account token from the metadata server.
"""

from __future__ import annotations

from importlib import resources

from tpi_core.backend import Launch
from tpi_core.boot import script
from tpi_core.boot.script import MachineBoot
from tpi_core.storage import split_url


def fetcher_program() -> str:
    """The machine's fetcher: the core's shared half, then ``bootfetch.py``."""
    return script.fetcher_program(
        resources.files(__package__).joinpath("bootfetch.py").read_text())


def machine_boot(launch: Launch, *, project: str, region: str, group: str) -> MachineBoot:
    """How a machine of the task's group boots: the startup script's settings (nothing
    secret: the agent reads the environment from Secret Manager with the machine's token)."""
    return script.machine_boot(
        launch, fetcher=fetcher_program(),
        fetcher_config={"bucket": split_url(launch.storage_url)[0], "project": project,
                        "region": region, "group": group},
        hooks="tpi_gcp.agent:GcpHooks", imports=("tpi_gcp.agent",),
        environment={"GOOGLE_CLOUD_PROJECT": project, "TPI_GCP_REGION": region,
                     "TPI_GCP_GROUP": group})
