"""Localized error messages through the real gateway and services: `Accept-Language: fi` gets a
Finnish `google.rpc.LocalizedMessage` while the reason code stays the contract."""

from __future__ import annotations

import pytest

from innosystem.stack import Stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e


def _localized(body: dict[str, object]) -> dict[str, str]:
    details = body["details"]
    assert isinstance(details, list)
    [found] = [d for d in details if d["@type"].endswith("google.rpc.LocalizedMessage")]
    return dict(found)


def test_the_gateway_answers_in_the_accepted_language(stack: Stack, admin: Client) -> None:
    missing = f"/v1/customers/{'0' * 8}-0000-4000-8000-{'0' * 12}"
    finnish = admin.get(missing, headers={"Accept-Language": "fi-FI,fi;q=0.9,en;q=0.5"})
    assert finnish.status == 404 and finnish.headers["Content-Language"] == "fi"
    reason = next(d["reason"] for d in finnish.body["details"] if d["@type"].endswith("ErrorInfo"))
    assert reason == "CUSTOMER_NOT_FOUND"  # the contract does not change with the language
    assert _localized(finnish.body) == {"@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                                        "locale": "fi", "message": "Asiakasta ei löytynyt."}
    assert _localized(admin.get(missing, headers={"Accept-Language": "sv"}).body)["message"] == \
        "Kunden hittades inte."
    english = admin.get(missing)
    assert english.headers["Content-Language"] == "en"
    assert _localized(english.body)["message"] == "The customer was not found."
    # The gateway's own refusals too: no credentials, before anything else.
    anonymous = admin.as_key(None).get("/v1/me", headers={"Accept-Language": "fi"})
    assert anonymous.status == 401 and _localized(anonymous.body)["message"].startswith("Tunnistetiedot vaaditaan")
    # A field violation keeps its field; the message says what is wrong in Swedish.
    bad = admin.post("/v1/customers", {"email": "a@example.com"}, headers={"Accept-Language": "sv"})
    assert bad.status == 400 and _localized(bad.body)["message"] == "Ett obligatoriskt fält saknas."
