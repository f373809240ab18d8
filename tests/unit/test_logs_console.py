"""Readable log lines by default (issue 18, item 8): JSON only when the log format says so."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from innosystem.kit import logs


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved, level


@pytest.mark.parametrize(("fmt", "formatter"), [("", logs.ConsoleFormatter), ("console", logs.ConsoleFormatter),
                                                ("json", logs.JsonFormatter)])
def test_readable_unless_json_is_asked_even_off_a_terminal(root_handlers: None, fmt: str,
                                                            formatter: type[logging.Formatter]) -> None:
    logs.setup("jobs", "INFO", fmt)  # under pytest stderr is not a terminal
    assert isinstance(logging.getLogger().handlers[0].formatter, formatter)


def test_a_console_line_is_short_and_names_the_rpc_and_tenant() -> None:
    record = logging.makeLogRecord({"msg": "submitted %d jobs", "args": (3,), "levelname": "INFO", "name": "x"})
    record.service, record.rpc = "jobs", "/innosystem.jobs.v1.JobService/SubmitJob"
    record.request_id, record.trace_id, record.tenant = "304566ba403346a48978b477bb9c73c9", "a" * 32, "customer:c1"
    record.span_id = "b" * 16
    line = logs.ConsoleFormatter().format(record)
    assert line.split(" ", 1)[1] == ("INFO jobs     submitted 3 jobs  rpc=JobService.SubmitJob request=304566ba "
                                     "trace=aaaaaaaa tenant=customer:c1")
