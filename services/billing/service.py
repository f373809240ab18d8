"""Billing use cases: wallets, Open-to-Buy holds, the ledger, expiry and reconciliation.

Order of Redis and PostgreSQL, chosen so that a crash between the two is always safe:

* Reserve: Redis first (the authorizer: atomic check-and-hold), then the PostgreSQL commit
  (group-committed). If the commit fails the Redis hold is undone; if the process dies in
  between, Redis holds too much (a leaked hold: less available, never more) until
  reconciliation rebuilds the wallet. PostgreSQL refuses an overdraft by itself (CHECK
  `no_overdraft`), so no interleaving, however unlucky, can overdraw a wallet.
* Capture, Release, expiry, top-up: PostgreSQL first, then Redis. A crash in between leaves
  Redis counting a hold that is gone (again: less available, never more).

An operation answers only after its PostgreSQL commit. Every operation is idempotent on its id.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from redis.exceptions import RedisError
from sqlalchemy import func, select, text

from innosystem.kit import pagination
from innosystem.kit import principal as principals
from innosystem.kit.currencies import ISO_4217
from innosystem.kit.db import Conn, Database, Writes, pipelined, utcnow
from innosystem.kit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from innosystem.kit.singleflight import SingleFlight
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing import alerts, ledger
from services.billing.batcher import GroupCommit, Tx, write_totals
from services.billing.metrics import count_captured
from services.billing.models import (
    ACTIVE,
    COMMISSION,
    EXPIRE,
    EXPIRED,
    FUNDING,
    PLATFORM,
    REVENUE,
    TOP_UP,
    VOID,
    WALLET,
    Account,
    AnyHold,
    Hold,
    HoldRow,
    ReconciliationRow,
    Transfer,
)
from services.billing.otb import InsufficientFunds, OpenToBuy, Rebuild, Snapshot
from services.billing.repository import BillingRepository

log = logging.getLogger(__name__)

ACTIVE_HOLDS_PAGE = 1000

Rates = Callable[[uuid.UUID], Awaitable[int]]

# OverCapturePolicy values.
REJECT, CAP_AT_HOLD, CHARGE_AVAILABLE = 1, 2, 3
# ReconciliationTrigger values.
PERIODIC, ON_DEMAND, REDIS_REBUILD = 1, 2, 3
# FindingKind values.
LEAKED_HOLD, MISSING_HOLD, AMOUNT_MISMATCH, EXPIRED_HOLD_OPEN = 1, 2, 3, 4
CURRENCY_SUM_NONZERO, BALANCE_FOLD_MISMATCH, HOLD_RESOLVED_TWICE = 5, 6, 7
# RepairAction values.
REPAIR_NONE, REDIS_REBUILT, TRANSFER_ADDED = 1, 2, 3

MAX_ID, MAX_DESCRIPTION = 200, 1000
EXPIRY_BATCH = 200
# A hold this far past its deadline and still active is a finding (the sweeper is late or down).
EXPIRY_GRACE = timedelta(seconds=60)
# Second look at a wallet that seemed to drift.
RECHECK_SECONDS = 0.2
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# A hold's reseller (None: no commission) and currency: what its capture or release needs first.
HoldMeta = tuple[uuid.UUID | None, str]
_HOLD_METAS = text("SELECT hold_id, reseller_id, currency FROM billing.holds WHERE hold_id = ANY(:ids)")


@dataclass(frozen=True)
class ReserveRequest:
    hold_id: str
    customer_id: str
    amount: int
    currency: str
    job_id: str = ""
    expire_time: datetime | None = None
    description: str = ""
    project_id: str = ""  # for spending limits and usage reports
    job_type_id: str = ""


@dataclass(frozen=True)
class Page:
    items: Sequence[Any]
    next_page_token: str


@dataclass
class _Reserved:
    """What a batch of reserves leaves to do once committed: remember the new holds (for their
    captures), drop from Open-to-Buy what it holds and the ledger did not store, hold there what a
    concurrent reserve stored for another amount, reconcile wallets it stored holds of unseen."""

    created: list[AnyHold]
    undo: list[ledger.ReserveItem]
    redo: list[AnyHold]
    repair: set[uuid.UUID]  # customers whose wallet PostgreSQL's guard alone let a hold into


class NotJoinable(Exception):
    """Holds that a caller's transaction cannot store with no read of their wallet first
    (`BillingService.reserve_in`): several wallets, or one whose spending is limited. Nothing was
    held: the caller reserves them the usual way."""


class JoinedReserves:
    """Reserves written into another service's transaction (`BillingService.reserve_in`): each
    request's hold or refusal, and what follows its commit or its rollback once Open-to-Buy, asked
    beside that commit, has answered."""

    def __init__(self, service: BillingService, outcomes: list[AnyHold | DomainError],
                 holds: list[ledger.ReserveItem], stored: list[AnyHold],
                 checking: asyncio.Future[tuple[set[str], bool]] | None) -> None:
        self.outcomes = outcomes
        self._service, self._holds, self._stored, self._checking = service, holds, stored, checking

    async def committed(self) -> None:
        """The caller's transaction committed: the holds are stored. Open-to-Buy holds them too,
        or, where it refused or could not be asked, its wallet is reconciled."""
        added, answered = await self._checked()
        refused = answered and any(h.hold_id not in added for h in self._holds)
        await self._service._after_reserves(_Reserved(
            list(self._stored), [], [], {h.customer_id for h in self._holds[:1]} if refused else set()))

    async def abandoned(self) -> None:
        """Not committed (rolled back, a guard that did not hold, or perhaps lost with the
        connection at COMMIT): Open-to-Buy lets go of what it held for them (if the COMMIT did
        happen, it holds too little until the wallet is reconciled; PostgreSQL's guard still
        refuses any overdraft)."""
        added, _ = await self._checked()
        await self._service._unauthorize([h for h in self._holds if h.hold_id in added])

    async def _checked(self) -> tuple[set[str], bool]:
        return await self._checking if self._checking is not None else (set(), False)


@dataclass(frozen=True)
class JoinedCapture:
    """A capture the jobs service writes with its ending (`BillingService.capture_in`): the hold,
    what to capture of it and what its reserve held."""

    hold_id: str
    amount: int
    held: int
    over_capture_policy: int
    description: str


class JoinedCaptures:
    """Captures written into another service's transaction (`BillingService.capture_in`): what
    follows once it committed (Open-to-Buy lets go of the holds and counts what they posted)."""

    def __init__(self, service: BillingService, customer_id: uuid.UUID, currency: str,
                 items: list[ledger.GuardedCapture]) -> None:
        self._service, self._customer, self._currency, self._items = service, customer_id, currency, items

    async def committed(self) -> None:
        service = self._service
        for i in self._items:
            service._hold_meta.pop(i.hold_id, None)
        count_captured(self._currency, len(self._items), sum(i.amount for i in self._items))
        await service._redis_quietly(service.otb.resolve_many(
            [(self._customer, self._currency, i.hold_id, i.amount) for i in self._items]))


@dataclass(frozen=True)
class StatementLine:
    customer_id: uuid.UUID
    captures: int
    captured: int
    commission: int


@dataclass(frozen=True)
class Statement:
    reseller_id: uuid.UUID
    currency: str
    start: datetime | None
    end: datetime
    captured: int
    commission: int
    balance: int
    lines: list[StatementLine]


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"{what} {value!r} not found", reason=f"{what.upper()}_NOT_FOUND") from None


def _text(value: str, field: str, limit: int, *, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument(f"{field} is required", field=field, reason="MISSING_FIELD")
    if len(value) > limit:
        raise InvalidArgument(f"{field} must be at most {limit} characters", field=field, reason="VALUE_TOO_LONG")
    return value


class BillingService:
    def __init__(self, db: Database, otb: OpenToBuy, rates: Rates, *, default_currency: str = "USD",
                 max_amount: int = 100_000_000_000, default_hold_seconds: int = 86_400,
                 max_batch: int = 256) -> None:
        self.db, self.otb, self.rates = db, otb, rates
        self.default_currency = default_currency
        self.max_amount = max_amount
        self.default_hold = timedelta(seconds=default_hold_seconds)
        self.commit = GroupCommit(db, max_batch, bulk=ledger.apply, on_events=alerts.Publisher(otb.client))
        self._hold_meta: dict[str, HoldMeta] = {}
        self._repairing: set[uuid.UUID] = set()
        self._repairs: set[asyncio.Task[None]] = set()
        self._accounts: dict[tuple[int, uuid.UUID, str], uuid.UUID] = {}
        # Wallet identity (id, owner, currency, reseller) per (customer, currency): never changes once opened.
        self._wallets: dict[tuple[uuid.UUID, str], Account] = {}
        # a burst of operations on a cold cache (or a wallet missing from Redis) makes one query, not one each
        self._flights: SingleFlight[tuple[str, uuid.UUID, str], Any] = SingleFlight()
        self.expiry_wake = asyncio.Event()
        self._sleep_until: datetime | None = None

    async def close(self) -> None:
        await self.settle()
        await self.commit.close()

    # validation

    def _amount(self, value: int, field: str, *, zero: bool = False) -> int:
        if value < 0 or (value == 0 and not zero) or value > self.max_amount:
            low = 0 if zero else 1
            raise InvalidArgument(f"{field} must be between {low} and {self.max_amount} minor units",
                                  field=field, reason="INVALID_AMOUNT")
        return value

    def _currency(self, code: str, field: str = "currency_code") -> str:
        code = code.strip().upper()
        if code and not _CURRENCY.match(code):
            raise InvalidArgument(f"{field} must be an ISO 4217 code", field=field, reason="INVALID_CURRENCY")
        if code and code not in ISO_4217:
            raise InvalidArgument(f"{field} {code!r} is not an active ISO 4217 currency", field=field,
                                  reason="UNKNOWN_CURRENCY")
        return code

    @staticmethod
    def _mismatch(wanted: str, have: str) -> FailedPrecondition:
        return FailedPrecondition(f"currency {wanted} differs from the wallet's {have}", field="currency_code",
                                  reason="CURRENCY_MISMATCH")

    # accounts

    async def _account_id(self, kind: int, owner: uuid.UUID, currency: str) -> uuid.UUID:
        key = (kind, owner, currency)
        if key not in self._accounts:
            async def ensure() -> uuid.UUID:
                async with self.db.session() as s:
                    return (await BillingRepository(s).ensure_account(kind, owner, currency)).id

            self._accounts[key] = await self._flights.do((f"account-{kind}", owner, currency), ensure)
        return self._accounts[key]

    async def _wallet(self, customer_id: uuid.UUID, currency: str = "") -> Account:
        async with self.db.session() as s:
            row = await BillingRepository(s).wallet(customer_id, currency or None)
        if row is None:
            if currency:
                async with self.db.session() as s:
                    other = await BillingRepository(s).wallet(customer_id, None)
                if other is not None:
                    raise self._mismatch(currency, other.currency)
            raise NotFound(f"wallet of customer {customer_id} not found", reason="WALLET_NOT_FOUND")
        return row

    async def _wallet_identity(self, customer_id: uuid.UUID, currency: str) -> Account:
        """The wallet's immutable identity, cached: a hot path needs no query for it. Its counters are stale."""
        key = (customer_id, currency)
        if key not in self._wallets:
            if len(self._wallets) > 100_000:
                self._wallets.clear()
            self._wallets[key] = await self._flights.do(("wallet", customer_id, currency),
                                                        lambda: self._wallet(customer_id, currency))
        return self._wallets[key]

    async def _visible_wallet(self, caller: Principal, customer_id: str, currency: str) -> Account:
        cid = _uuid(customer_id, "wallet")
        try:
            wallet = await self._wallet(cid, self._currency(currency))
        except NotFound:
            raise NotFound(f"wallet of customer {customer_id} not found", reason="WALLET_NOT_FOUND") from None
        except FailedPrecondition as exc:
            principals.ensure_customer_visible(caller, customer_id, "", "wallet")
            # The currency names a wallet the customer does not have: 404, as for any resource
            # that does not exist; the reason and message still say which wallet it does have.
            raise NotFound(exc.message, field="currency_code", reason=exc.reason) from None
        principals.ensure_customer_visible(caller, customer_id, str(wallet.reseller_id or ""), "wallet")
        return wallet

    # wallets

    async def open_wallet(self, customer_id: str, reseller_id: str, currency: str, credit_limit: int) -> Account:
        cid = _uuid(customer_id, "customer")
        rid = uuid.UUID(reseller_id) if reseller_id else None
        currency = self._currency(currency) or self.default_currency
        if credit_limit < 0 or credit_limit > self.max_amount:
            raise InvalidArgument("credit_limit_cents must be ≥ 0", field="credit_limit_cents",
                                  reason="INVALID_AMOUNT")
        async with self.db.session() as s:
            repo = BillingRepository(s)
            existing = await repo.wallet(cid, None)
            if existing is not None:
                return existing
            return await repo.ensure_account(WALLET, cid, currency, reseller_id=rid, credit_limit=credit_limit)

    async def get_wallet(self, caller: Principal, customer_id: str, currency: str = "") -> Account:
        return await self._visible_wallet(caller, customer_id, currency)

    async def update_wallet(self, caller: Principal, customer_id: str, currency: str, credit_limit: int) -> Account:
        wallet = await self._visible_wallet(caller, customer_id, currency)
        principals.require_admin(caller)
        if credit_limit < 0 or credit_limit > self.max_amount:
            raise InvalidArgument("credit_limit_cents must be ≥ 0", field="wallet.credit_limit_cents",
                                  reason="INVALID_AMOUNT")

        async def op(tx: Tx) -> Account:
            row = await BillingRepository(tx.session).set_credit_limit(wallet.id, credit_limit)
            if row is None:
                raise FailedPrecondition("the wallet's holds and balance need a higher credit limit",
                                         field="wallet.credit_limit_cents", reason="CREDIT_LIMIT_TOO_LOW")
            await alerts.check(tx, wallet.id)
            # check() may flip low_balance_alerted with a Core UPDATE, which expires that attribute:
            # load it now, inside the transaction, not after the row is detached.
            await tx.session.refresh(row)
            return row

        row: Account = await self.commit.run(op)
        await self.rebuild_wallet(row.owner_id, row.currency)
        return row

    async def top_up(self, caller: Principal, customer_id: str, amount: int, currency: str, request_id: str,
                     description: str) -> tuple[Account, Transfer]:
        wallet = await self._visible_wallet(caller, customer_id, currency)
        if caller.kind != principals.ADMIN and not (
                caller.kind == principals.RESELLER and wallet.reseller_id is not None
                and caller.reseller_id == str(wallet.reseller_id)):
            raise PermissionDenied("only an admin or the customer's reseller may top up a wallet",
                                   reason="TOP_UP_NOT_ALLOWED")
        amount = self._amount(amount, "amount_cents")
        currency = self._currency(currency) or wallet.currency
        if currency != wallet.currency:
            raise self._mismatch(currency, wallet.currency)
        request_id = _text(request_id, "request_id", MAX_ID, required=True)
        description = _text(description, "description", MAX_DESCRIPTION)
        funding = await self._account_id(FUNDING, PLATFORM, currency)

        async def op(tx: Tx) -> tuple[Account, Transfer, bool]:
            repo = BillingRepository(tx.session)
            first = await repo.top_up_by_request(wallet.id, request_id)
            if first is not None:
                if first.amount != amount or first.description != description:
                    raise FailedPrecondition(f"request_id {request_id!r} was used for another top-up",
                                             field="request_id", reason="IDEMPOTENCY_KEY_REUSED")
                acc = await repo.account(wallet.id)
                assert acc is not None
                return acc, first, False
            moved = await repo.move_wallet(wallet.id, credits_posted=amount)
            assert moved is not None
            tx.defer(funding, debits_posted=amount)
            transfer = await repo.insert_transfer(dict(
                kind=TOP_UP, debit_account_id=funding, credit_account_id=wallet.id, amount=amount,
                currency=currency, wallet_id=wallet.id, customer_id=wallet.owner_id, balance_after=moved[0],
                held_after=moved[1], request_id=request_id, description=description, create_time=utcnow()))
            await alerts.check(tx, wallet.id)
            acc = await repo.account(wallet.id)
            assert acc is not None
            return acc, transfer, True

        acc, transfer, fresh = await self.commit.run(op)
        if fresh:
            await self._redis_quietly(self.otb.top_up(acc.owner_id, acc.currency, amount))
        return acc, transfer

    async def list_transactions(self, caller: Principal, customer_id: str, size: int, token: str, job_id: str,
                                kind: int, start: datetime | None, end: datetime | None,
                                currency: str = "") -> Page:
        wallet = await self._visible_wallet(caller, customer_id, currency)
        size = pagination.page_size(size)
        key = pagination.decode_token(token, 1)
        before = None
        if key is not None:
            if not isinstance(key[0], int):
                raise InvalidArgument("page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN")
            before = key[0]
        async with self.db.session() as s:
            rows = await BillingRepository(s).transactions(wallet.id, size + 1, before, job_id, kind, start, end)
        if len(rows) > size:
            return Page(rows[:size], pagination.encode_token(rows[size - 1].seq))
        return Page(rows, "")

    async def commission_statement(self, caller: Principal, reseller_id: str, start: datetime | None,
                                   end: datetime | None, currency: str) -> Statement:
        rid = _uuid(reseller_id, "reseller")
        if caller.kind != principals.ADMIN and not (caller.kind == principals.RESELLER
                                                    and caller.reseller_id == reseller_id):
            raise NotFound(f"reseller {reseller_id} not found", reason="RESELLER_NOT_FOUND")
        currency = self._currency(currency) or self.default_currency
        end = end or utcnow()
        async with self.db.session() as s:
            repo = BillingRepository(s)
            raw = await repo.commission_lines(rid, currency, start, end)
            balance = await s.scalar(select(Account.credits_posted - Account.debits_posted).where(
                Account.kind == COMMISSION, Account.owner_id == rid, Account.currency == currency))
        lines = [StatementLine(c, n, cap, com) for c, n, cap, com in raw if c is not None]
        return Statement(rid, currency, start, end, sum(x.captured for x in lines),
                         sum(x.commission for x in lines), int(balance or 0), lines)

    # Open-to-Buy

    async def reserve(self, hold_id: str, customer_id: str, amount: int, currency: str, job_id: str = "",
                      expire_time: datetime | None = None, description: str = "", project_id: str = "",
                      job_type_id: str = "") -> AnyHold:
        (outcome,) = await self.reserve_many([
            ReserveRequest(hold_id, customer_id, amount, currency, job_id, expire_time, description, project_id,
                           job_type_id)])
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    async def reserve_many(self, requests: Sequence[ReserveRequest]) -> list[AnyHold | DomainError]:
        """Holds of one batch call, each answered on its own (the hold, or its refusal): checked one
        by one, authorized in Open-to-Buy with one script call per wallet (at idle, while the group
        commit locks their rows), and stored by it together (no task per item). A hold id seen before
        answers with that hold if the request is the same one (retries are idempotent),
        IDEMPOTENCY_KEY_REUSED if not."""
        out, items = await self._reserve_items(requests)
        # At idle the batch begins and locks its rows while Open-to-Buy decides (ledger.Authorizing):
        # the two round trips overlap, and what the check refuses the batch leaves out. Under load
        # the checks run while the batch before commits, and their items join the next one checked.
        loop = asyncio.get_running_loop()
        gated = [ledger.Authorizing(i, loop.create_future()) for _, i in items] if self.commit.idle else []
        committing = self.commit.enqueue_many(gated) if gated else None
        added, vouched = await self._authorize_gated(items, out, gated)
        items = [(k, i) for k, i in items if out[k] is None]
        try:
            if committing is None:
                committing = self.commit.enqueue_many([i for _, i in items])
                queued = [i for _, i in items]
            else:
                queued = [g.item for g in gated]
            outcome_of = dict(zip(map(id, queued), await committing, strict=True))
            if late := [(k, i) for k, i in items if outcome_of[id(i)] is ledger.LEFT_OUT]:
                # checked after the batch stopped waiting (a slow Redis): they go in a batch of their own
                outcome_of.update(zip((id(i) for _, i in late), await self.commit.submit_many([i for _, i in late]),
                                      strict=True))
            stored = [outcome_of[id(i)] for _, i in items]
            failure = next((x for x in stored if isinstance(x, BaseException) and not isinstance(x, DomainError)),
                           None)
            if failure is not None:  # the commit failed: nothing of the batch is stored
                raise failure
        except BaseException:
            await self._unauthorize([i for _, i in items if i.hold_id in added])
            raise
        await self._after_reserves(self._answer_reserves(items, stored, added, vouched, out))
        return cast(list[AnyHold | DomainError], out)

    async def reserve_in(self, conn: Conn, writes: Writes, requests: Sequence[ReserveRequest]) -> JoinedReserves:
        """`reserve_many` stored by the caller's own transaction rather than by the group commit
        (a jobs service sharing this process and database: services/billing/joined.py): the holds
        of one wallet queued in `writes` for the caller's COMMIT, guarded there (no read of the
        wallet before: `ledger.reserve_guarded`), while Open-to-Buy is asked beside that commit.
        Each request's outcome is known on return, provided the commit succeeds: a guard that does
        not hold fails it (`ledger.GUARDS_FAILED`), and the caller reserves them the usual way, as
        it does on NotJoinable (several wallets, or a spending limit). The caller tells the result
        whether its transaction committed."""
        out, items = await self._reserve_items(requests)
        if not items:
            return JoinedReserves(self, cast(list[AnyHold | DomainError], out), [], [], None)
        holds = [i for _, i in items]
        wallet = await self._wallet_identity(holds[0].customer_id, holds[0].currency)
        if wallet.spending_limited or any(i.wallet_id != holds[0].wallet_id for i in holds):
            raise NotJoinable()
        tx = Tx(conn, writes)
        stored = ledger.reserve_guarded(tx, holds, utcnow())
        await write_totals(conn, writes, tx.deltas, tx.transfers)
        for (k, _), hold in zip(items, stored, strict=True):
            out[k] = hold
        checking = asyncio.ensure_future(self._authorize_beside(holds))
        return JoinedReserves(self, cast(list[AnyHold | DomainError], out), holds, cast(list[AnyHold], stored),
                              checking)

    async def capture_in(self, conn: Conn, writes: Writes, customer_id: uuid.UUID,
                         requests: Sequence[JoinedCapture]) -> JoinedCaptures:
        """Captures stored by the caller's own transaction (a jobs service sharing this process and
        database: services/billing/joined.py, with its ending): one customer's holds, each captured
        within what it holds, queued in `writes` for the caller's COMMIT and guarded there
        (`ledger.capture_guarded`: the holds and the wallet are not read first). A guard that does
        not hold fails the commit (`ledger.GUARDS_FAILED`); then, or on NotJoinable (holds this
        replica did not reserve, a spending limit, a charge beyond the hold), the
        caller settles them the usual way. Told when the transaction committed."""
        metas = [self._hold_meta.get(r.hold_id) for r in requests]
        if any(m is None for m in metas):
            raise NotJoinable()
        currency = cast(HoldMeta, metas[0])[1]
        wallet = await self._wallet_identity(customer_id, currency)
        if wallet.spending_limited:
            raise NotJoinable()
        revenue = await self._account_id(REVENUE, PLATFORM, currency)
        items: list[ledger.GuardedCapture] = []
        for r, meta in zip(requests, metas, strict=True):
            reseller, hold_currency = cast(HoldMeta, meta)
            amount = r.held if r.amount > r.held and r.over_capture_policy == ledger.CAP_AT_HOLD else r.amount
            if hold_currency != currency or not 0 <= amount <= r.held or len(r.description) > MAX_DESCRIPTION:
                raise NotJoinable()  # the usual way answers it (a charge beyond the hold, a refusal)
            rate, account = 0, None
            if reseller is not None:
                rate = await self.rates(reseller)
                account = await self._account_id(COMMISSION, reseller, currency)
            items.append(ledger.GuardedCapture(r.hold_id, amount, r.held, r.description, reseller, rate,
                                               ledger.commission_of(amount, rate), account, revenue))
        tx = Tx(conn, writes)
        ledger.capture_guarded(tx, wallet.id, currency, items, utcnow())
        await write_totals(conn, writes, tx.deltas, tx.transfers)
        return JoinedCaptures(self, customer_id, currency, items)

    async def _authorize_beside(self, holds: Sequence[ledger.ReserveItem]) -> tuple[set[str], bool]:
        """Open-to-Buy for one wallet's holds that PostgreSQL's guard decides (`reserve_in`): the
        hold ids it holds because of this call, and whether it answered (Redis down: not asked;
        reconciliation rebuilds the projection once Redis is back)."""
        wallet = (holds[0].customer_id, holds[0].currency)
        try:
            codes = await self._otb_reserve(wallet, [(h.hold_id, h.amount) for h in holds])
        except RedisError as exc:
            log.warning("Open-to-Buy unavailable, authorizing in PostgreSQL only: %s", exc)
            return set(), False
        except DomainError:  # Redis keeps losing the wallet: reconciled once the holds are stored
            return set(), True
        return {h.hold_id for h, code in zip(holds, codes, strict=True) if code == 1}, True

    async def _reserve_items(self, requests: Sequence[ReserveRequest]
                             ) -> tuple[list[AnyHold | DomainError | None], list[tuple[int, ledger.ReserveItem]]]:
        """Each request checked: its refusal in the answers (None: not decided yet), or its ledger item
        with its position."""
        out: list[AnyHold | DomainError | None] = []
        items: list[tuple[int, ledger.ReserveItem]] = []
        now = utcnow()
        accounts: dict[tuple[str, str], tuple[Account, uuid.UUID]] = {}  # a batch names one or a few wallets
        for k, r in enumerate(requests):
            try:
                items.append((k, await self._reserve_item(r, now, accounts)))
                out.append(None)
            except DomainError as err:
                out.append(err)
        return out, items

    async def _authorize_gated(self, items: Sequence[tuple[int, ledger.ReserveItem]],
                               out: list[AnyHold | DomainError | None], gated: Sequence[ledger.Authorizing]
                               ) -> tuple[set[str], set[str]]:
        """`_authorize`, each gated item then told whether it still stands (refused, or not checked
        because the check failed: it does not)."""
        checked = False
        try:
            authorized = await self._authorize(items, out)
            checked = True
        finally:
            for (k, _), g in zip(items, gated, strict=False):
                g.go.set_result(checked and out[k] is None)
        return authorized

    def _answer_reserves(self, items: Sequence[tuple[int, ledger.ReserveItem]], stored: Sequence[Any],
                         added: set[str], vouched: set[str], out: list[AnyHold | DomainError | None]) -> _Reserved:
        """Each stored item's answer into `out`; what Open-to-Buy and this replica must do once the
        holds are committed."""
        done = _Reserved([], [], [], set())
        for (k, item), outcome in zip(items, stored, strict=True):
            if isinstance(outcome, DomainError):
                out[k] = outcome
            else:
                hold, created = outcome
                if created:
                    done.created.append(hold)
                    if item.hold_id in vouched:  # stored without Open-to-Buy holding it
                        done.repair.add(item.customer_id)
                    out[k] = hold
                    continue
                try:
                    out[k] = self._same_reserve(hold, item)
                except DomainError as err:
                    out[k] = err
                if hold.status == ACTIVE and hold.amount == item.amount:
                    continue
                if hold.status == ACTIVE and item.hold_id in added:
                    done.redo.append(hold)
            if item.hold_id in added:
                done.undo.append(item)
        assert all(x is not None for x in out), "every reserve is answered"
        return done

    async def _after_reserves(self, done: _Reserved) -> None:
        for customer_id in done.repair:
            self._repair_soon(customer_id)
        for hold in done.created:
            self._remember(hold)
            if self._sleep_until is None or hold.expire_time < self._sleep_until:
                self.expiry_wake.set()
        await self._unauthorize(done.undo)
        for hold in done.redo:  # stored by a concurrent reserve of another amount: Redis must hold that one
            await self._redis_quietly(self.otb.reserve_many(hold.customer_id, hold.currency,
                                                            [(hold.hold_id, hold.amount)]))

    async def _reserve_item(self, r: ReserveRequest, now: datetime,
                            accounts: dict[tuple[str, str], tuple[Account, uuid.UUID]]) -> ledger.ReserveItem:
        """`r` checked, as a ledger item; `accounts`: the wallet and revenue account of each
        (customer, currency) the call's items named before."""
        hold_id = _text(r.hold_id, "hold_id", MAX_ID, required=True)
        amount = self._amount(r.amount, "amount_cents")
        currency = self._currency(r.currency)
        if not currency:
            raise InvalidArgument("currency_code is required", field="currency_code", reason="MISSING_FIELD")
        job_id = _text(r.job_id, "job_id", MAX_ID)
        project_id = _text(r.project_id, "project_id", MAX_ID)
        job_type_id = _text(r.job_type_id, "job_type_id", MAX_ID)
        description = _text(r.description, "description", MAX_DESCRIPTION)
        expire = r.expire_time or now + self.default_hold
        if expire <= now:
            raise InvalidArgument("expire_time must be in the future", field="expire_time",
                                  reason="INVALID_EXPIRE_TIME")
        known = accounts.get((r.customer_id, currency))
        if known is None:
            wallet = await self._wallet_identity(_uuid(r.customer_id, "customer"), currency)
            known = accounts[(r.customer_id, currency)] = (wallet, await self._account_id(REVENUE, PLATFORM, currency))
        wallet, revenue = known
        return ledger.ReserveItem(hold_id, wallet.id, wallet.owner_id, wallet.reseller_id, currency, amount, job_id,
                                  expire, description, revenue, project_id, job_type_id)

    async def _authorize(self, items: Sequence[tuple[int, ledger.ReserveItem]],
                         out: list[AnyHold | DomainError | None]) -> tuple[set[str], set[str]]:
        """Open-to-Buy for `items`, one script call per wallet; a refusal goes into `out`. Returns
        the hold ids Redis holds because of this call (to be dropped again if they are not stored),
        and those it refused that PostgreSQL may store (`_second_look`).
        Redis down: PostgreSQL's guarded update alone still refuses any overdraft, so keep serving
        (slower); reconciliation rebuilds the projection once Redis is back."""
        by_wallet: dict[tuple[uuid.UUID, str], list[tuple[int, ledger.ReserveItem]]] = {}
        for k, item in items:
            by_wallet.setdefault((item.customer_id, item.currency), []).append((k, item))
        added: set[str] = set()
        vouched: set[str] = set()

        async def one(wallet: tuple[uuid.UUID, str], mine: list[tuple[int, ledger.ReserveItem]]) -> None:
            try:
                codes = await self._otb_reserve(wallet, [(i.hold_id, i.amount) for _, i in mine])
            except RedisError as exc:
                log.warning("Open-to-Buy unavailable, authorizing in PostgreSQL only: %s", exc)
                return
            except DomainError as err:  # Redis keeps losing the wallet
                for k, _ in mine:
                    out[k] = err
                return
            added.update(i.hold_id for (_, i), code in zip(mine, codes, strict=True) if code == 1)
            refused = [(k, i) for (k, i), code in zip(mine, codes, strict=True) if code < 0]
            if refused:
                vouched.update(await self._second_look(wallet, refused, out))

        await asyncio.gather(*(one(w, mine) for w, mine in by_wallet.items()))
        return added, vouched

    async def _second_look(self, wallet: tuple[uuid.UUID, str], refused: list[tuple[int, ledger.ReserveItem]],
                           out: list[AnyHold | DomainError | None]) -> set[str]:
        """Redis refused these. A hold that exists answers as a repeat; for the others, if PostgreSQL
        can afford them Redis may be behind (an update lost after its commit) or merely a moment
        ahead of in-flight operations: PostgreSQL's guard alone decides those (returned), and a
        wallet where it stored one is reconciled (second look, then rebuild) in the background
        once it is stored (`_after_reserves`): looked at before, it may not differ yet. A forced
        rebuild here could drop holds still in flight."""
        vouched: set[str] = set()
        async with self.db.session() as s:
            existing = await BillingRepository(s).holds_by_id([i.hold_id for _, i in refused])
        fresh = await self._wallet(*wallet)
        available = fresh.balance - fresh.held + fresh.credit_limit
        for k, item in refused:
            first = existing.get(item.hold_id)
            if first is not None:
                try:
                    out[k] = self._same_reserve(first, item)
                except DomainError as err:
                    out[k] = err
            elif available >= item.amount:
                available -= item.amount
                vouched.add(item.hold_id)
            else:
                out[k] = InsufficientFunds(f"available {available} < {item.amount}", reason="INSUFFICIENT_FUNDS")
        return vouched

    async def _unauthorize(self, items: Sequence[ledger.ReserveItem]) -> None:
        """Drop holds from Open-to-Buy that the ledger did not store."""
        if items:
            await self._redis_quietly(self.otb.resolve_many([(i.customer_id, i.currency, i.hold_id, 0)
                                                             for i in items]))

    def _repair_soon(self, customer_id: uuid.UUID) -> None:
        if customer_id in self._repairing:
            return
        self._repairing.add(customer_id)

        async def repair() -> None:
            try:
                await self.reconcile(REDIS_REBUILD, str(customer_id), recheck=True)
            except Exception:
                log.exception("background reconciliation of customer %s failed", customer_id)
            finally:
                self._repairing.discard(customer_id)

        task = asyncio.create_task(repair())
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def settle(self) -> None:
        """Wait for background repairs (tests, shutdown)."""
        while self._repairs:
            await asyncio.gather(*list(self._repairs), return_exceptions=True)

    def _remember(self, hold: AnyHold) -> None:
        """What Capture needs before its batch (reseller, currency), so it needs no query for it."""
        if len(self._hold_meta) > 200_000:
            self._hold_meta.clear()
        self._hold_meta[hold.hold_id] = (hold.reseller_id, hold.currency)

    @staticmethod
    def _same_reserve(first: AnyHold, item: ledger.ReserveItem) -> AnyHold:
        if first.customer_id != item.customer_id or first.amount != item.amount or first.currency != item.currency:
            raise FailedPrecondition(f"hold_id {first.hold_id!r} was used for another reserve", field="hold_id",
                                     reason="IDEMPOTENCY_KEY_REUSED")
        return first

    async def _hold_metas(self, hold_ids: Sequence[str]) -> dict[str, HoldMeta]:
        """What a capture or release needs before its batch, by hold id (a hold that does not
        exist is not in it, nor an id that cannot name one): remembered from its reserve, else read
        for all of them in one statement (a hold reserved by another replica: at light load the
        jobs service's own)."""
        metas = {h: m for h in hold_ids if (m := self._hold_meta.pop(h, None)) is not None}
        if missing := sorted({h for h in hold_ids if h not in metas and 0 < len(h) <= MAX_ID and "\x00" not in h}):
            async with self.db.transaction() as conn:
                rows = await pipelined(conn, (_HOLD_METAS, {"ids": missing}), commit=True)
            metas.update((r.hold_id, (r.reseller_id, r.currency)) for r in rows)
        return metas

    async def _otb_reserve(self, wallet: tuple[uuid.UUID, str], holds: list[tuple[str, int]]) -> list[int]:
        for _ in range(3):
            try:
                return await self.otb.reserve_many(*wallet, holds)
            except Rebuild:
                await self._load_wallet(*wallet)
        raise Rebuild("Open-to-Buy keeps losing the wallet; try again", reason="OTB_UNAVAILABLE")

    async def _capture_item(self, hold_id: str, amount: int, currency: str, policy: int,
                            description: str, metas: dict[str, HoldMeta]) -> ledger.CaptureItem:
        """A capture checked and resolved to its ledger item (the hold's reseller, rate and accounts)."""
        hold_id = _text(hold_id, "hold_id", MAX_ID, required=True)
        amount = self._amount(amount, "amount_cents", zero=True)
        currency = self._currency(currency)
        description = _text(description, "description", MAX_DESCRIPTION)
        if (meta := metas.get(hold_id)) is None:
            raise NotFound(f"hold {hold_id!r} not found", reason="HOLD_NOT_FOUND")
        reseller_id, hold_currency = meta
        rate, commission_account = 0, None
        if reseller_id is not None:
            rate = await self.rates(reseller_id)
            commission_account = await self._account_id(COMMISSION, reseller_id, hold_currency)
        revenue = await self._account_id(REVENUE, PLATFORM, hold_currency)
        return ledger.CaptureItem(hold_id, amount, currency, policy, description, rate, commission_account, revenue)

    async def capture(self, hold_id: str, amount: int, currency: str = "", policy: int = 0,
                      description: str = "") -> AnyHold:
        item = await self._capture_item(hold_id, amount, currency, policy, description,
                                        await self._hold_metas([hold_id]))
        hold, fresh = await self.commit.submit(item)
        if hold is None:
            raise NotFound(f"hold {item.hold_id!r} not found", reason="HOLD_NOT_FOUND")
        if fresh:
            await self._redis_quietly(self.otb.resolve(hold.customer_id, hold.currency, item.hold_id, hold.captured))
        return hold

    async def capture_many(self, requests: Sequence[tuple[str, int, str, int, str]]
                           ) -> list[AnyHold | DomainError]:
        """Captures (hold id, amount, currency, over-capture policy, description) of one batch call:
        each checked on its own, all submitted to the group commit together (no task per item),
        their holds resolved in Open-to-Buy with one script call per wallet. Each gets its own
        outcome: the captured hold, or the refusal."""
        out: list[AnyHold | DomainError | None] = []
        items: list[tuple[int, ledger.CaptureItem]] = []  # (position in `out`, the item)
        metas = await self._hold_metas([r[0] for r in requests])
        for k, request in enumerate(requests):
            try:
                item = await self._capture_item(*request, metas)
            except DomainError as err:
                out.append(err)
                continue
            out.append(None)
            items.append((k, item))
        fresh: list[AnyHold] = []
        for (k, item), outcome in zip(items, await self.commit.submit_many([i for _, i in items]), strict=True):
            if isinstance(outcome, DomainError):
                out[k] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome[0] is None:  # gone since its meta was read
                out[k] = NotFound(f"hold {item.hold_id!r} not found", reason="HOLD_NOT_FOUND")
            else:
                out[k] = outcome[0]
                if outcome[1]:
                    fresh.append(outcome[0])
        if fresh:
            await self._redis_quietly(self.otb.resolve_many(
                [(h.customer_id, h.currency, h.hold_id, h.captured) for h in fresh]))
        return cast(list[AnyHold | DomainError], out)

    async def active_holds_created(self, start: datetime | None, before: datetime | None, page_token: str,
                                   size: int) -> tuple[list[tuple[str, str, datetime]], str]:
        """Active holds created in [start, before), oldest first, a keyset page at a time: the
        jobs service's sweep for holds whose submit died before storing its job."""
        if before is None:
            raise InvalidArgument("create_time_before is required", field="create_time_before",
                                  reason="MISSING_FIELD")
        size = pagination.page_size(size, default=ACTIVE_HOLDS_PAGE, maximum=ACTIVE_HOLDS_PAGE)
        key = pagination.decode_token(page_token, 2)
        after = None
        if key is not None:
            try:
                after = (datetime.fromisoformat(key[0]), str(key[1]))
            except (TypeError, ValueError):
                raise InvalidArgument("page_token is malformed", field="page_token",
                                      reason="INVALID_PAGE_TOKEN") from None
        async with self.db.session() as s:
            rows = await BillingRepository(s).active_holds_created(start, before, after, size + 1)
        if len(rows) > size:
            last = rows[size - 1]
            return rows[:size], pagination.encode_token(last[2].isoformat(), last[0])
        return rows, ""

    async def extend_holds(self, requests: Sequence[tuple[str, datetime | None]]) -> list[AnyHold | DomainError]:
        """Move active holds' deadlines later (never earlier): a job that waits or retries longer
        than its hold was made for keeps it. Each (hold id, new deadline) answers on its own."""
        out: list[AnyHold | DomainError | None] = []
        wanted: dict[str, datetime] = {}
        now = utcnow()
        for hold_id, expire in requests:
            try:
                hold_id = _text(hold_id, "hold_id", MAX_ID, required=True)
                if expire is None or expire <= now:
                    raise InvalidArgument("expire_time must be set and in the future", field="expire_time",
                                          reason="INVALID_EXPIRE_TIME")
            except DomainError as err:
                out.append(err)
                continue
            wanted[hold_id] = max(expire, wanted.get(hold_id, expire))
            out.append(None)
        holds: dict[str, HoldRow] = {}
        if wanted:
            async with self.db.session() as s:
                holds = await BillingRepository(s).extend_holds(wanted)
        answers: list[AnyHold | DomainError] = []
        for (hold_id, _), item in zip(requests, out, strict=True):
            if item is not None:
                answers.append(item)
            elif (hold := holds.get(hold_id)) is None:
                answers.append(NotFound(f"hold {hold_id!r} not found", reason="HOLD_NOT_FOUND"))
            elif hold.status != ACTIVE:
                answers.append(FailedPrecondition(f"hold {hold_id!r} is no longer active", reason="HOLD_NOT_ACTIVE"))
            else:
                answers.append(hold)
        return answers

    async def release(self, hold_id: str, reason: str = "") -> AnyHold:
        hold_id = _text(hold_id, "hold_id", MAX_ID, required=True)
        reason = _text(reason, "reason", MAX_DESCRIPTION)
        hold = await self._void(hold_id, VOID, reason, utcnow())
        if hold is None:
            raise NotFound(f"hold {hold_id!r} not found", reason="HOLD_NOT_FOUND")
        return hold

    async def _void(self, hold_id: str, kind: int, description: str, now: datetime,
                    meta: HoldMeta | None = None) -> AnyHold | None:
        """Void (Release) or expire (sweeper) one hold. None: no such hold (or, expiring, not due)."""
        if meta is None and (meta := (await self._hold_metas([hold_id])).get(hold_id)) is None:
            return None
        revenue = await self._account_id(REVENUE, PLATFORM, meta[1])
        hold, fresh = await self.commit.submit(ledger.VoidItem(hold_id, kind, description, now, revenue))
        if fresh and hold is not None:
            await self._redis_quietly(self.otb.resolve(hold.customer_id, hold.currency, hold_id, 0))
        return hold

    async def batch(self, calls: Sequence[Callable[[], Awaitable[AnyHold]]]) -> list[AnyHold | DomainError]:
        """Run many operations at once (they share group commits); each item succeeds or fails alone."""
        results = await asyncio.gather(*(c() for c in calls), return_exceptions=True)
        out: list[AnyHold | DomainError] = []
        for r in results:
            if isinstance(r, DomainError | Hold | HoldRow):
                out.append(r)
            elif isinstance(r, BaseException):
                raise r
        return out

    # expiry

    async def expire_due(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        async with self.db.session() as s:
            due = await BillingRepository(s).due_holds(now, EXPIRY_BATCH)
        done = await asyncio.gather(*(self._void(h.hold_id, EXPIRE, "expired", now, (h.reseller_id, h.currency))
                                      for h in due), return_exceptions=True)
        for r in done:
            if isinstance(r, BaseException):
                log.warning("expiring a hold failed: %s", r)
        return sum(1 for r in done if isinstance(r, Hold | HoldRow) and r.status == EXPIRED)

    async def sweep_forever(self) -> None:
        """Expire holds at their deadline: sleep until the next one, woken early by a nearer new hold."""
        while True:
            self.expiry_wake.clear()
            if await self.expire_due() >= EXPIRY_BATCH:
                continue
            async with self.db.session() as s:
                nxt = await BillingRepository(s).next_expiry()
            delay = 300.0 if nxt is None else max(0.0, (nxt - utcnow()).total_seconds()) + 0.01
            self._sleep_until = utcnow() + timedelta(seconds=min(delay, 300.0))
            try:
                await asyncio.wait_for(self.expiry_wake.wait(), timeout=min(delay, 300.0))
            except TimeoutError:
                pass

    # Redis projection

    async def _load_wallet(self, customer_id: uuid.UUID, currency: str) -> None:
        """A wallet missing from Redis, put there once for all the reserves that found it missing
        (one that found it missing just before an earlier load finished reads nothing again)."""
        async def load() -> None:
            if not await self.otb.loaded(customer_id, currency):
                await self.rebuild_wallet(customer_id, currency, force=False)

        await self._flights.do(("load", customer_id, currency), load)

    async def rebuild_wallet(self, customer_id: uuid.UUID, currency: str, *, force: bool = True) -> None:
        async with self.db.session() as s:
            repo = BillingRepository(s)
            wallet = await repo.wallet(customer_id, currency)
            if wallet is None:
                return
            holds = await repo.active_holds(wallet.id)
        await self.otb.rebuild(customer_id, currency, wallet.balance, wallet.held, wallet.credit_limit,
                               {h.hold_id: h.amount for h in holds}, force=force)

    async def _redis_quietly(self, call: Awaitable[Any]) -> None:
        """After a commit: Redis trailing PostgreSQL is repaired by reconciliation, never an error."""
        try:
            await asyncio.shield(call)
        except Exception as exc:
            log.warning("Open-to-Buy update failed (reconciliation will rebuild): %s", exc)

    # reconciliation

    async def reconcile(self, trigger: int, customer_id: str = "", dry_run: bool = False,
                        recheck: bool = True) -> ReconciliationRow:
        """Check Redis against PostgreSQL per wallet (and, for all wallets, the ledger's global
        invariants), repair by rebuilding Redis or adding expire transfers, store the record.
        `recheck`: take a second look before calling a wallet drifted (operations may be in flight)."""
        start = utcnow()
        cid = _uuid(customer_id, "customer") if customer_id else None
        findings: list[dict[str, Any]] = []
        async with self.db.session() as s:
            wallets = await BillingRepository(s).wallets(cid)
        holds_checked = 0
        for i in range(0, len(wallets), 500):
            chunk = wallets[i:i + 500]
            async with self.db.session() as s:
                repo = BillingRepository(s)
                fresh = {w.id: w for w in await repo.wallets(cid)} if cid else None
                holds = await repo.holds_of_wallets([w.id for w in chunk])
            by_wallet: dict[uuid.UUID, dict[str, HoldRow]] = {}
            for h in holds:
                by_wallet.setdefault(h.wallet_id, {})[h.hold_id] = h
            holds_checked += len(holds)
            for w in chunk:
                w = (fresh or {}).get(w.id, w)
                findings += await self._reconcile_wallet(w, by_wallet.get(w.id, {}), dry_run, trigger, recheck)
        transfers = 0
        if cid is None:
            async with self.db.session() as s:
                transfers = int(await s.scalar(select(func.count()).select_from(Transfer)) or 0)
                findings += await self._global_checks(s)
        findings += await self._expired_open(cid, dry_run)
        row = ReconciliationRow(id=uuid.uuid4(), trigger=trigger, customer_id=cid, dry_run=dry_run,
                                start_time=start, complete_time=utcnow(), wallets_checked=len(wallets),
                                holds_checked=holds_checked, transfers_checked=transfers,
                                consistent=not findings, findings=findings)
        if findings or not (cid is not None and trigger == REDIS_REBUILD):
            # (A background second look at one wallet that found nothing is not worth a record.)
            async with self.db.session() as s:
                await BillingRepository(s).add_reconciliation(row)
        if findings:
            log.warning("reconciliation %s found %d discrepancies", row.id, len(findings))
        return row

    async def _reconcile_wallet(self, w: Account, holds: dict[str, HoldRow], dry_run: bool,
                                trigger: int, recheck: bool) -> list[dict[str, Any]]:
        snap = await self.otb.snapshot(w.owner_id, w.currency)
        if not snap.loaded:
            # Not loaded is not drift: the next operation loads it. A rebuild run loads it now.
            if trigger == REDIS_REBUILD and not dry_run and (w.balance or w.held or holds):
                await self.rebuild_wallet(w.owner_id, w.currency, force=False)
            return []
        out = self._compare(w, holds, snap)
        if out and recheck:
            # Operations in flight touch Redis and PostgreSQL a moment apart: only drift that is
            # still there on a second look is a finding.
            await asyncio.sleep(RECHECK_SECONDS)
            snap = await self.otb.snapshot(w.owner_id, w.currency)
            async with self.db.session() as s:
                repo = BillingRepository(s)
                fresh = await repo.wallet(w.owner_id, w.currency)
                active = await repo.active_holds(w.id)
            if fresh is not None:
                w, holds = fresh, {h.hold_id: h for h in active}
            out = self._compare(w, holds, snap) if snap.loaded else []
        if out:
            if not dry_run:
                await self.rebuild_wallet(w.owner_id, w.currency)
            for f in out:
                f["repair"] = REPAIR_NONE if dry_run else REDIS_REBUILT
        return out

    @staticmethod
    def _compare(w: Account, holds: dict[str, HoldRow], snap: Snapshot) -> list[dict[str, Any]]:
        base = {"customer_id": str(w.owner_id), "wallet_id": str(w.id), "currency_code": w.currency}
        out: list[dict[str, Any]] = []
        for hid, amount in snap.holds.items():
            if hid not in holds:
                out.append({**base, "kind": LEAKED_HOLD, "hold_id": hid, "expected_cents": 0, "actual_cents": amount,
                            "description": "active in Redis, not active in PostgreSQL"})
            elif holds[hid].amount != amount:
                out.append({**base, "kind": AMOUNT_MISMATCH, "hold_id": hid, "expected_cents": holds[hid].amount,
                            "actual_cents": amount, "description": "hold amount differs"})
        for hid, h in holds.items():
            if hid not in snap.holds:
                out.append({**base, "kind": MISSING_HOLD, "hold_id": hid, "expected_cents": h.amount,
                            "actual_cents": 0, "description": "active in PostgreSQL, missing from Redis"})
        for name, expected, actual in (("balance", w.balance, snap.balance), ("held", w.held, snap.held),
                                       ("credit limit", w.credit_limit, snap.limit)):
            if expected != actual:
                out.append({**base, "kind": AMOUNT_MISMATCH, "expected_cents": expected, "actual_cents": actual,
                            "description": f"{name} differs between PostgreSQL and Redis"})
        return out

    async def _global_checks(self, s: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        sums = await s.execute(text(
            "SELECT currency, sum(credits_posted - debits_posted), sum(credits_pending - debits_pending) "
            "FROM billing.accounts GROUP BY currency"))
        for currency, posted, pending in sums.all():
            if int(posted) != 0 or int(pending) != 0:
                out.append({"kind": CURRENCY_SUM_NONZERO, "currency_code": currency, "expected_cents": 0,
                            "actual_cents": int(posted), "repair": REPAIR_NONE,
                            "description": f"sum over accounts: posted {posted}, pending {pending}"})
        folds = await s.execute(text(_FOLD_SQL))
        for acc, currency, stored, folded in folds.all():
            out.append({"kind": BALANCE_FOLD_MISMATCH, "account_id": str(acc), "currency_code": currency,
                        "expected_cents": int(folded[0]), "actual_cents": int(stored[0]), "repair": REPAIR_NONE,
                        "description": f"stored counters {list(stored)} differ from the journal's fold "
                                       f"{list(folded)} (debits/credits posted, debits/credits pending)"})
        twice = await s.execute(text(
            "SELECT hold_id, count(*) FROM billing.transfers WHERE kind IN (3, 4, 5) GROUP BY hold_id "
            "HAVING count(*) > 1"))
        for hold_id, n in twice.all():
            out.append({"kind": HOLD_RESOLVED_TWICE, "hold_id": hold_id, "expected_cents": 1, "actual_cents": int(n),
                        "repair": REPAIR_NONE, "description": f"hold resolved {n} times"})
        return out

    async def _expired_open(self, cid: uuid.UUID | None, dry_run: bool) -> list[dict[str, Any]]:
        cutoff = utcnow() - EXPIRY_GRACE
        async with self.db.session() as s:
            q = select(HoldRow).where(HoldRow.status == ACTIVE, HoldRow.expire_time < cutoff)
            if cid is not None:
                q = q.where(HoldRow.customer_id == cid)
            late = list((await s.scalars(q.limit(1000))).all())
        out = []
        for h in late:
            finding = {"kind": EXPIRED_HOLD_OPEN, "customer_id": str(h.customer_id), "wallet_id": str(h.wallet_id),
                       "hold_id": h.hold_id, "currency_code": h.currency, "expected_cents": 0,
                       "actual_cents": h.amount, "repair": REPAIR_NONE,
                       "description": f"active {int((utcnow() - h.expire_time).total_seconds())}s past its deadline"}
            if not dry_run and await self._void(h.hold_id, EXPIRE, "expired by reconciliation", utcnow()):
                async with self.db.session() as s:
                    tid = await s.scalar(select(Transfer.id).where(Transfer.hold_id == h.hold_id,
                                                                   Transfer.kind == EXPIRE))
                finding.update(repair=TRANSFER_ADDED, repair_transfer_id=str(tid or ""))
            out.append(finding)
        return out

    async def get_reconciliation(self, caller: Principal, rid: str) -> ReconciliationRow:
        principals.require_admin(caller)
        async with self.db.session() as s:
            row = await BillingRepository(s).reconciliation(_uuid(rid, "reconciliation"))
        if row is None:
            raise NotFound(f"reconciliation {rid} not found", reason="RECONCILIATION_NOT_FOUND")
        return row

    async def list_reconciliations(self, caller: Principal, size: int, token: str, findings_only: bool) -> Page:
        principals.require_admin(caller)
        size = pagination.page_size(size, 20, 100)
        after = pagination.decode_keyset(token)
        async with self.db.session() as s:
            rows = await BillingRepository(s).reconciliations(size + 1, after, findings_only)
        if len(rows) > size:
            last = rows[size - 1]
            return Page(rows[:size], pagination.encode_token(last.start_time.isoformat(), str(last.id)))
        return Page(rows, "")

    async def reconcile_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.reconcile(PERIODIC)

    async def load_redis(self) -> ReconciliationRow:
        """At start: check every wallet's projection and rebuild what drifted (a crash may have left
        Redis ahead of PostgreSQL); load every wallet if Redis lost billing's keys (no generation)."""
        empty = await self.otb.generation() is None
        report = await self.reconcile(REDIS_REBUILD, recheck=False)  # nothing is in flight at start
        if empty:
            await self.otb.set_generation(uuid.uuid4().hex)
        return report


# Per account: stored counters vs the fold of the journal; rows only where they differ.
_FOLD_SQL = """
WITH effects AS (
    SELECT debit_account_id AS account_id,
           CASE WHEN kind IN (1, 3, 6, 7, 8, 9, 10) THEN amount ELSE 0 END AS dp, 0::bigint AS cp,
           CASE WHEN kind = 2 THEN amount WHEN kind = 3 THEN -pending_amount
                WHEN kind IN (4, 5) THEN -amount ELSE 0 END AS dpe, 0::bigint AS cpe
    FROM billing.transfers
    UNION ALL
    SELECT credit_account_id, 0, CASE WHEN kind IN (1, 3, 6, 7, 8, 9, 10) THEN amount ELSE 0 END, 0,
           CASE WHEN kind = 2 THEN amount WHEN kind = 3 THEN -pending_amount
                WHEN kind IN (4, 5) THEN -amount ELSE 0 END
    FROM billing.transfers
), folded AS (
    SELECT account_id, sum(dp) AS dp, sum(cp) AS cp, sum(dpe) AS dpe, sum(cpe) AS cpe
    FROM effects GROUP BY account_id
)
SELECT a.id, a.currency,
       ARRAY[a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending],
       ARRAY[coalesce(f.dp, 0), coalesce(f.cp, 0), coalesce(f.dpe, 0), coalesce(f.cpe, 0)]::bigint[]
FROM billing.accounts a LEFT JOIN folded f ON f.account_id = a.id
WHERE (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
      IS DISTINCT FROM (coalesce(f.dp, 0), coalesce(f.cp, 0), coalesce(f.dpe, 0), coalesce(f.cpe, 0))
"""
