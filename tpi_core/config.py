"""tasks.toml -> :class:`~tpi_core.model.Task` values (DESIGN.md section 3).

``[task.NAME]`` tables hold TPI's ``iterative_task`` fields with TPI's defaults (``cloud``:
``local``). Each field has a validator in ``_TASK_FIELDS``/``_STORAGE_FIELDS`` that converts
its value or raises ``_Invalid`` saying what is allowed; the loader makes that a one-line
:class:`~tpi_core.errors.ConfigError` naming file, task and key, never an environment value.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tpi_core import registry
from tpi_core.backend import Capability
from tpi_core.errors import ConfigError, FieldError, PluginError, UsageError
from tpi_core.identifier import deterministic, is_task_id
from tpi_core.model import (
    DEFAULT_FILE,
    DEFAULT_MACHINE,
    DEFAULT_REGION,
    Secrets,
    StorageSpec,
    Task,
    frozen_map,
)

BUILTIN_CLOUDS = ("local", "aws", "gcp", "azure", "k8s")
DEFAULT_CLOUD = "local"
CI_VARIABLES = ("CI", "CI_*", "GITHUB_*", "BITBUCKET_*", "CML_*", "REPO_TOKEN")
"""Copied from the local environment when set, as TPI does, so CI tools work in the task."""

_TASK_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_GLOB = re.compile(r"[A-Za-z0-9_*?]+")
_DURATION = re.compile(r"([0-9]+)|(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_DURATION_HELP = "seconds > 0 or a duration like '90s', '45m', '2h30m', '1d2h'"
_OS_ERRORS = {FileNotFoundError: "no such file", IsADirectoryError: "is a directory, not a file"}
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string",
               dict: "table", list: "array"}


class _Invalid(Exception):
    """A value is not allowed; ``key`` is where inside the task (``storage.output``)."""
    def __init__(self, reason: str, key: str | None = None):
        super().__init__(reason)
        self.key = key


def load(path: str | os.PathLike[str], names: Sequence[str] = (), *,
         environ: Mapping[str, str] | None = None) -> list[Task]:
    """The tasks of the file at ``path`` (only those in ``names`` when given), in file order;
    ``environ`` stands in for ``os.environ`` (the local environment tasks copy from).
    Raises :class:`ConfigError` with a one-line message for every problem.
    """
    return loads(_read(Path(path), str(path)), str(path), Path(path).parent, names, environ=environ)


def loads(text: str, source: str = "tasks.toml", base_dir: Path = Path("."),
          names: Sequence[str] = (), *, environ: Mapping[str, str] | None = None) -> list[Task]:
    """The tasks in ``text``; ``source`` names the file in errors and ``Task.source``, and
    relative paths in it start at ``base_dir``."""
    base, environ = Path(base_dir).resolve(), dict(os.environ if environ is None else environ)
    tables = _task_tables(_parse_toml(text, source), source)
    tasks = [_task(key, table, source, base, environ) for key, table in tables.items()]
    _check_unique(tasks, source)
    return _select(tasks, (names,) if isinstance(names, str) else names, source)


def parse_duration(text: str) -> int:
    """Seconds in ``"90"``, ``"90s"``, ``"45m"``, ``"2h30m"``, ``"1d2h"`` (units in the order
    d, h, m, s; no spaces). Raises ValueError for anything else or for zero.
    """
    match = _DURATION.fullmatch(text)
    units = (1, 86400, 3600, 60, 1)
    seconds = sum(int(n or 0) * u for n, u in zip(match.groups(), units)) if match else 0
    if seconds <= 0:
        raise ValueError(f"not a duration > 0: {text!r} (allowed: {_DURATION_HELP})")
    return seconds


def _read(path: Path, source: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = _OS_ERRORS.get(type(exc), f"cannot be read: {exc.strerror or exc}")
        raise ConfigError(source, reason) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = data.count(b"\n", 0, exc.start) + 1, exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(source, "is not UTF-8 text", line=line, col=col) from exc


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        said = str(exc)
        opened = _unterminated(text) if ("end of document" in said or "Unterminated" in said
                                         or "Illegal character '\\n'" in said) else None
        if opened is not None:  # tomllib says "at end of document", or the line's end
            line, col, quote = opened
            raise ConfigError(source, f"invalid TOML: the string opened here with {quote} is "
                              "never closed", line=line, col=col) from exc
        at = _TOML_AT.search(str(exc))
        where = {"line": int(at[1]), "col": int(at[2])} if at else {}
        reason = str(exc)[:at.start()] if at else str(exc)
        raise ConfigError(source, f"invalid TOML: {reason}", **where) from exc


def _unterminated(text: str) -> tuple[int, int, str] | None:
    """Line, column and quote of the first string that is never closed (a ``"`` or ``'``
    string must close on its line, a triple-quoted one anywhere), or None."""
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char == "#":
            i = text.find("\n", i)
            i = end if i < 0 else i
        elif char in "\"'":
            quote = text[i:i + 3] if text.startswith(char * 3, i) else char
            close = _string_end(text, i + len(quote), quote)
            if close < 0:
                line = text.count("\n", 0, i) + 1
                return line, i - text.rfind("\n", 0, i), quote
            i = close
        i += 1
    return None


def _string_end(text: str, i: int, quote: str) -> int:
    """Index of the last character of the string whose body starts at ``i``, or -1."""
    escapes = quote[0] == '"'
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if len(quote) == 1 and text[i] == "\n":
            return -1
        if text.startswith(quote, i):
            return i + len(quote) - 1
        i += 1
    return -1


def _task_tables(doc: dict[str, Any], source: str) -> dict[str, Any]:
    for key in (key for key in doc if key != "task"):
        raise ConfigError(source, f"unknown top-level key{_did_you_mean(key, ['task'])} "
                          "(allowed: task, as [task.NAME] tables)", key=key)
    tables = doc.get("task", {})
    if not isinstance(tables, dict):
        raise ConfigError(source, f"must be [task.NAME] tables, got {_type_name(tables)}",
                          key="task")
    if not tables:
        raise ConfigError(source, "no tasks: add a [task.NAME] table with at least a script")
    return tables


def _task(key: str, table: Any, source: str, base: Path, environ: Mapping[str, str]) -> Task:
    try:
        if not _TASK_KEY.fullmatch(key):
            raise _Invalid("a task name is letters, digits, '-' and '_'")
        values = _validate(table, _TASK_FIELDS, base, f"[task.{key}]")
        if "script" not in values:
            raise _Invalid("is required: the script to run, a string", "script")
    except _Invalid as exc:
        raise ConfigError(source, str(exc), task=key, key=exc.key) from None
    task_id = _task_id(key, values.pop("name", None), base, Path(source).name)
    declared = values.get("environment", {})
    values["environment"] = _environment(declared, values, environ)
    values["unset"] = tuple(k for k, v in declared.items()
                            if "*" not in k and not v and k not in environ)
    return Task(name=key, id=task_id, base_dir=base, source=source,
                region_given="region" in values, **{"cloud": DEFAULT_CLOUD, **values})


def with_region(task: Task, region: str | None) -> Task:
    """``task`` in ``region`` (its backend's default region) when its file gave none."""
    if task.region_given or not region:
        return task
    environment = Secrets({**task.environment, "TPI_REGION": region})
    return dataclasses.replace(task, region=region, environment=environment)


def check_backend(task: Task, backend_of: Callable[[str], Any]) -> None:
    """The task's backend is installed, has what the task asks for (``spot``: its
    :attr:`~tpi_core.backend.Capability.SPOT`) and takes its settings (aliases, regions,
    images: ``Backend.validate``, no request); else a ConfigError naming file, task and key."""
    try:
        backend = backend_of(task.cloud)
    except PluginError as exc:  # not installed (with the install hint), or broken
        raise ConfigError(task.source, str(exc), task=task.name, key="cloud") from None
    if task.spot >= 0 and Capability.SPOT not in backend.CAPABILITIES:
        raise ConfigError(task.source, f"backend {backend.NAME!r} has no spot machines: "
                          "leave spot out (or -1) for on-demand", task=task.name, key="spot")
    try:
        backend.validate(task)
    except FieldError as exc:
        raise ConfigError(task.source, exc.reason, task=task.name, key=exc.key) from None
    except ConfigError:
        raise
    except UsageError as exc:
        raise ConfigError(task.source, str(exc), task=task.name) from None


def check_backends(tasks: Sequence[Task]) -> None:
    """:func:`check_backend` for each task, with one backend instance per cloud."""
    backends: dict[str, Any] = {}

    def backend_of(cloud: str) -> Any:
        if cloud not in backends:
            backends[cloud] = registry.backend_class(cloud)()
        return backends[cloud]

    for task in tasks:
        check_backend(task, backend_of)


def check_environment(tasks: Sequence[Task]) -> None:
    """Raise ConfigError for an ``environment`` name to copy from here that is not set here
    (the task would run with it empty): apply, plan and validate call this."""
    for task in tasks:
        if task.unset:
            name = task.unset[0]
            raise ConfigError(task.source, f"{name} is not set in this environment, and "
                              f"{name} = \"\" copies it from there: set it, or give a value",
                              task=task.name, key=f"environment.{name}")


def _validate(table: Any, validators: Mapping[str, Callable], base: Path,
              form: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _Invalid(f"must be a table ({form}), got {_type_name(table)}")
    values = {}
    for key, value in table.items():  # in file order: the first mistake is reported first
        if key not in validators:
            raise _Invalid(f"unknown key{_did_you_mean(key, validators)} (allowed: "
                           f"{', '.join(sorted(validators))})", key)
        try:
            values[key] = validators[key](value, base)
        except _Invalid as exc:
            raise _Invalid(str(exc), key if exc.key is None else f"{key}.{exc.key}") from None
    return values


def _task_id(key: str, name: str | None, base: Path, file: str) -> str:
    if name is None:
        # the folder and the file: same-named tasks of two files in one folder differ (the
        # default file keeps the seed of the ids it always had)
        where = base if file == DEFAULT_FILE else f"{base}/{file}"
        return deterministic(key, seed=f"{where}/{key}").long
    # TPI's `name`: an id already, or the seed of one (the same id wherever the file lives)
    return name if is_task_id(name) else deterministic(name, seed=name).long


def _environment(declared: Mapping[str, str], values: dict, environ: Mapping[str, str]) -> Secrets:
    pattern = _globs((*CI_VARIABLES, *(name for name in declared if "*" in name)))
    env = {k: v for k, v in environ.items() if pattern.match(k)}
    env.update({k: v or environ.get(k, "") for k, v in declared.items() if "*" not in k})
    env.update(TPI_TASK="true", TPI_REGION=values.get("region", DEFAULT_REGION),
               TPI_MACHINE=values.get("machine", DEFAULT_MACHINE))
    return Secrets(env)


@functools.cache
def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(fnmatch.translate, patterns)))  # fnmatchcase, all at once


