"""The agent's replica in a pod is its Job completion index."""

from __future__ import annotations

import pytest

from tpi_core.agent import load_hooks
from tpi_core.errors import UsageError
from tpi_k8s.agent import K8sHooks
from tpi_k8s.launch import HOOKS


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_index_comes_from_the_job():
    hooks = K8sHooks({"JOB_COMPLETION_INDEX": "2"})
    assert await hooks.replica_index(None, {"parallelism": 3}) == 2
    assert await hooks.environment({"environment_keys": ["A"]}) == {}


@pytest.mark.anyio
@pytest.mark.parametrize("environ", [{}, {"JOB_COMPLETION_INDEX": "x"},
                                     {"JOB_COMPLETION_INDEX": "3"}])
async def test_no_usable_index_is_a_usage_error(environ):
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX"):
        await K8sHooks(environ).replica_index(None, {"parallelism": 3})


def test_the_pods_name_these_hooks():
    assert isinstance(load_hooks(HOOKS), K8sHooks)
