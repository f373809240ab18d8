"""A service process's own count of the RPCs it answered, from its Prometheus text."""

from __future__ import annotations

import re
import urllib.request

from innosystem.stack import Stack


def metrics_text(stack: Stack, service: str) -> str:
    """The service process's Prometheus text (services sharing a process serve their metrics on
    the first one's port)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port(service)}/metrics", timeout=5) as resp:
        return resp.read().decode()


def bucket_bounds(text: str, histogram: str) -> set[str]:
    """The `le` bounds a histogram's buckets have in Prometheus text (`+Inf` included)."""
    return set(re.findall(r'^' + re.escape(histogram) + r'_bucket\{[^}]*le="([^"]+)"', text, re.M))


def rpc_calls(stack: Stack, service: str, method: str) -> int:
    """How many `method` calls the service has answered (its `rpc.server.duration` histogram's count)."""
    text = metrics_text(stack, service)
    return sum(int(float(m.group(1))) for m in re.finditer(
        r'^rpc_server_duration_seconds_count\{[^}]*rpc_method="' + re.escape(method) + r'"[^}]*\} (\S+)$', text, re.M))
