"""Fixtures that boot cloud machines under systemd-nspawn (see tests/boot/nspawn.py).

The first session on a machine builds the Debian root (about a minute, from a Debian
mirror); later sessions unpack the cached archive (about half a second). Tests that use
these fixtures need a timeout that allows the build (``pytest.mark.timeout(600)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.boot import rootfs
from tests.boot.nspawn import NspawnMachine, kill_all


@pytest.fixture(scope="session")
def debian_root() -> Iterator[Path]:
    """The Debian root, unpacked for this session; removed after its last machine."""
    yield rootfs.debian_root()
    kill_all()
    rootfs.remove_root()


@pytest.fixture
def boot(debian_root: Path, tmp_path: Path) -> Iterator[Callable[..., NspawnMachine]]:
    """Start a machine: ``boot(name, user_data, environment=None, binds=None)``.

    Its files go to ``tmp_path / name``; machines still running at teardown are killed.
    """
    machines: list[NspawnMachine] = []

    def start(name: str, user_data: str, environment: Mapping[str, str] | None = None,
              binds: Mapping[str, str] | None = None) -> NspawnMachine:
        machine = NspawnMachine(debian_root, name, user_data, environment or {},
                                tmp_path / name, binds)
        machines.append(machine.start())
        return machine

    yield start
    for machine in machines:
        if machine.running:
            machine.kill()
