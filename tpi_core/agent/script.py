"""The user's script: a login shell in its own process group, its output in the boot log.

The script runs as ``bash -lc 'exec FILE'`` (TPI's unit does the same), so the process the
agent waits for is the script itself and its children share its process group, which the
agent signals as a whole. The group stays in the agent's session, so whoever kills the
agent's session (the local supervisor, ``tpi debug preempt``) takes the script with it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from tpi_core.agent.bootlog import BootLog, pump
from tpi_core.concurrent import task_group

BASIC_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM",
                   "TZ", "TMPDIR")
"""What the script gets from the agent's environment besides the task's own keys."""

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_LEFTOVER_GRACE = 1.0


def script_environment(environ: Mapping[str, str], keys: Iterable[str], *, task_id: str,
                       replica: int, count: int, attempt: int) -> dict[str, str]:
    """The script's environment: basics, the task's keys found in ``environ``, TPI_*."""
    env = {k: v for k, v in environ.items() if k in BASIC_VARIABLES or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({k: environ[k] for k in keys if k in environ})
    env.update(TPI_TASK_ID=task_id, TPI_REPLICA_INDEX=str(replica),
               TPI_REPLICA_COUNT=str(count), TPI_ATTEMPT=str(attempt))
    return env


def exit_code(returncode: int) -> int:
    """A shell-style exit code: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Script:
    """A running script; every signal goes to its whole process group."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    @property
    def pid(self) -> int:
        """The script's pid, which is also its process group id."""
        return self.process.pid

    async def wait(self) -> int:
        """Wait for the script to exit; its exit code (128 + N when killed by signal N)."""
        return exit_code(await self.process.wait())

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the script's process group; a group already gone is fine."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; the exit code."""
        self.signal(signal.SIGTERM)
        with anyio.move_on_after(grace):
            return await self.wait()
        self.signal(signal.SIGKILL)
        return await self.wait()


@asynccontextmanager
async def run_script(text: str, workdir: Path, env: Mapping[str, str],
                     log: BootLog) -> AsyncIterator[Script]:
    """Start ``text`` in ``workdir``; on leaving, what it left behind is stopped and its
    output drained into ``log``."""
    with tempfile.TemporaryDirectory(prefix="tpi-script-") as tmp:
        script = Script(await _spawn(_write(Path(tmp), text), workdir, env))
        drained = anyio.Event()
        try:
            async with task_group() as tg:
                tg.start_soon(_pump_all, script.process, log, drained)
                yield script
                await _reap_leftovers(script, drained)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if script.process.returncode is None:
                    script.signal(signal.SIGKILL)
                    await script.wait()


def _write(directory: Path, text: str) -> Path:
    path = directory / "script"
    if not text.startswith("#!"):
        text = "#!/bin/bash\n" + text
    path.write_text(text)
    path.chmod(0o700)
    return path


async def _spawn(path: Path, workdir: Path, env: Mapping[str, str]):
    # anyio.open_process cannot make a process group inside the current session
    return await asyncio.create_subprocess_exec(
        "bash", "-lc", f"exec {shlex.quote(str(path))}", cwd=workdir, env=dict(env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, process_group=0)


async def _pump_all(process: asyncio.subprocess.Process, log: BootLog,
                    drained: anyio.Event) -> None:
    async with task_group() as tg:
        tg.start_soon(pump, process.stdout, "stdout", log)
        tg.start_soon(pump, process.stderr, "stderr", log)
    drained.set()


async def _reap_leftovers(script: Script, drained: anyio.Event) -> None:
    # background processes of a finished script hold its pipes open: a machine's service
    # manager would stop them, and so does the agent (SIGTERM, then SIGKILL)
    await script.wait()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            script.signal(sig)
        with anyio.move_on_after(_LEFTOVER_GRACE):
            await drained.wait()
            return
