"""What the clouds' boot tests share: the machines' package cache, and the CLI run as a user
runs it (a process of its own) with its status read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.boot import rootfs


def machine_cache() -> Path:
    """A host folder bound to every machine's /var/cache/tpi: uv and the wheels it fetched
    are downloaded once per test run instead of once per boot."""
    path = rootfs.cache_dir() / "machine-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tpi(workdir: Path, *args: str, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``tpi ARGS`` in ``workdir``; a failure shows its stderr unless ``check`` is false."""
    run = subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=workdir,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    if check and run.returncode != 0:
        raise AssertionError(f"tpi {' '.join(args)} exited {run.returncode}:\n{run.stderr}")
    return run


def status(workdir: Path) -> dict:
    """The first task's ``tpi status --json``."""
    return json.loads(tpi(workdir, "status", "--json").stdout)[0]
