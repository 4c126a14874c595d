"""The README's opening block works on a bare Debian 12 (git and python3 only), and CI runs it."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def opening_commands() -> list[str]:
    block = (REPO / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines()]


def test_readme_installs_make_before_its_first_make_command():
    first, *rest = opening_commands()
    assert first == "apt-get update && apt-get install -y make"
    assert rest == ["make demo", "make test"]


def test_ci_runs_the_readmes_make_install_and_test_command():
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert any(opening_commands()[0] in line for line in lines)
    assert lines[-1] == "make test"
