"""Waiting for a cloud's preemption notice by polling a probe.

AWS announces a spot interruption at ``spot/instance-action`` of its instance metadata, GCP
sets the ``preempted`` metadata key, Azure lists a ``Preempt`` scheduled event: each cloud
writes a :data:`Probe`, and :func:`poll_notice` asks it until it says yes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from tpi_core.errors import TransientError

Probe = Callable[[], Awaitable[bool]]
"""True once the cloud announced that this machine is going away."""


async def poll_notice(probe: Probe, interval: float) -> None:
    """Return once ``probe`` says the machine is going away; it is asked every ``interval``
    seconds, and a :class:`~tpi_core.errors.TransientError` is asked again at the next."""
    while True:
        try:
            if await probe():
                return
        except TransientError:
            pass  # the metadata service had a hiccup: the next poll tries again
        await anyio.sleep(interval)
