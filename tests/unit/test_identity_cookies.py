"""The session cookie's attributes and the CSRF check (pure logic; the flows are in tests/e2e)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.cookies import check_csrf, is_secure, set_cookie
from gateway.errors import GatewayError
from innosystem.kit import sessions

SECRET = b"internal secret for the test"


def test_the_cookie_is_http_only_strict_and_secure_only_behind_tls() -> None:
    assert set_cookie("iss_abc", secure=False) == "innosystem_session=iss_abc; HttpOnly; SameSite=Strict; Path=/"
    assert set_cookie("iss_abc", secure=True).endswith("; Secure")
    assert set_cookie("", secure=False).startswith("innosystem_session=; Max-Age=0;")
    assert is_secure(make_mocked_request("GET", "/", headers={"X-Forwarded-Proto": "https"}))
    assert not is_secure(make_mocked_request("GET", "/", headers={"X-Forwarded-Proto": "http"}))


def test_csrf_is_bound_to_the_session_and_the_secret() -> None:
    token = sessions.csrf_token(SECRET, "session-1")
    assert sessions.csrf_matches(SECRET, "session-1", token)
    assert not sessions.csrf_matches(SECRET, "session-2", token)
    assert not sessions.csrf_matches(b"another secret", "session-1", token)
    assert not sessions.csrf_matches(SECRET, "session-1", None)


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
def test_unsafe_methods_need_the_header(method: str) -> None:
    with pytest.raises(GatewayError) as refused:
        check_csrf(make_mocked_request(method, "/v1/x"), SECRET, "session-1")
    assert refused.value.http_status == 403 and refused.value.status.details
    good = {sessions.CSRF_HEADER: sessions.csrf_token(SECRET, "session-1")}
    check_csrf(make_mocked_request(method, "/v1/x", headers=good), SECRET, "session-1")


def test_reads_need_no_header() -> None:
    check_csrf(make_mocked_request("GET", "/v1/x"), SECRET, "session-1")
