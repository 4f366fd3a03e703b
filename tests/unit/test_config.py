"""tasks.toml loading: defaults, every field, environment, storage paths, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpi_core import config
from tpi_core.errors import ConfigError, UsageError
from tpi_core.identifier import deterministic, is_task_id, parse
from tpi_core.model import StorageSpec

DATA = Path(__file__).resolve().parent.parent / "data"
BROKEN = DATA / "broken"

# file -> (task, key, a fragment of the reason); None where the error is about the whole file
CORPUS = {
    "syntax_error.toml": (None, None, "invalid TOML"),
    "duplicate_key.toml": (None, None, "invalid TOML"),
    "unknown_top_level.toml": (None, "tasks", "did you mean 'task'?"),
    "unknown_task_key.toml": ("train", "gpu", "unknown key"),
    "misspelt_key.toml": ("train", "scirpt", "did you mean 'script'?"),
    "misspelt_storage_key.toml": ("train", "storage.outptu", "did you mean 'output'?"),
    "region_not_string.toml": ("train", "region", "must be a string, got integer"),
    "bool_parallelism.toml": ("train", "parallelism", "got boolean"),
    "negative_parallelism.toml": ("train", "parallelism", "integer >= 1"),
    "float_parallelism.toml": ("train", "parallelism", "got float"),
    "bad_timeout_string.toml": ("train", "timeout", "'2h30m'"),
    "zero_timeout.toml": ("train", "timeout", "seconds > 0"),
    "output_dotdot.toml": ("train", "storage.output", "no '..'"),
    "output_absolute.toml": ("train", "storage.output", "relative to the workdir"),
    "output_without_workdir.toml": ("train", "storage.output", "needs storage.workdir"),
    "missing_script.toml": ("train", "script", "is required"),
    "empty_script.toml": ("train", "script", "non-empty"),
    "unknown_cloud.toml": ("train", "cloud", "did you mean 'aws'?"),
    "spot_negative_half.toml": ("train", "spot", "got -0.5"),
    "spot_string.toml": ("train", "spot", "got string"),
    "disk_size_zero.toml": ("train", "disk_size", "size in GB >= 1"),
    "workdir_missing.toml": ("train", "storage.workdir", "does not exist"),
    "workdir_is_file.toml": ("train", "storage.workdir", "is not a directory"),
    "env_glob_with_value.toml": ("train", "environment.AWS_*", "no value allowed"),
    "env_value_not_string.toml": ("train", "environment.EPOCHS", "must be a string"),
    "env_bad_name.toml": ("train", "environment.1ST", "variable name"),
    "tags_not_table.toml": ("train", "tags", "table of strings"),
    "exclude_not_array.toml": ("train", "storage.exclude", "array of non-empty strings"),
    "storage_not_table.toml": ("train", "storage", "must be a table"),
    "container_opts_not_strings.toml": ("train", "storage.container_opts.port",
                                        "must be a string"),
    "non_table_task.toml": ("train", None, "must be a table"),
    "task_not_table.toml": (None, "task", "must be [task.NAME] tables"),
    "bad_task_name.toml": ("my task", None, "letters, digits"),
    "no_tasks.toml": (None, None, "no tasks"),
    "empty.toml": (None, None, "no tasks"),
    "duplicate_name.toml": ("second", "name", "same id"),
    "not_utf8.toml": (None, None, "not UTF-8"),
}


def _load(text: str, base_dir: Path | None = None, **kwargs):
    return config.loads(text, source=kwargs.pop("source", "t.toml"), base_dir=base_dir or Path("."),
                        environ=kwargs.pop("environ", {}), **kwargs)


def _one(text: str, **kwargs):
    [task] = _load(text, **kwargs)
    return task


def _error(text: str, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(text, **kwargs)
    return info.value


# --- the broken corpus ------------------------------------------------------------------------

def test_corpus_and_expectations_match():
    assert sorted(p.name for p in BROKEN.glob("*.toml")) == sorted(CORPUS)
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_broken_file(name):
    path = BROKEN / name
    task, key, fragment = CORPUS[name]
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(str(path) + ":")
    assert fragment in message
    assert info.value.task == task and info.value.key == key
    if task is not None:
        assert f"task {task!r}" in message
    if key is not None:
        assert f"key {key!r}" in message
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_syntax_error_has_line_and_column():
    path = BROKEN / "syntax_error.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert (info.value.line, info.value.col) == (3, 15)
    assert str(info.value).startswith(f"{path}:3:15: invalid TOML: ")
    assert "(at line" not in str(info.value)


def test_not_utf8_names_line_and_column():
    with pytest.raises(ConfigError) as info:
        config.load(BROKEN / "not_utf8.toml")
    assert (info.value.line, info.value.col) == (2, 19)  # the byte after 'caf'


def test_error_never_shows_an_environment_value():
    error = _error('[task.a]\nscript = "x"\nenvironment = { "A*" = "s3cr3t-value" }')
    assert "s3cr3t-value" not in str(error)


# --- defaults and fields ----------------------------------------------------------------------

def test_defaults(tmp_path):
    task = _one('[task.hello]\nscript = "echo hi"', base_dir=tmp_path)
    assert (task.name, task.cloud, task.script) == ("hello", "local", "echo hi")
    assert (task.region, task.machine, task.image) == ("us-west", "m", "ubuntu")
    assert (task.spot, task.disk_size, task.parallelism, task.timeout) == (-1.0, -1, 1, 86400)
    assert dict(task.tags) == {} and task.permission_set == ""
    assert dict(task.environment) == {"TPI_TASK": "true", "TPI_REGION": "us-west",
                                      "TPI_MACHINE": "m"}
    assert task.storage == StorageSpec()
    assert task.base_dir == tmp_path.resolve() and task.source == "t.toml"
    assert task.id == deterministic("hello", seed=f"{tmp_path.resolve()}/t.toml/hello").long


def test_same_named_tasks_of_two_files_in_one_folder_have_distinct_ids(tmp_path):
    text = '[task.train]\nscript = "true"'
    ids = {file: _one(text, base_dir=tmp_path, source=file).id
           for file in ("a.toml", "b.toml", "tasks.toml")}
    assert len(set(ids.values())) == 3
    # the default file keeps the ids it always had: tasks applied before still match
    assert ids["tasks.toml"] == deterministic("train", seed=f"{tmp_path.resolve()}/train").long
    # an explicit name is TPI's: the same id whichever file or folder holds it
    named = '[task.train]\nname = "shared"\nscript = "true"'
    assert (_one(named, base_dir=tmp_path, source="a.toml").id
            == _one(named, base_dir=tmp_path / "x", source="b.toml").id)


def test_every_field(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("TPI_TEST_ONE", "1")
    [train, report] = config.load(DATA / "good" / "full.toml")
    assert (train.cloud, train.region, train.machine, train.image) == \
        ("azure", "eu-west", "m+t4", "nvidia")
    assert (train.spot, train.disk_size, train.parallelism, train.timeout) == (0.0, 50, 2, 9000)
    assert isinstance(train.spot, float)
    assert train.permission_set.endswith("instance-profile/train")
    assert train.script.startswith("#!/bin/bash\n")
    assert dict(train.tags) == {"team": "ml", "cost-center": "42"}
    env = dict(train.environment)
    assert (env["EPOCHS"], env["HOME"], env["TPI_TEST_ONE"]) == ("10", "/home/someone", "1")
    assert (env["TPI_REGION"], env["TPI_MACHINE"]) == ("eu-west", "m+t4")
    storage = train.storage
    assert (storage.workdir, storage.output) == (".", "results")
    assert storage.exclude == ("*.tmp", "- /cache/**")
    assert storage.container == "my-bucket/prefix"
    assert dict(storage.container_opts) == {"account": "acct"}
    assert train.workdir == (DATA / "good").resolve()
    assert train.source == str(DATA / "good" / "full.toml")
    assert report.name == "report" and report.cloud == "local"


@pytest.mark.parametrize(("written", "canonical"), [
    ("az", "azure"), ("azure", "azure"), ("kubernetes", "k8s"), ("k8s", "k8s"),
    ("AWS", "aws"), ("gcp", "gcp"), ("local", "local"),
])
def test_cloud_aliases(written, canonical):
    assert _one(f'[task.a]\nscript = "x"\ncloud = "{written}"').cloud == canonical


def test_spot_accepts_zero_price_cap_and_on_demand():
    spots = [_one(f'[task.a]\nscript = "x"\nspot = {v}').spot for v in ("-1", "0", "0.35", "2")]
    assert spots == [-1.0, 0.0, 0.35, 2.0]


@pytest.mark.parametrize("value", ["-2", "-0.01", "nan", "inf", "true"])
def test_spot_rejects(value):
    assert _error(f'[task.a]\nscript = "x"\nspot = {value}').key == "spot"


@pytest.mark.parametrize("value", ["-2", "0", "true", "1.5", '"10"'])
def test_disk_size_rejects(value):
    assert _error(f'[task.a]\nscript = "x"\ndisk_size = {value}').key == "disk_size"


@pytest.mark.parametrize(("value", "seconds"), [
    ("3600", 3600), ('"2h30m"', 9000), ('"90s"', 90), ('"1d2h"', 93600), ('"45m"', 2700),
    ('"120"', 120), ('"1d1h1m1s"', 90061),
])
def test_timeout_forms(value, seconds):
    assert _one(f'[task.a]\nscript = "x"\ntimeout = {value}').timeout == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "2x", "h", "1h 2m", "-5s", "1m2h", "1.5h",
                                  "2H", "１２"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        config.parse_duration(text)


@pytest.mark.parametrize("value", ['"soon"', "-1", "1.5", "true"])
def test_timeout_rejects(value):
    error = _error(f'[task.a]\nscript = "x"\ntimeout = {value}')
    assert error.key == "timeout" and "'1d2h'" in str(error)


# --- environment ------------------------------------------------------------------------------

def test_environment_copies_empty_values_and_keeps_given_ones():
    environ = {"TOKEN": "from-laptop", "EPOCHS": "99"}
    task = _one('[task.a]\nscript = "x"\n[task.a.environment]\nTOKEN = ""\nEPOCHS = "10"\n'
                'UNSET = ""', environ=environ)
    env = dict(task.environment)
    assert (env["TOKEN"], env["EPOCHS"], env["UNSET"]) == ("from-laptop", "10", "")


def test_environment_glob_imports_matching_variables_only():
    environ = {"MY_A": "1", "MY_B": "2", "MYC": "3", "my_d": "4", "OTHER": "5"}
    env = dict(_one('[task.a]\nscript = "x"\nenvironment = { "MY_*" = "" }',
                    environ=environ).environment)
    assert {k: v for k, v in env.items() if not k.startswith("TPI_")} == {"MY_A": "1",
                                                                           "MY_B": "2"}


def test_explicit_value_wins_over_a_glob():
    env = _one('[task.a]\nscript = "x"\nenvironment = { "A_*" = "", A_X = "mine" }',
               environ={"A_X": "laptop"}).environment
    assert env["A_X"] == "mine"


def test_ci_variables_are_copied_when_set():
    environ = {"CI": "true", "CI_JOB_ID": "7", "GITHUB_SHA": "abc", "BITBUCKET_BRANCH": "b",
               "CML_RUNNER": "r", "REPO_TOKEN": "t", "SECRET": "no", "GITHUBX": "no"}
    env = dict(_one('[task.a]\nscript = "x"', environ=environ).environment)
    assert set(env) == {"CI", "CI_JOB_ID", "GITHUB_SHA", "BITBUCKET_BRANCH", "CML_RUNNER",
                        "REPO_TOKEN", "TPI_TASK", "TPI_REGION", "TPI_MACHINE"}


def test_os_environ_is_the_default_source(monkeypatch):
    monkeypatch.setenv("TPI_CONFIG_TEST_VAR", "here")
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    [task] = config.loads('[task.a]\nscript = "x"\nenvironment = { TPI_CONFIG_TEST_VAR = "" }')
    assert task.environment["TPI_CONFIG_TEST_VAR"] == "here"
    assert "GITHUB_ACTIONS" not in task.environment


def test_tpi_variables_follow_region_and_machine():
    env = _one('[task.a]\nscript = "x"\nregion = "eu-north"\nmachine = "xl"\n'
               'environment = { TPI_REGION = "spoofed" }').environment
    assert (env["TPI_TASK"], env["TPI_REGION"], env["TPI_MACHINE"]) == ("true", "eu-north", "xl")


def test_environment_repr_hides_values():
    task = _one('[task.a]\nscript = "x"\nenvironment = { PASSWORD = "hunter2" }')
    assert "hunter2" not in repr(task)


# --- storage ----------------------------------------------------------------------------------

def test_workdir_relative_to_the_tasks_file(tmp_path):
    (tmp_path / "project" / "data").mkdir(parents=True)
    tasks_file = tmp_path / "project" / "tasks.toml"
    tasks_file.write_text('[task.a]\nscript = "x"\nstorage = { workdir = "data", '
                          'output = "./out/models/" }\n')
    [task] = config.load(tasks_file)
    assert task.workdir == (tmp_path / "project" / "data").resolve()
    assert task.storage.output == "out/models"
    assert task.base_dir == (tmp_path / "project").resolve()


@pytest.mark.parametrize("output", ["..", "../x", "a/../../b", "a/..", "/abs", "~/out"])
def test_output_must_stay_inside_the_workdir(tmp_path, output):
    error = _error(f'[task.a]\nscript = "x"\nstorage = {{ workdir = ".", output = "{output}" }}',
                   base_dir=tmp_path)
    assert error.key == "storage.output"


def test_output_dot_is_the_whole_workdir(tmp_path):
    task = _one('[task.a]\nscript = "x"\nstorage = { workdir = ".", output = "." }',
                base_dir=tmp_path)
    assert task.storage.output == "."


def test_workdir_checked_against_base_dir(tmp_path):
    (tmp_path / "file").write_text("")
    for workdir, reason in (("missing", "does not exist"), ("file", "is not a directory")):
        error = _error(f'[task.a]\nscript = "x"\nstorage = {{ workdir = "{workdir}" }}',
                       base_dir=tmp_path)
        assert error.key == "storage.workdir" and reason in str(error)


# --- ids, names filter, files -----------------------------------------------------------------

def test_ids_are_stable_and_differ_between_projects(tmp_path):
    text = '[task.train]\nscript = "x"\n[task.eval]\nscript = "y"'
    first = [t.id for t in _load(text, base_dir=tmp_path)]
    assert first == [t.id for t in _load(text, base_dir=tmp_path)]
    elsewhere = [t.id for t in _load(text, base_dir=tmp_path / "sub")]
    assert len(set(first + elsewhere)) == 4
    assert all(parse(i).name in ("train", "eval") for i in first)


def test_name_is_the_seed_and_ids_are_used_as_is(tmp_path):
    task = _one('[task.a]\nscript = "x"\nname = "Hello, World!"', base_dir=tmp_path)
    assert task.id == "tpi-hello-world-5kz6ldls-57wo7rsp"  # TPI's documented id for this name
    assert _one('[task.a]\nscript = "x"\nname = "Hello, World!"',
                base_dir=tmp_path / "x").id == task.id
    existing = "tpi-test-3z4xlzwq-3u0vweb4"
    assert _one(f'[task.a]\nscript = "x"\nname = "{existing}"').id == existing
    assert is_task_id(task.id)


def test_names_filter():
    text = '[task.a]\nscript = "x"\n[task.b]\nscript = "y"\n[task.c]\nscript = "z"'
    assert [t.name for t in _load(text, names=["c", "a"])] == ["a", "c"]
    assert [t.name for t in _load(text, names="b")] == ["b"]
    assert [t.name for t in _load(text)] == ["a", "b", "c"]


def test_unknown_name_lists_the_tasks():
    error = _error('[task.train]\nscript = "x"\n[task.eval]\nscript = "y"', names=["trian"])
    assert "no task 'trian', did you mean 'train'?" in str(error)
    assert str(error).endswith("tasks in this file: train, eval")


def test_unknown_keys_without_a_close_match_list_what_is_allowed():
    error = _error('[task.a]\nscript = "x"\nzzzz = 1')
    assert "did you mean" not in str(error)
    assert "allowed: cloud, disk_size, environment" in str(error)


@pytest.mark.parametrize(("where", "reason"), [
    ("nope.toml", "no such file"), (".", "is a directory, not a file"),
])
def test_missing_file_and_directory(tmp_path, where, reason):
    path = tmp_path / where
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: {reason}"


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "tasks.toml"
    path.write_text('[task.a]\nscript = "x"')

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # root could read a chmod 0 file
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: cannot be read: Permission denied"


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_bytes(b'\xef\xbb\xbf[task.a]\nscript = "x"\n')
    assert [t.name for t in config.load(path)] == ["a"]


def test_load_takes_a_string_path_and_keeps_it_as_source(tmp_path, monkeypatch):
    (tmp_path / "tasks.toml").write_text('[task.a]\nscript = "x"\n')
    monkeypatch.chdir(tmp_path)
    [task] = config.load("tasks.toml", environ={})
    assert task.source == "tasks.toml" and task.base_dir == tmp_path.resolve()
    assert task.id == deterministic("a", seed=f"{tmp_path.resolve()}/a").long


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("45m", 2700),
                                               ("2h30m", 9000), ("1d2h", 93600)])
def test_parse_duration(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("name", ["minimal.toml", "full.toml"])
def test_good_files_load_with_valid_unique_ids(name):
    tasks = config.load(DATA / "good" / name, environ={})
    assert tasks and all(is_task_id(t.id) for t in tasks)
    assert len({t.id for t in tasks}) == len(tasks)


def test_an_environment_name_to_copy_that_is_unset_is_an_error_for_launching(tmp_path):
    from tpi_core.cli._tasks import load_tasks
    from tpi_core.errors import ConfigError

    path = tmp_path / "tasks.toml"
    path.write_text('[task.t]\nscript = "true"\nenvironment = { TPI_TEST_NOT_SET = "", A = "1" }\n')
    tasks = load_tasks(str(path))  # status, logs, destroy: fine without it
    assert tasks[0].unset == ("TPI_TEST_NOT_SET",)
    with pytest.raises(ConfigError) as raised:
        load_tasks(str(path), launching=True)
    message = str(raised.value)
    assert "tasks.toml" in message and "'t'" in message
    assert "environment.TPI_TEST_NOT_SET" in message and "is not set in this environment" in message


@pytest.mark.parametrize(("text", "where", "quote"), [
    ('[task.a]\nscript = "echo\nx = 1\n', "2:10", '"'),
    ('[task.a]\n# it\'s\nscript = """echo\n\nx = 1\n', "3:10", '"""'),
    ("[task.a]\nscript = '''echo\nx\n", "2:10", "'''"),
    ('[task.a]\nenvironment = { A = "x\\"" }\nscript = "echo', "3:10", '"'),
])
def test_an_unterminated_string_names_the_line_it_opened_on(text, where, quote):
    error = _error(text)
    assert str(error) == (f"t.toml:{where}: invalid TOML: the string opened here with "
                          f"{quote} is never closed")
