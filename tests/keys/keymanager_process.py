"""A real reference key manager process (`innosystem keymanager`) for the keys tests."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from innosystem.embedded import PARENT_PID_ENV
from innosystem.keymanager.keystore import Policy


@dataclass
class KeyManagerProcess:
    folder: Path
    secret: str
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def policy_file(self) -> Path:
        return self.folder / "policy.json"

    @property
    def log(self) -> str:
        path = self.folder / "keymanager.log"
        return path.read_text() if path.exists() else ""

    def allow(self, *purposes: str) -> None:
        """Rewrite the policy file; the key manager re-reads it on its next call."""
        Policy.write(self.policy_file, list(purposes))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_keymanager(folder: Path, *keys: str, secret: str | None = None, timeout: float = 30.0,
                     extra_secrets: tuple[str, ...] = ()) -> KeyManagerProcess:
    folder.mkdir(parents=True, exist_ok=True)
    secret = secret or secrets.token_urlsafe(32)
    ready = folder / "ready.json"
    ready.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "INNOSYSTEM_KEYMANAGER_SECRET": ",".join((secret, *extra_secrets)),
           "INNOSYSTEM_LOG_FORMAT": "json", PARENT_PID_ENV: str(os.getpid())}
    args = [sys.executable, "-m", "innosystem.cli", "keymanager", "--key-file", str(folder / "keys.json"),
            "--port", "0", "--http-port", "0", "--ready-file", str(ready)]
    for key in keys or ("default",):
        args += ["--key", key]
    out = (folder / "keymanager.log").open("ab")
    # It dies with this process (armed from inside: no preexec_fn forking a process with gRPC threads).
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + timeout
    while not ready.exists() or not ready.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"keymanager did not start:\n{(folder / 'keymanager.log').read_text()}")
        time.sleep(0.05)
    ports = json.loads(ready.read_text())
    return KeyManagerProcess(folder, secret, proc, ports["grpc_port"], ports["http_port"])
