"""BillingService servicer: converts protobuf ↔ Python values and calls the service layer.

Requests that write text are checked with `check_storable` first: a value PostgreSQL cannot store
(a NUL character) would otherwise fail the group commit that many tenants' operations share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import grpc

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.common.v1.money_pb2 import Money
from innosystem.kit import principal as principals
from innosystem.kit.errors import DomainError, InvalidArgument, to_status
from innosystem.kit.protos import changes, timestamp, to_datetime
from innosystem.kit.validation import check_storable
from services.billing import statements, usage
from services.billing.alerts import LowBalanceAlerts
from services.billing.corrections import Corrections
from services.billing.grants import CreditGrants
from services.billing.limits import LimitView, SpendingLimits
from services.billing.metrics import count_many, counted
from services.billing.models import (
    CAPTURE,
    EXPIRE,
    HOLD,
    VOID,
    Account,
    AnyHold,
    CreditGrantRow,
    ExchangeRateRow,
    ReconciliationRow,
    Transfer,
    WalletEventRow,
)
from services.billing.service import ON_DEMAND, BillingService, ReserveRequest, Statement
from services.billing.wallets import Wallets

DOMAIN = "billing.innosystem"
MAX_BATCH = 1000


def wallet_pb(row: Account) -> pb.Wallet:
    return pb.Wallet(id=str(row.id), customer_id=str(row.owner_id), currency_code=row.currency,
                     balance_cents=row.balance, held_cents=row.held,
                     available_cents=row.balance - row.held + row.credit_limit,
                     credit_limit_cents=row.credit_limit, create_time=timestamp(row.create_time),
                     update_time=timestamp(row.update_time), granted_cents=row.promo,
                     low_balance_threshold_cents=row.low_balance_threshold,
                     low_balance_alerted=row.low_balance_alerted)


def usage_pb(u: usage.Usage) -> pb.UsageReport:
    return pb.UsageReport(start_time=timestamp(u.start), end_time=timestamp(u.end),
                          group_by=pb.UsageGrouping.ValueType(u.group_by),
                          lines=[pb.UsageLine(group=x.group, currency_code=x.currency, job_count=x.jobs,
                                              amount_cents=x.amount) for x in u.lines])


def rate_pb(r: ExchangeRateRow) -> pb.ExchangeRate:
    return pb.ExchangeRate(id=str(r.id), base_currency_code=r.base, quote_currency_code=r.quote, rate_ppm=r.rate_ppm,
                           effective_time=timestamp(r.effective_time), create_time=timestamp(r.create_time))


def limit_pb(v: LimitView) -> pb.SpendingLimit:
    return pb.SpendingLimit(customer_id=str(v.wallet.owner_id), wallet_id=str(v.wallet.id), project_id=v.project_id,
                            currency_code=v.wallet.currency, monthly_limit_cents=v.limit, spent_cents=v.spent,
                            removed=v.removed, update_time=timestamp(v.update_time))


def event_pb(e: WalletEventRow) -> pb.WalletEvent:
    return pb.WalletEvent(id=str(e.id), type=e.type, customer_id=str(e.customer_id), wallet_id=str(e.wallet_id),
                          currency_code=e.currency, available_cents=e.available, balance_cents=e.balance,
                          held_cents=e.held, threshold_cents=e.threshold, create_time=timestamp(e.create_time))


def grant_pb(g: CreditGrantRow) -> pb.CreditGrant:
    return pb.CreditGrant(id=str(g.id), customer_id=str(g.customer_id), wallet_id=str(g.wallet_id),
                          currency_code=g.currency, amount_cents=g.amount, remaining_cents=g.remaining,
                          expired_cents=g.expired, status=pb.CreditGrantStatus.ValueType(g.status), reason=g.reason,
                          request_id=g.request_id, create_time=timestamp(g.create_time),
                          expire_time=timestamp(g.expire_time))


def _signed(t: Transfer) -> int:
    if t.kind == HOLD or t.kind == CAPTURE:
        return -t.amount
    if t.kind in (VOID, EXPIRE):
        return t.amount
    return t.amount if t.credit_account_id == t.wallet_id else -t.amount


def transaction_pb(t: Transfer) -> pb.WalletTransaction:
    return pb.WalletTransaction(id=str(t.id), wallet_id=str(t.wallet_id or ""), customer_id=str(t.customer_id or ""),
                                kind=pb.TransferKind.ValueType(t.kind), amount_cents=_signed(t),
                                currency_code=t.currency, job_id=t.job_id,
                                hold_id=t.hold_id or "", description=t.description,
                                balance_after_cents=t.balance_after, held_after_cents=t.held_after,
                                request_id=t.request_id or "", create_time=timestamp(t.create_time))


def hold_pb(h: AnyHold, view: int = pb.HOLD_VIEW_FULL) -> pb.Hold:
    if view == pb.HOLD_VIEW_BASIC:
        return pb.Hold(hold_id=h.hold_id, amount_cents=h.amount, status=pb.HoldStatus.ValueType(h.status),
                       captured_cents=h.captured, released_cents=h.released, commission_cents=h.commission)
    return pb.Hold(hold_id=h.hold_id, customer_id=str(h.customer_id), wallet_id=str(h.wallet_id), job_id=h.job_id,
                   currency_code=h.currency, amount_cents=h.amount, status=pb.HoldStatus.ValueType(h.status),
                   captured_cents=h.captured,
                   released_cents=h.released, commission_cents=h.commission,
                   reseller_id=str(h.reseller_id or ""),
                   commission_rate_bps=h.commission_rate_bps, create_time=timestamp(h.create_time),
                   expire_time=timestamp(h.expire_time), resolve_time=timestamp(h.resolve_time),
                   project_id=h.project_id, job_type_id=h.job_type_id)


def _response(results: Sequence[AnyHold | DomainError], view: int) -> pb.BatchHoldResponse:
    """A batch's answer: each item's hold (in `view`) or its error, in the order of the requests."""
    return pb.BatchHoldResponse(results=[
        pb.HoldResult(error=to_status(r, DOMAIN)) if isinstance(r, DomainError)
        else pb.HoldResult(hold=hold_pb(r, view)) for r in results])


def reconciliation_pb(r: ReconciliationRow) -> pb.Reconciliation:
    return pb.Reconciliation(
        id=str(r.id), trigger=pb.ReconciliationTrigger.ValueType(r.trigger), customer_id=str(r.customer_id or ""),
        dry_run=r.dry_run,
        start_time=timestamp(r.start_time), complete_time=timestamp(r.complete_time),
        wallets_checked=r.wallets_checked, holds_checked=r.holds_checked, transfers_checked=r.transfers_checked,
        consistent=r.consistent, findings=[pb.ReconciliationFinding(**f) for f in r.findings])


def statement_pb(s: Statement) -> pb.CommissionStatement:
    def money(cents: int) -> Money:
        return Money(amount_minor=cents, currency_code=s.currency)

    return pb.CommissionStatement(
        reseller_id=str(s.reseller_id), start_time=timestamp(s.start), end_time=timestamp(s.end),
        captured_total=money(s.captured), commission_total=money(s.commission), commission_balance=money(s.balance),
        lines=[pb.CommissionStatementLine(customer_id=str(x.customer_id), capture_count=x.captures,
                                          captured=money(x.captured), commission=money(x.commission))
               for x in s.lines])


def _time(message: Any, name: str) -> datetime | None:
    return to_datetime(getattr(message, name)) if message.HasField(name) else None


def reserve_requests(requests: Sequence[pb.ReserveRequest]) -> list[ReserveRequest]:
    return [ReserveRequest(r.hold_id, r.customer_id, r.amount_cents, r.currency_code, r.job_id,
                           _time(r, "expire_time"), r.description, r.project_id, r.job_type_id) for r in requests]


async def answered(operation: str, requests: Sequence[Any],
                   run: Callable[[list[Any]], Awaitable[list[AnyHold | DomainError]]]) -> list[AnyHold | DomainError]:
    """Each item's outcome, in order: one whose text cannot be stored refused alone, the others
    by `run` together; counted in the metrics."""
    results: list[AnyHold | DomainError | None] = [None] * len(requests)
    storable = []
    for k, r in enumerate(requests):
        try:
            check_storable(r)
            storable.append(k)
        except DomainError as err:
            results[k] = err
    for k, outcome in zip(storable, await run([requests[k] for k in storable]), strict=True):
        results[k] = outcome
    done = [r for r in results if r is not None]
    count_many(operation, done)
    return done


def _checked(request: Any, call: Callable[[], Awaitable[AnyHold]]) -> Callable[[], Awaitable[AnyHold]]:
    """`call`, after checking that the request's text can be stored: in a batch, an item that
    cannot be stored fails alone rather than the group commit it would join."""
    async def run() -> AnyHold:
        check_storable(request)
        return await call()
    return run


class BillingApi(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, service: BillingService, corrections: Corrections | None = None,
                 grants: CreditGrants | None = None) -> None:
        self.service = service
        self.corrections = corrections or Corrections(service)
        self.grants = grants or CreditGrants(service)
        self.alerts = LowBalanceAlerts(service)
        self.limits = SpendingLimits(service)
        self.wallets = Wallets(service)

    async def GetWallet(self, request: pb.GetWalletRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        return wallet_pb(await self.service.get_wallet(principals.current(), request.customer_id,
                                                       request.currency_code))

    async def UpdateWallet(self, request: pb.UpdateWalletRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        fields = changes(request.wallet, request.update_mask, "wallet")
        unknown = set(fields) - {"credit_limit_cents", "low_balance_threshold_cents"}
        if unknown:
            raise InvalidArgument(f"only credit_limit_cents and low_balance_threshold_cents can change, "
                                  f"not {sorted(unknown)}", field="update_mask", reason="FIELD_NOT_UPDATABLE")
        caller = principals.current()
        row = None
        if "credit_limit_cents" in fields or not fields:
            row = await self.service.update_wallet(caller, request.customer_id, request.currency_code,
                                                   int(fields.get("credit_limit_cents",
                                                                  request.wallet.credit_limit_cents)))
        if "low_balance_threshold_cents" in fields:
            row = await self.alerts.set_threshold(caller, request.customer_id, request.currency_code,
                                                  int(fields["low_balance_threshold_cents"]))
        assert row is not None
        return wallet_pb(row)

    async def TopUpWallet(self, request: pb.TopUpWalletRequest,
                          context: grpc.aio.ServicerContext) -> pb.TopUpWalletResponse:
        check_storable(request)
        wallet, transfer = await self.service.top_up(principals.current(), request.customer_id, request.amount_cents,
                                                     request.currency_code, request.request_id, request.description)
        return pb.TopUpWalletResponse(wallet=wallet_pb(wallet), transaction=transaction_pb(transfer))

    async def RefundWallet(self, request: pb.RefundWalletRequest,
                           context: grpc.aio.ServicerContext) -> pb.RefundWalletResponse:
        check_storable(request)
        moved = await self.corrections.refund(principals.current(), request.customer_id, request.job_id,
                                              request.amount_cents, request.reason, request.request_id)
        return pb.RefundWalletResponse(wallet=wallet_pb(moved.wallet), transaction=transaction_pb(moved.transfer))

    async def AdjustWallet(self, request: pb.AdjustWalletRequest,
                           context: grpc.aio.ServicerContext) -> pb.AdjustWalletResponse:
        check_storable(request)
        moved = await self.corrections.adjust(principals.current(), request.customer_id, request.amount_cents,
                                              request.reason, request.request_id, request.currency_code,
                                              request.reconciliation_id)
        return pb.AdjustWalletResponse(wallet=wallet_pb(moved.wallet), transaction=transaction_pb(moved.transfer))

    async def GrantCredit(self, request: pb.GrantCreditRequest,
                          context: grpc.aio.ServicerContext) -> pb.GrantCreditResponse:
        check_storable(request)
        done = await self.grants.grant(principals.current(), request.customer_id, request.amount_cents,
                                       _time(request, "expire_time"), request.reason, request.request_id,
                                       request.currency_code)
        return pb.GrantCreditResponse(wallet=wallet_pb(done.wallet), grant=grant_pb(done.grant),
                                      transaction=transaction_pb(done.transfer))

    async def ListCreditGrants(self, request: pb.ListCreditGrantsRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListCreditGrantsResponse:
        page = await self.grants.list(principals.current(), request.customer_id, request.page_size,
                                      request.page_token, request.currency_code)
        return pb.ListCreditGrantsResponse(credit_grants=[grant_pb(g) for g in page.items],
                                           next_page_token=page.next_page_token)

    async def SetSpendingLimit(self, request: pb.SetSpendingLimitRequest,
                               context: grpc.aio.ServicerContext) -> pb.SpendingLimit:
        check_storable(request)
        return limit_pb(await self.limits.set(principals.current(), request.customer_id, request.project_id,
                                              request.monthly_limit_cents, request.remove, request.currency_code))

    async def ListSpendingLimits(self, request: pb.ListSpendingLimitsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ListSpendingLimitsResponse:
        views = await self.limits.list(principals.current(), request.customer_id, request.currency_code)
        return pb.ListSpendingLimitsResponse(spending_limits=[limit_pb(v) for v in views])

    async def GetUsage(self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext) -> pb.UsageReport:
        return usage_pb(await usage.customer_usage(self.service, principals.current(), request.customer_id,
                                                   _time(request, "start_time"), _time(request, "end_time"),
                                                   request.group_by, request.reporting_currency_code))

    async def GetResellerUsage(self, request: pb.GetResellerUsageRequest,
                               context: grpc.aio.ServicerContext) -> pb.UsageReport:
        return usage_pb(await usage.reseller_usage(self.service, principals.current(), request.reseller_id,
                                                   _time(request, "start_time"), _time(request, "end_time"),
                                                   request.group_by, request.reporting_currency_code))

    async def CreateWallet(self, request: pb.CreateWalletRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        return wallet_pb(await self.wallets.create(principals.current(), request.customer_id, request.currency_code))

    async def ListWallets(self, request: pb.ListWalletsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListWalletsResponse:
        rows = await self.wallets.of_customer(principals.current(), request.customer_id)
        return pb.ListWalletsResponse(wallets=[wallet_pb(w) for w in rows])

    async def CreateExchangeRate(self, request: pb.CreateExchangeRateRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ExchangeRate:
        r = request.exchange_rate
        return rate_pb(await self.wallets.add_rate(principals.current(), r.base_currency_code, r.quote_currency_code,
                                                   r.rate_ppm, _time(r, "effective_time")))

    async def ListExchangeRates(self, request: pb.ListExchangeRatesRequest,
                                context: grpc.aio.ServicerContext) -> pb.ListExchangeRatesResponse:
        rows, token = await self.wallets.rates(request.base_currency_code, request.quote_currency_code,
                                               request.page_size, request.page_token)
        return pb.ListExchangeRatesResponse(exchange_rates=[rate_pb(r) for r in rows], next_page_token=token)

    async def ListWalletEvents(self, request: pb.ListWalletEventsRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListWalletEventsResponse:
        rows, token = await self.alerts.events(principals.current(), request.customer_id, request.page_size,
                                               request.page_token, request.currency_code)
        return pb.ListWalletEventsResponse(events=[event_pb(e) for e in rows], next_page_token=token)

    async def GetStatement(self, request: pb.GetStatementRequest, context: grpc.aio.ServicerContext) -> pb.Statement:
        st = await statements.statement(self.service, principals.current(), request.customer_id, request.month,
                                        request.currency_code)
        return pb.Statement(
            customer_id=str(st.customer_id), wallet_id=str(st.wallet_id), month=st.month, currency_code=st.currency,
            start_time=timestamp(st.start), end_time=timestamp(st.end), opening_balance_cents=st.opening,
            closing_balance_cents=st.closing, top_ups_cents=st.top_ups, charges_cents=st.charges,
            charged_jobs=st.charged_jobs, refunds_cents=st.refunds, adjustments_cents=st.adjustments,
            closing_held_cents=st.closing_held, credits_granted_cents=st.credits_granted,
            credits_expired_cents=st.credits_expired)

    async def ListWalletTransactions(self, request: pb.ListWalletTransactionsRequest,
                                     context: grpc.aio.ServicerContext) -> pb.ListWalletTransactionsResponse:
        page = await self.service.list_transactions(
            principals.current(), request.customer_id, request.page_size, request.page_token, request.job_id,
            request.kind, _time(request, "start_time"), _time(request, "end_time"), request.currency_code)
        return pb.ListWalletTransactionsResponse(transactions=[transaction_pb(t) for t in page.items],
                                                 next_page_token=page.next_page_token)

    async def GetCommissionStatement(self, request: pb.GetCommissionStatementRequest,
                                     context: grpc.aio.ServicerContext) -> pb.CommissionStatement:
        statement = await self.service.commission_statement(
            principals.current(), request.reseller_id, _time(request, "start_time"), _time(request, "end_time"),
            request.currency_code)
        return statement_pb(statement)

    async def Reconcile(self, request: pb.ReconcileRequest, context: grpc.aio.ServicerContext) -> pb.Reconciliation:
        principals.require_admin(principals.current())
        return reconciliation_pb(await self.service.reconcile(ON_DEMAND, request.customer_id, request.dry_run))

    async def GetReconciliation(self, request: pb.GetReconciliationRequest,
                                context: grpc.aio.ServicerContext) -> pb.Reconciliation:
        return reconciliation_pb(await self.service.get_reconciliation(principals.current(),
                                                                       request.reconciliation_id))

    async def ListReconciliations(self, request: pb.ListReconciliationsRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ListReconciliationsResponse:
        page = await self.service.list_reconciliations(principals.current(), request.page_size, request.page_token,
                                                       request.with_findings_only)
        return pb.ListReconciliationsResponse(reconciliations=[reconciliation_pb(r) for r in page.items],
                                              next_page_token=page.next_page_token)

    # internal: tenancy opens wallets, jobs holds and settles, jobs and keys read wallet events;
    # the bootstrap admits only those callers (innosystem/kit/callers.py)

    async def OpenWallet(self, request: pb.OpenWalletRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        return wallet_pb(await self.service.open_wallet(request.customer_id, request.reseller_id,
                                                        request.currency_code, request.credit_limit_cents))

    async def ListWalletEventsAfter(self, request: pb.ListWalletEventsAfterRequest,
                                    context: grpc.aio.ServicerContext) -> pb.ListWalletEventsAfterResponse:
        rows = await self.alerts.after(request.after_seq, request.limit)
        return pb.ListWalletEventsAfterResponse(
            items=[pb.ListWalletEventsAfterResponse.Item(seq=e.seq, event=event_pb(e)) for e in rows])

    def _reserve(self, r: pb.ReserveRequest) -> Callable[[], Awaitable[AnyHold]]:
        return counted("reserve", _checked(r, lambda: self.service.reserve(
            r.hold_id, r.customer_id, r.amount_cents, r.currency_code, r.job_id, _time(r, "expire_time"),
            r.description, r.project_id, r.job_type_id)))

    def _capture(self, r: pb.CaptureRequest) -> Callable[[], Awaitable[AnyHold]]:
        return counted("capture", _checked(r, lambda: self.service.capture(
            r.hold_id, r.amount_cents, r.currency_code, r.over_capture_policy, r.description)))

    def _release(self, r: pb.ReleaseRequest) -> Callable[[], Awaitable[AnyHold]]:
        return counted("release", _checked(r, lambda: self.service.release(r.hold_id, r.reason)))

    async def Reserve(self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext) -> pb.Hold:
        return hold_pb(await self._reserve(request)())

    async def Capture(self, request: pb.CaptureRequest, context: grpc.aio.ServicerContext) -> pb.Hold:
        return hold_pb(await self._capture(request)())

    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.Hold:
        return hold_pb(await self._release(request)())

    async def _batch(self, calls: list[Callable[[], Awaitable[AnyHold]]], view: int) -> pb.BatchHoldResponse:
        if not 1 <= len(calls) <= MAX_BATCH:
            raise InvalidArgument(f"a batch has 1 to {MAX_BATCH} requests", field="requests",
                                  reason="INVALID_BATCH_SIZE")
        return _response(await self.service.batch(calls), view)

    async def BatchReserve(self, request: pb.BatchReserveRequest,
                           context: grpc.aio.ServicerContext) -> pb.BatchHoldResponse:
        """Every submit's holds: the batch's reserves go to the service together."""
        return await self._answers("reserve", request.requests, request.view,
                                   lambda rs: self.service.reserve_many(reserve_requests(rs)))

    async def BatchCapture(self, request: pb.BatchCaptureRequest,
                           context: grpc.aio.ServicerContext) -> pb.BatchHoldResponse:
        """The hot path of every finished job: the batch's captures go to the service together."""
        return await self._answers("capture", request.requests, request.view, lambda rs: self.service.capture_many([
            (r.hold_id, r.amount_cents, r.currency_code, r.over_capture_policy, r.description) for r in rs]))

    @staticmethod
    async def _answers(operation: str, requests: Sequence[Any], view: int,
                       run: Callable[[list[Any]], Awaitable[list[AnyHold | DomainError]]]) -> pb.BatchHoldResponse:
        """A set-oriented batch: each item answered on its own, an item whose text cannot be stored
        refused alone before the group commit it would join."""
        if not 1 <= len(requests) <= MAX_BATCH:
            raise InvalidArgument(f"a batch has 1 to {MAX_BATCH} requests", field="requests",
                                  reason="INVALID_BATCH_SIZE")
        return _response(await answered(operation, requests, run), view)

    async def BatchExtend(self, request: pb.BatchExtendRequest,
                          context: grpc.aio.ServicerContext) -> pb.BatchHoldResponse:
        if not 1 <= len(request.requests) <= MAX_BATCH:
            raise InvalidArgument(f"a batch has 1 to {MAX_BATCH} requests", field="requests",
                                  reason="INVALID_BATCH_SIZE")
        return _response(await self.service.extend_holds([(r.hold_id, _time(r, "expire_time"))
                                                           for r in request.requests]), request.view)

    async def ListActiveHolds(self, request: pb.ListActiveHoldsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListActiveHoldsResponse:
        rows, token = await self.service.active_holds_created(
            _time(request, "create_time_from"), _time(request, "create_time_before"), request.page_token,
            request.page_size)
        return pb.ListActiveHoldsResponse(next_page_token=token, holds=[
            pb.ActiveHold(hold_id=hold_id, job_id=job_id, create_time=timestamp(created))
            for hold_id, job_id, created in rows])

    async def BatchRelease(self, request: pb.BatchReleaseRequest,
                           context: grpc.aio.ServicerContext) -> pb.BatchHoldResponse:
        return await self._batch([self._release(r) for r in request.requests], request.view)

