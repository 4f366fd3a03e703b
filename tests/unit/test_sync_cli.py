"""``tpi sync`` through click's CliRunner: local -> file:// URL and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tpi_core.cli import cli, main


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for key, text in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text(text)
    return root


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text()
            for p in sorted(root.rglob("*")) if p.is_file()}


def sync(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["sync", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sync_up_to_a_file_url_and_back(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "alpha", "sub/b.txt": "beta",
                                       "skip.log": "no", ".tpi/index": "local state"})
    url = (tmp_path / "bucket").as_uri()
    first = sync(str(src), url, "--exclude", "*.log", "--jobs", "4")
    assert (first["sent"], first["bytes_sent"], first["skipped"]) == (2, 9, [])
    bucket = tree(tmp_path / "bucket")
    assert set(bucket) == {"a.txt", "sub/b.txt", ".tpi/manifest.json"}  # manifest in .tpi/

    again = sync(str(src), url, "--exclude", "*.log")
    assert (again["sent"], again["unchanged"]) == (0, 2)

    back = sync(url, str(tmp_path / "back"))
    assert back["sent"] == 2
    assert tree(tmp_path / "back") == {"a.txt": "alpha", "sub/b.txt": "beta"}  # no .tpi/


def test_sync_delete_mirrors(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"keep": "k"})
    make_tree(tmp_path / "bucket", {"stale": "s", "keep": "old"})
    result = sync(str(src), (tmp_path / "bucket").as_uri(), "--delete")
    assert (result["sent"], result["deleted"]) == (1, 1)
    assert tree(tmp_path / "bucket") == {"keep": "k", ".tpi/manifest.json": tree(
        tmp_path / "bucket")[".tpi/manifest.json"]}


def test_sync_prints_a_summary_without_json(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": "1"})
    result = CliRunner().invoke(cli, ["sync", str(src), str(tmp_path / "dst")])
    assert result.exit_code == 0
    assert "1 sent (1 B), 0 unchanged, 0 deleted, 0 skipped" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch://bucket/x", "dst"], "no storage for nosuch:// URLs is installed; install a"),
    (["file:///a", "file:///b"], "sync between two storage URLs is not supported yet"),
    (["missing-dir", "file:///tmp/x"], "missing-dir: no such directory"),
    (["file:///nonexistent/tpi-src", "dst"], "file:///nonexistent/tpi-src: no such directory"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path: Path, monkeypatch,
                                          capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"tpi: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "dst").exists()  # nothing made for a sync that cannot start


def test_rich_progress_shows_files_bytes_and_rate(tmp_path: Path) -> None:
    import io

    import anyio
    from rich.console import Console

    from tpi_core.cli._progress import Bars
    from tpi_core.storage.sync import upload_tree
    from tpi_core.testing.memory import MemoryStorage

    src = make_tree(tmp_path / "src", {f"f{i}": "x" * 2000 for i in range(5)})
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with Bars(console).row("sync") as bar:
        result = anyio.run(lambda: upload_tree(src, MemoryStorage(), progress=bar))
    assert result.sent == 5
    text = out.getvalue()
    assert "5/5 files" in text and "10.0/10.0 kB" in text and "/s" in text


@pytest.mark.parametrize(("src", "dst"), [
    ("src", "file://{root}/src/backup"),  # the copy inside the tree it copies
    ("src", "file://{root}/src"),
    ("src/sub", "file://{root}/src"),  # the tree inside the copy
    ("file://{root}/src", "src/sub"),  # a download into the storage it reads
])
def test_a_copy_that_would_copy_itself_is_refused(src: str, dst: str, tmp_path: Path,
                                                   monkeypatch, capsys) -> None:
    make_tree(tmp_path / "src", {"a": "1", "sub/b": "2"})
    before = tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", src.format(root=tmp_path), dst.format(root=tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "overlap: the copy would copy itself" in err
    assert tree(tmp_path) == before  # nothing written, nothing nested


def test_mirroring_an_empty_source_into_files_is_refused(tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    """A mistyped prefix lists nothing: --delete would then empty the local directory."""
    make_tree(tmp_path / "bucket", {"data/a": "1"})
    make_tree(tmp_path / "dst", {"mine": "keep me", "sub/also": "and me"})
    before = tree(tmp_path / "dst")
    monkeypatch.chdir(tmp_path)
    url = (tmp_path / "bucket" / "dta").as_uri()
    (tmp_path / "bucket" / "dta").mkdir()  # there, but empty: an S3 prefix with nothing under it
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", url, "dst", "--delete"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert f"{url}: nothing there to mirror; deleting would empty" in err
    assert tree(tmp_path / "dst") == before
    # without --delete an empty source is just empty, and a non-empty one still mirrors
    assert sync(url, "dst")["sent"] == 0
    mirrored = sync((tmp_path / "bucket" / "data").as_uri(), "dst", "--delete")
    assert (mirrored["sent"], mirrored["deleted"]) == (1, 2)
    assert tree(tmp_path / "dst") == {"a": "1"}


def test_dry_run_prints_what_a_mirror_would_do_and_changes_nothing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"same": "s", "edited": "old", "gone": "g"})
    url = (tmp_path / "bucket").as_uri()
    sync(str(src), url)
    make_tree(src, {"edited": "new!", "new/file": "n"})
    (src / "gone").unlink()
    before = tree(tmp_path / "bucket")

    shown = CliRunner().invoke(cli, ["sync", str(src), url, "--delete", "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines() == ["would send edited (4 B)", "would send new/file (1 B)",
                                         "would delete gone"]
    assert "dry run, nothing changed: 2 to send (5 B), 1 unchanged, 1 to delete" in shown.stderr
    assert tree(tmp_path / "bucket") == before  # not even the manifest was rewritten

    as_json = sync(str(src), url, "--delete", "-n")
    assert as_json["dry_run"] is True and as_json["actions"] == [
        {"action": "send", "key": "edited", "size": 4},
        {"action": "send", "key": "new/file", "size": 1},
        {"action": "delete", "key": "gone"}]
    assert tree(tmp_path / "bucket") == before

    done = sync(str(src), url, "--delete")  # the real run does what the dry run said
    assert (done["sent"], done["unchanged"], done["deleted"]) == (2, 1, 1)


def test_dry_run_download_creates_and_deletes_nothing(tmp_path: Path) -> None:
    url = make_tree(tmp_path / "bucket", {"a": "1", "d/b": "22"}).as_uri()
    missing = tmp_path / "fresh"
    fresh = sync(url, str(missing), "--dry-run")
    assert [(a["action"], a["key"]) for a in fresh["actions"]] == [("fetch", "a"), ("fetch", "d/b")]
    assert not missing.exists()

    local = make_tree(tmp_path / "local", {"extra": "mine"})
    mirror = sync(url, str(local), "--delete", "--dry-run")
    assert [(a["action"], a["key"]) for a in mirror["actions"]] == [
        ("fetch", "a"), ("fetch", "d/b"), ("delete", "extra")]
    assert tree(local) == {"extra": "mine"}


def refused(capsys, *args: str) -> str:
    """Run ``tpi sync ARGS`` expecting exit 2; its one line of error."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err


