"""People, sessions and scoped API keys through the real gateway and service processes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pyotp
import pytest

from innosystem.demo import DEMO_USERS, seed_users
from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.support.identity import PASSWORD, call, invite_and_accept, link_token, reason, session_token, sign_in

pytestmark = pytest.mark.e2e


def _email(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture(scope="module")
def acme(admin: Client) -> dict:
    """A customer with an owner and a viewer, and another customer to stay out of."""
    made = admin.post("/v1/customers", {"name": "Acme", "email": "acme@example.com"})
    other = admin.post("/v1/customers", {"name": "Other", "email": "other@example.com"})
    assert made.status == 200 and other.status == 200, (made.body, other.body)
    customer_id, key = made.body["customer"]["id"], made.body["apiKey"]
    owner, viewer = _email("owner"), _email("viewer")
    invite_and_accept(admin.base, key, f"/v1/customers/{customer_id}", owner, "ROLE_OWNER")
    invite_and_accept(admin.base, key, f"/v1/customers/{customer_id}", viewer, "ROLE_VIEWER")
    return {"id": customer_id, "key": key, "owner": owner, "viewer": viewer,
            "other": other.body["customer"]["id"], "other_key": other.body["apiKey"]}


@pytest.fixture
def admin_customer(admin: Client) -> dict:
    """A customer of its own, for a test that changes the account's rules."""
    made = admin.post("/v1/customers", {"name": "Rules", "email": "rules@example.com"})
    assert made.status == 200
    return {"id": made.body["customer"]["id"], "key": made.body["apiKey"]}


def test_sign_in_sets_a_strict_http_only_cookie_and_the_session_acts_as_its_user(admin: Client, acme: dict) -> None:
    answer = call(admin.base, "POST", "/v1/sessions", {"email": acme["owner"], "password": PASSWORD})
    assert answer.status == 200, answer.body
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
    user = answer.body["user"]
    assert user["email"] == acme["owner"] and user["role"] == "ROLE_OWNER" and user["customerId"] == acme["id"]
    assert user["accountKind"] == "PRINCIPAL_KIND_CUSTOMER" and user["name"] == f"users/{user['userId']}"
    assert "passwordHash" not in user and session_token(cookie) not in str(answer.body)

    person = sign_in(admin.base, acme["owner"])
    current = person.call("GET", "/v1/sessions/current")
    assert current.status == 200 and current.body["user"]["userId"] == user["userId"]
    assert current.body["csrfToken"] == person.csrf
    me = person.call("GET", "/v1/me")
    assert me.status == 200 and me.body["principal"]["userId"] == user["userId"]
    assert me.body["principal"]["role"] == "ROLE_OWNER"

    made = person.call("POST", f"/v1/customers/{acme['id']}/projects", {"name": "by-a-person"})
    assert made.status == 200, made.body
    other = person.call("GET", f"/v1/customers/{acme['other']}")
    assert other.status == 404 and other.reason == "CUSTOMER_NOT_FOUND"


def test_an_unsafe_method_with_the_cookie_needs_the_csrf_token(admin: Client, acme: dict) -> None:
    person = sign_in(admin.base, acme["owner"])
    refused = person.call("POST", f"/v1/customers/{acme['id']}/projects", {"name": "no-csrf"}, csrf=False)
    assert refused.status == 403 and reason(refused.body) == "CSRF_TOKEN_INVALID"
    wrong = call(admin.base, "POST", f"/v1/customers/{acme['id']}/projects", {"name": "bad-csrf"},
                 {"Cookie": f"innosystem_session={person.token}", "X-CSRF-Token": "0" * 64})
    assert wrong.status == 403 and wrong.reason == "CSRF_TOKEN_INVALID"
    assert person.call("GET", f"/v1/customers/{acme['id']}/projects", csrf=False).status == 200  # reads need none
    names = [p["name"] for p in person.call("GET", f"/v1/customers/{acme['id']}/projects").body.get("projects", [])]
    assert "no-csrf" not in names and "bad-csrf" not in names


def test_sign_out_clears_the_cookie_and_ends_the_session(admin: Client, acme: dict) -> None:
    person = sign_in(admin.base, acme["owner"])
    out = person.call("DELETE", "/v1/sessions/current")
    assert out.status == 200, out.body
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    after = person.call("GET", "/v1/sessions/current")
    assert after.status == 401 and after.reason == "SESSION_INVALID"


