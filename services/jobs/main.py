"""Jobs service assembly: what `innosystem serve jobs` runs.

Job types only so far; the other JobService methods answer UNIMPLEMENTED (see api.py).
"""

from __future__ import annotations

from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.kit.clients import ApiKeyAuthenticator, channel
from innosystem.kit.db import Database
from innosystem.kit.server import Service
from services.jobs.api import servicer
from services.jobs.config import JobsConfig
from services.jobs.service import JobsService
from services.jobs.tenants import Projects


async def create() -> Service:
    config = JobsConfig.from_env()
    db = Database(config.common.database_url)
    tenancy = channel(config.common.addresses.tenancy, service="jobs", secret=config.common.internal_secret)
    service = JobsService(db, Projects(tenancy, config.project_cache_seconds))
    api = servicer(service)
    return Service(
        name="jobs",
        service_names=[jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name],
        register=lambda server: jobs_pb2_grpc.add_JobServiceServicer_to_server(api, server),
        authenticate=ApiKeyAuthenticator(tenancy),  # direct gRPC callers with an API key
        on_shutdown=[tenancy.close, db.close],
    )
