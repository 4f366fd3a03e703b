"""tpi_core.boot.script.pack/unpack: the boot script as clouds take startup data (gzip, then
base64), read back as cloud-init reads it."""

from __future__ import annotations

import base64
import gzip

import pytest

from tpi_core.boot import script

TEXT = "#!/bin/bash\necho hello\n" * 50


def test_pack_is_gzip_then_base64_and_the_same_every_time() -> None:
    packed = script.pack(TEXT, 16384)
    raw = base64.b64decode(packed)
    assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw).decode() == TEXT
    assert script.pack(TEXT, 16384) == packed  # no time inside


def test_unpack_reads_plain_base64_and_packed() -> None:
    assert script.unpack(TEXT) == TEXT
    assert script.unpack(base64.b64encode(TEXT.encode()).decode()) == TEXT
    assert script.unpack(script.pack(TEXT, 16384)) == TEXT


def test_a_script_over_the_limit_is_a_bug() -> None:
    with pytest.raises(AssertionError, match="over 10"):
        script.pack(TEXT, 10)


def test_parse_reads_a_packed_script() -> None:
    boot = script.MachineBoot(fetcher="print()", fetcher_config={}, bundle="b", failures="f",
                              storage_url="s3://b/p", hooks="m:H", digest="d",
                              wheels=("tpi.whl",))
    rendered = script.render(boot)
    assert script.parse(script.pack(rendered, 1 << 20)) == script.parse(rendered)
