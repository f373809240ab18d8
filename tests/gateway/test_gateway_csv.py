"""A list response rendered as CSV for `Accept: text/csv` (pure: no server)."""

from __future__ import annotations

import csv
import io

from gateway.proxy import _wants_csv
from gateway.transcode import render_csv
from innosystem.billing.v1 import billing_pb2 as pb


def test_the_one_list_becomes_rows_under_a_header_of_json_names() -> None:
    report = pb.UsageReport(group_by=pb.USAGE_GROUPING_DAY, lines=[
        pb.UsageLine(group="2026-12-01", currency_code="USD", job_count=3, amount_cents=1234),
        pb.UsageLine(group='a,"b"', currency_code="EUR", job_count=0, amount_cents=0)])
    table = render_csv(report)
    assert table is not None
    rows = list(csv.reader(io.StringIO(table.decode())))
    assert rows == [["group", "currencyCode", "jobCount", "amountCents"],
                    ["2026-12-01", "USD", "3", "1234"],
                    ['a,"b"', "EUR", "0", "0"]]


def test_nested_values_are_json_and_a_response_without_one_list_is_not_csv() -> None:
    page = pb.ListSpendingLimitsResponse(spending_limits=[pb.SpendingLimit(project_id="p", monthly_limit_cents=5)])
    rows = list(csv.reader(io.StringIO((render_csv(page) or b"").decode())))
    assert rows[0][:4] == ["customerId", "walletId", "projectId", "currencyCode"]
    assert rows[1][2] == "p" and rows[1][rows[0].index("removed")] == "false"
    assert render_csv(pb.Wallet(id="w")) is None
    assert render_csv(pb.GrantCreditResponse()) is None


def test_only_a_first_preference_for_csv_asks_for_it() -> None:
    assert _wants_csv("text/csv")
    assert _wants_csv("Text/CSV; charset=utf-8, application/json")
    assert not _wants_csv("application/json, text/csv")
    assert not _wants_csv("")
