"""The Postman collection and environment (gateway/postman.py, written by `make protos` to
docs/postman/): every operation of the OpenAPI document is one request, every variable a request
uses is defined, bodies are JSON that fits their schema's property names, and the committed files
are what the generator makes (the drift check in tests/unit/test_architecture.py covers regeneration)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gateway.postman import COLLECTION_SCHEMA, render_postman

ROOT = Path(__file__).resolve().parents[2]


def _requests(collection: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for folder in collection["item"] for item in folder["item"]]


def test_every_operation_is_one_request_with_its_variables_defined() -> None:
    document_text = (ROOT / "docs/openapi.json").read_text()
    document = json.loads(document_text)
    collection_text, environment_text = render_postman(document_text)
    assert (ROOT / "docs/postman/collection.json").read_text() == collection_text
    assert (ROOT / "docs/postman/environment.json").read_text() == environment_text
    collection, environment = json.loads(collection_text), json.loads(environment_text)
    assert collection["info"]["schema"] == COLLECTION_SCHEMA

    operations = {(op["operationId"], method.upper()) for item in document["paths"].values()
                  for method, op in item.items()}
    requests = _requests(collection)
    assert {(r["name"], r["request"]["method"]) for r in requests} == operations
    assert len(requests) == len(operations)

    defined = {v["key"] for v in environment["values"]}
    assert {"baseUrl", "apiKey"} <= defined
    for r in requests:
        used = set(re.findall(r"\{\{([^}]+)\}\}", json.dumps(r)))
        assert used <= defined, (r["name"], used - defined)


def test_bodies_are_json_examples_of_their_schema() -> None:
    document = json.loads((ROOT / "docs/openapi.json").read_text())
    collection = json.loads((ROOT / "docs/postman/collection.json").read_text())
    by_id = {op["operationId"]: op for item in document["paths"].values() for op in item.values()}
    create = next(r for r in _requests(collection) if r["name"] == "JobService_CreateWebhook")
    body = json.loads(create["request"]["body"]["raw"])
    assert set(body) == {"url", "events", "description"}  # the writable fields; no id or createTime
    for r in _requests(collection):
        if "body" in r["request"]:
            assert isinstance(json.loads(r["request"]["body"]["raw"]), dict | list), r["name"]
            assert "requestBody" in by_id[r["name"]]
