"""Issue 14 item 17 against the running processes: a principal header works on the one method it
was signed for and for a minute, and each internal method admits only the services that call it.

Every refusal here happens in the bootstrap's authentication step, before any request field is
read, so the requests can be empty; where a refusal would matter (money held), the test also
checks that nothing happened.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from innosystem.billing.v1 import billing_pb2, billing_pb2_grpc
from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.kit import callers, principal
from innosystem.kit.config import SERVICES
from innosystem.kit.errors import from_rpc_error
from innosystem.stack import Stack
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e

RESERVE = "/innosystem.billing.v1.BillingService/Reserve"
COMPLETE = "/innosystem.jobs.v1.JobService/CompleteJobs"
EXTEND = "/innosystem.jobs.v1.JobService/ExtendLeases"
STREAMING = {"/innosystem.jobs.v1.JobService/WatchCancellations"}


def _upstream(method: str) -> str:
    return method.split(".")[1]  # /innosystem.billing.v1.BillingService/Reserve → billing


async def _call(stack: Stack, method: str, metadata: tuple[tuple[str, str], ...],
                request: bytes = b"") -> grpc.aio.AioRpcError | None:
    """One raw call of `method` on its real service; the error it ends with, None on success."""
    async with grpc.aio.insecure_channel(stack.address(_upstream(method))) as ch:
        try:
            if method in STREAMING:
                call = ch.unary_stream(method)(request, metadata=metadata, timeout=10)
                async for _ in call:
                    break
                call.cancel()
            else:
                await ch.unary_unary(method)(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err
    return None


def _signed(who: Principal, stack: Stack, method: str, **kw: float) -> tuple[tuple[str, str], ...]:
    return principal.sign(who, stack.internal_secret.encode(), method, **kw)  # type: ignore[arg-type]


def _reason(err: grpc.aio.AioRpcError | None) -> str:
    assert err is not None, "the call was accepted"
    return from_rpc_error(err).reason


@pytest.fixture
def funded(stack: Stack, admin: Client) -> Iterator[str]:
    """A customer with money in its wallet: what a wrong caller would like to hold."""
    customer_id = admin.post("/v1/customers", {"name": "Held", "email": "held@example.com"}).body["customer"]["id"]
    for _ in range(200):
        if admin.post(f"/v1/customers/{customer_id}/wallet:topUp",
                      {"amountCents": 10_000, "requestId": "fund"}).status == 200:
            break
        time.sleep(0.05)
    yield customer_id


def _held(admin: Client, customer_id: str) -> int:
    return int(admin.get(f"/v1/customers/{customer_id}/wallet").body.get("heldCents", 0))


async def test_a_header_replayed_on_another_method_is_refused(stack: Stack) -> None:
    """Signed as runners for ExtendLeases (accepted there), replayed on CompleteJobs: refused."""
    runners = principal.service_principal("runners")
    header = _signed(runners, stack, EXTEND)
    extend = jobs_pb2.ExtendLeasesRequest(runner_id="nobody").SerializeToString()
    assert await _call(stack, EXTEND, header, extend) is None
    err = await _call(stack, COMPLETE, header)
    assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _reason(err) == "PRINCIPAL_METHOD_MISMATCH"


async def test_a_customer_header_from_the_gateway_is_no_key_to_billing(stack: Stack, admin: Client,
                                                                       funded: str) -> None:
    """What the gateway signs for a customer's GetWallet cannot hold that customer's money."""
    header = _signed(Principal(kind=principal.CUSTOMER, customer_id=funded, key_id="k"), stack,
                     "/innosystem.billing.v1.BillingService/GetWallet")
    hold = billing_pb2.ReserveRequest(hold_id=str(uuid.uuid4()), customer_id=funded, amount_cents=500,
                                      currency_code="USD").SerializeToString()
    assert _reason(await _call(stack, RESERVE, header, hold)) == "PRINCIPAL_METHOD_MISMATCH"
    assert _held(admin, funded) == 0


async def test_an_expired_header_is_refused(stack: Stack) -> None:
    jobs = principal.service_principal("jobs")
    stale = _signed(jobs, stack, RESERVE, now=time.time() - principal.LIFETIME_SECONDS - 30)
    err = await _call(stack, RESERVE, stale)
    assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED and _reason(err) == "PRINCIPAL_EXPIRED"
    # nor can a signer make one that lives long
    long_lived = _signed(jobs, stack, RESERVE, ttl=3600)
    assert _reason(await _call(stack, RESERVE, long_lived)) == "PRINCIPAL_LIFETIME_TOO_LONG"


async def test_keys_cannot_hold_money(stack: Stack, admin: Client, funded: str) -> None:
    """A well-formed, fresh, correctly signed Reserve from the wrong service: refused, nothing held."""
    hold = billing_pb2.ReserveRequest(hold_id=str(uuid.uuid4()), customer_id=funded, amount_cents=500,
                                      currency_code="USD").SerializeToString()
    err = await _call(stack, RESERVE, _signed(principal.service_principal("keys"), stack, RESERVE), hold)
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(err) == "CALLER_NOT_ALLOWED"
    assert _held(admin, funded) == 0
    # the same request from jobs, its caller, holds
    assert await _call(stack, RESERVE, _signed(principal.service_principal("jobs"), stack, RESERVE), hold) is None
    assert _held(admin, funded) == 500


def _strangers(method: str) -> list[tuple[str, Principal]]:
    allowed = callers.INTERNAL_CALLERS[method]
    services = [(f"service {s}", principal.service_principal(s)) for s in (*SERVICES, "gateway")
                if s not in allowed]
    return [*services, ("customer", Principal(kind=principal.CUSTOMER, customer_id=str(uuid.uuid4()))),
            ("admin", Principal(kind=principal.ADMIN, key_id="k")),
            ("runner", Principal(kind=principal.RUNNER, runner_id=str(uuid.uuid4())))]


@pytest.mark.parametrize("method", sorted(callers.INTERNAL_CALLERS))
async def test_every_internal_method_refuses_everyone_but_its_callers(stack: Stack, method: str) -> None:
    for who, stranger in _strangers(method):
        err = await _call(stack, method, _signed(stranger, stack, method))
        assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED, (who, err)
        assert _reason(err) == "CALLER_NOT_ALLOWED", who
    # nobody at all: unauthenticated
    assert (await _call(stack, method, ())).code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[union-attr]


async def test_an_api_key_on_an_internal_method_is_refused(stack: Stack) -> None:
    """Direct gRPC with the admin's API key: jobs takes API keys for its public methods, never for
    CompleteJobs (refused without tenancy being asked)."""
    async with grpc.aio.insecure_channel(stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CompleteJobs(jobs_pb2.CompleteJobsRequest(), timeout=10,
                                    metadata=(("authorization", f"Bearer {stack.admin_api_key}"),))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert from_rpc_error(err.value).reason == "CALLER_NOT_ALLOWED"


async def test_the_real_caller_still_gets_through(stack: Stack) -> None:
    """The allowed service, signed for the method, reaches the servicer (its own validation answers)."""
    async with grpc.aio.insecure_channel(stack.address("billing")) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Reserve(billing_pb2.ReserveRequest(), timeout=10,
                               metadata=_signed(principal.service_principal("jobs"), stack, RESERVE))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # past authentication, at validation
