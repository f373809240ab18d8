"""The gateway's side of sessions, against a tenancy double: the cookie from sign-in, the CSRF check
before any upstream call, the public routes, and failed sign-ins limited per client address."""

from __future__ import annotations

from pathlib import Path

import redis

from innosystem.embedded import EmbeddedValkey
from innosystem.kit import sessions
from tests.gateway.conftest import config_for, serving
from tests.gateway.doubles import PASSWORD, SECRET, SESSION_TOKEN, Recorder

COOKIE = {"Cookie": f"{sessions.COOKIE}={SESSION_TOKEN}"}


async def test_sign_in_sets_the_cookie_and_the_cookie_acts_as_the_person(
        upstream_port: int, sample_set_path: Path, recorder: Recorder) -> None:
    async with serving(config_for(upstream_port, sample_set_path)) as client:
        # a public route: a bad bearer key is not even looked at
        signed_in = await client.post("/v1/sessions", json={"email": "a@example.com", "password": PASSWORD},
                                      headers={"Authorization": "Bearer isk_not_a_key"})
        assert signed_in.status == 200, await signed_in.text()
        cookie = signed_in.headers["Set-Cookie"]
        assert cookie.startswith(f"{sessions.COOKIE}={SESSION_TOKEN};") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie and SESSION_TOKEN not in await signed_in.text()
        assert recorder.named("CreateSession")[-1].principal is None  # no one's principal on a public call
        assert recorder.named("CreateSession")[-1].metadata[sessions.CLIENT_ADDRESS_METADATA] == "127.0.0.1"

        me = await client.get("/v1/me", headers=COOKIE)
        assert me.status == 200
        forwarded = recorder.named("GetMe")[-1].principal
        assert forwarded is not None and forwarded.user_id == "u-1" and forwarded.key_id == "s-1"


async def test_an_unsafe_method_with_the_cookie_needs_the_csrf_token_before_any_upstream_call(
        upstream_port: int, sample_set_path: Path, recorder: Recorder) -> None:
    async with serving(config_for(upstream_port, sample_set_path)) as client:
        refused = await client.delete("/v1/customers/c-1?force=true", headers=COOKIE)
        assert refused.status == 403
        assert (await refused.json())["details"][0]["reason"] == "CSRF_TOKEN_INVALID"
        assert recorder.named("DeleteCustomer") == []
        good = {**COOKIE, sessions.CSRF_HEADER: sessions.csrf_token(SECRET, "s-1")}
        # the token passes; the session's role (a developer) then may not delete a customer
        denied = await client.delete("/v1/customers/c-1?force=true", headers=good)
        assert denied.status == 403 and (await denied.json())["details"][0]["reason"] == "PERMISSION_DENIED"
        assert recorder.named("DeleteCustomer") == []


async def test_a_cookie_that_stopped_working_is_401_and_cleared(
        upstream_port: int, sample_set_path: Path) -> None:
    async with serving(config_for(upstream_port, sample_set_path)) as client:
        ended = await client.get("/v1/me", headers={"Cookie": f"{sessions.COOKIE}=iss_ended_session_token_1234"})
        assert ended.status == 401 and "Max-Age=0" in ended.headers["Set-Cookie"]


async def test_failed_sign_ins_are_limited_per_client_address(
        upstream_port: int, sample_set_path: Path, recorder: Recorder, valkey_server: EmbeddedValkey) -> None:
    url = valkey_server.url.rsplit("/", 1)[0] + "/14"  # the rate-limit tests' database, emptied first
    redis.Redis.from_url(url).flushdb()
    config = config_for(upstream_port, sample_set_path, unauthenticated_rate_limit_per_second=0.5,
                        unauthenticated_rate_limit_burst=3, redis_url=url)
    async with serving(config) as client:
        wrong = {"email": "a@example.com", "password": "guess"}
        assert [(await client.post("/v1/sessions", json=wrong)).status for _ in range(3)] == [401, 401, 401]
        asked = len(recorder.named("CreateSession"))
        limited = await client.post("/v1/sessions", json={"email": "a@example.com", "password": PASSWORD})
        assert limited.status == 429 and "Set-Cookie" not in limited.headers
        assert len(recorder.named("CreateSession")) == asked  # tenancy was not asked
