"""tpi: run scripts on cloud machines from a tasks.toml, with no server to keep alive.

The Python API is the CLI's: load tasks with :func:`load`, then use an :class:`Engine`::

    import anyio, tpi_core

    async def main():
        tasks = tpi_core.load("tasks.toml")
        async with tpi_core.Engine() as engine:
            await engine.apply(await engine.plan(tasks))

    anyio.run(main)

Names are imported lazily so ``import tpi_core`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "tpi_core.config", "loads": "tpi_core.config",
    "Engine": "tpi_core.engine", "Action": "tpi_core.engine", "Planned": "tpi_core.engine",
    "Task": "tpi_core.model", "StorageSpec": "tpi_core.model", "State": "tpi_core.model",
    "ReplicaState": "tpi_core.model", "TaskStatus": "tpi_core.model",
    "Backend": "tpi_core.backend", "TaskRef": "tpi_core.backend",
    "Storage": "tpi_core.storage", "open_storage": "tpi_core.registry",
    "TpiError": "tpi_core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tpi_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
