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


def test_native_types_are_checked_against_the_families_table():
    assert machines.instance_types("g4dn.metal") == ("g4dn.metal",)
    assert machines.instance_types("m7i.metal-48xl") == ("m7i.metal-48xl",)
    assert machines.instance_types("u-6tb1.112xlarge") == ("u-6tb1.112xlarge",)
    with pytest.raises(UsageError) as typo:
        machines.instance_types("g4dn.xlarg")
    assert str(typo.value).startswith(
        "unknown EC2 instance type 'g4dn.xlarg' (did you mean 'g4dn.xlarge'?); g4dn sizes: "
        "xlarge, 2xlarge, 4xlarge, 8xlarge, 12xlarge, 16xlarge, metal")
    with pytest.raises(UsageError, match="p3 sizes: 2xlarge, 8xlarge, 16xlarge"):
        machines.instance_types("p3.xlarge")  # TPI's m+v100 mistake, as a native type
    with pytest.raises(UsageError, match=r"did you mean 'g4dn\.xlarge'.*family\.size"):
        machines.instance_types("g4dnxlarge")
    with pytest.raises(UsageError, match="neither a size alias"):
        machines.instance_types("foo.bar")


def test_a_family_newer_than_the_table_passes_on_its_shape():
    assert "z9x" not in machines.families()
    assert machines.instance_types("z9x.4xlarge") == ("z9x.4xlarge",)
    assert machines.instance_types("q9-new.metal-24xl") == ("q9-new.metal-24xl",)
    with pytest.raises(UsageError, match="neither a size alias"):
        machines.instance_types("z9x.xlarg")


def test_families_table_covers_the_current_families_and_every_alias():
    current = ["t2", "t3", "t3a", "t4g", "m5", "m5a", "m5n", "m5d", "m6i", "m6a", "m6g", "m6id",
               "m7i", "m7a", "m7g", "c5", "c5a", "c5n", "c5d", "c6i", "c6a", "c6g", "c6gn", "c7i",
               "c7a", "c7g", "r5", "r5a", "r5n", "r5d", "r6i", "r6a", "r6g", "r7i", "r7a", "r7g",
               "x2idn", "x2iedn", "z1d", "i3", "i3en", "i4i", "d3", "p3", "p3dn", "p4d", "p4de",
               "p5", "g4dn", "g4ad", "g5", "g5g", "g6", "g6e", "inf1", "inf2", "trn1", "dl1",
               "hpc6a"]
    assert [family for family in current if not machines.families().get(family)] == []
    for types in machines.SIZES.values():
        for native in types:
            family, _, size = native.partition(".")
            assert size in machines.families()[family], native


def test_families_table_names_only_types_botocore_knows():
    loaders = pytest.importorskip("botocore.loaders")
    model = loaders.Loader().load_service_model("ec2", "service-2")
    known = set(model["shapes"]["InstanceType"]["enum"])
    table = {f"{f}.{s}" for f, sizes in machines.families().items() for s in sizes}
    assert table - known == set()
    assert all(machines.SHAPE.match(t) for t in known)


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


def test_image_queries_describe_themselves_without_a_repr():
    assert machines.image("Ubuntu").describe().startswith(
        "image alias 'ubuntu' (099720109477:x86_64:ubuntu/images/")
    assert machines.image("me@123:arm64:mine-*").describe() == "image '123:arm64:mine-*'"


def test_machine_types_table_covers_every_alias():
    rows = AWSBackend.machine_types()
    assert [r.alias for r in rows] == list(machines.SIZES)
    assert all(r.detail for r in rows)
    assert next(r for r in rows if r.alias == "m+v100").native == "p3.2xlarge"
