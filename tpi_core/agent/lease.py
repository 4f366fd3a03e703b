"""Claiming a replica index by lease, for clouds whose group hands out no index.

An Auto Scaling group, a managed instance group or a scale set starts N machines and says
nothing about which replica each one runs. Each machine claims one with a lease object,
``reports/replica-N/lease.json`` holding its machine id. A lease is valid while its machine
is a live member of the task's group (the cloud's ``alive`` check), so a replacement takes
over the index of the machine it replaces as soon as that one is going away, with no clock
and no heartbeat to trust. Concurrent claims are settled by "last writer wins": whoever
reads its own lease back after a pause holds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio

from tpi_core import layout
from tpi_core.errors import ObjectNotFound
from tpi_core.model import ReplicaState
from tpi_core.storage import Storage

Alive = Callable[[str], Awaitable[bool]]
"""Whether a machine id is a live member of the task's group (the cloud's probe)."""


def lease_key(index: int) -> str:
    """Key of a replica's lease."""
    return f"{layout.replica_prefix(index)}/lease.json"


async def holder(storage: Storage, index: int) -> str | None:
    """The machine id holding replica ``index``'s lease, if any."""
    lease = await read_json(storage, lease_key(index))
    return str(lease["instance"]) if lease and lease.get("instance") else None


async def claim_replica(storage: Storage, count: int, me: str, alive: Alive, *,
                        settle: float = 2.0, patience: float = 300.0) -> int | None:
    """Claim a replica of ``count`` for machine ``me``: its own (a reboot), else a free one
    (no lease, or its holder is not ``alive``); None when for ``patience`` seconds every
    replica was done or held by a live machine."""
    limit = time.monotonic() + patience
    while True:
        free = await free_replicas(storage, count, me, alive)
        if free and await _claim(storage, free[0], me, settle):
            return free[0]
        if not free and time.monotonic() > limit:
            return None
        await anyio.sleep(settle)


async def free_replicas(storage: Storage, count: int, me: str, alive: Alive) -> list[int]:
    """Replicas not final and held by no live machine; ``[i]`` alone when ``me`` holds i."""
    free = []
    for index in range(count):
        state = await read_json(storage, layout.status_key(index))
        if state and ReplicaState(state.get("state", "pending")).final:
            continue
        machine = await holder(storage, index)
        if machine == me:
            return [index]  # this machine rebooted: it keeps its replica
        if not machine or not await alive(machine):
            free.append(index)
    return free


async def _claim(storage: Storage, index: int, me: str, settle: float) -> bool:
    lease = {"instance": me, "time": time.time()}
    await storage.write(lease_key(index), json.dumps(lease).encode())
    # last writer wins: whoever reads their own lease back after the pause holds it
    await anyio.sleep(settle)
    return await holder(storage, index) == me


async def read_json(storage: Storage, key: str) -> Mapping | None:
    """The JSON object at ``key``; None when missing or not JSON."""
    try:
        return json.loads(await storage.read(key))
    except (ObjectNotFound, ValueError):
        return None
