"""One place that wires the jobs use cases together (the process and the tests share it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import redis.asyncio as aioredis

from innosystem.kit.db import Database
from innosystem.kit.freshness import ChangeTokens
from services.jobs.api import UseCases
from services.jobs.batches import Batches
from services.jobs.billing import Billing
from services.jobs.config import JobsConfig
from services.jobs.control import Control
from services.jobs.deliveries import Deliveries
from services.jobs.encryption import Encryptor
from services.jobs.leases import Leases
from services.jobs.live import Live
from services.jobs.loops import Loops
from services.jobs.markups import Markups
from services.jobs.queries import Queries
from services.jobs.queue import JobQueue
from services.jobs.runtime import Deps
from services.jobs.service import JobsService
from services.jobs.signals import Signals
from services.jobs.submission import Submission
from services.jobs.tenants import Projects
from services.jobs.webhooks import Webhooks


@dataclass
class App:
    deps: Deps
    types: JobsService
    cases: UseCases
    loops: Loops
    signals: Signals
    deliveries: Deliveries


def build(config: JobsConfig, db: Database, redis: aioredis.Redis, tenancy: grpc.aio.Channel, billing: Billing,
          clock: Callable[[], float], prefix: str = "jobs:", encryptor: Encryptor | None = None) -> App:
    tokens = ChangeTokens(redis)
    projects = Projects(tenancy, config.project_cache_seconds, tokens=tokens)
    types = JobsService(db, projects, config.max_job_types_per_customer, tokens=tokens,
                        now=lambda: datetime.fromtimestamp(clock(), UTC))
    signals = Signals(redis, prefix)
    deps = Deps(db=db, queue=JobQueue(redis, prefix), billing=billing, projects=projects, signals=signals,
                config=config, clock=clock, encryptor=encryptor, tokens=tokens)
    queries = Queries(deps, types._visible_project)
    leases = Leases(deps)
    webhooks = Webhooks(db, config, types._visible_project)
    markups = Markups(db, projects.reseller_of, tokens, now=lambda: datetime.fromtimestamp(clock(), UTC))
    control = Control(deps, queries)
    cases = UseCases(submission=Submission(deps, types._visible_project), queries=queries,
                     control=control, leases=leases, webhooks=webhooks, markups=markups,
                     batches=Batches(deps, types._visible_project),
                     live=Live(deps, queries, control.watchers, types._visible_project))
    return App(deps, types, cases, Loops(deps, leases), signals, Deliveries(db, config, webhooks.sealer, billing))
