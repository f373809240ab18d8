"""`kit.db.json_loads`, psycopg's loader of JSON columns, and `kit.protos.json_dumps`, a submit's
payload as stored: orjson, and the json module where orjson refuses a value."""

from __future__ import annotations

import json

import pytest
from psycopg.types.json import _JsonLoader

from innosystem.kit.db import json_loads
from innosystem.kit.protos import json_dumps

DOCS = [
    b'{"timeout_seconds":300,"price":{"id":"p","model":1,"unit":10,"cap":0},"required_tags":[],"external_api":null}',
    b'{"text": "\\u00e9t\\u00e9 \xc3\xa9t\xc3\xa9 \\ud83d\\ude42", "n": -0.5, "ok": true, "list": [1, 2.5, "x", null]}',
    b'[]', b'"just a string"', b"12", b"null",
    b'{"a": {"b": {"c": [[], {}]}}, "dup": 1, "dup": 2}',  # the last of a repeated key, as json
]


@pytest.mark.parametrize("doc", DOCS)
def test_it_reads_what_json_reads(doc: bytes) -> None:
    assert json_loads(doc) == json.loads(doc)


def test_a_number_beyond_a_double_is_read_by_json_as_before() -> None:
    assert json_loads(b'{"a": 1e400}') == {"a": float("inf")} == json.loads(b'{"a": 1e400}')


def test_an_integer_beyond_64_bits_is_the_double_it_was_sent_as() -> None:
    # JSON numbers reach the columns through protobuf's Struct as doubles: 1e20 is stored as
    # 100000000000000000000 and comes back as that double.
    assert json_loads(b"100000000000000000000") == 1e20


def test_every_connection_reads_json_columns_with_it() -> None:
    assert _JsonLoader._loads is json_loads


@pytest.mark.parametrize("doc", DOCS)
def test_json_dumps_writes_what_json_reads_back(doc: bytes) -> None:
    value = json.loads(doc)
    assert json.loads(json_dumps(value)) == value


def test_json_dumps_is_compact_utf8_so_a_payload_is_measured_as_stored() -> None:
    assert json_dumps({"a": [1, 2.5, None], "é": "été 🙂"}) == '{"a":[1,2.5,null],"é":"été 🙂"}'.encode()


def test_json_dumps_writes_an_integer_beyond_64_bits_with_the_json_module() -> None:
    # a payload's whole number 1e20 (a double) is the int 10**20 by then (`kit.protos.whole_number`)
    assert json_dumps({"n": 10**20, "m": -(10**30)}) == (b'{"n":100000000000000000000,'
                                                         b'"m":-1000000000000000000000000000000}')
