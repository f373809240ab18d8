"""Every public route, with a key of every role of the owning account and of another account.

Inside its own account a role without the route's permission gets 403 `PERMISSION_DENIED`;
with it, the request gets past the role check (here it then fails on the made-up ids or the
empty body, so nothing changes). Across accounts a read of the other account's resource is 404
for every role that may read at all; a role without the permission gets the same 403 whatever
the ids, which tells it nothing about them.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from gateway.descriptors import build_pool, parse_descriptor_set
from gateway.routes import Route, load_routes
from innosystem.kit import roles
from innosystem.tenancy.v1.tenancy_pb2 import Role
from tests.e2e.conftest import Client, Response
from tests.support.identity import reason

pytestmark = pytest.mark.e2e

DESCRIPTORS = Path(__file__).resolve().parents[2] / "innosystem" / "descriptors.binpb"
ROLE_NAMES = [Role.Name(r) for r in roles.ROLES]


def _routes() -> list[Route]:
    files = parse_descriptor_set(DESCRIPTORS.read_bytes())
    return [r for r in load_routes(files, build_pool(files)) if r.rpc.grpc_path not in roles.PUBLIC_METHODS]


def _path(route: Route, ids: dict[str, str]) -> str:
    """The route's path with each variable filled from `ids`, or a fresh UUID (nothing has it)."""
    return re.sub(r"\{([a-z_]+)(=[^}]*)?\}", lambda m: ids.get(m.group(1), str(uuid.uuid4())), route.template.text)


@pytest.fixture(scope="module")
def accounts(admin: Client) -> dict:
    own = admin.post("/v1/customers", {"name": "Matrix Own", "email": "matrix-own@example.com"})
    other = admin.post("/v1/customers", {"name": "Matrix Other", "email": "matrix-other@example.com"})
    assert own.status == 200 and other.status == 200
    legacy = admin.as_key(own.body["apiKey"])
    keys = {}
    for name in ROLE_NAMES:
        made = legacy.post(f"/v1/customers/{own.body['customer']['id']}/apiKeys",
                           {"displayName": f"matrix {name}", "role": name})
        assert made.status == 200, made.body
        keys[name] = made.body["secret"]
    other_id = other.body["customer"]["id"]
    project = admin.as_key(other.body["apiKey"]).post(f"/v1/customers/{other_id}/projects", {"name": "theirs"})
    assert project.status == 200
    return {"own": own.body["customer"]["id"], "other": other_id, "other_project": project.body["id"], "keys": keys}


def _call(client: Client, route: Route, path: str):  # type: ignore[no-untyped-def]
    if route.rpc.server_streaming:
        return _opened(client, path)
    body = None if route.http_method in ("GET", "DELETE") else {}
    return client.call(route.http_method, path, body)


def _opened(client: Client, path: str) -> Response:
    """A stream's answer: its error, or 200 once it opens (a list or statistics watch on the own
    account never ends by itself, so its body is not read)."""
    request = urllib.request.Request(client.base + path, headers={"Authorization": f"Bearer {client.api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return Response(resp.status, None, dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Response(err.code, json.loads(err.read() or b"null"), dict(err.headers))


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_route_in_the_own_account(admin: Client, accounts: dict, role: str) -> None:
    client = admin.as_key(accounts["keys"][role])
    wrong, routes = [], _routes()
    assert len(routes) > 80
    for route in routes:
        # A stream on a real account would stay open: streams get made-up ids (the role check comes first).
        ids = {} if route.rpc.server_streaming else {"customer_id": accounts["own"]}
        answer = _call(client, route, _path(route, ids))
        permission = roles.METHOD_PERMISSIONS[route.rpc.grpc_path]
        denied = answer.status == 403 and reason(answer.body) == "PERMISSION_DENIED"
        expected_denied = permission not in roles.GRANTS[Role.Value(role)]
        if denied != expected_denied or answer.status >= 500 or (answer.status == 401 and route.rpc.name not in (
                "GetCurrentSession", "DeleteCurrentSession")):  # an API key has no session
            wrong.append(f"{route}: {answer.status} {reason(answer.body)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_reads_across_accounts_stay_not_found(admin: Client, accounts: dict, role: str) -> None:
    client = admin.as_key(accounts["keys"][role])
    ids = {"customer_id": accounts["other"], "project_id": accounts["other_project"]}
    wrong, checked = [], 0
    for route in _routes():
        names = {v.name for v in route.template.variables}
        if route.http_method != "GET" or route.rpc.server_streaming or not set(ids) & names:
            continue
        checked += 1
        answer = _call(client, route, _path(route, ids))
        permission = roles.METHOD_PERMISSIONS[route.rpc.grpc_path]
        expected = 404 if permission in roles.GRANTS[Role.Value(role)] else 403
        if answer.status != expected:
            wrong.append(f"{route}: {answer.status} {reason(answer.body)} (expected {expected})")
    assert not wrong, "\n".join(wrong)
    assert checked >= 15  # wallet, projects, users, keys, audit events, access logs, job types, jobs …
