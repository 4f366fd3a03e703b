"""The boot of a GCE task machine: the core's boot script with the GCP fetcher.

``bootfetch.py`` is GCP's half of the machine's fetcher (after the core's shared half,
:mod:`tpi_core.boot.fetchbase`): GCS get/put/count and leaving the regional MIG, with the
instance's service-account token from the metadata server.
"""

from __future__ import annotations

from importlib import resources

from tpi_core.boot import script


def fetcher_program() -> str:
    """The machine's fetcher: the core's shared half, then ``bootfetch.py``."""
    return script.fetcher_program(
        resources.files(__package__).joinpath("bootfetch.py").read_text())
