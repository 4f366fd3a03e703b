"""GCP's sizes, regions and images: TPI's aliases on current families, native names passed
through, bad names refused in one line with a suggestion, and ``tpi machines --cloud gcp``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tpi_gcp import machines
from tpi_gcp.backend import GCPBackend

from tpi_core.errors import UsageError


def test_tpi_aliases_and_current_gpus():
    assert machines.machine("m") == machines.Machine("e2-standard-8")
    assert machines.machine("m+t4") == machines.Machine("n1-standard-4", "nvidia-tesla-t4", 1)
    assert machines.machine("L+V100") == machines.Machine("n1-standard-32",
                                                          "nvidia-tesla-v100", 4)
    for alias, family in [("m+l4", "g2-"), ("m+a100", "a2-"), ("xl+h100", "a3-")]:
        found = machines.machine(alias)
        assert found.type.startswith(family) and found.gpus and not found.accelerator


def test_native_machine_types_pass_through():
    assert machines.machine("n2-highmem-16") == machines.Machine("n2-highmem-16")
    assert machines.machine("n1-standard-8+nvidia-tesla-p100*2") == machines.Machine(
        "n1-standard-8", "nvidia-tesla-p100", 2)
    assert not machines.machine("e2-medium").gpus


@pytest.mark.parametrize("bad", ["huge", "m+t5", "n1-standard-8+nvidia-tesla-t4*0", "8-16000"])
def test_bad_sizes_are_one_line_usage_errors(bad):
    with pytest.raises(UsageError) as found:
        machines.machine(bad)
    assert "\n" not in str(found.value) and bad in str(found.value)


def test_an_alias_near_a_known_one_is_suggested():
    with pytest.raises(UsageError, match="m\\+t4"):
        machines.machine("m+t44")


def test_regions_from_aliases_regions_and_zones():
    assert machines.region("eu-west") == "europe-west1"
    assert machines.region("us-central1") == "us-central1"
    assert machines.region("us-central1-a") == "us-central1"
    with pytest.raises(UsageError, match="us-central1"):
        machines.region("mars")


def test_images_from_aliases_families_and_paths():
    assert machines.image("ubuntu").endswith("/family/ubuntu-2404-lts-amd64")
    assert "deeplearning-platform-release" in machines.image("nvidia")
    assert machines.image("debian-cloud/debian-12") == (
        "projects/debian-cloud/global/images/family/debian-12")
    with pytest.raises(UsageError, match="not an alias"):
        machines.image("https://example.test/image")


def test_every_alias_is_in_the_table_the_cli_prints():
    rows = {row.alias: row for row in GCPBackend.machine_types()}
    assert set(rows) == set(machines.SIZE_ALIASES.table)
    for alias, row in rows.items():
        assert machines.machine(row.native) == machines.machine(alias) and row.detail


def test_tpi_machines_cloud_gcp_prints_the_table_without_a_google_sdk():
    code = ("import sys\nfrom tpi_core.cli import main\n"
            "try:\n    main(['machines', '--cloud', 'gcp', '--json'])\n"
            "except SystemExit as done:\n    assert done.code == 0, done.code\n"
            "loaded = [m for m in sys.modules if m.startswith(('google', 'gcloud', 'grpc'))]\n"
            "print(loaded, file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    rows = json.loads(run.stdout)
    assert {"alias": "m+a100", "native": "a2-highgpu-1g",
            "detail": "12 vCPU, 85 GB, 1x A100 40GB"} in rows
    assert run.stderr.strip() == "[]"
