"""Backend.find_in: every region asked at once; a failing region is skipped unless all fail."""

from __future__ import annotations

import pytest

from tpi_core.backend import Backend, TaskRef
from tpi_core.errors import PermissionDenied

pytestmark = pytest.mark.anyio


async def test_regions_are_merged_and_sorted() -> None:
    async def find(region: str) -> list[TaskRef]:
        return [TaskRef(f"t-{n}", "c", region) for n in (2, 1)]

    found = await Backend.find_in(["b", "a"], find)
    assert [(r.region, r.task_id) for r in found] == [
        ("a", "t-1"), ("a", "t-2"), ("b", "t-1"), ("b", "t-2")]


async def test_a_region_the_account_cannot_use_is_skipped() -> None:
    async def find(region: str) -> list[TaskRef]:
        if region == "closed":
            raise PermissionDenied("OptInRequired")
        return [TaskRef("t", "c", region)]

    assert [r.region for r in await Backend.find_in(["open", "closed"], find)] == ["open"]


async def test_when_every_region_fails_the_error_is_raised() -> None:
    async def find(region: str) -> list[TaskRef]:
        raise PermissionDenied(f"no credentials for {region}")

    with pytest.raises(PermissionDenied, match="no credentials"):
        await Backend.find_in(["a", "b"], find)
