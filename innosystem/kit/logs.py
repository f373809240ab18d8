"""Structured logging: JSON lines in production, readable lines on a terminal.

Every record carries the service, and, inside an RPC, its method, request id, trace and span
ids and the caller's tenant, taken from context variables that the server interceptors set.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

service_name: contextvars.ContextVar[str] = contextvars.ContextVar("service", default="")
rpc_method: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_method", default="")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")
# The outside client's address as the gateway saw it (sessions, lockout, the audit log); "" if unknown.
client_address: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="")
# Monotonic time by which the RPC being served must answer; None without a client deadline.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

_CONTEXT = {"rpc": rpc_method, "request_id": request_id, "tenant": tenant}
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.service = service_name.get()
        for key, var in _CONTEXT.items():
            setattr(record, key, var.get())
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and value not in ("", None):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in vars(record).items()
            if k not in _STD_ATTRS and k not in ("service", "span_id") and v not in ("", None)
        )
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname[:4]} " \
               f"[{getattr(record, 'service', '') or record.name}] {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(service: str, level: str = "INFO", fmt: str = "") -> None:
    """Configure the root logger once per process. fmt: "json", "console", or "" = by terminal."""
    service_name.set(service)
    use_json = fmt == "json" or (fmt != "console" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "alembic.runtime.migration", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
