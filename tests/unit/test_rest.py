"""`innosystem.rest.Rest`: a connection per call, or kept open per thread (`kept_alive()`), against
a real HTTP/1.1 server in this process."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from innosystem.rest import Rest, RestError


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.seen: list[tuple[str, str, str, object]] = []  # method, path, authorization, body
        self.close_after_answer = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization", ""), body))
        status = 404 if self.path.endswith("/missing") else 200
        payload = json.dumps({"path": self.path, "echo": body}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        if self.server.close_after_answer:
            self.close_connection = True  # the connection ends without telling the client

    do_GET = do_POST = _answer


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _base(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/api"


def test_a_plain_rest_opens_a_connection_per_call(server: _Server) -> None:
    rest = Rest(_base(server), "k1")
    assert rest("POST", "/v1/things", {"n": 1}) == {"path": "/api/v1/things", "echo": {"n": 1}}
    assert rest("GET", "/v1/things") == {"path": "/api/v1/things", "echo": None}
    assert server.connections == 2
    assert server.seen[0] == ("POST", "/api/v1/things", "Bearer k1", {"n": 1})


def test_kept_alive_reuses_one_connection_per_thread_across_keys(server: _Server) -> None:
    rest = Rest(_base(server)).kept_alive()
    customer = rest.as_key("k2")
    for i in range(5):
        assert customer("POST", "/v1/things", {"n": i})["echo"] == {"n": i}
    assert rest("GET", "/v1/things")["path"] == "/api/v1/things"
    assert server.connections == 1
    assert [s[2] for s in server.seen] == ["Bearer k2"] * 5 + [""]
    kept = rest.connections.open if rest.connections is not None else None
    assert kept is not None and kept.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # no Nagle wait

    others = [threading.Thread(target=lambda: [customer("GET", "/v1/x") for _ in range(3)]) for _ in range(2)]
    for t in others:
        t.start()
    for t in others:
        t.join()
    assert server.connections == 3  # one more per thread, each used three times


def test_kept_alive_answers_errors_and_reconnects_after_the_server_closes(server: _Server) -> None:
    customer = Rest(_base(server), "k3").kept_alive()
    with pytest.raises(RestError) as err:
        customer("GET", "/v1/missing")
    assert err.value.status == 404
    assert customer.call("GET", "/v1/missing")[0] == 404
    assert server.connections == 1  # an error answer keeps the connection

    server.close_after_answer = True
    assert customer("GET", "/v1/a")["path"] == "/api/v1/a"
    server.close_after_answer = False
    assert customer("POST", "/v1/b", {"x": 1})["echo"] == {"x": 1}  # the closed connection is replaced
    assert server.connections == 2
    assert [s[1] for s in server.seen][-2:] == ["/api/v1/a", "/api/v1/b"]  # each request sent once
