"""Server-Sent Events as the gateway writes them (gateway/sse.py): `data: <json>` per message,
`event: error` before a Status that ended the stream, `: keepalive` comments in between. Pure: the
clients feed it lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    name: str  # "message", or "error" for a Status that ended the stream
    data: Any


class Parser:
    def __init__(self) -> None:
        self._name, self._data = "message", []  # type: tuple[str, list[str]]

    def feed(self, line: str) -> Event | None:
        """The event that this line completes (a blank line ends one), else None."""
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._name = "message"
                return None
            event = Event(self._name, json.loads("\n".join(self._data)))
            self._name, self._data = "message", []
            return event
        if line.startswith(":"):
            return None  # a comment: the keepalive
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            self._name = value
        elif key == "data":
            self._data.append(value)
        return None
