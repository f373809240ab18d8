"""Fixtures of the deploy tests: the rendered kustomize overlays and the code's truth, built once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from deploy_support import Rendered, cli_commands, known_env_vars, render_all


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Rendered]:
    return render_all(Path(tmp_path_factory.mktemp("kustomize")))


@pytest.fixture(scope="session")
def known_env(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    return known_env_vars(Path(tmp_path_factory.mktemp("known-env")))


@pytest.fixture(scope="session")
def commands() -> dict[str, argparse.ArgumentParser]:
    """The `innosystem` subcommands and their real argument parsers."""
    return cli_commands()
