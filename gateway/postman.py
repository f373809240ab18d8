"""A Postman collection (v2.1) and environment from the OpenAPI document (`make protos` writes them to
docs/postman/). One folder per API tag and one request per operation. Path variables, the gateway URL
and the API key are environment variables (`{{customer_id}}`, `{{baseUrl}}`, `{{apiKey}}`). Each
request body is an example built from its schema.

The output is deterministic (ids are UUIDv5 of names, keys sorted), because it is committed and
`scripts/protos.py --check` compares it.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

Schema = dict[str, Any]
COLLECTION_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
NAMESPACE = uuid.UUID("8a1c4d52-4b0e-4f51-9d7e-2f7f3c6a9b10")
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
_VARIABLE = re.compile(r"\{([^}]+)\}")
_MAX_DEPTH = 3


def _id(*names: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(names)))


class _Examples:
    def __init__(self, document: dict[str, Any]) -> None:
        self.schemas: dict[str, Schema] = document.get("components", {}).get("schemas", {})

    def of(self, schema: Schema, depth: int = 0) -> Any:
        """A value that fits `schema`: its writable properties with placeholder values."""
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return self.of(self.schemas.get(name, {}), depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if "enum" in schema:
            values = [v for v in schema["enum"] if not str(v).endswith("_UNSPECIFIED")]
            return values[0] if values else schema["enum"][0]
        if kind == "object":
            if depth >= _MAX_DEPTH:
                return {}
            return {name: self.of(prop, depth + 1) for name, prop in schema.get("properties", {}).items()
                    if not prop.get("readOnly")}
        if kind == "array":
            return []
        if kind in ("integer", "number"):
            return schema.get("minimum", 0)
        if kind == "boolean":
            return False
        if kind == "string":
            return {"date-time": "2026-01-01T00:00:00Z", "int64": "0", "uint64": "0",
                    "uuid": "00000000-0000-4000-8000-000000000000"}.get(schema.get("format", ""), "")
        return None


def render_postman(openapi_json: str) -> tuple[str, str]:
    """(collection JSON, environment JSON) for the document."""
    document = json.loads(openapi_json)
    examples = _Examples(document)
    folders: dict[str, list[dict[str, Any]]] = {}
    variables: set[str] = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            names = _VARIABLE.findall(path)
            variables.update(names)
            raw_path = _VARIABLE.sub(lambda m: "{{" + m.group(1) + "}}", path)
            query = [{"key": p["name"], "value": "", "disabled": not p.get("required", False),
                      **({"description": p["description"]} if p.get("description") else {})}
                     for p in operation.get("parameters", []) if p["in"] == "query"]
            url: dict[str, Any] = {"raw": "{{baseUrl}}" + raw_path, "host": ["{{baseUrl}}"],
                                   "path": raw_path.strip("/").split("/")}
            if query:
                url["query"] = query
            request: dict[str, Any] = {"method": method.upper(), "url": url, "header": []}
            if description := operation.get("description"):
                request["description"] = description
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                request["header"].append({"key": "Content-Type", "value": "application/json"})
                request["body"] = {"mode": "raw", "raw": json.dumps(examples.of(body["schema"]), indent=2),
                                   "options": {"raw": {"language": "json"}}}
            tag = (operation.get("tags") or ["other"])[0]
            folders.setdefault(tag, []).append({"id": _id(operation["operationId"]),
                                                "name": operation["operationId"], "request": request})
    collection = {
        "info": {"_postman_id": _id("collection"), "name": document["info"]["title"],
                 "description": document["info"].get("description", ""), "schema": COLLECTION_SCHEMA},
        "auth": {"type": "bearer", "bearer": [{"key": "token", "value": "{{apiKey}}", "type": "string"}]},
        "variable": [{"key": "baseUrl", "value": DEFAULT_BASE_URL}],
        "item": [{"id": _id("folder", tag), "name": tag.rsplit(".", 1)[-1], "description": tag, "item": items}
                 for tag, items in sorted(folders.items())],
    }
    environment = {
        "id": _id("environment"), "name": "InnoSystem (make run)", "_postman_variable_scope": "environment",
        "values": [{"key": "baseUrl", "value": DEFAULT_BASE_URL, "type": "default", "enabled": True},
                   {"key": "apiKey", "value": "", "type": "secret", "enabled": True},
                   *({"key": name, "value": "", "type": "default", "enabled": True} for name in sorted(variables))],
    }
    return (json.dumps(collection, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            json.dumps(environment, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
