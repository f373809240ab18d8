"""A failing statement's error carries no bound value (issue 14, item 16): the error text ends up in
the log line of an unhandled error, and bound values are payloads, results and descriptions."""

from __future__ import annotations

import logging
import traceback

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database

SECRET = "card-4111-1111-1111-1111"


async def test_failing_statement_error_and_log_hide_the_parameters(database_url: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    db = Database(to_async_url(database_url), pool_size=1)
    log = logging.getLogger("test.db_errors")
    try:
        with pytest.raises(DBAPIError) as caught:
            async with db.session() as s:
                # fails in PostgreSQL (division by zero) with a secret bound beside it
                await s.execute(text("SELECT CAST(:secret AS text) || (1 / :zero)::text"),
                                {"secret": SECRET, "zero": 0})
        with caplog.at_level(logging.ERROR):
            try:
                raise caught.value
            except DBAPIError:
                log.exception("unhandled error")  # what the server's error mapping does
    finally:
        await db.close()
    shown = "".join(traceback.format_exception(caught.value)) + caplog.text
    assert "division by zero" in shown  # the error itself is still there to read
    assert SECRET not in shown
