"""Which files a sync leaves alone: gitignore rules (pathspec) plus the ``.tpi/`` index.

Two ways in:

- :meth:`Excludes.from_gitignore` takes gitignore lines as they are (last match wins,
  ``!`` re-includes, a leading ``/`` anchors to the tree root, ``dir/`` matches directories).
- :meth:`Excludes.from_tpi` takes TPI's ``storage.exclude`` list: a plain entry is anchored to
  the workdir root (rclone's ``- /<entry>``); entries written ``- GLOB`` / ``+ GLOB`` are
  rclone exclude / include rules, where the first matching rule wins and a glob without a
  leading ``/`` matches at any depth.

Unlike git (and like rclone), a file under an excluded directory can be re-included by a
later rule; directories are pruned from the walk only when no rule re-includes anything.
``.tpi/`` at the root is always excluded and cannot be re-included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ALWAYS_EXCLUDED = (".tpi/",)
_INDEX = ".tpi"


class Excludes:
    """A compiled set of exclude rules; ``excluded(key)`` answers for one relative path."""

    def __init__(self, gitignore_lines: Iterable[str] = ()):
        self.lines = tuple(line for line in gitignore_lines if line.strip())
        self._spec = _compile(self.lines) if self.lines else None
        self._reincludes = any(line.lstrip().startswith("!") for line in self.lines)

    @classmethod
    def from_gitignore(cls, lines: Iterable[str]) -> Excludes:
        """Rules written as a .gitignore file."""
        return cls(lines)

    @classmethod
    def from_tpi(cls, entries: Sequence[str]) -> Excludes:
        """Rules written as TPI's ``storage.exclude`` (see the module docstring)."""
        return cls(tpi_to_gitignore(entries))

    @classmethod
    def coerce(cls, value: Excludes | Sequence[str] | None) -> Excludes:
        """An :class:`Excludes` as is; a list of strings read as TPI ``storage.exclude``."""
        if isinstance(value, Excludes):
            return value
        if isinstance(value, str):
            value = [value]
        return cls.from_tpi(list(value or ()))

    def excluded(self, key: str) -> bool:
        """True when the file ``key`` (relative, ``/``-separated) must not be transferred."""
        if key == _INDEX or key.startswith(_INDEX + "/"):
            return True
        return self._spec is not None and self._spec.match_file(key)

    def prunes(self, dir_key: str) -> bool:
        """True when nothing under directory ``dir_key`` can be included (skip the walk)."""
        if dir_key == _INDEX:
            return True
        if self._spec is None or self._reincludes:
            return False
        return self._spec.match_file(dir_key + "/")

    def __repr__(self) -> str:
        return f"Excludes({list(self.lines)!r})"


def _compile(lines: tuple[str, ...]):
    import pathspec  # only when there are rules: a sync without any spares the import

    return pathspec.GitIgnoreSpec.from_lines(lines)


def tpi_to_gitignore(entries: Sequence[str]) -> list[str]:
    """Translate TPI ``storage.exclude`` entries into gitignore lines with the same meaning."""
    # rclone stops at the first matching rule, gitignore at the last: reverse the order.
    return [line for entry in reversed(entries) if (line := _tpi_line(entry))]


def _tpi_line(entry: str) -> str:
    if entry.startswith("- "):
        return _escape(_rclone_glob(entry[2:].strip()))
    if entry.startswith("+ "):
        glob = _rclone_glob(entry[2:].strip())
        return "!" + _escape(glob) if glob else ""
    entry = entry.strip().lstrip("/")
    return "/" + entry if entry else ""


def _rclone_glob(glob: str) -> str:
    if not glob or glob.startswith("/") or "/" not in glob.rstrip("/"):
        return glob
    return "**/" + glob  # rclone matches an unanchored path glob at any depth; gitignore would not


def _escape(line: str) -> str:
    return "\\" + line if line.startswith(("!", "#")) else line
