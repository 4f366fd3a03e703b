"""How a sync's result reads in messages."""

from __future__ import annotations

import pytest

from tpi_core.sync.result import SyncResult, size_text


@pytest.mark.parametrize(("sent", "nbytes", "text"), [
    (0, 0, "0 files (0 B)"),
    (1, 2, "1 file (2 B)"),
    (3, 12_345, "3 files (12.3 kB)"),
    (144, 871_196, "144 files (871.2 kB)"),
    (1, 200_000_000, "1 file (200.0 MB)"),
])
def test_moved_counts_files_and_sizes_for_people(sent: int, nbytes: int, text: str) -> None:
    assert SyncResult(sent=sent, bytes_sent=nbytes).moved() == text


def test_sizes_stop_at_gigabytes() -> None:
    assert size_text(999) == "999 B" and size_text(5 * 10**12) == "5000.0 GB"
