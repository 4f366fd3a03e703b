"""The script in a companion container of the same pod: a handshake through a shared directory.

On Kubernetes the user's script runs in the user's own image, which needs nothing but
``/bin/sh``; the agent runs beside it in an image with Python. The two share two volumes:
the workdir (the agent restores ``data/`` into it) and a run directory, through which they
talk with files alone, so the user's container needs no tool beyond the shell and
coreutils' ``sleep``. :data:`WRAPPER` is the user container's command
(``/bin/sh -c WRAPPER``); its image's entrypoint is overridden.

Files of the run directory, in the order they appear::

    script      the task's script (agent)
    env         ``export TPI_...=...`` lines the wrapper sources (agent; no secret: the
                task's environment values reach the container as its own variables)
    stdout      the script's output, appended by the wrapper, tailed by the agent
    stderr
    go          the agent restored the workdir: the script may start (agent)
    started     the script's pid (wrapper)
    term        the wrapper got SIGTERM: the pod is going (wrapper)
    stop        stop the script, after the given grace: SIGTERM, then SIGKILL (agent)
    exit        the script's exit code (wrapper)
    done        the code the wrapper exits with, once the agent synced and reported

A script without a ``#!`` line runs with bash when the image has it, else with ``sh``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from tpi_core.agent.bootlog import BootLog, pump
from tpi_core.concurrent import task_group

POLL = 0.2
"""Seconds between two looks at the run directory."""
OPEN = 0o777
"""Mode of the run directory and the workdir's entries: the user's container may run as
any user, and only the two containers of the pod see them."""

WRAPPER = r"""R=${TPI_RUN:-/tpi/run}
pid=
command -v sleep >/dev/null 2>&1 || {
  echo "tpi: this image has no sleep command (coreutils or busybox): it cannot wait" >&2
  exit 127
}
trap 'echo >"$R/term"; [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null' TERM INT
echo "tpi: waiting for the agent to restore the workdir" >&2
while [ ! -e "$R/go" ] && [ ! -e "$R/done" ]; do sleep 0.2 || exit 127; done
if [ ! -e "$R/done" ]; then
  . "$R/env"
  cd "$TPI_WORKDIR" || exit 127
  IFS= read -r first <"$R/script" || first=
  case $first in
    '#!'*) "$R/script" >>"$R/stdout" 2>>"$R/stderr" </dev/null & ;;
    *) if command -v bash >/dev/null 2>&1; then shell=bash; else shell=sh; fi
       "$shell" "$R/script" >>"$R/stdout" 2>>"$R/stderr" </dev/null & ;;
  esac
  pid=$!
  echo "$pid" >"$R/started"
  (while [ ! -e "$R/stop" ]; do kill -0 $$ 2>/dev/null && sleep 0.2 || exit 0; done
   kill -TERM "$pid" 2>/dev/null
   read -r grace <"$R/stop" || grace=5; sleep "${grace:-5}"
   kill -KILL "$pid" 2>/dev/null) &
  watcher=$!
  while :; do
    wait "$pid"; code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  kill "$watcher" 2>/dev/null
  case $code$first in
    '127#!'*) i=${first#??}; i=${i# }; i=${i%% *}
      [ -x "$i" ] || echo "tpi: the script's interpreter $i is not in this image" >>"$R/stderr"
  esac
  echo "$code" >"$R/exit"
fi
while [ ! -e "$R/done" ]; do sleep 0.2 || exit 127; done
read -r code <"$R/done" || code=1
exit "${code:-1}"
"""


def wrapper_command() -> list[str]:
    """The user container's command."""
    return ["/bin/sh", "-c", WRAPPER]


class _Tail:
    """A file another container appends to, read as a pipe: :meth:`read` waits for more
    and returns ``b""`` once :attr:`ended` is set and nothing is left."""

    def __init__(self, path: Path):
        self.path, self.ended, self._offset = path, False, 0

    async def read(self, size: int) -> bytes:
        while True:
            chunk = await anyio.to_thread.run_sync(self._read, size)
            if chunk or self.ended:
                return chunk
            await anyio.sleep(POLL)

    def _read(self, size: int) -> bytes:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(size)
        except FileNotFoundError:
            return b""
        self._offset += len(chunk)
        return chunk


class CompanionScript:
    """The script in the companion container, as :class:`~tpi_core.agent.script.Script`
    is a local one: wait for it, stop it."""

    def __init__(self, run: Path):
        self.run = run

    @property
    def pid(self) -> str:
        """The script's pid in its own container, once it started."""
        return _read(self.run / "started") or "?"

    @property
    def started(self) -> bool:
        """Whether the wrapper started the script."""
        return bool(_read(self.run / "started"))

    @property
    def terminated(self) -> bool:
        """Whether the companion container got SIGTERM (its pod is going)."""
        return (self.run / "term").exists()

    async def wait(self) -> int:
        """The script's exit code, once the wrapper wrote it."""
        while not (code := _read(self.run / "exit")).isdigit():
            await anyio.sleep(POLL)
        return int(code)

    async def stop(self, grace: float) -> int:
        """Ask the wrapper for SIGTERM, then SIGKILL after ``grace``; the exit code (137
        when the wrapper never answers: its container is gone or never started)."""
        _write(self.run / "stop", f"{max(1, round(grace))}\n")
        with anyio.move_on_after(grace + 5):
            return await self.wait()
        return 137


def prepare(run: Path, workdir: Path) -> None:
    """The run directory, empty, and the workdir open to the companion's user."""
    run.mkdir(parents=True, exist_ok=True)
    for entry in run.iterdir():
        entry.unlink()
    os.chmod(run, OPEN)
    for root, dirs, files in os.walk(workdir):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o666 | (0o111 if name in dirs else 0))
    os.chmod(workdir, OPEN)


def finish(run: Path, code: int) -> None:
    """Tell the wrapper to exit with ``code`` (the agent has synced and reported)."""
    if run.is_dir():
        _write(run / "done", f"{code}\n")


@asynccontextmanager
async def run_in_companion(text: str, run: Path, workdir: Path, env: Mapping[str, str],
                           log: BootLog) -> AsyncIterator[CompanionScript]:
    """Hand ``text`` to the companion container and tail its output into ``log``. Only
    ``TPI_*`` variables of ``env`` are passed: the rest are the container's own."""
    if not text.strip():
        text = ":\n"
    _write(run / "script", text, 0o755)
    exports = {k: v for k, v in env.items() if k.startswith("TPI_")}
    exports["TPI_WORKDIR"] = str(workdir)
    _write(run / "env", "".join(f"export {k}={shlex.quote(v)}\n"
                                for k, v in sorted(exports.items())))
    tails = {name: _Tail(run / name) for name in ("stdout", "stderr")}
    for name in tails:
        _write(run / name, "", 0o666)
    _write(run / "go", "1\n")
    script = CompanionScript(run)
    async with task_group() as tg:
        for name, tail in tails.items():
            tg.start_soon(pump, tail, name, log)
        try:
            yield script
        finally:
            for tail in tails.values():
                tail.ended = True


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write whole, then rename: the other container never reads half a file."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.chmod(temp, mode)
    os.replace(temp, path)
