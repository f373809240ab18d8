"""One-time links: logged only where development asked for it, never otherwise (they are credentials)."""

from __future__ import annotations

import logging

import pytest

from innosystem.kit.errors import InvalidArgument
from services.tenancy.mailer import Mailer
from services.tenancy.passwords import check_policy

TOKEN = "isi_secret-token-value"


async def test_without_smtp_a_link_is_logged_only_in_development(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="services.tenancy.mailer"):
        await Mailer(public_url="https://console.example").send_link("a@example.com", "Invite", "accept", TOKEN)
    assert caplog.records and TOKEN not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="services.tenancy.mailer"):
        await Mailer(public_url="https://console.example", log_links=True).send_link(
            "a@example.com", "Invite", "accept", TOKEN)
    assert f"https://console.example/console/accept?token={TOKEN}" in caplog.text


@pytest.mark.parametrize(("password", "reason"), [
    ("short", "PASSWORD_TOO_SHORT"), ("x" * 257, "PASSWORD_TOO_LONG"), ("Password1234", "COMMON_PASSWORD"),
    ("QWERTYUIOP123", "COMMON_PASSWORD"),
])
def test_the_password_policy_names_the_field_and_the_reason(password: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_policy(password)
    assert refused.value.reason == reason and refused.value.violations[0][0] == "password"


def test_a_long_uncommon_password_passes() -> None:
    check_policy("correct horse battery")