def _check_unique(tasks: list[Task], source: str) -> None:
    first: dict[str, str] = {}
    for task in tasks:
        if first.setdefault(task.id, task.name) != task.name:
            raise ConfigError(source, f"has the same id {task.id} as task {first[task.id]!r}; "
                              "give one of them another 'name'", task=task.name, key="name")


def _select(tasks: list[Task], names: Sequence[str], source: str) -> list[Task]:
    known = [task.name for task in tasks]
    for name in (name for name in names if name not in known):
        raise ConfigError(source, f"no task {name!r}{_did_you_mean(name, known)}; tasks in "
                          f"this file: {', '.join(known)}")
    return [task for task in tasks if not names or task.name in names]


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f", did you mean {close[0]!r}?" if close else ""


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _string(value: Any, base: Path | None = None, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_type_name(value)}")
    if not (empty or value.strip()):
        raise _Invalid("must be a non-empty string")
    return value


_word = functools.partial(_string, empty=False)


def _number(types: tuple[type, ...], allowed: str, ok: Callable[[Any], bool],
            convert: Callable = int) -> Callable:
    def check(value: Any, base: Path) -> Any:
        # TOML booleans are Python ints; `parallelism = true` is a mistake, not 1
        if isinstance(value, bool) or not isinstance(value, types):
            raise _Invalid(f"must be {allowed}, got {_type_name(value)}")
        if not ok(value):
            raise _Invalid(f"must be {allowed}, got {value!r}")
        return convert(value)
    return check


