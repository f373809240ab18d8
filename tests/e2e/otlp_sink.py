"""A minimal OTLP/gRPC trace collector, run as its own process by the trace test:

    python -m tests.e2e.otlp_sink PORT_FILE SPANS_FILE

It writes its port to PORT_FILE once listening and appends each received span to SPANS_FILE as a
JSON line [service.name, span name, trace id hex]. Its own process, because a gRPC server
stopped inside the test process (beside the suite's asyncio gRPC clients) can deadlock.
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out: Path) -> None:
        self._out = out.open("a")
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        lines = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                lines += [json.dumps([service, s.name, s.trace_id.hex()]) + "\n" for s in scope.spans]
        with self._lock:
            self._out.writelines(lines)
            self._out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    port_file, spans_file = Path(sys.argv[1]), Path(sys.argv[2])
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(spans_file), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
