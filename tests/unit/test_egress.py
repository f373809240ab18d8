"""The egress guard (innosystem/kit/egress.py): the address rules, the URL rules, and guarded
calls against real local servers: an allow-listed host works, a name resolving to loopback is
refused before any connection, a redirect is not followed, an oversized answer is refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiohttp import web

from innosystem.keymanager.client import KeyManagerClient, KeyManagerError
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.kit import egress
from tests.support.tiny_http import serve


@pytest.mark.parametrize(("address", "problem"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::", "unspecified"), ("240.0.0.1", "reserved"), ("100.64.0.1", "non-public"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "cloud metadata"),
    ("2002:7f00:1::", "loopback"), ("64:ff9b::a00:1", "private"), ("fe80::1%eth0", "link-local"),
])
def test_internal_addresses_are_refused_with_what_they_are(address: str, problem: str) -> None:
    assert egress.address_problem(address) == problem


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert egress.address_problem(address) is None


def test_urls_https_only_unless_allow_listed() -> None:
    strict = egress.Policy()
    assert egress.check_url("https://km.example.com/v1", strict).port == 443
    for url, says in [("http://km.example.com", "http:// is allowed only"), ("https://127.0.0.1:8443", "loopback"),
                      ("https://[::1]/", "loopback"), ("https://169.254.169.254/latest", "cloud metadata"),
                      ("https://10.0.0.5", "private")]:
        with pytest.raises(egress.EgressError) as caught:
            egress.check_url(url, strict)
        assert caught.value.reason == egress.BLOCKED and says in caught.value.message, url
    for url in ("ftp://x.example.com", "https://user:pw@x.example.com", "https://x.example.com:99999", "https:///"):
        with pytest.raises(ValueError):
            egress.check_url(url, strict)
    allowed = egress.Policy(allow_hosts=egress.parse_allow_list("127.0.0.1:50060, km.internal,[::1]:9"))
    assert egress.check_url("http://127.0.0.1:50060", allowed).allow_listed
    assert egress.check_url("http://KM.internal.:81/x", allowed).allow_listed  # a host entry: any port
    assert egress.check_url("http://[::1]:9", allowed).allow_listed
    with pytest.raises(egress.EgressError):
        egress.check_url("http://127.0.0.1:50061", allowed)  # another port of an allow-listed address
    with pytest.raises(ValueError):
        egress.parse_allow_list("http://x/y")


async def test_names_are_checked_where_they_resolve() -> None:
    with pytest.raises(egress.EgressError) as caught:
        await egress.resolve("localhost", 443, egress.Policy())
    assert caught.value.reason == egress.BLOCKED and "loopback" in caught.value.message
    assert await egress.resolve("localhost", 443, egress.Policy(allow_hosts=frozenset({"localhost"})))
    with pytest.raises(egress.EgressError) as unknown:
        await egress.resolve("no-such-host.invalid", 443, egress.Policy())
    assert unknown.value.reason == egress.UNREACHABLE
    # Legacy spellings of 127.0.0.1 are names to the URL check, and loopback where they resolve.
    client = egress.Client(egress.Policy())
    try:
        for host in ("127.1", "2130706433", "0x7f000001", "017700000001"):
            with pytest.raises(egress.EgressError) as legacy:
                await egress.resolve(host, 443, egress.Policy())
            assert legacy.value.reason == egress.BLOCKED, host
            with pytest.raises(egress.EgressError) as called:
                await client.request("GET", f"https://{host}/", time_limit=5)
            assert called.value.reason == egress.BLOCKED, host
    finally:
        await client.close()


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def test_a_name_resolving_to_loopback_is_refused_before_any_connection() -> None:
    async with serve({"/": ok}) as server:
        client = egress.Client(egress.Policy())
        try:
            # The URL passes the static checks (a name, https); what it resolves to does not.
            with pytest.raises(egress.EgressError) as caught:
                await client.request("GET", server.url(host="localhost", scheme="https"), time_limit=5)
            assert caught.value.reason == egress.BLOCKED and "localhost resolves to a loopback" in caught.value.message
            with pytest.raises(egress.EgressError):
                await client.request("GET", server.url(), time_limit=5)  # plain http, not allow-listed
        finally:
            await client.close()
        assert server.hits == []
        allowed = egress.Client(egress.Policy(allow_hosts=frozenset({f"localhost:{server.port}"})))
        try:
            answer = await allowed.request("GET", server.url(host="localhost"), time_limit=5)
        finally:
            await allowed.close()
        assert answer.status == 200 and server.hits == ["/"]


async def test_redirects_are_not_followed_and_big_answers_are_refused() -> None:
    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def local_bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound("/secret")

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b"x" * 65536)
        return resp

    async with serve({"/bounce": bounce, "/local": local_bounce, "/secret": ok, "/big": big}) as server:
        client = egress.Client(egress.Policy(allow_hosts=frozenset({f"127.0.0.1:{server.port}"}),
                                             max_response_bytes=1 << 20))
        try:
            for path in ("/bounce", "/local"):
                with pytest.raises(egress.EgressError) as caught:
                    await client.request("GET", server.url(path), time_limit=5)
                assert caught.value.reason == egress.REDIRECT and "302" in caught.value.message
            with pytest.raises(egress.EgressError) as large:
                await client.request("GET", server.url("/big"), time_limit=5)
            assert large.value.reason == egress.TOO_LARGE
        finally:
            await client.close()
        assert "/secret" not in server.hits


async def test_time_is_bounded_and_failures_say_what_failed() -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async with serve({"/": stall}) as server:
        client = egress.Client(egress.Policy(allow_hosts=frozenset({"127.0.0.1"})))
        try:
            with pytest.raises(egress.EgressError) as slow:
                await client.request("GET", server.url(), time_limit=0.3)
            assert slow.value.reason == egress.TIMEOUT
            release.set()
            with pytest.raises(egress.EgressError) as refused:
                await client.request("GET", "http://127.0.0.1:1/", time_limit=5)
            assert refused.value.reason == egress.UNREACHABLE and refused.value.message == "connection refused"
        finally:
            await client.close()


async def test_key_manager_errors_carry_a_reason_code_but_never_the_targets_words() -> None:
    secret_text = "internal-admin-panel-says-hello"

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(status=403, data={
            "code": 7, "message": secret_text, "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "PURPOSE_NOT_ALLOWED",
                "domain": secret_text}]})

    async def nonsense(request: web.Request) -> web.Response:
        return web.Response(status=200, text=f"<html>{secret_text}</html>")

    async with serve({"/deny/v1/health": refuse, "/junk/v1/health": nonsense}) as server:
        policy = egress.Policy(allow_hosts=frozenset({f"127.0.0.1:{server.port}"}))
        said = {}
        for path in ("/deny", "/junk"):
            client = KeyManagerClient(server.url(path), [b"s" * 32], timeout=5, policy=policy)
            try:
                with pytest.raises(KeyManagerError) as caught:
                    await client.health(km.HealthRequest())
            finally:
                await client.close()
            said[caught.value.reason] = str(caught.value)
    assert set(said) == {"KEY_MANAGER_REFUSED", "KEY_MANAGER_BAD_ANSWER"}
    assert "PURPOSE_NOT_ALLOWED" in said["KEY_MANAGER_REFUSED"]  # its reason code is passed on
    assert not [text for text in said.values() if secret_text in text], said


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
async def test_a_key_manager_named_by_a_loopback_name_is_refused_at_call_time(scheme: str) -> None:
    """Registered or not, each call checks where the name resolves now (DNS rebinding)."""
    accepted: list[object] = []

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.close()

    server = await asyncio.start_server(note, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = KeyManagerClient(f"{scheme}://localhost:{port}", [b"s" * 32], timeout=5, policy=egress.Policy())
    try:
        with pytest.raises(KeyManagerError) as caught:
            await client.health(km.HealthRequest())
    finally:
        await client.close()
        server.close()
    assert caught.value.reason == egress.BLOCKED and "loopback" in caught.value.message
    assert accepted == []


def test_the_embedded_demo_allow_lists_exactly_its_reference_key_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    from innosystem.stack import Stack, allow_keymanager

    monkeypatch.setenv(egress.ALLOW_ENV, "km.corp:443")  # the operator's own entries are kept
    stack = Stack(database_url="", redis_url="", http_port=0, fixed_ports=False)
    allow_keymanager(stack, 50999)
    monkeypatch.setenv(egress.ALLOW_ENV, stack.env()[egress.ALLOW_ENV])
    policy = egress.Policy.from_env()
    assert policy.allows("127.0.0.1", 50999) and policy.allows("localhost", 50999) and policy.allows("km.corp", 443)
    assert not policy.allows("127.0.0.1", 50998) and not policy.allows("127.0.0.1", 5432)


def test_a_runner_starts_without_loading_aiohttp() -> None:
    """The guard loads aiohttp with its first HTTP call, so a runner (whose EXTERNAL_API processors
    are the only callers) starts a third quicker; the guarded calls above load it when they run."""
    probe = ("import sys, innosystem.runner.cli, innosystem.kit.egress as e; "
             "e.Client(e.Policy()); print('aiohttp' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert shown.stdout.strip() == "False", shown.stderr
