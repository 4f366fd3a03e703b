"""Proxies from the environment (:mod:`tpi_core.transport.proxy`): the standard rules."""

from __future__ import annotations

import base64
import os

import pytest

from tpi_core.errors import UsageError
from tpi_core.transport.proxy import parse, proxy_for, shown


def test_proxy_settings_follow_the_standard_rules(monkeypatch):
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    assert proxy_for("https://s3.example.org") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:3128")
    monkeypatch.setenv("https_proxy", "http://lower:3128")  # lower case wins, as in urllib
    monkeypatch.setenv("NO_PROXY", "internal.example,10.0.0.5")
    assert (proxy_for("https://s3.example.org").host, proxy_for("https://s3.example.org").port) \
        == ("lower", 3128)
    assert proxy_for("http://s3.example.org") is None  # no http_proxy: straight there
    assert proxy_for("https://minio.internal.example:9000") is None  # a no_proxy domain
    assert proxy_for("https://10.0.0.5") is None
    assert parse("http://u:p%3A1@h:8080").authorization == "Basic " + base64.b64encode(
        b"u:p:1").decode()
    assert shown("http://u:secret@h:8080") == "http://h:8080"
    with pytest.raises(UsageError, match="only http:// proxies") as caught:
        parse("https://u:secret@h:8443")
    assert "secret" not in str(caught.value)