def test_a_viewer_reads_but_is_denied_beyond_its_role(admin: Client, acme: dict) -> None:
    viewer = sign_in(admin.base, acme["viewer"])
    assert viewer.user["role"] == "ROLE_VIEWER"
    assert viewer.call("GET", f"/v1/customers/{acme['id']}/projects").status == 200
    denied = viewer.call("POST", f"/v1/customers/{acme['id']}/projects", {"name": "viewer-made"})
    assert denied.status == 403 and denied.reason == "PERMISSION_DENIED", denied.body
    top_up = viewer.call("POST", f"/v1/customers/{acme['id']}/wallet:topUp", {"amountCents": 100})
    assert top_up.status == 403 and top_up.reason == "PERMISSION_DENIED"
    # its own profile is its own to change
    changed = viewer.call("PATCH", f"/v1/users/{viewer.user['userId']}",
                          {"locale": "fi", "timeZone": "Europe/Helsinki"})
    assert changed.status == 200 and changed.body["locale"] == "fi" and changed.body["timeZone"] == "Europe/Helsinki"
    promoted = viewer.call("PATCH", f"/v1/users/{viewer.user['userId']}", {"role": "ROLE_OWNER"})
    assert promoted.status == 403 and promoted.reason == "PERMISSION_DENIED"


def test_wrong_email_and_wrong_password_are_the_same_401(admin: Client, acme: dict) -> None:
    unknown = call(admin.base, "POST", "/v1/sessions", {"email": _email("nobody"), "password": PASSWORD})
    wrong = call(admin.base, "POST", "/v1/sessions", {"email": acme["viewer"], "password": PASSWORD + "x"})
    assert unknown.status == wrong.status == 401
    assert unknown.reason == wrong.reason == "INVALID_CREDENTIALS"
    assert unknown.body["message"] == wrong.body["message"]
    assert "Set-Cookie" not in wrong.headers


def test_repeated_failures_lock_the_user(admin: Client, acme: dict) -> None:
    email = _email("locked")
    invite_and_accept(admin.base, acme["key"], f"/v1/customers/{acme['id']}", email, "ROLE_DEVELOPER")
    for _ in range(5):
        assert call(admin.base, "POST", "/v1/sessions", {"email": email, "password": "wrong " + PASSWORD}).status == 401
    locked = call(admin.base, "POST", "/v1/sessions", {"email": email, "password": PASSWORD})
    assert locked.status == 429 and locked.reason == "ACCOUNT_LOCKED", locked.body


def test_passwords_follow_the_policy_and_invitations_work_once(admin: Client, acme: dict, stack: Stack) -> None:
    email = _email("policy")
    invited = admin.as_key(acme["key"]).post(f"/v1/customers/{acme['id']}/users",
                                             {"email": email, "role": "ROLE_DEVELOPER"})
    assert invited.status == 200 and invited.body["user"]["invitationPending"] is True
    token = invited.body["invitationToken"]
    short = call(admin.base, "POST", f"/v1/invitations/{token}:accept", {"password": "short"})
    assert short.status == 400 and short.reason == "PASSWORD_TOO_SHORT"
    common = call(admin.base, "POST", f"/v1/invitations/{token}:accept", {"password": "password1234"})
    assert common.status == 400 and common.reason == "COMMON_PASSWORD"
    assert call(admin.base, "POST", f"/v1/invitations/{token}:accept", {"password": PASSWORD}).status == 200
    with psycopg.connect(stack.database_url) as conn:  # at rest: an argon2id hash, and no token
        stored = conn.execute("SELECT password_hash FROM tenancy.users WHERE email = %s", (email,)).fetchone()
        tokens = conn.execute("SELECT count(*) FROM tenancy.user_tokens WHERE token_hash = %s",
                              (token.encode(),)).fetchone()
    assert stored and stored[0].startswith("$argon2id$") and PASSWORD not in stored[0]
    assert tokens == (0,)
    again = call(admin.base, "POST", f"/v1/invitations/{token}:accept", {"password": PASSWORD})
    assert again.status == 404 and again.reason == "INVITATION_INVALID"
    taken = admin.as_key(acme["key"]).post(f"/v1/customers/{acme['id']}/users",
                                           {"email": email.upper(), "role": "ROLE_VIEWER"})
    assert taken.status == 409 and taken.body["details"]


