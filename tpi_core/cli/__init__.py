"""The ``tpi`` command. Each subcommand lives in its own module, imported only when run.

\b
Exit codes:
  0  success (for apply --wait and logs --follow: the task succeeded)
  1  an operation failed, or the followed task failed
  2  bad input: tasks file, arguments, a missing or broken backend
  3  no such task
  4  the task changed and needs --replace
  5  the followed task timed out
  130 interrupted
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import os
import sys

import click

COMMANDS = {
    "apply": "Create or update tasks; --wait follows them to the end.",
    "status": "State and replica counts of tasks.",
    "logs": "Logs of every replica and boot; --follow streams them.",
    "pull": "Download the output of tasks now.",
    "stop": "Scale tasks to zero machines, keeping their storage.",
    "start": "Scale stopped tasks back up.",
    "destroy": "Download the output, then delete every resource of tasks.",
    "list": "Every task found in the local index and in the clouds.",
    "validate": "Check a tasks file and print the tasks it defines.",
    "plan": "Show what apply would do, without doing it.",
    "plugins": "Installed backends and storages, with versions.",
    "machines": "Size aliases of a backend.",
    "sync": "Copy a tree between a local path and a storage URL.",
    "debug": "Tools to rehearse failures (preemption).",
}
_MODULE = {"list": "list_", "debug": "debug"}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, so ``--help`` stays light."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"tpi_core.cli.{_MODULE.get(name, name)}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))


@click.group(cls=LazyGroup, epilog=__doc__.split("\n\n", 1)[1],
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tpi", prog_name="tpi")
@click.option("--json", "as_json", is_flag=True,
              help="Print each command's results as JSON (the same as the command's --json).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress lines or bars on stderr (errors are still printed).")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, quiet: bool) -> None:
    """Run scripts on cloud machines from a tasks.toml, with no server to keep alive."""
    from tpi_core.cli._app import Application

    ctx.obj = Application(quiet=quiet, json=as_json)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning tpi errors into one line and an exit code."""
    from tpi_core.errors import TpiError

    _quick_exit()

    try:
        code = cli.main(args=argv, prog_name="tpi", standalone_mode=False)
    except TpiError as exc:
        _fail(exc, exc.exit_code)
    except click.exceptions.Abort:
        _fail(None, 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except KeyboardInterrupt:
        _fail(None, 130)
    except OSError as exc:  # a full disk, a folder not writable: the system's words, one line
        _fail(_SystemError(exc), 1)
    sys.exit(code if isinstance(code, int) else 0)


class _SystemError(Exception):
    """An OSError as one line: ``No space left on device: results/model.bin``."""

    def __init__(self, exc: OSError):
        super().__init__(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        self.__cause__ = exc


@functools.cache
def _quick_exit() -> None:
    """Spare the interpreter its last garbage collection at exit: over the objects of
    asyncio, click, anyio and the rest it is a noticeable share of a ``tpi sync`` that
    has nothing to do (benchmarks/README.md). The freeze runs after every other exit
    handler (the first registered runs last); Python never promised finalizers for objects
    alive at exit."""
    atexit.register(gc.freeze)  # once: the function is cached


def _fail(exc: BaseException | None, code: int) -> None:
    if os.environ.get("TPI_DEBUG") and exc is not None:
        import traceback

        traceback.print_exception(exc)
    if exc is not None:
        click.echo(f"tpi: error: {exc}", err=True)
    else:
        from tpi_core.cli._app import interrupt_hint

        click.echo("; ".join(["tpi: interrupted", *interrupt_hint[-1:]]), err=True)
    sys.exit(code)
