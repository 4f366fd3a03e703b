"""Azure's size, region and image aliases, and ``tpi machines --cloud azure``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tpi_azure import machines
from tpi_azure.backend import AzureBackend

from tpi_core.errors import UsageError


def test_tpi_aliases_on_current_gpu_families():
    assert machines.size("m") == "Standard_D8s_v5"
    assert machines.size("m+t4") == "Standard_NC4as_T4_v3"
    assert machines.size("M+V100") == "Standard_NC6s_v3"
    assert machines.size("m+a10") == "Standard_NV36ads_A10_v5"
    assert machines.size("xl+a100") == "Standard_ND96amsr_A100_v4"
    assert machines.size("xl+h100") == "Standard_ND96isr_H100_v5"
    families = {machines.size(a).split("_")[1][:2] for a in machines.SIZE_ALIASES.table
                if "+" in a}
    assert {"NC", "ND", "NV"} <= families
    assert all(machines.gpus(machines.size(a)) == ("+" in a)
               for a in machines.SIZE_ALIASES.table)


def test_native_sizes_and_locations_pass_through():
    assert machines.size("Standard_HB120rs_v3") == "Standard_HB120rs_v3"
    assert machines.size("standard_d2s_v5") == "Standard_d2s_v5"
    assert machines.region("us-west") == "westus2" and machines.region("eu-west") == "westeurope"
    assert machines.region("swedencentral") == "swedencentral"
    assert machines.region("West Europe") == "westeurope"


@pytest.mark.parametrize("bad", ["huge", "m+k9", "D8s_v5", "Standard D8"])
def test_bad_sizes_are_one_line_usage_errors(bad):
    with pytest.raises(UsageError) as raised:
        machines.size(bad)
    assert "\n" not in str(raised.value) and repr(bad) in str(raised.value)


def test_images_from_aliases_urns_and_ids():
    assert machines.image("ubuntu").reference() == {
        "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server",
        "version": "latest"}
    assert machines.image("nvidia").offer == "ubuntu-hpc"
    # TPI's user@ prefix is accepted (tpi logs no one in)
    assert machines.image("ubuntu@Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
                          ).sku == "22_04-lts-gen2"
    ident = ("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/"
             "images/y/versions/1.0.0")
    assert machines.image(ident).reference() == {"id": ident}
    for bad in ("Canonical:ubuntu", "https://example.test/image", "a:b:c:d#plan"):
        with pytest.raises(UsageError):
            machines.image(bad)


def test_every_alias_is_in_the_table_the_cli_prints():
    rows = {row.alias: row for row in AzureBackend.machine_types()}
    assert set(rows) == set(machines.SIZE_ALIASES.table)
    for alias, row in rows.items():
        assert machines.size(row.native) == machines.size(alias) and row.detail


def test_tpi_machines_cloud_azure_prints_the_table_without_an_azure_sdk():
    code = ("import sys\nfrom tpi_core.cli import main\n"
            "try:\n    main(['machines', '--cloud', 'azure', '--json'])\n"
            "except SystemExit as done:\n    assert done.code == 0, done.code\n"
            "loaded = [m for m in sys.modules if m.startswith(('azure', 'msal', 'aiohttp'))]\n"
            "print(loaded, file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    rows = json.loads(run.stdout)
    assert {"alias": "m+h100", "native": "Standard_NC40ads_H100_v5",
            "detail": "40 vCPU, 320 GB, 1x H100 NVL"} in rows
    assert run.stderr.strip() == "[]"
