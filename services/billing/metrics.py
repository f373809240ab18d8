"""Billing's metrics: wallet holds placed, captured and released (Open-to-Buy), as answered."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from opentelemetry import metrics

from innosystem.kit.errors import DomainError
from services.billing.models import AnyHold

_meter = metrics.get_meter("innosystem.billing")
operations = _meter.create_counter(
    "billing.hold.operations", unit="{operation}",
    description="hold operations answered (reserve, capture, release), by outcome: ok or the refusal reason")
amounts = _meter.create_counter(
    "billing.hold.amount", unit="{cent}", description="minor units held (reserve) and captured (capture), by currency")


def counted(operation: str, call: Callable[[], Awaitable[AnyHold]]) -> Callable[[], Awaitable[AnyHold]]:
    async def run() -> AnyHold:
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


def count_many(operation: str, outcomes: Sequence[AnyHold | DomainError]) -> None:
    """A batch's outcomes, one counter add per distinct outcome (not one per item)."""
    by_outcome: Counter[str] = Counter()
    by_currency: Counter[str] = Counter()
    for r in outcomes:
        if isinstance(r, DomainError):
            by_outcome[r.reason or type(r).__name__] += 1
        else:
            by_outcome["ok"] += 1
            if operation in ("reserve", "capture"):
                by_currency[r.currency] += r.amount if operation == "reserve" else r.captured
    for outcome, n in by_outcome.items():
        operations.add(n, {"operation": operation, "outcome": outcome})
    for currency, amount in by_currency.items():
        amounts.add(amount, {"operation": operation, "currency": currency})


def count_captured(currency: str, holds: int, captured: int) -> None:
    """Captures stored by another service's transaction (a joined ending), as BatchCapture counts them."""
    operations.add(holds, {"operation": "capture", "outcome": "ok"})
    amounts.add(captured, {"operation": "capture", "currency": currency})
