"""Start and stop the platform's processes: `innosystem up`, the end-to-end tests and `make bench`.

Each service runs as a process of its own (`innosystem serve NAME`), as in compose and Kubernetes,
except those named in `together`, which share one, with a replica of those named in `beside`
(`innosystem serve billing jobs runners`: `innosystem up` and `make bench` run the runner streams
beside the queue, so leases and results skip the Relay stream, and a billing replica beside
them, so light load's holds skip a gRPC exchange; docs/performance.md says why). They run in
their own process group, so a terminal's Ctrl-C reaches only the supervisor, which then stops
them in order: gateway, services (each drains), Valkey, PostgreSQL.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from innosystem.embedded import PARENT_PID_ENV, EmbeddedPostgres, EmbeddedValkey, free_port
from innosystem.kit.config import DEFAULT_PORTS, SERVICES, env
from innosystem.kit.migrate import has_migrations, upgrade

DEFAULT_METRICS_PORT = 9100  # gateway; the services follow in SERVICES order
# The services `innosystem up` and `make bench` run in one process (kit.inprocess).
TOGETHER = ("jobs", "runners")
# Services that process also runs a replica of, answering the jobs service's small hold batches
# there (kit.inprocess); their own process still serves their port: every other caller, and the
# large batches, which then run on another core (services/jobs/billing.py).
BESIDE = ("billing",)
# What the jobs service calls, started (and answering) before it.
CALLED_BY_JOBS = ("tenancy", "billing", "keys")
DEFAULT_KEYMANAGER_PORT = 50060


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Stack:
    database_url: str
    redis_url: str
    http_port: int
    internal_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    api_key_pepper: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin_api_key: str = field(default_factory=lambda: "isk_admin_" + secrets.token_urlsafe(24))
    extra_env: dict[str, str] = field(default_factory=dict)
    # Fixed default ports when free (so `up` is predictable), otherwise any free port.
    fixed_ports: bool = True
    log_dir: Path | None = None
    # Services that share one process, named by joining theirs with "+" (e.g. "jobs+runners").
    together: tuple[str, ...] = ()
    # Services of which that process runs a replica too (in its name: "billing+jobs+runners"),
    # listening on a port of its own that nobody is told; their own process keeps theirs.
    beside: tuple[str, ...] = ()
    ports: dict[str, int] = field(default_factory=dict)
    # Each process serves Prometheus text at :<port>/metrics.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SERVICES:
            self.ports[name] = self.pick_port(DEFAULT_PORTS[name])
        for offset, name in enumerate(("gateway", *SERVICES)):
            self.metrics_ports[name] = self.pick_port(DEFAULT_METRICS_PORT + offset)

    def pick_port(self, default: int) -> int:
        return default if self.fixed_ports and _port_free(default) else free_port()

    def process_name(self, service: str) -> str:
        """The name of the process that serves `service`'s port (a key of `procs`)."""
        if service not in self.together:
            return service
        return "+".join(n for n in SERVICES if n in self.together or n in self.beside)

    def _anchor(self, process: str) -> str:
        """The service whose metrics port and listening host a process takes: its first one
        that it serves (not a replica beside them)."""
        names = process.split("+")
        return next((n for n in names if n in self.together), names[0])

    def process(self, service: str) -> subprocess.Popen[bytes]:
        return self.procs[self.process_name(service)]

    def metrics_port(self, service: str) -> int:
        """Where the process running `service` serves /metrics (services together: the first one's)."""
        return self.metrics_ports[self._anchor(self.process_name(service))]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        out = dict(os.environ)
        out.update({
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "INNOSYSTEM_INTERNAL_SECRET": self.internal_secret,
            "INNOSYSTEM_API_KEY_PEPPER": self.api_key_pepper,
            "INNOSYSTEM_ADMIN_API_KEY": self.admin_api_key,
            "INNOSYSTEM_HTTP_PORT": str(self.http_port),
            **{f"INNOSYSTEM_{n.upper()}_ADDR": self.address(n) for n in SERVICES},
        })
        out.update(self.extra_env)
        return out

    def migrate(self) -> None:
        for name in SERVICES:
            if has_migrations(name):
                upgrade(self.database_url, name)

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Another `innosystem` process beside the services (a runner named `runner-…`, the key manager), stopped
        with them: runners first, so they drain while the services still answer."""
        self._spawn(name, args, {**self.env(), **(extra_env or {})})
        return self.procs[name]

    def _spawn(self, name: str, args: list[str], environ: dict[str, str]) -> None:
        if (anchor := self._anchor(name)) in self.metrics_ports:  # services together: the first one's port
            environ = {**environ, "INNOSYSTEM_METRICS_PORT": str(self.metrics_ports[anchor])}
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "innosystem.cli", *args], env={**environ, PARENT_PID_ENV: str(os.getpid())},
            stdout=out, stderr=subprocess.STDOUT if out else None, process_group=0,
        )

    def start(self, services: tuple[str, ...] = SERVICES, gateway: bool = True) -> None:
        """Spawns the services (and the gateway); when the jobs service starts with those it calls,
        they go first and it waits until they answer, so that its first calls do not find them
        still starting and leave its channels in gRPC's reconnect backoff, where a call fails at
        once (a submit answered UNAVAILABLE moments after `wait_ready`)."""
        environ = self.env()

        def spawn(wave: list[str]) -> None:
            for process in dict.fromkeys(self.process_name(n) for n in wave):
                names = process.split("+")  # with those beside it
                # each service listens on its own port, a replica beside them on any free one
                replicas = {f"INNOSYSTEM_{n.upper()}_LISTEN": "127.0.0.1:0" for n in names
                            if self.process_name(n) != process}
                self._spawn(process, ["serve", *names], {
                    **environ, **replicas, "INNOSYSTEM_LISTEN": f"127.0.0.1:{self.ports[self._anchor(process)]}"})

        first = [n for n in services if n in CALLED_BY_JOBS] if "jobs" in services else []
        if first:
            spawn(first)
            self.wait_ready(120)
        spawn([n for n in services if n not in first])
        if gateway:
            self._spawn("gateway", ["serve", "gateway"], environ)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every service and the gateway answer their health checks."""
        deadline = time.monotonic() + timeout
        for process in self.procs:
            for name in process.split("+"):
                if name in self.metrics_ports:
                    self._wait_one(process, name, deadline)

    def _wait_one(self, process: str, name: str, deadline: float) -> None:
        while True:
            proc = self.procs[process]
            if proc.poll() is not None:
                raise RuntimeError(f"{process} exited with code {proc.returncode} while starting")
            if self._ready(name):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} was not ready in time")
            time.sleep(0.1)

    def _ready(self, name: str) -> bool:
        if name == "gateway":
            # HTTPException: something else (e.g. a gRPC server) answers on the port.
            with contextlib.suppress(OSError, http.client.HTTPException):
                with urllib.request.urlopen(f"{self.gateway_url}/healthz", timeout=1) as resp:
                    return bool(resp.status == 200)
            return False
        with grpc.insecure_channel(self.address(name)) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop_process(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stops a process by its name or by a service it runs (with the services beside it)."""
        proc = self.procs.pop(self.process_name(name), None)
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop(self) -> None:
        """Runners (they drain while the services still answer), the gateway, the services (in
        parallel), then anything they call (the key manager)."""
        for name in [n for n in self.procs if n.startswith("runner-")]:
            self.stop_process(name)
        if "gateway" in self.procs:
            self.stop_process("gateway")
        services = [n for n in self.procs if set(n.split("+")) <= set(SERVICES)]
        for name in services:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        for name in [*services, *self.procs]:
            self.stop_process(name)


def _persistent_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """A secret that must survive restarts (the API-key pepper, the keys service's master key),
    kept owner-readable only."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def _embedded_settings(data_dir: Path, demo: bool) -> dict[str, str]:
    """What the embedded default keeps across restarts, and the demo's settings."""
    settings = {}
    if not env("INNOSYSTEM_KEYS_MASTER_KEY"):  # seals key-manager and webhook secrets: must not change
        settings["INNOSYSTEM_KEYS_MASTER_KEY"] = _persistent_secret(
            data_dir / "secrets" / "keys-master-key", lambda: base64.b64encode(secrets.token_bytes(32)).decode())
    if not env("INNOSYSTEM_LOG_ONE_TIME_LINKS"):
        # No SMTP on a laptop: invitation and reset links go to tenancy's log (development only).
        settings["INNOSYSTEM_LOG_ONE_TIME_LINKS"] = "1"
    if demo and not env("INNOSYSTEM_KEYS_KEY_CACHE_SECONDS"):
        # A policy change at the key manager shows on the very next access (production caches 30 s).
        settings["INNOSYSTEM_KEYS_KEY_CACHE_SECONDS"] = "0"
    return settings


def allow_keymanager(stack: Stack, port: int) -> None:
    """Let the keys service reach the demo's reference key manager: a plain grpc:// endpoint on
    loopback, which the egress guard refuses unless the operator allow-lists it. Exactly its port
    (both spellings a customer may type), added to whatever the operator already allows."""
    from innosystem.kit.egress import ALLOW_ENV

    listed = [stack.extra_env.get(ALLOW_ENV) or env(ALLOW_ENV) or "", f"127.0.0.1:{port}", f"localhost:{port}"]
    stack.extra_env[ALLOW_ENV] = ",".join(x for x in listed if x)


def _start_demo(stack: Stack, data_dir: Path, km_port: int) -> str:
    """The reference key manager (on `km_port`, allow-listed before the services started), the demo
    tenants and a shared runner with the built-ins."""
    from innosystem.demo import DEMO_USERS, seed, seed_users
    from innosystem.rest import Rest

    print("• demo: key manager, customer, runner …", flush=True)
    keys_dir = data_dir / "keymanager"
    ready = keys_dir / "ready.json"
    ready.unlink(missing_ok=True)
    stack.spawn("keymanager", ["keymanager", "--key-file", str(keys_dir / "keys.json"), "--port", str(km_port),
                               "--ready-file", str(ready)])
    admin = Rest(stack.gateway_url, stack.admin_api_key)
    demo = seed(admin)
    password = env("INNOSYSTEM_DEMO_PASSWORD") or _persistent_secret(
        data_dir / "secrets" / "demo-password", lambda: "demo-" + secrets.token_urlsafe(12))
    seed_users(admin, demo.customer_id, password)
    stack.spawn("runner-demo", ["runner", "--target", stack.address("runners"), "--slots", "8"],
                {"INNOSYSTEM_RUNNER_TOKEN": demo.runner_token})
    deadline = time.monotonic() + 30
    while not ready.exists():  # the key manager writes it once it listens
        if stack.procs["keymanager"].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the reference key manager did not start; see its output above")
        time.sleep(0.1)
    users = ", ".join(f"{email} ({role.removeprefix('ROLE_').lower()})" for email, _, role in DEMO_USERS)
    return (f"  demo customer  {demo.customer_id}  key {demo.api_key}  (project {demo.project_id})\n"
            f"  demo users     {users}\n"
            f"                 password {password}  (sign in: docs/identity.md)\n"
            f"  demo runner    {demo.runner_id}  processors echo, sleep, sha256, fail\n"
            f"  key manager    127.0.0.1:{km_port}  (shared secret: {keys_dir / 'secret'}; docs/keys.md)\n"
            f"  submit a job   {demo.curl(stack.gateway_url)}\n"
            f"  then           curl -s -H 'Authorization: Bearer {demo.api_key}' "
            f"{stack.gateway_url}/v1/customers/{demo.customer_id}/wallet\n")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    # Once: a second Ctrl-C must not interrupt the orderly shutdown it asked for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop


def up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    http_port = args.http_port or int(env("INNOSYSTEM_HTTP_PORT", "8080") or 8080)
    database_url = args.database_url or env("DATABASE_URL")
    redis_url = args.redis_url or env("REDIS_URL")
    started = time.monotonic()
    pg = valkey = None
    stack: Stack | None = None
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        if not database_url:
            print(f"• PostgreSQL (embedded) in {data_dir / 'postgres'} …", flush=True)
            pg = EmbeddedPostgres(data_dir / "postgres")
            database_url = pg.start()
        if not redis_url:
            print(f"• Valkey (embedded) in {data_dir / 'valkey'} …", flush=True)
            valkey = EmbeddedValkey(data_dir / "valkey")
            redis_url = valkey.start()
        stack = Stack(
            database_url=database_url, redis_url=redis_url, http_port=http_port,
            internal_secret=env("INNOSYSTEM_INTERNAL_SECRET") or secrets.token_urlsafe(32),
            api_key_pepper=env("INNOSYSTEM_API_KEY_PEPPER") or _persistent_secret(data_dir / "secrets" / "pepper"),
            admin_api_key=env("INNOSYSTEM_ADMIN_API_KEY") or "isk_admin_" + secrets.token_urlsafe(24),
            extra_env=_embedded_settings(data_dir, args.demo), together=TOGETHER, beside=BESIDE,
        )
        stack.extra_env.setdefault("INNOSYSTEM_PUBLIC_URL", env("INNOSYSTEM_PUBLIC_URL") or stack.gateway_url)
        km_port = stack.pick_port(DEFAULT_KEYMANAGER_PORT) if args.demo else 0
        if km_port:
            allow_keymanager(stack, km_port)  # the keys service reads it at start
        print("• migrations …", flush=True)
        stack.migrate()
        print("• services: " + ", ".join(f"{n} {stack.address(n)}" for n in SERVICES) + " …", flush=True)
        stack.start()
        stack.wait_ready()
        demo_lines = _start_demo(stack, data_dir, km_port) if args.demo else ""
        metrics = {stack.process_name(n): stack.metrics_port(n) for n in ("gateway", *SERVICES)}  # a port per process
        print(
            f"\nInnoSystem is up in {time.monotonic() - started:.1f}s\n"
            f"  gateway        {stack.gateway_url}   (OpenAPI: {stack.gateway_url}/openapi.json)\n"
            f"  console        {stack.gateway_url}/console/   (docs/console.md)\n"
            f"  admin API key  {stack.admin_api_key}\n"
            "  metrics        " + ", ".join(f"{process} :{port}" for process, port in metrics.items())
            + "  (/metrics)\n"
            f"  try            curl -s -H 'Authorization: Bearer {stack.admin_api_key}' {stack.gateway_url}/v1/me\n"
            f"{demo_lines}"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        pid, status = os.wait()  # blocks until a child dies or a signal arrives
        name = next((n for n, p in (stack.procs.items()) if p.pid == pid), str(pid))
        print(f"innosystem: {name} exited unexpectedly (status {status}); stopping", file=sys.stderr)
        return 1
    except _Stop:
        print("\nstopping …", flush=True)
        return 0
    finally:
        if stack is not None:
            stack.stop()
        if valkey is not None:
            valkey.stop()
        if pg is not None:
            pg.stop()
