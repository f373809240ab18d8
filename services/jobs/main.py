"""Jobs service assembly: what `innosystem serve jobs` runs."""

from __future__ import annotations

import functools
import time

from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.kit import inprocess, statistics
from innosystem.kit.audit import AuditReporter
from innosystem.kit.clients import ApiKeyAuthenticator, channel
from innosystem.kit.db import Database
from innosystem.kit.redis import connect
from innosystem.kit.server import Service
from services.jobs import relay
from services.jobs.api import servicer
from services.jobs.billing import Billing
from services.jobs.config import JobsConfig
from services.jobs.encryption import Encryptor
from services.jobs.wiring import build

# Rewritten by every job's lease and ending (services/jobs/runsql.py).
HOT_TABLES = ("jobs.jobs", "jobs.job_attempts", "jobs.job_status_changes", "jobs.billing_outbox")


async def create() -> Service:
    config = JobsConfig.from_env()
    db = Database(config.common.database_url)
    redis = connect(config.common.redis_url, config.common.redis_max_connections)
    addresses, secret = config.common.addresses, config.common.internal_secret
    tenancy = channel(addresses.tenancy, service="jobs", secret=secret)
    billing = channel(addresses.billing, service="jobs", secret=secret)
    keys = channel(addresses.keys, service="jobs", secret=secret)
    app = build(config, db, redis, tenancy, Billing(billing), time.time, encryptor=Encryptor(keys))
    api = servicer(app.types, app.cases)
    # A runners service in this process takes leases and gives results without the Relay stream.
    answer = functools.partial(relay.answer, app.cases.leases)
    inprocess.offer(inprocess.JOBS_RELAY, answer)

    async def withdraw() -> None:
        inprocess.withdraw(inprocess.JOBS_RELAY, answer)

    async def close_redis() -> None:
        await redis.aclose()

    async def follow_statistics() -> None:  # the run path's prepared plans follow the tables' growth
        await statistics.follow_growth(db, HOT_TABLES)

    return Service(
        name="jobs",
        service_names=[jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name],
        register=lambda server: jobs_pb2_grpc.add_JobServiceServicer_to_server(api, server),
        authenticate=ApiKeyAuthenticator(tenancy),  # direct gRPC callers with an API key
        background=[app.signals.listen_forever, app.loops.promote_forever, app.loops.reap_forever,
                    app.loops.recover_forever, app.loops.retain_forever,
                    app.deliveries.fan_out_forever, app.deliveries.send_forever, follow_statistics],
        audit=AuditReporter(tenancy),  # job types → tenancy's audit log
        # billing for what ended before the stop goes out before the billing channel closes, and
        # the enqueues of submits answered before it land before Redis closes
        on_shutdown=[withdraw, app.deps.queue.landed, app.cases.leases.settle_pending, app.deliveries.close,
                     tenancy.close, billing.close, keys.close, close_redis, db.close],
    )
