"""`innosystem` command line: the composition root that knows every process kind.

    innosystem up                      the whole platform on embedded PostgreSQL and Valkey
    innosystem serve SERVICE...        one or more services in this process (tenancy billing jobs runners keys)
    innosystem serve gateway           the REST gateway
    innosystem migrate [SERVICE...]    apply database migrations (all services by default)
    innosystem keymanager              the reference customer key manager (BYOK; docs/keys.md)
    innosystem runner --token isr_…    a runner process (built-in or your own processors)
    innosystem jobs|wallet|customers|projects|job-types …   the platform's API (docs/client.md)
    innosystem tester --admin-key …    exercise every public endpoint of a running platform
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from innosystem.embedded import PARENT_PID_ENV, die_with
from innosystem.kit import logs, telemetry
from innosystem.kit.config import SERVICES, CommonConfig, ConfigError, env, env_int, env_required

log = logging.getLogger("innosystem")
# The commands that run a process of the platform. Each parses only its own arguments: the other
# commands' modules (the client's HTTP libraries, the key manager's, the runner SDK's) would cost
# every runner and service process a tenth of a second or more of start-up.
PROCESSES = ("up", "serve", "migrate", "runner", "keymanager")


def _serve(names: list[str]) -> int:
    if "gateway" in names:
        if len(names) > 1:
            raise SystemExit("serve: run the gateway in a process of its own")
        logs.setup("gateway", env("INNOSYSTEM_LOG_LEVEL", "INFO") or "INFO", env("INNOSYSTEM_LOG_FORMAT", "") or "")
        telemetry.setup("gateway", metrics_port=env_int("INNOSYSTEM_METRICS_PORT", 0))
        gateway_main = importlib.import_module("gateway.main")
        asyncio.run(gateway_main.serve())
        return 0
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise SystemExit(f"serve: unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}, gateway")
    label = "+".join(names)
    config = CommonConfig.from_env(names[0])
    logs.setup(label, config.log_level, config.log_format)
    telemetry.setup(label, metrics_port=config.metrics_port)
    from innosystem.kit import server

    async def main() -> None:
        services = [await importlib.import_module(f"services.{n}.main").create() for n in names]
        listen = None
        if len(names) > 1:  # each service on the port of its own address, on INNOSYSTEM_LISTEN's host,
            # unless it says otherwise (`listen_beside`)
            host = config.listen.rsplit(":", 1)[0] or "0.0.0.0"
            listen = {n: CommonConfig.from_env(n).listen_beside
                      or f"{host}:" + config.addresses.of(n).rsplit(":", 1)[-1] for n in names}
        await server.run(config, services, listen)

    asyncio.run(main())
    return 0


def _migrate(names: list[str]) -> int:
    from innosystem.kit.migrate import has_migrations, upgrade

    logs.setup("migrate", env("INNOSYSTEM_LOG_LEVEL", "INFO") or "INFO", env("INNOSYSTEM_LOG_FORMAT", "") or "")
    url = env_required("DATABASE_URL")
    for name in names or list(SERVICES):
        if name not in SERVICES:
            raise SystemExit(f"migrate: unknown service {name!r}")
        if has_migrations(name):
            upgrade(env(f"INNOSYSTEM_{name.upper()}_DATABASE_URL") or url, name)
            log.info("migrated %s", name)
    return 0


def main(argv: list[str] | None = None) -> int:
    named = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    process = named if named in PROCESSES else None  # None: help, or a client command

    def parses(command: str) -> bool:
        return process in (None, command)

    parser = argparse.ArgumentParser(prog="innosystem", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole platform on embedded PostgreSQL and Valkey")
    up.add_argument("--data-dir", default=".data", help="where embedded data lives (default: .data)")
    up.add_argument("--http-port", type=int, default=None, help="gateway port (default 8080)")
    up.add_argument("--database-url", default=None, help="use this PostgreSQL instead of the embedded one")
    up.add_argument("--redis-url", default=None, help="use this Redis/Valkey instead of the embedded one")
    up.add_argument("--demo", action=argparse.BooleanOptionalAction, default=False,
                    help="seed a demo customer (funded wallet, project, job types) and run a shared runner "
                         "with the built-in processors, the reference key manager too (never in production)")

    serve = sub.add_parser("serve", help="run services (or the gateway) in this process")
    serve.add_argument("names", nargs="+", metavar="SERVICE")

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("names", nargs="*", metavar="SERVICE")

    runner = sub.add_parser("runner", help="run a runner process (see docs/runners.md)")
    if parses("runner"):
        from innosystem.runner import cli as runner_cli

        runner_cli.add_arguments(runner)

    keymanager = sub.add_parser("keymanager", help="run the reference key manager (BYOK)")
    if parses("keymanager"):
        from innosystem.keymanager.command import add_arguments as keymanager_arguments

        keymanager_arguments(keymanager)

    if process is None:
        from innosystem.client import cli as client_cli

        client_cli.add_commands(sub)

    args = parser.parse_args(argv)
    if client_main := getattr(args, "client_main", None):  # a client command: no platform process here
        return int(client_main(args))
    if parent := env(PARENT_PID_ENV):
        die_with(int(parent))
    try:
        if args.command == "up":
            from innosystem.stack import up as run_up

            return run_up(args)
        if args.command == "serve":
            return _serve(args.names)
        if args.command == "keymanager":
            from innosystem.keymanager.command import run as run_keymanager

            logs.setup("keymanager", env("INNOSYSTEM_LOG_LEVEL", "INFO") or "INFO",
                       env("INNOSYSTEM_LOG_FORMAT", "") or "")
            return run_keymanager(args)
        if args.command == "runner":
            logs.setup("runner", env("INNOSYSTEM_LOG_LEVEL", "INFO") or "INFO", env("INNOSYSTEM_LOG_FORMAT", "") or "")
            telemetry.setup("runner")
            return runner_cli.run(args)
        return _migrate(args.names)
    except ConfigError as exc:
        print(f"innosystem: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
