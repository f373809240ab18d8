"""Filling request messages from path, query and body; rendering answers as proto3 JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from gateway.descriptors import build_pool, parse_descriptor_set
from gateway.errors import GatewayError, status_dict
from gateway.routes import RouteTable, load_routes
from gateway.transcode import build_request, render


@dataclass
class Env:
    table: RouteTable
    pool: descriptor_pool.DescriptorPool

    def build(self, method: str, path: str, query: str = "", body: bytes | str = b"") -> Any:
        found = self.table.match(method, path)
        raw = body.encode() if isinstance(body, str) else body
        return build_request(found.route, found.path_values, parse_qsl(query, keep_blank_values=True), raw,
                             self.pool)

    def refused(self, method: str, path: str, query: str = "", body: bytes | str = b"") -> dict[str, Any]:
        with pytest.raises(GatewayError) as caught:
            self.build(method, path, query, body)
        assert caught.value.http_status == 400
        return status_dict(caught.value.status)


@pytest.fixture(scope="module")
def env(sample_set: bytes) -> Env:
    files = parse_descriptor_set(sample_set)
    pool = build_pool(files)
    return Env(RouteTable(load_routes(files, pool)), pool)


def reason_and_fields(status: dict[str, Any]) -> tuple[str, list[str]]:
    reason = next(d["reason"] for d in status["details"] if d["@type"].endswith("ErrorInfo"))
    fields = [v["field"] for d in status["details"] if d["@type"].endswith("BadRequest")
              for v in d["fieldViolations"]]
    return reason, fields


# --- query parameters --------------------------------------------------------------------------

def test_query_fills_every_scalar_kind_and_well_known_types(env: Env) -> None:
    msg = env.build("GET", "/v1/samples/s1",
                    "count=-3&big=9007199254740993&small=7&ratio=2.5&ratio32=-1e3&flag=TRUE&blob=aGk_&"
                    "color=COLOR_BLUE&tags=a&tags=b%20c&numbers=1&numbers=2&inner.note=hi&inner.level=4&"
                    "when=2025-01-31T12:00:00Z&wait=1.5s&mask=inner.note,displayName,page_size&maybe=0")
    assert (msg.id, msg.count, msg.big, msg.small, msg.ratio, msg.ratio32) == ("s1", -3, 9007199254740993, 7, 2.5,
                                                                             -1000.0)
    assert msg.flag is True and msg.blob == b"hi?"
    assert msg.color == 2
    assert list(msg.tags) == ["a", "b c"] and list(msg.numbers) == [1, 2]
    assert (msg.inner.note, msg.inner.level) == ("hi", 4)
    assert msg.when.seconds == 1738324800
    assert (msg.wait.seconds, msg.wait.nanos) == (1, 500_000_000)
    assert list(msg.mask.paths) == ["inner.note", "display_name", "page_size"]
    assert msg.HasField("maybe") and msg.maybe.value == 0


def test_query_accepts_snake_case_names_and_enum_numbers(env: Env) -> None:
    msg = env.build("GET", "/v1/samples/s1", "ratio32=1&color=1&inner.level=2&flag=0")
    assert (msg.ratio32, msg.color, msg.inner.level, msg.flag) == (1.0, 1, 2, False)


@pytest.mark.parametrize(("query", "field", "needle"), [
    ("count=abc", "count", "expected an integer"),
    ("count=99999999999", "count", "out of range for int32"),
    ("small=-1", "small", "out of range for uint32"),
    ("ratio=fast", "ratio", "expected a number"),
    ("ratio32=1e39", "ratio32", "out of range for float"),
    ("flag=maybe", "flag", "true or false"),
    ("color=PURPLE", "color", "Color (COLOR_UNSPECIFIED, COLOR_RED, COLOR_BLUE)"),
    ("color=7", "color", "7 is not one of"),
    ("when=yesterday", "when", "RFC 3339"),
    ("wait=5m", "wait", "duration"),
    ("blob=%40%40", "blob", "base64"),
    ("mask=a-b", "mask", "not a field path"),
    ("inner=1", "inner", "is a message"),
    ("counts=1", "counts", "map"),
    ("count=1&count=2", "count", "given 2 times"),
])
def test_bad_query_values_name_the_parameter(env: Env, query: str, field: str, needle: str) -> None:
    status = env.refused("GET", "/v1/samples/s1", query)
    assert status["code"] == 3
    assert reason_and_fields(status) == ("INVALID_FIELD_VALUE", [field])
    assert needle in status["message"] and field in status["message"]


@pytest.mark.parametrize(("method", "path", "query", "needle"), [
    ("GET", "/v1/samples/s1", "nope=1", "unknown query parameter 'nope'"),
    ("GET", "/v1/samples/s1", "inner.nope=1", "unknown query parameter 'inner.nope'"),
    ("GET", "/v1/samples/s1", "id=s2", "set by the URL path"),
    ("POST", "/v1/samples/s1:echo", "count=1", "takes every field in the JSON body"),
    ("PUT", "/v1/samples/s1", "inner.note=x", "carried in the request body"),
])
def test_query_parameters_that_no_field_takes_are_refused(env: Env, method: str, path: str, query: str,
                                                          needle: str) -> None:
    status = env.refused(method, path, query)
    reason, fields = reason_and_fields(status)
    assert reason == "UNKNOWN_FIELD" and fields == [query.split("=")[0]]
    assert needle in status["message"]


# --- body ----------------------------------------------------------------------------------------

def test_body_star_fills_the_whole_message_from_camel_or_snake_names(env: Env) -> None:
    body = {
        "count": 2, "big": "-9223372036854775808", "small": 4.0, "ratio": "NaN", "flag": True, "blob": "aGk=",
        "color": "COLOR_RED", "tags": ["x"], "inner": {"note": "n", "child": {"level": 9}},
        "inners": [{"note": "a"}, {"note": "b"}], "counts": {"a": 1}, "named": {"k": {"level": 3}},
        "when": "2025-01-31T12:00:00.5+01:00", "mask": "inner.note,tags", "wait": "3s",
        "extra": {"nested": [1, "two", None, {"x": True}]}, "maybe": None, "left": "L",
        "ratio32": 0.5, "numbers": [1, "2"],
    }
    msg = env.build("POST", "/v1/samples/s1:echo", body=json.dumps(body))
    assert msg.id == "s1" and msg.count == 2 and msg.big == -(2**63) and msg.small == 4
    assert msg.ratio != msg.ratio  # NaN
    assert msg.inner.child.level == 9 and [i.note for i in msg.inners] == ["a", "b"]
    assert dict(msg.counts) == {"a": 1} and msg.named["k"].level == 3
    assert msg.when.seconds == 1738321200 and msg.when.nanos == 500_000_000
    assert list(msg.mask.paths) == ["inner.note", "tags"]
    assert msg.extra["nested"][3]["x"] is True
    assert not msg.HasField("maybe")  # null means unset
    assert msg.WhichOneof("choice") == "left"
    assert list(msg.numbers) == [1, 2]
    snake = env.build("POST", "/v1/samples/s1:echo", body='{"ratio32": 1.5}')
    assert snake.ratio32 == 1.5


@pytest.mark.parametrize(("body", "reason", "field", "needle"), [
    ('{"count": 1,', "MALFORMED_JSON", None, "line 1 column 13"),
    (b'{"note": "\xff"}', "MALFORMED_JSON", None, "not UTF-8"),
    ('{"ratio": NaN}', "MALFORMED_JSON", None, "NaN is not JSON"),
    ("[1, 2]", "INVALID_FIELD_VALUE", "", "expected a JSON object, got an array"),
    ('{"colour": "red"}', "UNKNOWN_FIELD", "colour", 'unknown field "colour"'),
    ('{"inner": {"nope": 1}}', "UNKNOWN_FIELD", "inner.nope", 'unknown field "inner.nope"'),
    ('{"count": "many"}', "INVALID_FIELD_VALUE", "count", "expected an integer"),
    ('{"count": 1.5}', "INVALID_FIELD_VALUE", "count", "expected an integer"),
    ('{"count": true}', "INVALID_FIELD_VALUE", "count", "expected an integer"),
    ('{"big": "12345678901234567890"}', "INVALID_FIELD_VALUE", "big", "out of range for int64"),
    ('{"flag": "true"}', "INVALID_FIELD_VALUE", "flag", "expected true or false"),
    ('{"inner": {"note": 5}}', "INVALID_FIELD_VALUE", "inner.note", "expected a string"),
    ('{"inner": "x"}', "INVALID_FIELD_VALUE", "inner", "expected a JSON object"),
    ('{"tags": "x"}', "INVALID_FIELD_VALUE", "tags", "expected a JSON array"),
    ('{"tags": ["a", null]}', "INVALID_FIELD_VALUE", "tags[1]", "null is not allowed"),
    ('{"inners": [{}, {"level": "x"}]}', "INVALID_FIELD_VALUE", "inners[1].level", "expected an integer"),
    ('{"counts": {"a": "x"}}', "INVALID_FIELD_VALUE", "counts.a", "expected an integer"),
    ('{"color": "PURPLE"}', "INVALID_FIELD_VALUE", "color", "is not one of Color"),
    ('{"when": "tomorrow"}', "INVALID_FIELD_VALUE", "when", "RFC 3339"),
    ('{"mask": ["a"]}', "INVALID_FIELD_VALUE", "mask", "field paths as one string"),
    ('{"blob": "***"}', "INVALID_FIELD_VALUE", "blob", "base64"),
    ('{"left": "a", "right": "b"}', "INVALID_FIELD_VALUE", "right", "only one of choice"),
    ('{"id": "other"}', "PATH_BODY_MISMATCH", "id", "'other' in the body but 's1' in the URL path"),
])
def test_bad_bodies_are_400_naming_the_field(env: Env, body: str | bytes, reason: str, field: str | None,
                                             needle: str) -> None:
    status = env.refused("POST", "/v1/samples/s1:echo", body=body)
    got_reason, fields = reason_and_fields(status)
    assert got_reason == reason
    assert fields == ([] if field is None else [field])
    assert needle in status["message"]


def test_the_same_field_under_both_names_is_refused(env: Env) -> None:
    status = env.refused("POST", "/v1/customers",
                         body='{"name": "a", "email": "e", "createTime": null, "create_time": null}')
    assert reason_and_fields(status) == ("INVALID_FIELD_VALUE", ["customer.create_time"])
    assert "given twice" in status["message"]


def test_a_repeated_json_key_is_legal_json_and_the_last_one_wins(env: Env) -> None:
    assert env.build("POST", "/v1/samples/s1:echo", body='{"count": 1, "count": 2}').count == 2


def test_deeply_nested_json_is_a_400_not_a_crash(env: Env) -> None:
    body = '{"inner": ' + '{"child": ' * 100 + "{}" + "}" * 100 + "}"
    status = env.refused("POST", "/v1/samples/s1:echo", body=body)
    assert "nested more than" in status["message"]
    status = env.refused("POST", "/v1/samples/s1:echo", body="[" * 100_000 + "]" * 100_000)
    assert reason_and_fields(status)[0] == "MALFORMED_JSON"


def test_path_value_equal_to_the_body_is_fine(env: Env) -> None:
    assert env.build("POST", "/v1/samples/s1:echo", body='{"id": "s1", "count": 1}').count == 1


def test_body_field_binding_fills_only_that_field(env: Env) -> None:
    msg = env.build("PUT", "/v1/samples/s1", body='{"note": "n", "level": 2}')
    assert (msg.id, msg.inner.note, msg.inner.level) == ("s1", "n", 2)
    status = env.refused("PUT", "/v1/samples/s1", body='{"count": 1}')
    assert reason_and_fields(status) == ("UNKNOWN_FIELD", ["inner.count"])


def test_a_method_without_body_refuses_one(env: Env) -> None:
    status = env.refused("GET", "/v1/samples/s1", body='{"count": 1}')
    assert reason_and_fields(status)[0] == "BODY_NOT_ALLOWED"
    assert env.build("GET", "/v1/samples/s1", body=" \n").id == "s1"  # whitespace is no body


def test_an_empty_body_leaves_the_fields_default(env: Env) -> None:
    msg = env.build("POST", "/v1/customers/c-9:rotateApiKey")
    assert msg.customer_id == "c-9"


def test_missing_required_fields_are_named(env: Env) -> None:
    status = env.refused("POST", "/v1/customers", body='{"name": "x"}')
    reason, fields = reason_and_fields(status)
    assert reason == "REQUIRED_FIELD_MISSING" and fields == ["customer.email"]
    status = env.refused("POST", "/v1/customers", body="")
    assert reason_and_fields(status)[1] == ["customer"]
    # An update carries only what changes: nested REQUIRED fields are not demanded.
    msg = env.build("PATCH", "/v1/customers/c-1", "updateMask=active", body='{"active": true}')
    assert msg.customer.active and list(msg.update_mask.paths) == ["active"]


# --- rendering -----------------------------------------------------------------------------------

def test_render_is_proto3_json_with_defaults(env: Env) -> None:
    found = env.table.match("GET", "/v1/samples/s1")
    msg: Message = env.build("GET", "/v1/samples/s1", "big=5&inner.note=n")
    out = json.loads(render(msg, found.route))
    assert out["big"] == "5" and out["flag"] is False and out["tags"] == [] and out["counts"] == {}
    assert out["inner"] == {"note": "n", "level": 0}
    assert out["color"] == "COLOR_UNSPECIFIED" and "ratio32" in out
    assert "when" not in out  # unset message fields have presence: absent, not null


def test_render_with_response_body_is_only_that_field(env: Env) -> None:
    found = env.table.match("GET", "/v1/samples/s1/inner")
    msg = env.build("GET", "/v1/samples/s1/inner", "inner.note=n")
    assert json.loads(render(msg, found.route)) == {"note": "n", "level": 0}
