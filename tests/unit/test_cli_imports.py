"""`innosystem <process>` imports what that process needs, not every command's modules: a runner
starts in about 0.4 s, not 0.9 (alembic, SQLAlchemy and the client's HTTP libraries were a
half-second of every runner's start-up, inside `make bench`'s drain). Each case runs in a fresh
interpreter, since this test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("alembic", "sqlalchemy", "httpx", "psycopg", "innosystem.client", "innosystem.keymanager.command")


def _modules_after(*argv: str) -> tuple[str, set[str]]:
    code = ("import json, sys\nfrom innosystem import cli\n"
            f"try:\n    cli.main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    *text, modules = done.stdout.strip().splitlines()
    return "\n".join(text), set(json.loads(modules))


def test_a_runner_imports_neither_the_database_nor_the_client_libraries() -> None:
    usage, modules = _modules_after("runner", "--help")
    assert "--processor" in usage  # the runner's own arguments are there
    assert "innosystem.runner.cli" in modules
    assert not [name for name in HEAVY if name in modules]


@pytest.mark.parametrize("argv", [("--help",), ("jobs", "--help")])
def test_help_and_the_client_commands_still_have_every_command(argv: tuple[str, ...]) -> None:
    usage, modules = _modules_after(*argv)
    assert "innosystem.client.cli" in modules
    assert ("wallet" in usage and "runner" in usage) if argv == ("--help",) else "submit" in usage


def test_the_key_manager_parses_its_own_arguments() -> None:
    usage, modules = _modules_after("keymanager", "--help")
    assert "--key-file" in usage
    assert "innosystem.client" not in modules and "innosystem.runner.cli" not in modules