def test_password_reset_by_one_time_token_ends_sessions(admin: Client, acme: dict, stack: Stack) -> None:
    email = _email("reset")
    invite_and_accept(admin.base, acme["key"], f"/v1/customers/{acme['id']}", email, "ROLE_BILLING")
    before = sign_in(admin.base, email)
    unknown = call(admin.base, "POST", "/v1/passwordResets", {"email": _email("nobody")})
    known = call(admin.base, "POST", "/v1/passwordResets", {"email": email})
    assert unknown.status == known.status == 200 and unknown.body == known.body  # no enumeration
    assert stack.log_dir is not None
    token = link_token(stack.log_dir / "tenancy.log", "isp_", email)
    new_password = "another long passphrase"
    done = call(admin.base, "POST", f"/v1/passwordResets/{token}:complete", {"password": new_password})
    assert done.status == 200, done.body
    assert before.call("GET", "/v1/sessions/current").status == 401
    assert call(admin.base, "POST", "/v1/sessions", {"email": email, "password": PASSWORD}).status == 401
    assert sign_in(admin.base, email, new_password).user["role"] == "ROLE_BILLING"
    reused = call(admin.base, "POST", f"/v1/passwordResets/{token}:complete", {"password": new_password})
    assert reused.status == 404 and reused.reason == "RESET_TOKEN_INVALID"


def test_an_account_keeps_one_active_owner(admin: Client, acme: dict) -> None:
    as_acme = admin.as_key(acme["key"])
    owners = [u for u in as_acme.get(f"/v1/customers/{acme['id']}/users?pageSize=500").body["users"]
              if u["role"] == "ROLE_OWNER" and u["active"]]
    assert [u["email"] for u in owners] == [acme["owner"]]
    last = as_acme.post(f"/v1/users/{owners[0]['userId']}:deactivate")
    assert last.status == 400 and reason(last.body) == "LAST_OWNER", last.body
    demoted = as_acme.patch(f"/v1/users/{owners[0]['userId']}", {"role": "ROLE_ADMIN"})
    assert demoted.status == 400 and reason(demoted.body) == "LAST_OWNER"


def test_scoped_api_keys_act_with_their_role(admin: Client, acme: dict) -> None:
    as_acme = admin.as_key(acme["key"])
    made = as_acme.post(f"/v1/customers/{acme['id']}/apiKeys", {"displayName": "ci", "role": "ROLE_DEVELOPER"})
    assert made.status == 200, made.body
    key, secret = made.body["apiKey"], made.body["secret"]
    assert key["role"] == "ROLE_DEVELOPER" and secret.startswith(key["prefix"]) and key["customerId"] == acme["id"]
    developer = admin.as_key(secret)
    assert developer.post(f"/v1/customers/{acme['id']}/projects", {"name": "by-ci"}).status == 200
    top_up = developer.post(f"/v1/customers/{acme['id']}/wallet:topUp", {"amountCents": 100})
    assert top_up.status == 403
    listed = as_acme.get(f"/v1/customers/{acme['id']}/apiKeys").body["apiKeys"]
    assert key["apiKeyId"] in [k["apiKeyId"] for k in listed]
    assert all("secret" not in k for k in listed)
    # the legacy key still works beside it (rotation is create, move, delete)
    assert as_acme.get(f"/v1/customers/{acme['id']}").status == 200
    # another customer neither sees nor deletes it
    assert admin.as_key(acme["other_key"]).delete(f"/v1/apiKeys/{key['apiKeyId']}").status == 404
    assert developer.delete(f"/v1/apiKeys/{key['apiKeyId']}").status == 403  # developers do not manage keys


def test_a_deleted_key_is_refused(admin: Client, acme: dict) -> None:
    as_acme = admin.as_key(acme["key"])
    made = as_acme.post(f"/v1/customers/{acme['id']}/apiKeys", {"displayName": "old", "role": "ROLE_VIEWER"})
    assert as_acme.delete(f"/v1/apiKeys/{made.body['apiKey']['apiKeyId']}").status == 200
    refused = admin.as_key(made.body["secret"]).get(f"/v1/customers/{acme['id']}")
    assert refused.status == 401 and refused.body["details"]


