"""Size, region and image aliases of the AWS backend, and the table of `tpi machines`."""

from __future__ import annotations

import pytest

from tpi_aws import machines
from tpi_aws.backend import AWSBackend
from tpi_core.errors import UsageError


def test_tpi_aliases_keep_their_first_type_and_p3_is_fixed():
    assert machines.instance_types("m")[0] == "m5.2xlarge"
    assert machines.instance_types("s")[-1] == "t2.micro"
    assert machines.instance_types("m+t4")[0] == "g4dn.xlarge"
    assert machines.instance_types("m+v100") == ("p3.2xlarge",)
    assert all("p3.xlarge" not in types for types in machines.SIZES.values())


def test_cpu_aliases_offer_several_equivalent_types_for_spot():
    for alias in ("m", "l", "xl"):
        types = machines.instance_types(alias)
        assert len(types) >= 4
        assert len({t.split(".")[1] for t in types}) == 1  # same size in every family


def test_current_gpus_are_there():
    for alias, family in (("m+a10g", "g5"), ("m+l4", "g6"), ("xl+a100", "p4d"),
                          ("xl+h100", "p5")):
        assert machines.instance_types(alias)[0].startswith(family + ".")


def test_native_types_pass_through_and_unknown_aliases_suggest():
    assert machines.instance_types("C7i.Large") == ("c7i.large",)
    with pytest.raises(UsageError, match=r"did you mean 'm\+t4'"):
        machines.instance_types("m+t5")
    with pytest.raises(UsageError, match="aliases: s, m, l"):
        machines.instance_types("huge")


def test_regions():
    assert machines.region("us-west") == "us-west-1"
    assert machines.region("eu-north") == "eu-north-1"
    assert machines.region("ap-southeast-2") == "ap-southeast-2"
    assert machines.region("us-gov-west-1") == "us-gov-west-1"
    with pytest.raises(UsageError, match="did you mean 'us-east'"):
        machines.region("us-eats")


def test_images():
    ubuntu = machines.image("ubuntu")
    assert ubuntu.owner == "099720109477" and "noble-24.04" in ubuntu.name
    assert "Ubuntu 24.04" in machines.image("nvidia").name
    assert machines.image("ami-0123456789abcdef0") == "ami-0123456789abcdef0"
    tpi_form = machines.image("ubuntu@099720109477:x86_64:*ubuntu-focal-20.04*")
    assert tpi_form == machines.ImageQuery("099720109477", "x86_64", "*ubuntu-focal-20.04*")
    with pytest.raises(UsageError, match="not an alias"):
        machines.image("debian")


def test_machine_types_table_covers_every_alias():
    rows = AWSBackend.machine_types()
    assert [r.alias for r in rows] == list(machines.SIZES)
    assert all(r.detail for r in rows)
    assert next(r for r in rows if r.alias == "m+v100").native == "p3.2xlarge"
