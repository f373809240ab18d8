"""Jobs fixtures: one jobs world (see jobs_world.py) per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from innosystem.embedded import EmbeddedValkey
from tests.jobs.jobs_world import JobsWorld, make_world


@pytest.fixture(scope="module")
async def world(database_url: str, valkey_server: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    async for w in make_world(database_url, valkey_server.url):
        yield w