_seconds = _number((int,), _DURATION_HELP, lambda n: n > 0)


def _timeout(value: Any, base: Path) -> int:
    try:
        return parse_duration(value) if isinstance(value, str) else _seconds(value, base)
    except ValueError:
        raise _Invalid(f"must be {_DURATION_HELP}, got {value!r}") from None


def _cloud(value: Any, base: Path) -> str:
    name = registry.canonical(_word(value))
    allowed = sorted(set(BUILTIN_CLOUDS) | set(registry.backend_names()))
    if name not in allowed:
        raise _Invalid(f"unknown cloud {value!r}{_did_you_mean(name, allowed)} (allowed: "
                       f"{', '.join(allowed)}; 'az' means azure, 'kubernetes' means k8s)")
    return name


def _string_table(value: Any, base: Path | None = None) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table of strings, got {_type_name(value)}")
    for key, item in value.items():
        if not isinstance(item, str):  # the value itself may be secret: only its type
            raise _Invalid(f"must be a string, got {_type_name(item)}", key)
    return value


def _env_table(value: Any, base: Path) -> dict[str, str]:
    for name, item in _string_table(value).items():
        glob = "*" in name
        if not (_ENV_GLOB if glob else _ENV_NAME).fullmatch(name):
            raise _Invalid("not a variable name (letters, digits, _; a glob adds * and ?)", name)
        if glob and item:
            raise _Invalid("a glob copies every matching local variable: no value allowed", name)
    return value


