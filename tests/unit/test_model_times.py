"""tpi_core.model.epoch_seconds: the times clouds answer, as epoch seconds."""

from __future__ import annotations

import datetime
import time

from tpi_core.model import epoch_seconds

NOON = datetime.datetime(2026, 1, 2, 12, 0, tzinfo=datetime.UTC)


def test_datetimes_and_iso_strings() -> None:
    assert epoch_seconds(NOON) == NOON.timestamp()
    assert epoch_seconds("2026-01-02T12:00:00Z") == NOON.timestamp()
    assert epoch_seconds("2026-01-02 12:00:00+00:00") == NOON.timestamp()


def test_missing_or_unreadable_is_now() -> None:
    before = time.time()
    assert before <= epoch_seconds(None) <= time.time()
    assert before <= epoch_seconds("yesterday") <= time.time()