def test_an_expired_key_is_refused(admin: Client, acme: dict, stack: Stack) -> None:
    as_acme = admin.as_key(acme["key"])
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    made = as_acme.post(f"/v1/customers/{acme['id']}/apiKeys",
                        {"displayName": "short-lived", "role": "ROLE_VIEWER", "expireTime": soon})
    assert made.status == 200 and made.body["apiKey"]["expireTime"], made.body
    past = as_acme.post(f"/v1/customers/{acme['id']}/apiKeys",
                        {"displayName": "dead", "role": "ROLE_VIEWER", "expireTime": "2020-01-01T00:00:00Z"})
    assert past.status == 400 and reason(past.body) == "INVALID_EXPIRE_TIME"
    # Let its expiry pass without waiting: move it into the past in the database (never used, so uncached).
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE tenancy.api_keys SET expire_time = now() - interval '1 second' WHERE id = %s",
                     (made.body["apiKey"]["apiKeyId"],))
    refused = admin.as_key(made.body["secret"]).get(f"/v1/customers/{acme['id']}")
    assert refused.status == 401 and reason(refused.body) == "API_KEY_EXPIRED", refused.body


def test_administrative_actions_are_audited(admin: Client, acme: dict) -> None:
    as_acme = admin.as_key(acme["key"])
    sign_in(admin.base, acme["owner"])
    project = as_acme.post(f"/v1/customers/{acme['id']}/projects", {"name": "audited"})
    assert project.status == 200
    # actions of the other services reach the same log: a job type (jobs), a top-up (billing)
    job_type = as_acme.post(f"/v1/projects/{project.body['id']}/jobTypes",
                            {"name": "audited-type", "processorType": "PROCESSOR_TYPE_SYNC",
                             "timeoutSeconds": 30})
    assert job_type.status == 200, job_type.body
    top_up = admin.post(f"/v1/customers/{acme['id']}/wallet:topUp", {"amountCents": 500, "requestId": "audit-top-up"},
                        headers={"X-Request-Id": "audit-test-top-up"})
    assert top_up.status == 200, top_up.body
    made = as_acme.post(f"/v1/customers/{acme['id']}/apiKeys", {"displayName": "audited", "role": "ROLE_VIEWER"},
                        headers={"X-Request-Id": "audit-test-1"})
    assert made.status == 200
    events = as_acme.get(f"/v1/customers/{acme['id']}/auditEvents?pageSize=500").body["auditEvents"]
    actions = {e["action"] for e in events}
    assert {"CreateCustomer", "CreateUser", "AcceptInvitation", "CreateSession", "CreateApiKey",
            "CreateProject", "CreateJobType", "TopUpWallet"} <= actions, actions
    topped = next(e for e in events if e["action"] == "TopUpWallet")
    assert topped["actorKind"] == "PRINCIPAL_KIND_ADMIN" and topped["requestId"] == "audit-test-top-up"
    assert topped["detail"].startswith("500 ") and topped["clientAddress"]
    typed = next(e for e in events if e["action"] == "CreateJobType")
    assert typed["target"] == f"jobTypes/{job_type.body['id']}" and typed["detail"] == "audited-type"
    created = next(e for e in events if e["requestId"] == "audit-test-1")
    assert created["action"] == "CreateApiKey" and created["target"] == f"apiKeys/{made.body['apiKey']['apiKeyId']}"
    assert created["clientAddress"] and created["customerId"] == acme["id"]
    only = as_acme.get(f"/v1/customers/{acme['id']}/auditEvents?action=CreateSession").body["auditEvents"]
    assert only and {e["action"] for e in only} == {"CreateSession"}
    times = [e["createTime"] for e in events]
    assert times == sorted(times, reverse=True)  # newest first
    viewer = sign_in(admin.base, acme["viewer"])
    assert viewer.call("GET", f"/v1/customers/{acme['id']}/auditEvents").status == 403
    other = admin.as_key(acme["other_key"]).get(f"/v1/customers/{acme['id']}/auditEvents")
    assert other.status == 404


