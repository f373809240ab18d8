"""`innosystem keymanager`: run the reference key manager (see reference.py), or edit its policy.

    innosystem keymanager [--key-file F] [--policy-file F] [--port 50060] [--http-port P] [--key ID ...]
    innosystem keymanager --set-allowed-purposes CUSTOMER_INITIATED_JOB,PLATFORM_SYSTEM_OPERATION

The shared secret comes from INNOSYSTEM_KEYMANAGER_SECRET (or _FILE; two comma-separated while
rotating); if neither is set, one is generated on first start and kept beside the key file
(mode 0600), and its path is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
from pathlib import Path

from innosystem.keymanager import signing
from innosystem.keymanager.keystore import KeyStore, Policy
from innosystem.keymanager.reference import KeyManager, serve
from innosystem.kit.config import env

log = logging.getLogger("innosystem.keymanager")
DEFAULT_PORT = 50060


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", default=env("INNOSYSTEM_KEYMANAGER_KEY_FILE") or ".data/keymanager/keys.json",
                        help="the CMKs (created on first start, mode 0600)")
    parser.add_argument("--policy-file", default=env("INNOSYSTEM_KEYMANAGER_POLICY_FILE"),
                        help="allowed purpose codes, re-read when it changes (default: policy.json beside the keys)")
    parser.add_argument("--host", default=env("INNOSYSTEM_KEYMANAGER_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("INNOSYSTEM_KEYMANAGER_PORT") or DEFAULT_PORT),
                        help="gRPC port (0: any free port)")
    parser.add_argument("--http-port", type=int, default=_opt_int(env("INNOSYSTEM_KEYMANAGER_HTTP_PORT")),
                        help="also serve the HTTP JSON binding on this port (0: any free port)")
    parser.add_argument("--key", action="append", dest="keys", metavar="ID",
                        help="key ids to create if missing (default: default)")
    parser.add_argument("--ready-file", help="write {grpc_port, http_port} here once listening")
    parser.add_argument("--set-allowed-purposes", metavar="CODES",
                        help="rewrite the policy file with these comma-separated purpose codes and exit")


def _opt_int(raw: str | None) -> int | None:
    return int(raw) if raw not in (None, "") else None


def _secrets(key_file: Path) -> list[bytes]:
    raw = env("INNOSYSTEM_KEYMANAGER_SECRET")
    if not raw:
        path = key_file.parent / "secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        print(f"keymanager: shared secret in {path}", flush=True)
        raw = path.read_text().strip()
    values = [s.strip().encode() for s in raw.split(",") if s.strip()]
    short = [signing.fingerprint(v) for v in values if len(v) < signing.MIN_SECRET_BYTES]
    if not values or short:
        raise SystemExit(f"keymanager: each shared secret needs at least {signing.MIN_SECRET_BYTES} bytes")
    return values


def run(args: argparse.Namespace) -> int:
    key_file = Path(args.key_file)
    policy_file = Path(args.policy_file) if args.policy_file else key_file.parent / "policy.json"
    if args.set_allowed_purposes is not None:
        Policy.write(policy_file, [p for p in args.set_allowed_purposes.split(",") if p.strip()])
        print(f"keymanager: policy {policy_file} now allows {args.set_allowed_purposes or 'nothing'}")
        return 0
    store = KeyStore(key_file)
    store.ensure(args.keys or ["default"])
    manager = KeyManager(store, Policy(policy_file), _secrets(key_file))

    def ready(grpc_port: int, http_port: int | None) -> None:
        print(f"keymanager: grpc://{args.host}:{grpc_port}"
              + (f"  http://{args.host}:{http_port}" if http_port else "")
              + f"  keys: {', '.join(sorted(store.keys))}", flush=True)
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"grpc_port": grpc_port, "http_port": http_port}))

    asyncio.run(serve(manager, args.host, args.port, args.http_port, ready))
    return 0
