"""A batch span's links to its jobs' traces (`kit.telemetry.links_to`): one per job whose stored
W3C context is readable where spans are recorded, none where nothing records them (an unrecorded
span drops its links, so reading every job's context there is wasted)."""

from __future__ import annotations

import pytest

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import telemetry

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_spans_recorded", True)


def test_each_readable_context_gets_a_link_where_spans_are_recorded(recorded: None) -> None:
    lease = jobs_pb2.JobLease(trace_context={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    links = telemetry.links_to([lease.trace_context, {"traceparent": "garbage"}, None, {}])
    assert [(format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) for link in links] == [
        (TRACE, SPAN)]
    assert links[0].context.is_remote and links[0].context.trace_flags.sampled


def test_no_link_is_built_where_no_span_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_spans_recorded", False)
    assert telemetry.links_to([{"traceparent": f"00-{TRACE}-{SPAN}-01"}]) == []
