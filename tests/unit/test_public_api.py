"""The public API is explicit: every name in __all__ resolves, and nothing else is promised."""

from __future__ import annotations

import pytest

import tpi_core


def test_every_exported_name_resolves():
    for name in tpi_core.__all__:
        assert getattr(tpi_core, name) is not None


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError):
        tpi_core.no_such_thing  # noqa: B018


def test_the_documented_example_names_exist():
    assert {"load", "Engine", "Backend", "Storage", "TpiError"} <= set(tpi_core.__all__)
