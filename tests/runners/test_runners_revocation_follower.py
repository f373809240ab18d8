"""Which streams a revocation closes (revocations.py), with tenancy's answers scripted: only
customers found inactive, every customer of a reseller, a session registered just after the
event, and (fail closed) a customer tenancy cannot confirm."""

from __future__ import annotations

import asyncio
import json

import pytest

from innosystem.kit.errors import Unavailable
from services.runners import revocations
from services.runners.customers import Customers
from services.runners.revocations import RevocationFollower
from services.runners.session import Session


class Tenancy(Customers):
    """Customers whose answers the test sets: active or not, and each one's reseller."""

    def __init__(self) -> None:
        self.inactive: set[str] = set()
        self.down = False
        self.asked: list[str] = []
        self.resellers = {"c1": "r1", "c2": "r1", "c3": ""}

    def reseller_of(self, customer_id: str) -> str | None:
        return self.resellers.get(customer_id)

    async def active(self, customer_id: str) -> bool:
        self.asked.append(customer_id)
        if self.down:
            raise Unavailable("tenancy is down")
        return customer_id not in self.inactive and self.resellers.get(customer_id) not in self.inactive


def _session(customer_id: str) -> Session:
    return Session(runner_id=f"runner-{customer_id}", session_id="s", customer_id=customer_id, processors=["echo"],
                   tags=[], max_slots=1, reported_free=1)


def _final(session: Session) -> str:
    final = session.final
    return final.error.status.message.partition(":")[0] if final is not None else ""


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_revocation_closes_the_streams_of_customers_no_longer_active_only() -> None:
    tenancy = Tenancy()
    sessions = {f"runner-{c}": _session(c) for c in ("c1", "c2", "c3")} | {"shared": _session("")}
    follower = RevocationFollower(tenancy, sessions, redis=None)  # type: ignore[arg-type]  # not subscribed here

    follower.event(json.dumps({"customer_id": "c3"}))  # a key rotation: c3 is still active
    await _settle()
    assert tenancy.asked == ["c3"] and not any(s.closed.is_set() for s in sessions.values())

    tenancy.inactive.add("r1")  # the reseller deactivated: both its customers' runners go
    follower.event(json.dumps({"reseller_id": "r1"}))
    await _settle()
    assert sorted(tenancy.asked[1:]) == ["c1", "c2"]
    assert [_final(sessions[f"runner-{c}"]) for c in ("c1", "c2", "c3")] == ["CUSTOMER_INACTIVE"] * 2 + [""]
    assert not sessions["shared"].closed.is_set()


async def test_a_session_registered_just_after_its_customers_revocation_is_checked_again() -> None:
    tenancy = Tenancy()
    sessions: dict[str, Session] = {}
    follower = RevocationFollower(tenancy, sessions, redis=None)  # type: ignore[arg-type]
    tenancy.inactive.add("c3")
    follower.event(json.dumps({"customer_id": "c3"}))  # no stream of c3 here yet: nothing to close
    late = sessions["runner-c3"] = _session("c3")  # authenticated before the deactivation
    follower.opened(late)
    other = sessions["runner-c1"] = _session("c1")
    follower.opened(other)  # no recent event: not asked
    await _settle()
    assert tenancy.asked == ["c3"] and _final(late) == "CUSTOMER_INACTIVE" and not other.closed.is_set()


async def test_access_tenancy_cannot_confirm_after_a_revocation_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocations, "RETRY_DELAYS", (0.0, 0.0))
    tenancy = Tenancy()
    tenancy.down = True
    session = _session("c3")
    follower = RevocationFollower(tenancy, {"runner-c3": session}, redis=None)  # type: ignore[arg-type]
    follower.event(json.dumps({"customer_id": "c3"}))
    await _settle()
    assert tenancy.asked == ["c3"] * 3
    assert _final(session) == "ACCESS_UNCONFIRMED"  # not final for the SDK: it reconnects, and is checked then
