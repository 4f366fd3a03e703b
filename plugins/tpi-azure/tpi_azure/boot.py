"""The boot of an Azure task machine: the core's boot script with the Azure fetcher.

``bootfetch.py`` is Azure's half of the machine's fetcher (after the core's shared half,
:mod:`tpi_core.boot.fetchbase`): Blob get/put/count and leaving the scale set, with the
task identity's tokens from the Instance Metadata Service. CustomData carries the script;
nothing in it is secret (the agent reads the environment from Key Vault).
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


def machine_boot(launch: Launch, *, endpoint: str, account: str, client_id: str,
                 subscription: str, group: str, scale_set: str, vault: str) -> MachineBoot:
    """How a machine of the task's scale set boots (``endpoint``: the account's blob
    endpoint; ``client_id``: the identity whose tokens the machine asks for)."""
    return script.machine_boot(
        launch, fetcher=fetcher_program(),
        fetcher_config={"container": split_url(launch.storage_url)[0], "endpoint": endpoint,
                        "account": account, "client_id": client_id,
                        "subscription": subscription, "group": group,
                        "scale_set": scale_set},
        hooks="tpi_azure.agent:AzureHooks", imports=("tpi_azure.agent",),
        environment={"TPI_AZURE_CLIENT_ID": client_id, "TPI_AZURE_SUBSCRIPTION": subscription,
                     "TPI_AZURE_GROUP": group, "TPI_AZURE_SCALE_SET": scale_set,
                     "TPI_AZURE_VAULT": vault})