def test_max_delete_refuses_every_deletion_over_the_limit(tmp_path: Path, capsys) -> None:
    src = make_tree(tmp_path / "src", {"keep": "k", "new": "n"})
    bucket = make_tree(tmp_path / "bucket", {"keep": "k", "old1": "1", "old2": "2", "old3": "3"})
    url = bucket.as_uri()
    assert refused(capsys, str(src), url, "--delete", "--max-delete", "2") == (
        "tpi: error: 3 files to delete, more than the 2 allowed (--max-delete): "
        "nothing was deleted\n")
    assert {"old1", "old2", "old3", "new"} <= set(tree(bucket))  # copied, nothing deleted
    assert "nothing was deleted" in refused(capsys, str(src), url, "--delete", "-n",
                                            "--max-delete", "2")
    assert sync(str(src), url, "--delete", "--max-delete", "3")["deleted"] == 3

    local = make_tree(tmp_path / "local", {"keep": "k", "new": "n", "mine1": "1", "mine2": "2"})
    assert "2 files to delete, more than the 1 allowed" in refused(
        capsys, url, str(local), "--delete", "--max-delete", "1")
    assert {"mine1", "mine2"} <= set(tree(local))
    assert sync(url, str(local), "--delete", "--max-delete", "2")["deleted"] == 2
    assert set(tree(local)) == {"keep", "new"}