def _storage(value: Any, base: Path) -> StorageSpec:
    values = _validate(value, _STORAGE_FIELDS, base, "[task.NAME.storage]")
    if values.get("output") and not values.get("workdir"):
        raise _Invalid("needs storage.workdir: output is a path inside the workdir", "output")
    return StorageSpec(**values)


def _workdir(value: Any, base: Path) -> str:
    if _string(value) and not (base / value).is_dir():
        state = "is not a directory" if (base / value).exists() else "does not exist"
        raise _Invalid(f"{value!r} {state} (a directory, relative to {base})")
    return value


def _output(value: Any, base: Path) -> str:
    path = PurePosixPath(_string(value))
    if path.is_absolute() or value.startswith("~"):
        raise _Invalid(f"must be a path relative to the workdir, got {value!r}")
    if ".." in path.parts:
        raise _Invalid(f"must stay inside the workdir (no '..'), got {value!r}")
    return path.as_posix() if value else ""


def _exclude(value: Any, base: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid("must be an array of non-empty strings (patterns)")
    return tuple(value)


_TASK_FIELDS: dict[str, Callable[[Any, Path], Any]] = {
    "cloud": _cloud, "region": _word, "machine": _word, "image": _word,
    "spot": _number((int, float), "-1 (on-demand), 0 (spot at the market price) or a price "
                    "cap > 0 in USD/hour", lambda n: math.isfinite(n) and (n == -1 or n >= 0),
                    float),
    "disk_size": _number((int,), "-1 (the image's default) or a size in GB >= 1",
                         lambda n: n == -1 or n >= 1),
    "parallelism": _number((int,), "an integer >= 1 (the number of machines)", lambda n: n >= 1),
    "timeout": _timeout, "environment": _env_table,
    "tags": lambda value, base: frozen_map(_string_table(value)),
    "permission_set": _string, "script": _word, "name": _word, "storage": _storage,
}
_STORAGE_FIELDS: dict[str, Callable[[Any, Path], Any]] = {
    "workdir": _workdir, "output": _output, "exclude": _exclude, "container": _string,
    "container_opts": lambda value, base: frozen_map(_string_table(value)),
}