def test_totp_enrolment_then_sign_in_needs_a_code_or_a_recovery_code(admin: Client, acme: dict) -> None:
    email = _email("totp")
    invite_and_accept(admin.base, acme["key"], f"/v1/customers/{acme['id']}", email, "ROLE_DEVELOPER")
    person = sign_in(admin.base, email)
    user_id = person.user["userId"]
    enrolled = person.call("POST", f"/v1/users/{user_id}:enrollTotp")
    assert enrolled.status == 200 and enrolled.body["otpauthUri"].startswith("otpauth://totp/"), enrolled.body
    totp = pyotp.TOTP(enrolled.body["secret"])
    wrong = person.call("POST", f"/v1/users/{user_id}:confirmTotp", {"secret": enrolled.body["secret"],
                                                                     "code": "000000" if totp.now() != "000000"
                                                                     else "111111"})
    assert wrong.status == 400 and wrong.reason == "INVALID_TOTP_CODE"
    confirmed = person.call("POST", f"/v1/users/{user_id}:confirmTotp",
                            {"secret": enrolled.body["secret"], "code": totp.now()})
    assert confirmed.status == 200 and confirmed.body["user"]["totpEnabled"] is True, confirmed.body
    recovery = confirmed.body["recoveryCodes"]
    assert len(recovery) == 10 and len(set(recovery)) == 10

    needs = call(admin.base, "POST", "/v1/sessions", {"email": email, "password": PASSWORD})
    assert needs.status == 401 and needs.reason == "TOTP_REQUIRED" and "Set-Cookie" not in needs.headers
    bad = call(admin.base, "POST", "/v1/sessions", {"email": email, "password": PASSWORD, "totpCode": "12345"})
    assert bad.status == 401 and bad.reason == "INVALID_CREDENTIALS"
    # the next step's code (the one confirming spent this step's)
    assert sign_in(admin.base, email, totpCode=totp.at(time.time() + 30)).user["totpEnabled"] is True
    assert sign_in(admin.base, email, totpCode=recovery[0]).user["userId"] == user_id
    spent = call(admin.base, "POST", "/v1/sessions", {"email": email, "password": PASSWORD, "totpCode": recovery[0]})
    assert spent.status == 401 and spent.reason == "INVALID_CREDENTIALS"


def test_an_owner_can_require_totp_of_every_user(admin: Client, admin_customer: dict) -> None:
    customer_id, key = admin_customer["id"], admin_customer["key"]
    owner_email, member_email = _email("req-owner"), _email("req-member")
    invite_and_accept(admin.base, key, f"/v1/customers/{customer_id}", owner_email, "ROLE_OWNER")
    invite_and_accept(admin.base, key, f"/v1/customers/{customer_id}", member_email, "ROLE_ADMIN")
    member = sign_in(admin.base, member_email)
    denied = member.call("POST", f"/v1/customers/{customer_id}:setTotpRequirement", {"required": True})
    assert denied.status == 403 and denied.reason == "OWNER_ONLY"
    owner = sign_in(admin.base, owner_email)
    assert owner.call("POST", f"/v1/customers/{customer_id}:setTotpRequirement", {"required": True}).status == 200
    fresh = sign_in(admin.base, member_email)
    blocked = fresh.call("GET", f"/v1/customers/{customer_id}/projects")
    assert blocked.status == 403 and blocked.reason == "TOTP_ENROLLMENT_REQUIRED", blocked.body
    assert fresh.call("GET", "/v1/sessions/current").status == 200  # its own session and profile stay open
    enrolled = fresh.call("POST", f"/v1/users/{fresh.user['userId']}:enrollTotp")
    secret = enrolled.body["secret"]
    assert fresh.call("POST", f"/v1/users/{fresh.user['userId']}:confirmTotp",
                      {"secret": secret, "code": pyotp.TOTP(secret).now()}).status == 200
    again = sign_in(admin.base, member_email, totpCode=pyotp.TOTP(secret).at(time.time() + 30))
    assert again.call("GET", f"/v1/customers/{customer_id}/projects").status == 200


def test_the_demo_seeds_people_to_sign_in_with(admin: Client, admin_customer: dict) -> None:
    rest = Rest(admin.base, admin.api_key or "")
    password = "demo-" + uuid.uuid4().hex
    made = seed_users(rest, admin_customer["id"], password)
    assert sorted(made) == sorted(email for email, _, _ in DEMO_USERS)
    assert seed_users(rest, admin_customer["id"], password) == []  # a second start finds them
    owner = sign_in(admin.base, "demo@innosystem.local", password)
    assert owner.user["role"] == "ROLE_OWNER" and owner.user["customerId"] == admin_customer["id"]
    assert sign_in(admin.base, "viewer@innosystem.local", password).user["role"] == "ROLE_VIEWER"
    operator = sign_in(admin.base, "admin@innosystem.local", password)
    assert operator.user["accountKind"] == "PRINCIPAL_KIND_ADMIN" and operator.user["role"] == "ROLE_OWNER"
    assert operator.call("GET", "/v1/resellers").status == 200  # the platform's owner sees the platform


