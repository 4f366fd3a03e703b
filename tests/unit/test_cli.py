"""The CLI's edges: one-line errors with exit 2 for bad input, help, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tpi_core.cli import main

BROKEN = Path(__file__).resolve().parent.parent / "data" / "broken"


def run_main(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.toml")), ids=lambda p: p.name)
@pytest.mark.parametrize("verb", ["validate", "apply", "plan"])
def test_broken_tasks_file_gives_one_line_and_exit_2(path, verb, capsys, monkeypatch):
    monkeypatch.chdir(BROKEN)
    code, out, err = run_main([verb, path.name], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tpi: error: {path.name}")
    assert "Traceback" not in err and out == ""


def test_broken_file_in_a_subprocess_has_no_traceback():
    path = BROKEN / "misspelt_key.toml"
    proc = subprocess.run([sys.executable, "-m", "tpi_core", "validate", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "did you mean 'script'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_switch_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("TPI_DEBUG", "1")
    code, _, err = run_main(["validate", str(BROKEN / "misspelt_key.toml")], capsys)
    assert code == 2 and "Traceback" in err


def test_missing_tasks_file_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["apply"], capsys)
    assert code == 2 and "tasks.toml" in err


def test_unknown_task_name_is_exit_3(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks.toml").write_text('[task.a]\nscript = "true"\n')
    code, _, err = run_main(["status", "nope"], capsys)
    assert code == 3 and "no task 'nope'" in err and "tasks: a" in err


@pytest.mark.parametrize("command", [["status"], ["logs"], ["pull"], ["destroy", "--yes"]])
def test_nothing_to_act_on_is_one_line_not_an_empty_table(tmp_path, capsys, monkeypatch,
                                                         command):
    monkeypatch.chdir(tmp_path)  # no tasks.toml, nothing launched from here
    code, out, err = run_main(command, capsys)
    assert code == 2 and out == "" and err.strip() == "tpi: error: tasks.toml: no such file"


def test_missing_backend_names_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TPI_PLUGINS", "local")
    (tmp_path / "tasks.toml").write_text('[task.a]\nscript = "true"\n')
    code, _, err = run_main(["machines", "--cloud", "aws"], capsys)
    # never the 'tpi' of PyPI, another project: the folder this tpi came from
    assert code == 2 and "pip install '" in err and "tpi[aws]" not in err
    assert f"{Path(__file__).parents[2]}[aws]" in err
    code, _, err = run_main(["machines", "--cloud", "azure"], capsys)
    assert code == 2 and f"{Path(__file__).parents[2]}[azure]" in err and "tpi[" not in err


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_the_file_may_also_be_named_with_f_as_for_every_other_command(tmp_path, capsys,
                                                                      monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.toml").write_text('[task.a]\nscript = "true"\n[task.b]\nscript = "true"\n')
    code, out, _ = run_main([command, "-f", "other.toml", "b", "--json"], capsys)
    assert code == 0 and [row["task"] for row in json.loads(out)] == ["b"]
    code, _, err = run_main([command, "-f", "missing.toml"], capsys)
    assert code == 2 and "missing.toml: no such file" in err
    code, _, err = run_main(["apply", "-f", "missing.toml", "b"], capsys)  # launches nothing
    assert code == 2 and "missing.toml: no such file" in err


def test_logs_f_follows_and_takes_the_file_as_capital_f(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.toml").write_text('[task.a]\nscript = "true"\n')
    # -f is --follow (a flag, as kubectl's and tail's), so the file is -F here
    code, _, err = run_main(["logs", "-f", "-F", "missing.toml", "a"], capsys)
    assert code == 3 and "missing.toml: no task 'a'" in err
    code, _, err = run_main(["logs", "-f", "-F", "other.toml", "nope"], capsys)
    assert code == 3 and "no task 'nope'" in err
    code, _, err = run_main(["logs", "-f", "other.toml"], capsys)  # a task name now
    assert code in (2, 3) and "other.toml" in err


def test_validate_prints_tasks_as_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET", "value-never-shown")
    (tmp_path / "tasks.toml").write_text(
        '[task.a]\nscript = "true"\nparallelism = 3\nenvironment = { SECRET = "" }\n')
    code, out, err = run_main(["validate", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and rows[0]["parallelism"] == 3 and rows[0]["task"] == "a"
    assert "SECRET" in rows[0]["environment"]
    assert "value-never-shown" not in out + err
    assert "region" not in rows[0] and "image" not in rows[0]  # a local task has neither


def test_help_lists_every_command_and_exit_codes(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for name in ("apply", "status", "logs", "pull", "stop", "start", "destroy", "list",
                 "validate", "plan", "plugins", "machines", "sync", "debug"):
        assert f"  {name}" in out
    assert "Exit codes" in out and "timed out" in out


def test_exit_skips_the_last_garbage_collection(tmp_path):
    """Objects are frozen once every later exit handler has run: the interpreter's final
    collection then has nothing to walk (about 20 ms of each command)."""
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n"
        "from tpi_core.cli import main\n"
        "main(['--help'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "frozen True"


@pytest.mark.parametrize("command", ["validate", "plan", "apply"])
def test_an_unset_environment_name_to_copy_stops_launching_with_one_line(tmp_path, capsys,
                                                                          monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / "tasks.toml").write_text(
        '[task.a]\nscript = "true"\nenvironment = { HF_TOKEN = "" }\n')
    code, out, err = run_main([command], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "tasks.toml: task 'a': key 'environment.HF_TOKEN'" in err and "not set" in err
    assert not (tmp_path / ".tpi").exists()  # nothing was launched or recorded


def test_list_without_cloud_credentials_says_so_in_one_line_a_backend(tmp_path, capsys,
                                                                      monkeypatch):
    pytest.importorskip("tpi_aws")
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith(("AWS_", "KUBECONFIG"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    code, out, err = run_main(["list"], capsys)
    assert code == 0 and "Traceback" not in err
    assert "not searched: aws: " in err and "no AWS credentials" in err
    assert len([line for line in err.splitlines() if line.startswith("not searched: aws")]) == 1


def test_a_full_disk_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    import errno

    from tpi_core import config

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "results/model.bin")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks.toml").write_text('[task.a]\nscript = "true"\n')
    monkeypatch.setattr(config, "load", full)
    code, _, err = run_main(["validate"], capsys)
    assert code == 1 and err == "tpi: error: No space left on device: results/model.bin\n"


@pytest.mark.parametrize(("setting", "key", "says"), [
    ('cloud = "aws"\nmachine = "m+t5"', "machine", "did you mean 'm+t4'?"),
    ('cloud = "aws"\nmachine = "g4dn.xlarg"', "machine", "did you mean 'g4dn.xlarge'?"),
    ('cloud = "aws"\nregion = "us-weest"', "region", "did you mean 'us-west'?"),
    ('cloud = "k8s"\nmachine = "m+t5"', "machine", "m+t5"),
    ('cloud = "gcp"\nmachine = "m+t5"', "machine", "did you mean 'm+t4'?"),
    ('cloud = "gcp"\nregion = "eu-wst"', "region", "did you mean 'eu-west'?"),
    ('cloud = "azure"\nmachine = "m+t5"', "machine", "did you mean 'm+t4'?"),
    ('cloud = "az"\nimage = "ubuntu#plan"', "image", "marketplace plans"),
])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_validate_runs_the_backends_own_checks_and_names_file_task_and_key(
        tmp_path, capsys, monkeypatch, command, setting, key, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks.toml").write_text(f'[task.train]\n{setting}\nscript = "true"\n')
    code, out, err = run_main([command], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert f"tasks.toml: task 'train': key '{key}': " in err and says in err


def test_ctrl_c_cancels_even_code_that_swallowed_one_cancellation():
    """SIGINT cancels the command through an anyio scope, which stays cancelled: code that
    swallowed one cancellation (as an anyio scope being left may swallow asyncio's one-shot
    cancel of the main task) is cancelled again at its next await, and the command ends in
    KeyboardInterrupt instead of going on."""
    program = textwrap.dedent("""
        import os, signal, anyio
        from tpi_core.cli._app import Application

        async def stubborn():
            async def interrupt():
                await anyio.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)
            async with anyio.create_task_group() as group:
                group.start_soon(interrupt)
                try:
                    await anyio.sleep(30)
                except anyio.get_cancelled_exc_class():
                    pass  # swallowed once
                await anyio.sleep(30)  # the old seam slept here: the command went on
            return "finished"

        try:
            print(Application().run(stubborn))
        except KeyboardInterrupt:
            print("interrupted")
        """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=20)
    assert done.stdout.strip() == "interrupted", done.stderr
