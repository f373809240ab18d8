"""Issue 12: billing's hold batches answered in the jobs service's process (kit.inprocess,
services/billing/holds.py) are the batches the gRPC call answers: the same outcome per item, the
same error for a refused call, the same time bound; large batches and a busy process still go by
the call. Real parts: billing on the embedded PostgreSQL and Valkey behind a real gRPC server,
the jobs service's billing client over a real signed channel."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.kit import inprocess
from innosystem.kit.clients import channel
from innosystem.kit.errors import DomainError, from_rpc_error, rpc_error
from services.billing.api import BillingApi
from services.billing.holds import answer
from services.billing.service import BillingService
from services.jobs import billing as jobs_billing
from services.jobs.billing import Billing, HoldRequest
from tests.billing.billing_helpers import billing_server, funded_wallet, wallet

SECRET = b"s" * 32


@pytest.fixture
async def served(billing: BillingService) -> AsyncIterator[tuple[BillingApi, str]]:
    """Billing's API and the address of a gRPC server answering it (as billing's own process)."""
    api = BillingApi(billing)
    server, address = await billing_server(api, SECRET)
    try:
        yield api, address
    finally:
        await server.stop(None)


@pytest.fixture
def idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process taken as idle: the test's own load (the suite around it) must not decide the route."""
    monkeypatch.setattr(inprocess, "cpu_share", lambda: 0.0)


@pytest.fixture
async def client(served: tuple[BillingApi, str]) -> AsyncIterator[Billing]:
    ch = channel(served[1], service="jobs", secret=SECRET)
    yield Billing(ch)
    await ch.close()


class _Offered:
    """Offers a handler under BILLING_HOLDS for the block, counting the calls it answers."""

    def __init__(self, handler: inprocess.Handler) -> None:
        self.calls = 0
        self._handler = handler

    async def __call__(self, request: Any) -> Any:
        self.calls += 1
        return await self._handler(request)

    def __enter__(self) -> _Offered:
        inprocess.offer(inprocess.BILLING_HOLDS, self)
        return self

    def __exit__(self, *exc: object) -> None:
        inprocess.withdraw(inprocess.BILLING_HOLDS, self)


def _outcomes(outcomes: list[DomainError | None]) -> list[tuple[str, str, list[tuple[str, str]]] | None]:
    return [None if o is None else (type(o).__name__, o.reason, o.violations) for o in outcomes]


async def _mixed(billing: BillingService) -> Callable[[str], list[HoldRequest]]:
    """A batch of four: two a funded wallet can hold, one it cannot, one in a currency billing does not know."""
    rich, _ = await funded_wallet(billing, 100)
    poor, _ = await funded_wallet(billing, 5)

    def batch(tag: str) -> list[HoldRequest]:
        job = f"{tag}-{uuid.uuid4()}"
        return [HoldRequest(f"{job}-a", rich, 10, "USD", job), HoldRequest(f"{job}-b", rich, 20, "USD", job),
                HoldRequest(f"{job}-c", poor, 50, "USD", job), HoldRequest(f"{job}-d", rich, 10, "XTS", job)]
    return batch


async def test_each_item_is_answered_as_the_call_answers_it(billing: BillingService, served: tuple[BillingApi, str],
                                                            client: Billing, idle: None) -> None:
    batch = await _mixed(billing)
    by_call = await client.reserve(batch("call"))
    with _Offered(functools.partial(answer, served[0])) as offered:
        in_process = await client.reserve(batch("local"))
    assert offered.calls == 1
    assert _outcomes(in_process) == _outcomes(by_call)
    assert [o is None for o in in_process] == [True, True, False, False]
    assert {o.reason for o in in_process if o is not None} == {"INSUFFICIENT_FUNDS", "UNKNOWN_CURRENCY"}


async def test_the_holds_are_the_same_holds(billing: BillingService, served: tuple[BillingApi, str],
                                            client: Billing, idle: None) -> None:
    customer, _ = await funded_wallet(billing, 100)
    job = str(uuid.uuid4())
    with _Offered(functools.partial(answer, served[0])):
        assert await client.reserve([HoldRequest(job, customer, 30, "USD", job)]) == [None]
        assert (await wallet(billing, customer)).held == 30
        # a repeat is idempotent in process as over the wire, and the capture settles it
        assert await client.reserve([HoldRequest(job, customer, 30, "USD", job)]) == [None]
        assert await client.capture([jobs_billing.CaptureRequest(job, 12)]) == [None]
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (88, 0)


async def test_a_refused_call_raises_the_same_error(served: tuple[BillingApi, str]) -> None:
    api, address = served
    status = await answer(api, pb.BatchReserveRequest())  # no request: the whole call is refused
    assert not isinstance(status, pb.BatchHoldResponse)
    async with channel(address, service="jobs", secret=SECRET) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await billing_pb2_grpc.BillingServiceStub(ch).BatchReserve(pb.BatchReserveRequest(), timeout=10)
    wire, local = from_rpc_error(caught.value), from_rpc_error(rpc_error(status))
    assert (local.code, local.reason, local.violations) == (wire.code, wire.reason, wire.violations)
    assert local.reason in ("MISSING_FIELD", "INVALID_BATCH_SIZE")


async def test_an_answer_in_process_is_bounded_in_time(served: tuple[BillingApi, str], idle: None) -> None:
    never = asyncio.Event()

    async def stuck(request: Any) -> Any:  # a billing that never answers
        await never.wait()

    async with channel(served[1], service="jobs", secret=SECRET) as ch:
        with _Offered(stuck):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await Billing(ch, call_timeout=0.2).reserve([HoldRequest("h", str(uuid.uuid4()), 1, "USD", "j")])
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_large_batches_and_a_busy_process_go_by_the_call(billing: BillingService,
                                                               served: tuple[BillingApi, str], client: Billing,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    customer, _ = await funded_wallet(billing, 1000)

    def holds(n: int) -> list[HoldRequest]:
        return [HoldRequest(str(uuid.uuid4()), customer, 1, "USD", "job") for _ in range(n)]

    monkeypatch.setattr(inprocess, "cpu_share", lambda: 0.0)
    with _Offered(functools.partial(answer, served[0])) as offered:
        assert await client.reserve(holds(jobs_billing.LOCAL_ITEMS + 1)) == [None] * (jobs_billing.LOCAL_ITEMS + 1)
        assert offered.calls == 0  # a large batch: billing's own process takes it, on another core
        monkeypatch.setattr(inprocess, "cpu_share", lambda: jobs_billing.LOCAL_BELOW_CORES + 0.1)
        assert await client.reserve(holds(1)) == [None]
        assert offered.calls == 0  # a busy process: likewise
        monkeypatch.setattr(inprocess, "cpu_share", lambda: 0.0)
        assert await client.reserve(holds(1)) == [None]
        assert offered.calls == 1
    assert (await wallet(billing, customer)).held == jobs_billing.LOCAL_ITEMS + 3


def test_cpu_share_measures_this_process() -> None:
    time.sleep(0.6)
    inprocess.cpu_share()  # a window starts
    used = time.process_time() + 0.6
    while time.process_time() < used:  # busy for longer than a window
        pass
    assert inprocess.cpu_share() > 0.3  # (a whole core, unless the machine is crowded)
    time.sleep(0.6)  # idle for a whole window
    assert inprocess.cpu_share() < 0.1
