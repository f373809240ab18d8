"""The reference key manager's local state: a key file (the CMKs) and a policy file.

The key file is JSON, created on first start with mode 0600 and rewritten atomically:

    {"keys": {"<key id>": {"versions": {"1": "<base64 AES-256 key>"}, "min_version": 1,
                           "state": "ENABLED", "create_time": "<ISO 8601>"}}}

The policy file is JSON too, re-read whenever it changes on disk, so an operator (or a test)
edits it at runtime without a restart:

    {"allowed_purposes": ["CUSTOMER_INITIATED_JOB", "PLATFORM_SYSTEM_OPERATION"]}
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from innosystem.keymanager.aead import Keyring
from innosystem.keymanager.v1 import keymanager_pb2 as km

DEFAULT_PURPOSES = ("CUSTOMER_INITIATED_JOB", "PLATFORM_SYSTEM_OPERATION")


def purpose_name(code: int) -> str:
    return km.PurposeCode.Name(code).removeprefix("PURPOSE_CODE_")  # type: ignore[arg-type]


def purpose_code(name: str) -> int:
    return int(km.PurposeCode.Value("PURPOSE_CODE_" + name.upper().removeprefix("PURPOSE_CODE_")))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class StoredKey:
    ring: Keyring
    state: str
    create_time: datetime


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.keys: dict[str, StoredKey] = {}
        if path.exists():
            raw = json.loads(path.read_text())
            for key_id, k in raw.get("keys", {}).items():
                ring = Keyring({int(v): base64.b64decode(b) for v, b in k["versions"].items()},
                               int(k.get("min_version", 1)))
                self.keys[key_id] = StoredKey(ring, k.get("state", "ENABLED"),
                                              datetime.fromisoformat(k["create_time"]))

    def ensure(self, key_ids: list[str]) -> None:
        """Create the named keys that do not exist yet (first start)."""
        with self._lock:
            created = False
            for key_id in key_ids:
                if key_id not in self.keys:
                    ring = Keyring()
                    ring.add()
                    self.keys[key_id] = StoredKey(ring, "ENABLED", datetime.now(UTC))
                    created = True
            if created or not self.path.exists():
                self._save()

    def rotate(self, key_id: str) -> int:
        with self._lock:
            version = self.keys[key_id].ring.add()
            self._save()
            return version

    def set_state(self, key_id: str, state: str) -> None:
        with self._lock:
            self.keys[key_id].state = state
            self._save()

    def _save(self) -> None:
        doc: dict[str, Any] = {"keys": {
            key_id: {"versions": {str(v): base64.b64encode(b).decode() for v, b in k.ring.versions.items()},
                     "min_version": k.ring.min_version, "state": k.state,
                     "create_time": k.create_time.isoformat()}
            for key_id, k in self.keys.items()}}
        _write_private(self.path, json.dumps(doc, indent=2))


class Policy:
    """Allowed purpose codes, from a file re-read when its modification time changes."""

    def __init__(self, path: Path | None, default: tuple[str, ...] = DEFAULT_PURPOSES) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._allowed = {purpose_code(p) for p in default}
        if path is not None and not path.exists():
            self.write(path, default)

    @staticmethod
    def write(path: Path, purposes: tuple[str, ...] | list[str]) -> None:
        _write_private(path, json.dumps({"allowed_purposes": [purpose_name(purpose_code(p)) for p in purposes]},
                                        indent=2))

    def allowed(self) -> set[int]:
        if self.path is not None:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a rewrite replaces the inode
            if stamp != self._stamp:
                raw = json.loads(self.path.read_text())
                self._allowed = {purpose_code(p) for p in raw.get("allowed_purposes", [])}
                self._stamp = stamp
        return set(self._allowed)
