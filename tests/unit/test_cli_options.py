"""The options the commands share: each defined once, ``tpi --json``/``--quiet`` on the group,
and no command module importing another."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import anyio
import click
import pytest

from tpi_core.cli import COMMANDS, cli, main
from tpi_core.cli._app import Application

CLI_DIR = Path(__file__).resolve().parents[2] / "tpi_core" / "cli"
SHARED = ("tasks_file", "clouds", "region")
TASKS = '[task.a]\nscript = "true"\n[task.b]\nscript = "true"\n'


def run_main(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _commands() -> dict[str, click.Command]:
    """Every command by its path (``debug preempt`` for the debug group's)."""
    ctx = click.Context(cli)
    found = {}
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        subs = getattr(command, "commands", {})
        found.update({f"{name} {s}": c for s, c in subs.items()} if subs else {name: command})
    return found


def _definition(param: click.Parameter) -> tuple:
    """What makes two options the same, short flags aside (``logs`` takes the file as -F)."""
    return (param.name, tuple(o for o in param.opts if o.startswith("--")), param.help,
            param.default, param.multiple, param.metavar, param.show_default,
            json.dumps(param.type.to_info_dict(), sort_keys=True))


@pytest.mark.parametrize("name", SHARED)
def test_the_file_cloud_and_region_options_have_one_definition(name):
    found = {path: p for path, command in _commands().items()
             for p in command.params if p.name == name}
    assert len(found) >= 3, found
    definitions = {_definition(p) for p in found.values()}
    assert len(definitions) == 1, definitions


def test_the_file_is_f_everywhere_but_logs_where_f_follows():
    shorts = {path: [o for o in p.opts if not o.startswith("--")]
              for path, command in _commands().items()
              for p in command.params if p.name == "tasks_file"}
    assert shorts.pop("logs") == ["-F"]
    assert set(map(tuple, shorts.values())) == {("-f",)}
    follow = next(p for p in _commands()["logs"].params if p.name == "follow")
    assert "-f" in follow.opts


def test_cloud_and_region_mean_one_thing():
    """Only ``machines`` has a --cloud of its own: the one backend it describes, not where
    to search (every other --cloud is the shared, repeatable one)."""
    for path, command in _commands().items():
        for param in command.params:
            if "--cloud" in param.opts and path != "machines":
                assert param.name == "clouds" and param.multiple, path
            if "--region" in param.opts:
                assert param.name == "region", path


def test_every_json_flag_sets_what_the_groups_sets():
    with_json = {path: next(p for p in c.params if "--json" in p.opts)
                 for path, c in _commands().items() if any("--json" in p.opts for p in c.params)}
    assert {"apply", "plan", "validate", "status", "pull", "destroy", "list", "stop",
            "start", "logs", "plugins", "machines", "sync"} <= set(with_json)
    assert {p.callback for p in with_json.values()} == {with_json["status"].callback}
    assert not any(p.expose_value for p in with_json.values())  # bodies read app.json


def test_the_file_first_commands_share_their_arguments():
    for path in ("apply", "plan", "validate"):
        args = next(p for p in _commands()[path].params if p.name == "args")
        assert args.nargs == -1 and args.metavar == "[FILE] [TASK]..."


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("tpi_core.cli." if node.level else "") + (node.module or "")
            base = base.rstrip(".") or "tpi_core.cli"
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted(p for p in CLI_DIR.glob("*.py")
                                        if not p.name.startswith("_")), ids=lambda p: p.stem)
def test_no_command_module_imports_another(path):
    commands = {p.stem for p in CLI_DIR.glob("*.py") if not p.name.startswith("_")}
    imported = {name.removeprefix("tpi_core.cli.").split(".")[0]
                for name in _imported_modules(path) if name.startswith("tpi_core.cli.")}
    assert not imported & commands - {path.stem}, f"{path.name} imports {imported & commands}"


def test_the_import_check_sees_each_form_of_import(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from tpi_core.cli.pull import a\nfrom tpi_core.cli import apply\n"
                      "import tpi_core.cli.logs\nfrom .plan import b\n")
    found = _imported_modules(source)
    assert {"tpi_core.cli.pull", "tpi_core.cli.apply", "tpi_core.cli.logs",
            "tpi_core.cli.plan"} <= found


@pytest.mark.parametrize("argv", [["status"], ["status", "a"], ["validate"], ["plan", "b"],
                                  ["machines"], ["plugins"]])
def test_json_on_the_group_is_json_on_the_command(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TPI_PLUGINS", "local")
    (tmp_path / "tasks.toml").write_text(TASKS)
    code, before, _ = run_main(["--json", *argv], capsys)
    assert code == 0 and json.loads(before)
    code, after, _ = run_main([*argv, "--json"], capsys)
    assert code == 0 and json.loads(after) == json.loads(before)


def test_quiet_silences_progress_but_never_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks.toml").write_text(TASKS)
    code, out, err = run_main(["validate"], capsys)
    assert code == 0 and "2 task(s) OK" in err
    code, quiet_out, quiet_err = run_main(["--quiet", "validate"], capsys)
    assert code == 0 and quiet_out == out and quiet_err == ""
    code, _, err = run_main(["-q", "validate", "missing.toml"], capsys)
    assert code == 2 and err == "tpi: error: missing.toml: no such file\n"
    code, _, err = run_main(["-q", "status", "nope"], capsys)
    assert code == 3 and "no task 'nope'" in err
    code, _, err = run_main(["-q", "status", "--bogus"], capsys)  # click's own errors too
    assert code == 2 and "--bogus" in err


def test_the_application_carries_the_group_switches():
    with cli.make_context("tpi", ["--json", "-q", "status"]) as ctx:
        ctx.invoke(cli.callback, **ctx.params)
        assert (ctx.obj.json, ctx.obj.quiet) == (True, True)
        assert ctx.find_object(Application) is ctx.obj


class _Logs:
    """An engine holding one replica's log of two lines."""

    async def read_log(self, ref, log, offset: int) -> bytes:
        return b"hello\nworld\n"[offset:]


def test_logs_as_json_are_one_object_a_line():
    from tpi_core.backend import TaskRef
    from tpi_core.cli._follow import print_new_logs
    from tpi_core.cli._tasks import Target
    from tpi_core.reports import BootLog

    target = Target(TaskRef("tpi-a-1", "local", "", name="a"))
    log = BootLog(replica=0, attempt=1, key="0.1.log", size=12)
    lines: list[str] = []
    anyio.run(lambda: print_new_logs(_Logs(), target, {}, lines.append, [log], as_json=True))
    assert [json.loads(line) for line in lines] == [
        {"task": "a", "id": "tpi-a-1", "replica": 0, "boot": 1, "line": "hello"},
        {"task": "a", "id": "tpi-a-1", "replica": 0, "boot": 1, "line": "world"}]
    lines.clear()
    anyio.run(lambda: print_new_logs(_Logs(), target, {}, lines.append, [log]))
    assert lines == ["a[0.1] hello", "a[0.1] world"]