def test_behind_tls_the_cookie_is_secure(admin: Client, acme: dict) -> None:
    answer = call(admin.base, "POST", "/v1/sessions", {"email": acme["viewer"], "password": PASSWORD},
                  {"X-Forwarded-Proto": "https"})
    assert answer.status == 200 and "; Secure" in answer.headers["Set-Cookie"]


def test_a_user_lists_and_ends_its_sessions(admin: Client, acme: dict) -> None:
    email = _email("sessions")
    invite_and_accept(admin.base, acme["key"], f"/v1/customers/{acme['id']}", email, "ROLE_VIEWER")
    laptop, phone = sign_in(admin.base, email), sign_in(admin.base, email)
    listed = laptop.call("GET", f"/v1/users/{laptop.user['userId']}/sessions")
    assert listed.status == 200 and len(listed.body["sessions"]) == 2
    assert sum(1 for s in listed.body["sessions"] if s["current"]) == 1
    other = next(s for s in listed.body["sessions"] if not s["current"])
    assert laptop.call("DELETE", f"/v1/sessions/{other['sessionId']}").status == 200
    assert phone.call("GET", "/v1/sessions/current").status == 401
    assert laptop.call("GET", "/v1/sessions/current").status == 200
    # another account's person neither sees nor ends them
    stranger = sign_in(admin.base, acme["owner"])
    mine = laptop.call("GET", f"/v1/users/{laptop.user['userId']}/sessions").body["sessions"][0]["sessionId"]
    assert admin.as_key(acme["other_key"]).delete(f"/v1/sessions/{mine}").status == 404
    assert stranger.call("GET", "/v1/sessions/current").status == 200


@pytest.mark.parametrize("column", ["last_use_time", "expire_time"])
def test_idle_and_absolute_expiry_end_a_session(admin: Client, acme: dict, stack: Stack, column: str) -> None:
    person = sign_in(admin.base, acme["viewer"])
    # Move the session past its idle or absolute limit in the database rather than waiting for it.
    with psycopg.connect(stack.database_url) as conn:
        conn.execute(f"UPDATE tenancy.sessions SET {column} = now() - interval '1 day' "
                     "WHERE id = (SELECT id FROM tenancy.sessions ORDER BY create_time DESC LIMIT 1)")
    ended = person.call("GET", "/v1/sessions/current")
    assert ended.status == 401 and ended.reason == "SESSION_INVALID", ended.body
    assert "Max-Age=0" in ended.headers["Set-Cookie"]  # the gateway clears a cookie that stopped working


def test_a_resellers_people_see_its_customers_but_never_manage_their_people(admin: Client, acme: dict) -> None:
    reseller = admin.post("/v1/resellers", {"name": "People Resale", "email": "people-resale@example.com"})
    assert reseller.status == 200
    reseller_id, key = reseller.body["reseller"]["id"], reseller.body["apiKey"]
    email = _email("reseller-admin")
    invite_and_accept(admin.base, key, f"/v1/resellers/{reseller_id}", email, "ROLE_ADMIN")
    person = sign_in(admin.base, email)
    assert person.user["accountKind"] == "PRINCIPAL_KIND_RESELLER" and person.user["resellerId"] == reseller_id
    made = person.call("POST", "/v1/customers", {"name": "Resold", "email": "resold@example.com"})
    assert made.status == 200 and made.body["customer"]["resellerId"] == reseller_id, made.body
    customer_id = made.body["customer"]["id"]
    assert person.call("GET", f"/v1/customers/{customer_id}/users").status == 200  # it sees them
    invited = person.call("POST", f"/v1/customers/{customer_id}/users", {"email": _email("x"), "role": "ROLE_OWNER"})
    assert invited.status == 403 and invited.reason == "ACCOUNT_ONLY"  # people act as the customer: not its to make
    keyed = person.call("POST", f"/v1/customers/{customer_id}/apiKeys", {"displayName": "x", "role": "ROLE_VIEWER"})
    assert keyed.status == 403 and keyed.reason == "ACCOUNT_ONLY"
    assert person.call("GET", f"/v1/customers/{acme['id']}/users").status == 404  # not its customer
    events = person.call("GET", f"/v1/resellers/{reseller_id}/auditEvents").body["auditEvents"]
    assert {"CreateUser", "CreateCustomer"} <= {e["action"] for e in events}
