"""A few lines over urllib to speak JSON to the gateway: for the demo seeding and the benchmark."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class RestError(Exception):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status, self.body = status, body


@dataclass(frozen=True)
class Rest:
    base: str
    api_key: str = ""
    timeout: float = 30.0

    def as_key(self, api_key: str) -> Rest:
        return Rest(self.base, api_key, self.timeout)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON body); HTTP errors are answers here, not exceptions."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        """The body of a 2xx answer; anything else raises RestError naming the call."""
        status, answer = self.call(method, path, body)
        if not 200 <= status < 300:
            raise RestError(method, path, status, answer)
        return answer
