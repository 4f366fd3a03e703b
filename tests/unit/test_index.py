"""The local index beside a tasks file: concurrent commands keep every task, and an index
that cannot be read is named, never replaced."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tpi_core.errors import UsageError
from tpi_core.index import Entry, Index

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tpi_core.index import Entry, Index

    index, who = Index(Path(sys.argv[1])), sys.argv[2]
    for n in range(25):
        index.put(Entry(f"{who}-{n}", f"tpi-{who}-{n}", "local", "us-west"))
    index.remove(f"tpi-{who}-0")
""")


def test_commands_run_at_once_keep_every_task(tmp_path: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{i}"])
               for i in range(6)]
    assert [w.wait(timeout=60) for w in writers] == [0] * 6
    names = set(Index(tmp_path).entries())
    assert names == {f"w{i}-{n}" for i in range(6) for n in range(1, 25)}  # none lost


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"a": 5}'])
def test_an_unreadable_index_is_named_and_left_as_it_was(tmp_path: Path, text: str) -> None:
    (tmp_path / ".tpi").mkdir()
    (tmp_path / ".tpi" / "index.json").write_text(text)
    index = Index(tmp_path)
    with pytest.raises(UsageError, match=r"\.tpi/index\.json: not an index tpi can read"):
        index.entries()
    with pytest.raises(UsageError):
        index.put(Entry("a", "tpi-a", "local", "us-west"))
    assert (tmp_path / ".tpi" / "index.json").read_text() == text


def test_status_with_an_unreadable_index_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "tasks.toml").write_text('[task.a]\nscript = "true"\n')
    (tmp_path / ".tpi").mkdir()
    (tmp_path / ".tpi" / "index.json").write_text("{oops")
    done = subprocess.run([sys.executable, "-m", "tpi_core", "status"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "index.json: not an index tpi can read" in done.stderr
