"""A few lines over the standard library to speak JSON to the gateway: for the demo seeding and the
benchmark.

A `Rest` opens a connection per call, as a one-off script does; `kept_alive()` gives one that keeps
a connection per thread open between calls, as HTTP client libraries do (httpx, requests' Session,
the platform's SDK): the benchmark measures both.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any


class RestError(Exception):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status, self.body = status, body


class Connections(threading.local):
    """One open connection per thread to one gateway."""

    def __init__(self, base: str, timeout: float) -> None:
        url = urllib.parse.urlsplit(base)
        self.https, self.host, self.prefix = url.scheme == "https", url.netloc, url.path.rstrip("/")
        self.timeout = timeout
        self.open: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        reused = self.open is not None
        try:
            return self._exchange(method, path, data, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
            # a kept connection that broke before any answer (most often one the gateway closed while
            # idle): once more, on a new one. For the demo and the benchmark, not for money.
            return self._exchange(method, path, data, headers)

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.open is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            connection = kind(self.host, timeout=self.timeout)
            connection.connect()
            # http.client writes a request's headers and body apart: without this, Nagle's algorithm
            # may hold the body back until the gateway's delayed ACK of the headers (40 ms on Linux)
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.open = connection
        try:
            self.open.request(method, self.prefix + path, body=data, headers=headers)
            response = self.open.getresponse()
            payload = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, payload

    def close(self) -> None:
        if self.open is not None:
            self.open.close()
            self.open = None


@dataclass(frozen=True)
class Rest:
    base: str
    api_key: str = ""
    timeout: float = 30.0
    connections: Connections | None = field(default=None, compare=False, repr=False)

    def as_key(self, api_key: str) -> Rest:
        return Rest(self.base, api_key, self.timeout, self.connections)

    def kept_alive(self) -> Rest:
        """The same gateway and key over connections kept open (one per thread), shared by as_key's copies."""
        return Rest(self.base, self.api_key, self.timeout, Connections(self.base, self.timeout))

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON body); HTTP errors are answers here, not exceptions."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.connections is not None:
            status, payload = self.connections.request(method, path, data, headers)
        else:
            request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    status, payload = resp.status, resp.read()
            except urllib.error.HTTPError as err:
                status, payload = err.code, err.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        """The body of a 2xx answer; anything else raises RestError naming the call."""
        status, answer = self.call(method, path, body)
        if not 200 <= status < 300:
            raise RestError(method, path, status, answer)
        return answer
