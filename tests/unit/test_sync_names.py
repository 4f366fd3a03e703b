"""Temporary names: long multi-byte names fit, and a killed download's leftovers go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpi_core.storage import cut_name
from tpi_core.storage.local import LocalStorage
from tpi_core.storage.sync import download_tree, upload_tree
from tpi_core.sync.walk import PART_MARK

CJK = "数" * 80  # 240 bytes in UTF-8: a valid name on ext4 (255 bytes at most)


def test_cut_name_counts_bytes():
    assert len(os.fsencode(cut_name(CJK))) == 180
    assert cut_name("short.txt") == "short.txt"
    assert len(os.fsencode(cut_name("数" * 61))) == 180  # a character cut in two


@pytest.mark.anyio
async def test_long_multibyte_names_upload_and_download(tmp_path: Path):
    src, dst, store = tmp_path / "src", tmp_path / "dst", tmp_path / "store"
    (src / "d").mkdir(parents=True)
    (src / "d" / CJK).write_text("contents\n")
    async with LocalStorage(store) as storage:
        await upload_tree(src, storage)  # the local storage's temporary names fit too
        result = await download_tree(storage, dst)
    assert result.sent == 1 and not result.skipped
    assert (dst / "d" / CJK).read_text() == "contents\n"


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.anyio
async def test_a_killed_downloads_leftovers_are_removed_by_the_next(tmp_path: Path):
    src, dst, store = tmp_path / "src", tmp_path / "dst", tmp_path / "store"
    (src / "out").mkdir(parents=True)
    (src / "out" / "a.txt").write_text("a\n")
    (dst / "out").mkdir(parents=True)
    dead = dst / "out" / f".a.txt{PART_MARK}{_dead_pid()}.0123abcd-7"
    dead.write_text("half")
    alive = dst / "out" / f".b.txt{PART_MARK}{os.getpid()}.0123abcd-8"  # still downloading
    alive.write_text("half")
    foreign = dst / "out" / f"notes{PART_MARK}mine"  # not a name tpi makes: the user's
    foreign.write_text("keep")
    async with LocalStorage(store) as storage:
        await upload_tree(src, storage)
        await download_tree(storage, dst, delete=True)
    assert not dead.exists()
    assert alive.read_text() == "half" and foreign.read_text() == "keep"
    assert (dst / "out" / "a.txt").read_text() == "a\n"


@pytest.mark.anyio
async def test_a_name_that_is_not_utf8_is_skipped_and_named(tmp_path: Path):
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    (src / "good.txt").write_text("ok\n")
    bad = os.fsdecode(b"caf\xe9.txt")  # Latin-1 bytes: valid on ext4, no UTF-8 text
    (src / bad).write_text("latin\n")
    (src / os.fsdecode(b"dir\xff")).mkdir()
    (src / os.fsdecode(b"dir\xff") / "inner.txt").write_text("inner\n")
    async with LocalStorage(store) as storage:
        result = await upload_tree(src, storage)
        listed = sorted([info.key async for info in storage.list("")])
    assert result.sent == 1 and listed == ["good.txt"]
    assert sorted(result.skipped) == [
        "caf\\xe9.txt: the name is not valid UTF-8, which a storage key must be",
        "dir\\xff: the directory name is not valid UTF-8, which a storage key must be: "
        "nothing in it is sent"]


def test_tpi_sync_of_a_name_that_is_not_utf8_says_so_and_sends_the_rest(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text("ok\n")
    (src / os.fsdecode(b"caf\xe9.txt")).write_text("latin\n")
    done = subprocess.run([sys.executable, "-m", "tpi_core", "sync", str(src),
                           str(tmp_path / "dst")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "caf\\xe9.txt: the name is not valid UTF-8" in done.stderr
    assert (tmp_path / "dst" / "good.txt").read_text() == "ok\n"
