"""`innosystem runner`: a runner process with built-in or your own processors.

    innosystem runner --target HOST:PORT --token isr_… --processor echo --processor sleep
    innosystem runner --processor resize=myapp.jobs:resize --processor myapp.jobs --tags gpu --slots 8

--processor takes a built-in name (echo, sleep, sha256, fail; `builtins` for all four),
NAME=module:function, module:function (registered under the function's name, or as its
decorator said), or a module whose `@processor` decorators register on import. Without any
--processor the runner serves the four built-ins. --external-api job types call the URL the job
type names, which a customer set: only https to public addresses, unless this runner's operator
allow-lists a host with --egress-allow-host (or $INNOSYSTEM_RUNNER_EGRESS_ALLOW_HOSTS).
While its jobs are short it holds up to --prefetch jobs beyond its --slots (default eight times
the slots; about 0.2 s of its typical work), each started the moment a slot frees. SIGTERM
drains: the jobs held for a slot go back to the queue, no new jobs, running ones finish within
--drain-grace seconds, then it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
from typing import Any

from innosystem.runner import builtin, external
from innosystem.runner.client import MAX_PREFETCH, Runner, RunnerRejected
from innosystem.runner.processors import Registry, default_registry

log = logging.getLogger("innosystem.runner")

TOKEN_ENV = "INNOSYSTEM_RUNNER_TOKEN"
PREFETCH_ENV = "INNOSYSTEM_RUNNER_PREFETCH"
# What a runner process reads from the environment (besides logging and OTEL_* settings).
ENV_VARS = (TOKEN_ENV, "INNOSYSTEM_RUNNERS_ADDR", PREFETCH_ENV, external.ALLOW_ENV)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None,
                        help="runners service host:port (default $INNOSYSTEM_RUNNERS_ADDR, else 127.0.0.1:50054)")
    parser.add_argument("--token", default=None, help=f"runner token from POST /v1/runners (default ${TOKEN_ENV})")
    parser.add_argument("--processor", action="append", default=[], metavar="SPEC",
                        help="built-in name, NAME=module:function, module:function or module (repeatable)")
    parser.add_argument("--external-api", action="append", default=[], metavar="JOB_TYPE",
                        help="serve this job type by calling its configured HTTP endpoint (repeatable)")
    parser.add_argument("--egress-allow-host", action="append", default=[], metavar="HOST[:PORT]",
                        help="let EXTERNAL_API calls reach this host over http or at an internal address "
                             f"(repeatable; adds to ${external.ALLOW_ENV})")
    parser.add_argument("--tags", default="", help="comma-separated capability tags, e.g. gpu,eu")
    parser.add_argument("--slots", type=int, default=4, help="most jobs at once (default 4)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help=f"most jobs held beyond the slots while jobs are short, about 0.2 s of their work "
                             f"(default ${PREFETCH_ENV}, else eight times the slots; 0: none)")
    parser.add_argument("--hostname", default="", help="reported hostname (default: this machine's)")
    parser.add_argument("--drain-grace", type=float, default=30.0,
                        help="seconds running jobs may take to finish after SIGTERM (default 30)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")


def load_processors(specs: list[str], external_apis: list[str] = ()) -> Registry:  # type: ignore[assignment]
    registry = Registry()
    if not specs and not external_apis:
        specs = ["builtins"]
    modules_loaded = False
    for spec in specs:
        if spec == "builtins":
            registry.merge(builtin.registry())
        elif spec in builtin.NAMES:
            registry.merge(builtin.registry((spec,)))
        elif ":" in spec:
            name, _, target = spec.rpartition("=") if "=" in spec else ("", "", spec)
            module_name, _, attr = target.partition(":")
            fn: Any = getattr(importlib.import_module(module_name), attr, None)
            if not callable(fn):
                raise SystemExit(f"runner: --processor {spec}: {module_name} has no function {attr!r}")
            registered = next((p for p in default_registry if p.fn is fn), None)
            if registered is not None and not name:
                registry.add(registered)
            elif registered is not None:
                registry.add(type(registered)(name, registered.kind, fn, registered.max_batch_size))
            else:
                registry.processor(name or fn.__name__)(fn)
        else:
            importlib.import_module(spec)  # its decorators fill the default registry
            modules_loaded = True
    if modules_loaded:
        for processor in default_registry:
            if registry.get(processor.name) is None:
                registry.add(processor)
    for name in external_apis:
        registry.external_api(name)
    return registry


def run(args: argparse.Namespace) -> int:
    from innosystem.kit import collector
    from innosystem.kit.config import env

    token = args.token or env(TOKEN_ENV)
    if not token:
        raise SystemExit(f"runner: a token is required (--token or ${TOKEN_ENV}); POST /v1/runners returns one")
    target = args.target or env("INNOSYSTEM_RUNNERS_ADDR") or "127.0.0.1:50054"
    try:
        # getattr: callers that build the Namespace themselves (tests, embedders) may leave it out.
        egress_policy = external.policy_from_env(getattr(args, "egress_allow_host", []))
    except ValueError as exc:
        raise SystemExit(f"runner: {exc}") from None
    prefetch = getattr(args, "prefetch", None)
    if prefetch is None and env(PREFETCH_ENV):
        try:
            prefetch = int(env(PREFETCH_ENV) or "")
        except ValueError:
            raise SystemExit(f"runner: ${PREFETCH_ENV} must be a whole number") from None
    if prefetch is not None and not 0 <= prefetch <= MAX_PREFETCH:
        raise SystemExit(f"runner: --prefetch must be 0 to {MAX_PREFETCH}")
    registry = load_processors(args.processor, args.external_api)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]

    async def main() -> int:
        import grpc

        runner = Runner(target, token, registry, max_concurrent_jobs=args.slots, prefetch=prefetch, tags=tags,
                        hostname=args.hostname, drain_grace_seconds=args.drain_grace,
                        credentials=grpc.ssl_channel_credentials() if args.tls else None, egress=egress_policy)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, runner.drain)
        loop.add_signal_handler(signal.SIGINT, runner.stop)
        log.info("runner for %s (%d slots, %d held beyond them while jobs are short, tags %s) → %s",
                 ", ".join(registry.names()), args.slots, runner.prefetch, ",".join(tags) or "none", target)
        collector.settle()
        try:
            await runner.run()
        except RunnerRejected as exc:
            log.error("runner refused: %s", exc)
            return 3
        return 0

    return asyncio.run(main())
