"""Each service's ORM models match its migrations: a model change without a revision fails here."""

from __future__ import annotations

import pytest
from alembic import command

from innosystem.kit.config import SERVICES
from innosystem.kit.migrate import alembic_config, has_migrations


@pytest.mark.parametrize("service", [s for s in SERVICES if has_migrations(s)])
def test_models_match_migrations(database_url: str, service: str) -> None:
    command.check(alembic_config(database_url, service))  # raises if autogenerate finds a difference
