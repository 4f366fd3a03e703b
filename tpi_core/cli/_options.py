"""The options several commands take, each defined here once.

Every command that reads a tasks file takes it as ``-f/--file`` (``logs`` as ``-F/--file``:
its ``-f`` is ``--follow``, as in kubectl and tail); ``apply``, ``plan`` and ``validate``
also take it as their first argument. ``--cloud``/``--region`` say where to look for tasks.
A command's ``--json`` is the group's ``tpi --json`` given after the command.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click
from click.core import ParameterSource

from tpi_core.cli._app import Application
from tpi_core.model import DEFAULT_FILE

FILE_HELP = "The tasks file (its .tpi/ index sits beside it)."


def tasks_file_option(short: str = "-f"):
    """``-f/--file FILE``, default tasks.toml (``short``: ``-F`` where ``-f`` means more)."""
    return click.option(short, "--file", "tasks_file", default=DEFAULT_FILE, show_default=True,
                        type=click.Path(dir_okay=False), help=FILE_HELP)


file_option = tasks_file_option()
cloud_option = click.option(
    "--cloud", "clouds", multiple=True, metavar="NAME",
    help="Search only this backend, repeatable (default: every installed backend): `list` "
         "for tasks, the other commands for a task given by id.")
region_option = click.option(
    "--region", default=None, metavar="NAME",
    help="Search only this region (default: every region of the backends searched).")
overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace local files changed since tpi wrote them (default: keep them, and put "
         "the task's copy beside each as NAME.tpi-<time>).")


def json_option(help: str):
    """``CMD --json``: sets what ``tpi --json CMD`` sets (``app.json``); the body reads that."""
    return click.option("--json", is_flag=True, expose_value=False, callback=_set_json,
                        help=help)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Application).json = True


def file_and_tasks(command):
    """``[FILE] [TASK]...`` plus ``-f FILE``: the body receives ``tasks_file`` and ``names``."""

    @click.argument("args", nargs=-1, metavar="[FILE] [TASK]...")
    @file_option
    @functools.wraps(command)
    def split(*pargs, args: tuple[str, ...], tasks_file: str, **kwargs):
        source = click.get_current_context().get_parameter_source("tasks_file")
        named = tasks_file if source in (ParameterSource.COMMANDLINE,
                                         ParameterSource.ENVIRONMENT) else None
        tasks_file, names = split_args(args, named)
        return command(*pargs, tasks_file=tasks_file, names=names, **kwargs)

    return split


def split_args(args: tuple[str, ...], tasks_file: str | None = None,
               ) -> tuple[str, tuple[str, ...]]:
    """``[FILE] [TASK...]``: the first argument is the file when it looks like one, unless
    ``-f FILE`` named it (as for every other command)."""
    if tasks_file is not None:
        return tasks_file, args
    if args and (args[0].endswith(".toml") or Path(args[0]).is_file()):
        return args[0], args[1:]
    return DEFAULT_FILE, args
