"""Billing's metrics: wallet holds placed, captured and released (Open-to-Buy), as answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from opentelemetry import metrics

from innosystem.kit.errors import DomainError
from services.billing.models import HoldRow

_meter = metrics.get_meter("innosystem.billing")
operations = _meter.create_counter(
    "billing.hold.operations", unit="{operation}",
    description="hold operations answered (reserve, capture, release), by outcome: ok or the refusal reason")
amounts = _meter.create_counter(
    "billing.hold.amount", unit="{cent}", description="minor units held (reserve) and captured (capture), by currency")


def counted(operation: str, call: Callable[[], Awaitable[HoldRow]]) -> Callable[[], Awaitable[HoldRow]]:
    async def run() -> HoldRow:
        try:
            row = await call()
        except DomainError as err:
            operations.add(1, {"operation": operation, "outcome": err.reason or type(err).__name__})
            raise
        operations.add(1, {"operation": operation, "outcome": "ok"})
        if operation in ("reserve", "capture"):
            amounts.add(row.amount if operation == "reserve" else row.captured,
                        {"operation": operation, "currency": row.currency})
        return row

    return run
