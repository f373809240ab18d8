"""The gateway's server span: a child of the client's trace, parent of the upstream call."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.gateway.doubles import ADMIN_KEY, Recorder

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def test_a_request_continues_the_clients_trace_through_its_own_span(
        client: TestClient, recorder: Recorder, span_exporter: InMemorySpanExporter) -> None:
    resp = await client.get("/v1/customers/c-7", headers={"Authorization": f"Bearer {ADMIN_KEY}",
                                                          "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
    assert resp.status == 200

    server = [s for s in span_exporter.get_finished_spans()
              if s.kind == SpanKind.SERVER and format(s.context.trace_id, "032x") == TRACE_ID]
    assert [s.name for s in server] == ["GET /v1/customers/{customer_id}"]
    span = server[0]
    assert span.parent is not None and format(span.parent.span_id, "016x") == CLIENT_SPAN
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 200

    # The upstream call carries the same trace, one hop further than the client's span.
    upstream = recorder.named("GetCustomer")[0].metadata["traceparent"]
    _, trace_id, parent_id, _ = upstream.split("-")
    assert trace_id == TRACE_ID and parent_id != CLIENT_SPAN


async def test_an_unmatched_path_is_one_label_not_one_per_path(
        client: TestClient, span_exporter: InMemorySpanExporter) -> None:
    for path in ("/v1/nothing/a", "/v1/nothing/b"):
        assert (await client.get(path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})).status == 404
    names = {s.name for s in span_exporter.get_finished_spans() if s.kind == SpanKind.SERVER}
    assert "GET unmatched" in names
    assert not any("/v1/nothing" in n for n in names)
