"""Sizes, node selectors, images and service accounts in TPI's Kubernetes syntax."""

from __future__ import annotations

import pytest

from tpi_core.errors import UsageError
from tpi_k8s import machines
from tpi_k8s.backend import K8sBackend


def test_aliases_follow_tpi_table():
    assert machines.size("m") == machines.Size("8", 32000)
    assert machines.size("s") == machines.Size("1", 1000)
    assert machines.size("L+V100") == machines.Size("32", 256000, "nvidia", 4)


def test_native_sizes_with_fractions_and_millicores():
    assert machines.size("0.5-512") == machines.Size("0.5", 512)
    assert machines.size("250m-128") == machines.Size("250m", 128)
    assert machines.size("4-16000+t4*2") == machines.Size("4", 16000, "t4", 2)


def test_requests_equal_limits_and_gpus_and_disk():
    wanted = machines.size("4-16000+nvidia*2").resources(disk_size=30)
    assert wanted["requests"] == {"cpu": "4", "memory": "16000M", "nvidia.com/gpu": "2"}
    assert wanted["limits"] == {**wanted["requests"], "ephemeral-storage": "30G"}
    assert machines.size("1-1000").resources() == {
        "requests": {"cpu": "1", "memory": "1000M"}, "limits": {"cpu": "1", "memory": "1000M"}}


def test_named_accelerators_select_nodes_generic_ones_do_not():
    assert machines.size("m+t4").node_selector() == {}
    assert machines.size("4-16000+nvidia-tesla-t4*1").node_selector() == {
        "accelerator": "nvidia-tesla-t4"}


@pytest.mark.parametrize("bad", ["huge", "8", "0-100", "8-0", "8-100+nvidia*0", "8-100+*1",
                                 "m5.large", "8-100+nvidia"])
def test_bad_machines_are_one_line_usage_errors(bad):
    with pytest.raises(UsageError, match="machine") as caught:
        machines.size(bad)
    assert "\n" not in str(caught.value)


def test_did_you_mean_for_a_near_alias():
    with pytest.raises(UsageError, match="did you mean 'xl'"):
        machines.size("xxl")


def test_region_is_a_node_selector_only_with_equals():
    assert machines.node_selector("us-west") == {}
    assert machines.node_selector("eu-north") == {}
    assert machines.node_selector("pool=gpu, kubernetes.io/arch=amd64") == {
        "pool": "gpu", "kubernetes.io/arch": "amd64"}
    assert machines.node_selector("tier=") == {"tier": ""}


@pytest.mark.parametrize("bad", ["pool=gpu,zone", "bad key=x", "k=has space", "=v"])
def test_bad_selectors(bad):
    with pytest.raises(UsageError, match="node selector"):
        machines.node_selector(bad)


def test_images():
    assert machines.image("ubuntu") == "ubuntu:24.04"
    assert machines.image("NVIDIA").startswith("nvidia/cuda:")
    for ref in ("ghcr.io/org/img:v1.2", "localhost:5000/a/b", "python:3.12-slim",
                "busybox@sha256:" + "a" * 64, "img:Latest"):
        assert machines.image(ref) == ref
    with pytest.raises(UsageError, match="image"):
        machines.image("Not An Image")


def test_service_accounts():
    assert machines.service_account("") == ""
    assert machines.service_account("trainer.sa-1") == "trainer.sa-1"
    with pytest.raises(UsageError, match="permission_set"):
        machines.service_account("arn:aws:iam::1:instance-profile/x")


def test_machine_types_table():
    rows = {row.alias: row for row in K8sBackend.machine_types()}
    assert rows["m"].native == "8-32000"
    assert "1x nvidia GPU" in rows["m+t4"].detail
