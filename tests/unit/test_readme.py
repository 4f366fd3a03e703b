"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    run_example, run_tests = _commands()
    assert "pytest" in run_tests
    assert run_tests in (ROOT / ".ci" / "run").read_text()


def test_readme_example_command_applies_the_example():
    run_example, _ = _commands()
    assert "tpi apply" in run_example and "tasks.toml" in run_example
