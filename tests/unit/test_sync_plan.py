"""The sync planner and the exclude rules are pure: tested with plain values, no I/O."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from tpi_core.errors import UnsafePathError
from tpi_core.sync.excludes import Excludes, tpi_to_gitignore
from tpi_core.sync.manifest import Entry, lines, md5_etag, parse
from tpi_core.sync.plan import (Delete, Fetch, Forget, Keep, Send, Unchanged, plan_download,
                                plan_local_deletions, plan_upload)
from tpi_core.sync.walk import LocalFile, Skipped, walk

NO_RULES = Excludes()


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def local(key: str, size: int = 5, mtime_ns: int = 100) -> LocalFile:
    return LocalFile(key, "/nowhere/" + key, size, mtime_ns)


class Hasher:
    """A hash_file that answers from a table and records what was hashed."""

    def __init__(self, table: dict[str, str]):
        self.table, self.hashed = table, []

    def __call__(self, item: LocalFile | str) -> str:
        key = item if isinstance(item, str) else item.key
        self.hashed.append(key)
        return self.table[key]


def upload_plan(files, remote, manifest=None, *, delete=False, table=None, excludes=NO_RULES):
    hasher = Hasher(table or {})
    files = sorted(files, key=lambda item: item.key)  # a walk yields keys in order
    actions = list(plan_upload(files, sorted(dict(remote).items()), _sorted(manifest),
                               excludes=excludes, delete=delete, hash_file=hasher))
    return actions, hasher.hashed


def _sorted(table):
    return None if table is None else sorted(table.items())


# upload planning

def test_new_changed_unchanged_and_deleted_with_a_manifest() -> None:
    files = [local("new"), local("grown", size=9), local("same"), local("touched", mtime_ns=7)]
    remote = {"grown": (5, None, None), "same": (5, None, None), "touched": (5, None, None),
              "gone": (3, None, None)}
    manifest = {k: Entry(5, 100, md5(k)) for k in ("grown", "same", "touched", "gone")}
    actions, hashed = upload_plan(files, remote, manifest, delete=True,
                                  table={"touched": md5("touched")})
    assert actions == [Forget("gone"), Send(files[1]), Send(files[0]),
                       Unchanged("same", manifest["same"], True),
                       Unchanged("touched", Entry(5, 7, md5("touched"))), Delete("gone")]
    assert hashed == ["touched"]  # only the file whose mtime moved at an equal size


def test_manifest_entries_without_files_are_forgotten_in_key_order() -> None:
    manifest = {k: Entry(5, 100, md5(k)) for k in ("a", "b", "c", "z")}
    actions, _ = upload_plan([local("b"), local("c", size=7)], {"b": (5, None, None)}, manifest)
    assert actions == [Forget("a"), Unchanged("b", manifest["b"], True), Send(local("c", size=7)),
                       Forget("z")]


def test_touched_file_with_new_content_is_sent_with_its_hash() -> None:
    files = [local("f", mtime_ns=200)]
    actions, hashed = upload_plan(files, {"f": (5, None, None)}, {"f": Entry(5, 100, md5("a"))},
                                  table={"f": md5("b")})
    assert actions == [Send(files[0], md5("b"))]
    assert hashed == ["f"]


def test_copy_only_keeps_remote_objects_without_local_files() -> None:
    actions, _ = upload_plan([], {"only-remote": (1, None, None)}, {}, delete=False)
    assert actions == []


def test_delete_spares_excluded_remote_objects_and_the_index() -> None:
    remote = {"keep.log": (1, None, None), "old.txt": (1, None, None),
              ".tpi/manifest.json": (9, None, None)}
    actions, _ = upload_plan([], remote, {}, delete=True, excludes=Excludes.from_tpi(["keep.log"]))
    assert actions == [Delete("old.txt")]


def test_without_manifest_an_equal_size_counts_as_unchanged() -> None:
    actions, hashed = upload_plan([local("f")], {"f": (5, None, None)}, None)
    assert actions == [Unchanged("f")] and hashed == []


def test_with_a_manifest_but_no_entry_and_no_etag_the_file_is_sent() -> None:
    actions, _ = upload_plan([local("f")], {"f": (5, None, None)}, {})
    assert actions == [Send(local("f"))]


def test_an_md5_etag_decides_when_there_is_no_entry() -> None:
    files = [local("same"), local("differs")]
    remote = {"same": (5, f'"{md5("same")}"', None), "differs": (5, md5("old"), None)}
    actions, hashed = upload_plan(files, remote, None,
                                  table={"same": md5("same"), "differs": md5("new")})
    assert actions == [Send(files[1], md5("new")),
                       Unchanged("same", Entry(5, 100, md5("same")))]
    assert hashed == ["differs", "same"]


def test_a_manifest_entry_is_trusted_over_an_etag_that_is_no_md5() -> None:
    # S3 objects encrypted with KMS list an md5-looking etag that is not their md5
    manifest = {"f": Entry(5, 100, md5("mine"))}
    actions, hashed = upload_plan([local("f")], {"f": (5, md5("kms"), None)}, manifest)
    assert actions == [Unchanged("f", manifest["f"], True)] and hashed == []


def test_multipart_etags_are_not_md5s() -> None:
    assert md5_etag('"0123456789abcdef0123456789abcdef-3"') is None
    assert md5_etag("0x8DC1234") is None
    assert md5_etag('"0123456789ABCDEF0123456789ABCDEF"') == "0123456789abcdef0123456789abcdef"


def test_skipped_entries_pass_through() -> None:
    actions, _ = upload_plan([Skipped("link", "symlink points outside the tree")], {}, None)
    assert [str(a) for a in actions] == ["link: symlink points outside the tree"]


def test_the_plan_is_lazy() -> None:
    endless = (local(f"f{i:030}") for i in itertools.count())
    plan = plan_upload(endless, [], [], excludes=NO_RULES, delete=False, hash_file=str)
    assert [a.file.key[-1] for a in itertools.islice(plan, 3)] == ["0", "1", "2"]


def test_ten_thousand_files_plan_without_hashing() -> None:
    files = [local(f"d{i % 100}/f{i}") for i in range(10_000)]
    remote = {f.key: (5, None, None) for f in files[:9_000]}
    manifest = {f.key: Entry(5, 100, md5(f.key)) for f in files[:9_000]}
    actions, hashed = upload_plan(files, remote, manifest)
    assert sum(isinstance(a, Unchanged) for a in actions) == 9_000
    assert sum(isinstance(a, Send) for a in actions) == 1_000
    assert hashed == []


# download planning

def stat_table(table: dict[str, tuple[int, int]]):
    return table.get


def download_plan(remote, manifest, **kwargs) -> list:
    return list(plan_download(sorted(remote.items()), _sorted(manifest), **kwargs))


def test_download_fetches_missing_and_different_sizes() -> None:
    remote = {"missing": (5, None, 1.0), "resized": (5, None, 1.0)}
    actions = download_plan(remote, None, stat_local=stat_table({"resized": (4, 0)}),
                            hash_file=Hasher({}))
    assert actions == [Fetch("missing", 5, None, 1.0), Fetch("resized", 5, None, 1.0)]


def test_download_keeps_a_local_copy_whose_md5_matches_the_etag() -> None:
    remote = {"same": (5, md5("same"), 1.0), "other": (5, md5("other"), 1.0)}
    hasher = Hasher({"same": md5("same"), "other": md5("changed")})
    actions = download_plan(remote, None, hash_file=hasher,
                            stat_local=stat_table({"same": (5, 0), "other": (5, 0)}))
    assert actions == [Fetch("other", 5, md5("other"), 1.0), Unchanged("same")]


def test_download_uses_the_manifest_md5_when_the_etag_is_opaque() -> None:
    remote = {"f": (5, "opaque-etag-1", 1.0)}
    manifest = {"f": Entry(5, 123, md5("f"))}
    actions = download_plan(remote, manifest, stat_local=stat_table({"f": (5, 0)}),
                            hash_file=Hasher({"f": md5("f")}))
    assert actions == [Unchanged("f")]


def test_download_without_checksum_compares_mtime_with_the_object() -> None:
    remote = {"same": (5, None, 1700000000.5), "newer": (5, None, 1700000099.0)}
    local_files = {"same": (5, 1_700_000_000_500_000_000), "newer": (5, 1_700_000_000_500_000_000)}
    actions = download_plan(remote, None, stat_local=stat_table(local_files),
                            hash_file=Hasher({}))
    assert actions == [Fetch("newer", 5, None, 1700000099.0), Unchanged("same")]


@pytest.mark.parametrize("key", ["../x", "/etc/x", "a/../../x", "a\\..\\x"])
def test_download_plan_refuses_hostile_keys(key: str) -> None:
    with pytest.raises(UnsafePathError, match="unsafe storage key"):
        download_plan({key: (1, None, None)}, None, stat_local=lambda k: None,
                      hash_file=Hasher({}))


def test_local_deletions_are_files_the_listing_lacks() -> None:
    files = [local("kept"), Skipped("link", "outside"), local("stale")]
    assert list(plan_local_deletions(files, [("kept", (5, None, None))])) == [Delete("stale")]


# manifest

def test_manifest_round_trip_and_damage() -> None:
    entries = {"a/b": Entry(3, 99, md5("x"))}
    assert parse(b"".join(lines(sorted(entries.items())))) == entries
    assert parse(b"not json") == {} and parse(b'{"files": 3}') == {}


# excludes

def test_tpi_plain_entries_are_anchored_to_the_root() -> None:
    rules = Excludes.from_tpi(["build", "*.csv", "/data/raw"])
    assert rules.excluded("build/out.o") and rules.excluded("build")
    assert not rules.excluded("src/build/out.o")
    assert rules.excluded("table.csv") and not rules.excluded("sub/table.csv")
    assert rules.excluded("data/raw/x") and not rules.excluded("data/clean/x")


def test_tpi_rclone_rules_match_at_any_depth_and_first_match_wins() -> None:
    rules = Excludes.from_tpi(["+ keep.log", "- *.log", "- cache/*.tmp"])
    assert rules.excluded("x.log") and rules.excluded("deep/er/x.log")
    assert not rules.excluded("keep.log") and not rules.excluded("sub/keep.log")
    assert rules.excluded("a/cache/z.tmp") and rules.excluded("cache/z.tmp")
    reversed_rules = Excludes.from_tpi(["- *.log", "+ keep.log"])
    assert reversed_rules.excluded("keep.log")  # rclone: the earlier exclude matched first


def test_tpi_translation_to_gitignore() -> None:
    assert tpi_to_gitignore(["a", "- b/c", "+ /d", "- !e", ""]) == [
        "\\!e", "!/d", "**/b/c", "/a"]


def test_gitignore_negation_and_directory_rules() -> None:
    rules = Excludes.from_gitignore(["*.log", "!important.log", "tmp/", "# comment"])
    assert rules.excluded("x.log") and not rules.excluded("important.log")
    assert rules.excluded("tmp/a") and not rules.excluded("tmp")  # tmp/ means a directory


def test_the_index_is_always_excluded_and_cannot_be_reincluded() -> None:
    rules = Excludes.from_gitignore(["!.tpi/", "!.tpi/**"])
    assert rules.excluded(".tpi/manifest.json") and rules.prunes(".tpi")
    assert not rules.excluded("sub/.tpi/x")  # only the root index is ours


def test_directories_are_pruned_only_when_nothing_can_be_reincluded() -> None:
    assert Excludes.from_tpi(["node_modules"]).prunes("node_modules")
    assert not Excludes.from_tpi(["node_modules", "+ node_modules/keep"]).prunes("node_modules")


def test_walk_applies_excludes_and_reincludes(tmp_path: Path) -> None:
    for name in ("a.txt", "x.log", "keep.log", "node_modules/m.js", "sub/y.log", ".tpi/index"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    rules = Excludes.from_tpi(["node_modules", "+ keep.log", "- *.log"])
    keys = sorted(f.key for f in walk(tmp_path.resolve(), rules))
    assert keys == ["a.txt", "keep.log"]


def test_a_file_left_by_a_download_is_not_sent_back() -> None:
    # downloads set the object's mtime on the file; the first push after a restore finds it
    restored = local("f", mtime_ns=1_700_000_000_250_000_000)
    edited = local("g", mtime_ns=1_700_000_123_000_000_000)
    remote = {"f": (5, None, 1700000000.25), "g": (5, None, 1700000000.25)}
    actions, hashed = upload_plan([restored, edited], remote, {}, table={"f": md5("f")})
    assert actions == [Unchanged("f", Entry(5, restored.mtime_ns, md5("f"))), Send(edited)]
    assert hashed == ["f"]


def test_no_deletions_when_part_of_the_tree_could_not_be_read() -> None:
    files = [local("a"), Skipped("locked", "directory cannot be read", unread=True)]
    actions, _ = upload_plan(files, {"locked/x": (1, None, None)}, {}, delete=True)
    refused = Skipped("*", "nothing deleted: part of the tree could not be read")
    assert actions[1:] == [files[1], refused]


# --- guarded downloads: what tpi last wrote locally decides over a changed file -------------

def _guarded(local: tuple[int, int] | None, written: Entry | None, etag: str | None):
    remote = {"out/a": (3, etag, None)}
    return list(plan_download(sorted(remote.items()), None, stat_local=lambda key: local,
                              hash_file=lambda key: "0" * 32,
                              written=[("out/a", written)] if written else []))


TASKS = "a" * 32
OURS = "b" * 32


def test_a_guarded_download_replaces_only_what_tpi_left_as_it_was():
    # as tpi left it: the task's copy replaces it
    assert _guarded((3, 5), Entry(3, 5, OURS), f'"{TASKS}"') == [Fetch("out/a", 3, TASKS)]
    # changed here, and the task's copy is what tpi wrote: kept, nothing fetched
    assert _guarded((3, 6), Entry(3, 5, TASKS), f'"{TASKS}"') == [Keep("out/a")]
    # changed here and by the task, or never written by tpi: fetched beside it
    assert _guarded((3, 6), Entry(3, 5, OURS), f'"{TASKS}"') == [
        Fetch("out/a", 3, TASKS, beside=True, ours=OURS)]
    assert _guarded((4, 6), None, f'"{TASKS}"') == [Fetch("out/a", 3, TASKS, beside=True)]
    # no md5 in the listing: fetched beside, with what tpi wrote to compare once fetched
    assert _guarded((3, 6), Entry(3, 5, OURS), None) == [
        Fetch("out/a", 3, None, beside=True, ours=OURS)]
    # no local file: fetched in place
    assert _guarded(None, Entry(3, 5, OURS), f'"{TASKS}"') == [Fetch("out/a", 3, TASKS)]
