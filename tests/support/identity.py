"""People for end-to-end tests: invite, accept, sign in, and a client that speaks with the cookie."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PASSWORD = "a long enough test passphrase"
COOKIE = "innosystem_session"


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return next((d["reason"] for d in self.body.get("details", []) if d["@type"].endswith("ErrorInfo")), "")


def call(base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, payload, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, payload, hdrs = err.code, err.read(), dict(err.headers)
    return Answer(status, json.loads(payload) if payload else {}, hdrs)


def session_token(set_cookie: str) -> str:
    match = re.match(rf"{COOKIE}=([^;]*)", set_cookie)
    assert match, set_cookie
    return match.group(1)


@dataclass
class Person:
    """A signed-in user: its cookie and CSRF token on every call."""

    base: str
    token: str
    csrf: str
    user: dict[str, Any]

    def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True) -> Answer:
        headers = {"Cookie": f"{COOKIE}={self.token}"}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        return call(self.base, method, path, body if body is not None or method in ("GET", "DELETE") else {},
                    headers)


def sign_in(base: str, email: str, password: str = PASSWORD, **extra: str) -> Person:
    answer = call(base, "POST", "/v1/sessions", {"email": email, "password": password, **extra})
    assert answer.status == 200, answer.body
    return Person(base, session_token(answer.headers["Set-Cookie"]), answer.body["csrfToken"], answer.body["user"])


def invite_and_accept(base: str, inviter_key: str, account_path: str, email: str, role: str,
                      password: str = PASSWORD) -> dict[str, Any]:
    """`account_path`: "/v1/customers/<id>", "/v1/resellers/<id>" or "" (the platform)."""
    auth = {"Authorization": f"Bearer {inviter_key}"}
    path = f"{account_path}/users" if account_path else "/v1/users"
    invited = call(base, "POST", path, {"email": email, "displayName": email.split("@")[0], "role": role}, auth)
    assert invited.status == 200, invited.body
    accepted = call(base, "POST", f"/v1/invitations/{invited.body['invitationToken']}:accept", {"password": password})
    assert accepted.status == 200, accepted.body
    user: dict[str, Any] = accepted.body
    return user


def link_token(log: Path, prefix: str, email: str) -> str:
    """The newest one-time token mailed to `email` (the test stack logs links: no SMTP)."""
    found = [m.group(1) for line in log.read_text().splitlines() if email in line
             for m in [re.search(rf"token=({prefix}[A-Za-z0-9_-]+)", line)] if m]
    assert found, f"no {prefix} link for {email} in {log}"
    return found[-1]


def reason(body: Any) -> str:
    """The ErrorInfo reason of an error body ("" if none)."""
    details = body.get("details", []) if isinstance(body, dict) else []
    return next((d["reason"] for d in details if d["@type"].endswith("ErrorInfo")), "")
