"""The Application every command body receives: output, prompts and the async seam.

``anyio.run`` appears here and nowhere else in tpi.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

T = TypeVar("T")

FOLLOW_HINT = ("the tasks go on without tpi: `tpi status` shows them, `tpi logs --follow` "
               "watches again, `tpi destroy` ends them")
interrupt_hint: list[str] = []
"""What an interrupted command adds to its one line (set while it follows running tasks)."""


class Application:
    """Owns the console (rich, on stderr for progress and messages) and runs coroutines.

    ``json``: commands print their results as JSON (``tpi --json CMD`` or ``CMD --json``);
    ``quiet``: no progress lines or bars on stderr (errors are printed all the same).
    """

    def __init__(self, quiet: bool = False, json: bool = False):
        self.quiet = quiet
        self.json = json
        self._console = None

    @property
    def console(self):
        """A rich console on stderr (imported on first use)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    @property
    def plain_stderr(self) -> bool:
        """True when stderr is surely no terminal (a pipe, a file): known without importing
        rich, which then is not needed for messages (rich's own test when it is loaded)."""
        if self._console is not None:
            return not self._console.is_terminal
        if os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR"):
            return False
        try:
            return not sys.stderr.isatty()
        except ValueError:  # closed
            return True

    @property
    def interactive(self) -> bool:
        """True when a person is at a terminal (prompts and live progress make sense)."""
        return sys.stdin.isatty() and sys.stderr.isatty()

    def say(self, message: str) -> None:
        """A progress or status message on stderr (none with ``--quiet``)."""
        if self.quiet:
            return
        if self.plain_stderr:  # what rich would print there, without its import cost
            click.echo(message, err=True)
        else:
            self.console.print(message, markup=False, highlight=False)

    def out(self, text: str) -> None:
        """Command output on stdout (what scripts read)."""
        click.echo(text)

    def out_json(self, doc: Any) -> None:
        """JSON on stdout."""
        click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))

    def confirm(self, question: str) -> bool:
        """Ask on a terminal; without one, the answer is yes (the caller decides if that is safe)."""
        if not self.interactive:
            return True
        return click.confirm(question, default=False, err=True)

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an async function to completion: the only sync/async seam of tpi. Ctrl-C
        (SIGINT) cancels it through anyio and ends in KeyboardInterrupt."""
        import anyio

        return anyio.run(_interruptible, fn, *args)


async def _interruptible(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``fn(*args)``, cancelled by a SIGINT through an anyio cancel scope, then
    KeyboardInterrupt. asyncio's own handling cancels the main task once, and an anyio
    scope that is being left at that moment swallows it: an interrupted ``apply`` or
    ``logs --follow`` then went on. A scope's cancellation holds until the scope is left.
    A second Ctrl-C stops at once (the default handler is back)."""
    import signal
    import threading

    import anyio

    from tpi_core.concurrent import task_group

    if threading.current_thread() is not threading.main_thread():
        return await fn(*args)  # signals reach the main thread only
    interrupted, done = False, []
    async with task_group() as group:
        async def watch() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    group.cancel_scope.cancel()
                    return

        group.start_soon(watch)
        done.append(await fn(*args))
        group.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    return done[0]


pass_app = click.make_pass_decorator(Application, ensure=True)
