"""Issue 13: API keys are cached at every gateway replica (no tenancy call per request in steady
state), and a key revoked or rotated through one replica is refused by the others at once: each
replica follows tenancy's revocations, so the cache's TTL is never what ends a key. Real
processes: the session's stack plus two more gateways with a five-minute cache."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest

from innosystem.embedded import free_port
from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.support.metrics import rpc_calls

AUTHENTICATE = "/innosystem.tenancy.v1.TenancyService/Authenticate"
LONG_TTL = {"INNOSYSTEM_GATEWAY_AUTH_CACHE_TTL_SECONDS": "300"}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def replicas(stack: Stack) -> Iterator[list[str]]:
    """Two more gateway processes in front of the session's services."""
    urls = []
    for n in (1, 2):
        port = free_port()
        stack.spawn(f"gateway-replica-{n}", ["serve", "gateway"], {**LONG_TTL, "INNOSYSTEM_HTTP_PORT": str(port)})
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while not all(_healthy(u) for u in urls):
        assert time.monotonic() < deadline, "the replica gateways did not start"
        time.sleep(0.1)
    yield urls
    for n in (1, 2):
        proc = stack.procs.pop(f"gateway-replica-{n}")
        proc.terminate()
        proc.wait(30)


def _cached(stack: Stack, client: Client) -> None:
    """Until the replica answers the key from its cache: once it has subscribed to the revocations
    it trusts its cache, and a request then costs tenancy nothing."""
    for _ in range(200):
        before = rpc_calls(stack, "tenancy", AUTHENTICATE)
        assert client.get("/v1/me").status == 200
        if rpc_calls(stack, "tenancy", AUTHENTICATE) == before:
            return
        time.sleep(0.05)
    raise AssertionError("the gateway never answered the key from its cache")


def _refused_soon(client: Client) -> int:
    """The status of the first answer that is no longer 200 (a revocation travels asynchronously to
    the other processes), polled for a generous while."""
    for _ in range(400):
        status = client.get("/v1/me").status
        if status != 200:
            return status
        time.sleep(0.005)
    return 200


def test_a_key_rotated_through_one_gateway_is_refused_by_the_others(stack: Stack, admin: Client,
                                                                    replicas: list[str]) -> None:
    created = admin.post("/v1/customers", {"name": "Replicated", "email": "rep@example.com"}).body
    old_key, cid = created["apiKey"], created["customer"]["id"]
    one, two = (Client(url, old_key) for url in replicas)
    for replica in (one, two):
        _cached(stack, replica)
    before = rpc_calls(stack, "tenancy", AUTHENTICATE)
    for _ in range(10):  # steady state: no tenancy call per request
        assert one.get("/v1/me").status == 200 and two.get("/v1/me").status == 200
    assert rpc_calls(stack, "tenancy", AUTHENTICATE) == before

    rotated = one.post(f"/v1/customers/{cid}:rotateApiKey")
    assert rotated.status == 200
    assert one.get("/v1/me").status == 401  # the replica that rotated it
    assert _refused_soon(two) == 401  # the other, long before its 5-minute cache would have let go
    assert _refused_soon(Client(stack.gateway_url, old_key)) == 401
    new = rotated.body["apiKey"]
    assert Client(replicas[1], new).get("/v1/me").status == 200


def test_a_deactivated_customer_is_refused_by_every_gateway(stack: Stack, admin: Client,
                                                            replicas: list[str]) -> None:
    created = admin.post("/v1/customers", {"name": "Leaving", "email": "leave@example.com"}).body
    key, cid = created["apiKey"], created["customer"]["id"]
    one, two = (Client(url, key) for url in replicas)
    for replica in (one, two):
        _cached(stack, replica)
    assert Client(replicas[0], stack.admin_api_key).patch(f"/v1/customers/{cid}?updateMask=active",
                                                          {"active": False}).status == 200
    assert _refused_soon(two) == 401 and _refused_soon(one) == 401
