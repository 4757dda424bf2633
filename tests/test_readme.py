"""The README's set-up commands are the ones CI runs (a green CI must mean the README works)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert "\n" not in command, f"each set-up command is one line: {command!r}"
        assert command in ci, f"README command not run verbatim by .ci/run: {command}"
    assert "python3 -m venv" in (ROOT / ".ci" / "run").read_text()


def test_ci_runs_the_readme_lint_command():
    readme = (ROOT / "README.md").read_text()
    lint = "ruff check . && ruff format --check ."
    assert lint in " ".join(readme.split()), "README no longer documents the lint command"
    assert lint in (ROOT / ".ci" / "run").read_text().splitlines()
