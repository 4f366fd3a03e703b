"""``tpi sync SRC DST``: copy a tree between a local path and a storage URL."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import json_option
from tpi_core.sync import DEFAULT_JOBS

if TYPE_CHECKING:
    from tpi_core.storage.sync import DryRun, SyncResult

MANIFEST_KEY = ".tpi/manifest.json"
"""Where an upload keeps its manifest, under the destination (``.tpi/`` never syncs)."""


@click.command("sync", short_help="Copy a tree between a local path and a storage URL.")
@click.argument("src")
@click.argument("dst")
@click.option("--delete", is_flag=True,
              help="Mirror: delete files at DST that SRC does not have (excluded ones stay). "
                   "A storage SRC with nothing in it is refused when DST has files.")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Leave out paths matching this gitignore-style glob (any depth unless it "
                   "starts with /); '+ GLOB' re-includes, the first matching rule wins. "
                   "Repeatable.")
@click.option("--jobs", "-j", type=click.IntRange(1, 512), default=DEFAULT_JOBS,
              show_default=True, help="Files transferred at once.")
@click.option("--max-delete", type=click.IntRange(0), metavar="N",
              help="With --delete: when more than N files would be deleted, delete none and "
                   "fail (after the copy).")
@click.option("--dry-run", "-n", is_flag=True,
              help="Print what would be sent, fetched and deleted, one line each; change "
                   "nothing.")
@json_option("Print the result as JSON.")
@pass_app
def command(app: Application, src: str, dst: str, delete: bool, excludes: tuple[str, ...],
            jobs: int, max_delete: int | None, dry_run: bool) -> None:
    """Copy SRC to DST, sending only what changed.

    Each side is a local directory or a storage URL (file:///path, s3://bucket/prefix, ...).
    A local SRC is uploaded to DST; a URL SRC is downloaded into a local DST. An upload keeps
    its manifest at DST/.tpi/manifest.json, so a second sync of an unchanged tree sends
    nothing; .tpi/ itself is never copied.
    """
    rules = [_rule(pattern) for pattern in excludes]
    actions: list[dict] = []
    tell = None  # a dry run's listener: each change it would make
    if dry_run:
        tell = _collect(actions) if app.json else _print(app)
    result = app.run(_sync, app, src, dst, delete, rules, jobs, tell, max_delete)
    if app.json:
        app.out_json(asdict(result) | ({"dry_run": True, "actions": actions} if dry_run else {}))
    else:
        _summary(app, result, dry_run)


def _rule(pattern: str) -> str:
    return pattern if pattern.startswith(("- ", "+ ")) else "- " + pattern


def _is_url(side: str) -> bool:
    return "://" in side


def _print(app: Application):
    from tpi_core.sync.result import size_text

    def would(verb: str, key: str, size: int | None) -> None:
        app.out(f"would {verb} {key}" + (f" ({size_text(size)})" if size is not None else ""))
    return would


def _collect(actions: list[dict]):
    def would(verb: str, key: str, size: int | None) -> None:
        actions.append({"action": verb, "key": key} | ({"size": size} if size is not None
                                                        else {}))
    return would


async def _sync(app: Application, src: str, dst: str, delete: bool, rules: list[str],
                jobs: int, dry_run: DryRun | None, max_delete: int | None) -> SyncResult:
    from tpi_core.errors import UsageError
    from tpi_core.registry import open_storage
    from tpi_core.storage.sync import download_tree, upload_tree

    if _is_url(src) and _is_url(dst):
        raise UsageError("sync between two storage URLs is not supported yet; "
                         "sync through a local directory")
    with _progress_bar(app, quiet=dry_run is not None) as progress:
        if _is_url(src):
            async with open_storage(src) as remote:
                _check_file_side(remote, dst, reading=True)
                return await download_tree(remote, _local(dst, must_exist=False),
                                           exclude=rules, delete=delete, jobs=jobs,
                                           manifest=(remote, MANIFEST_KEY), progress=progress,
                                           dry_run=dry_run, max_delete=max_delete)
        async with open_storage(dst) as remote:
            _check_file_side(remote, src, reading=False)
            return await upload_tree(_local(src, must_exist=True), remote, exclude=rules,
                                     delete=delete, jobs=jobs,
                                     manifest=(remote, MANIFEST_KEY), progress=progress,
                                     dry_run=dry_run, max_delete=max_delete)


def _check_file_side(storage: object, local: str, *, reading: bool) -> None:
    """A file:// side: read from, it must be a directory (a typo is not an empty storage,
    as an S3 prefix with nothing under it is); and it must not hold the local side or lie
    inside it, or the copy would copy itself, one more level each sync (backup/backup/...)."""
    from pathlib import Path

    from tpi_core.errors import UsageError
    from tpi_core.storage.local import LocalStorage

    if not isinstance(storage, LocalStorage):
        return
    if reading and not storage.root.is_dir():
        raise UsageError(f"{storage.url}: no such directory")
    there, here = storage.root.resolve(), Path(local).expanduser().resolve()
    if there == here or there.is_relative_to(here) or here.is_relative_to(there):
        raise UsageError(f"{storage.url} and {local} overlap: the copy would copy itself; "
                         "choose a destination outside the source")


def _local(side: str, *, must_exist: bool):
    from pathlib import Path

    from tpi_core.errors import UsageError

    path = Path(side).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{side}: not a directory")
    if must_exist and not path.is_dir():
        raise UsageError(f"{side}: no such directory")
    return path


def _progress_bar(app: Application, *, quiet: bool = False):
    import contextlib

    from tpi_core.cli._progress import progress_factory

    if quiet or app.quiet or app.plain_stderr:  # no bar: spare the import of rich
        return contextlib.nullcontext(None)
    rows = progress_factory(app)
    return rows("sync") if rows else contextlib.nullcontext(None)


def _summary(app: Application, result: SyncResult, dry_run: bool = False) -> None:
    from tpi_core.sync.result import size_text

    for line in result.skipped:
        app.say(f"skipped {line}")
    if dry_run:
        app.say(f"dry run, nothing changed: {result.sent} to send "
                f"({size_text(result.bytes_sent)}), {result.unchanged} unchanged, "
                f"{result.deleted} to delete, {len(result.skipped)} skipped")
        return
    app.say(f"{result.sent} sent ({size_text(result.bytes_sent)}), {result.unchanged} "
            f"unchanged, {result.deleted} deleted, {len(result.skipped)} skipped")
