"""The size and region alias vocabulary the backends share."""

from __future__ import annotations

import pytest

from tpi_core.errors import UsageError
from tpi_core.machines import Aliases, SizeAlias, did_you_mean, parse_size


@pytest.mark.parametrize(("text", "alias"), [
    ("m", SizeAlias("m")), ("m+t4", SizeAlias("m", "t4")), (" XL+H100 ", SizeAlias("xl", "h100")),
    ("xxl", None), ("m+", None), ("m+tpu", None), ("+t4", None), ("m5.large", None),
])
def test_size_aliases_parse(text, alias):
    assert parse_size(text) == alias
    if alias:
        assert str(alias) == text.strip().lower()


def test_did_you_mean_names_the_closest_or_nothing():
    assert did_you_mean("m+t5", ["m", "m+t4", "l"]) == " (did you mean 'm+t4'?)"
    assert did_you_mean("zzzz", ["m", "l"]) == ""


def test_an_unknown_name_says_what_it_is_not_and_what_is_close():
    sizes = Aliases("machine", {"m": 1, "m+t4": 2}, "an EC2 instance type")
    error = sizes.unknown("M+T5", ["m5.large"], "a type is family.size")
    assert isinstance(error, UsageError)
    assert str(error) == ("machine 'M+T5' is neither a size alias nor an EC2 instance type "
                          "(did you mean 'm+t4'?); a type is family.size; aliases: m, m+t4")
    regions = Aliases("region", {"us-west": "us-west-1"}, "an AWS region")
    assert str(regions.unknown("us-wst")) == ("region 'us-wst' is neither a region alias nor "
                                              "an AWS region (did you mean 'us-west'?); "
                                              "aliases: us-west")
    assert regions.get(" US-West ") == "us-west-1" and regions.get("mars") is None


def test_a_size_table_takes_only_size_aliases():
    with pytest.raises(ValueError, match="huge, m\\+tpu"):
        Aliases("machine", {"m": 1, "huge": 2, "m+tpu": 3}, "x")

