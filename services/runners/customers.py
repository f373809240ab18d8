"""Whether a customer may still use its runners, asked of tenancy.

A runner token is the runners service's own credential: tenancy's check of an API key's account
(`Authenticate` refuses a key whose customer or reseller is inactive) never sees it. This is that
check for runner tokens: authentication asks it for every customer-owned runner (a Connect is one
call per stream, so it asks afresh rather than trusting a cache), and revocations.py asks it
again when tenancy announces that a customer's or a reseller's access changed.
"""

from __future__ import annotations

from collections import OrderedDict

import grpc

from innosystem.kit.errors import Unauthenticated, from_rpc_error
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

MAX_REMEMBERED = 100_000  # customers whose reseller is remembered (it never changes)


class Customers:
    def __init__(self, tenancy: grpc.aio.Channel, call_timeout: float = 5.0) -> None:
        self._stub = tenancy_pb2_grpc.TenancyServiceStub(tenancy)
        self._timeout = call_timeout
        # customer id → its reseller id ("" for a direct customer), as last seen: tells which
        # customers a reseller's revocation concerns.
        self._resellers: OrderedDict[str, str] = OrderedDict()

    def reseller_of(self, customer_id: str) -> str | None:
        """The customer's reseller as last seen ("" = none), None if never seen."""
        return self._resellers.get(customer_id)

    async def active(self, customer_id: str) -> bool:
        """The customer exists and is active, and so is its reseller if it has one. Tenancy being
        down is not "inactive": its error (UNAVAILABLE, …) is raised."""
        try:
            customer = await self._stub.GetCustomer(tenancy_pb2.GetCustomerRequest(customer_id=customer_id),
                                                    timeout=self._timeout)
            self._resellers[customer_id] = customer.reseller_id
            self._resellers.move_to_end(customer_id)
            while len(self._resellers) > MAX_REMEMBERED:
                self._resellers.popitem(last=False)
            if customer.HasField("active") and not customer.active:
                return False
            if customer.reseller_id:  # a reseller's deactivation stops its customers' access too
                reseller = await self._stub.GetReseller(
                    tenancy_pb2.GetResellerRequest(reseller_id=customer.reseller_id), timeout=self._timeout)
                if reseller.HasField("active") and not reseller.active:
                    return False
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # deleted
                return False
            raise from_rpc_error(exc) from None
        return True

    async def check(self, customer_id: str) -> None:
        """UNAUTHENTICATED `CUSTOMER_INACTIVE` unless the customer may use its runners."""
        if not await self.active(customer_id):
            raise Unauthenticated(f"customer {customer_id}, the owner of this runner, is inactive or deleted: "
                                  "its runner tokens no longer work", reason="CUSTOMER_INACTIVE")
