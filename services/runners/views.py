"""Registry rows (plus their live session state) as protobuf."""

from __future__ import annotations

from innosystem.kit.protos import timestamp
from innosystem.runners.v1 import runners_pb2 as pb
from services.runners.live import Live
from services.runners.models import Runner
from services.runners.repository import MAINTENANCE, OFFLINE


def runner_pb(row: Runner, live: Live | None, *, connected: bool = False) -> pb.Runner:
    status = MAINTENANCE if row.maintenance else row.status
    if live is None and not connected and status != MAINTENANCE:
        status = OFFLINE  # its replica is gone; the sweeper will record it
    out = pb.Runner(
        id=str(row.id), name=row.name, description=row.description, scope=row.scope,  # type: ignore[arg-type]
        customer_id=str(row.customer_id or ""), status=status,  # type: ignore[arg-type]
        allowed_processors=list(row.allowed_processors or ()), processors=list(row.processors or ()),
        tags=list(row.tags or ()), max_concurrent_jobs=row.max_concurrent_jobs, version=row.version,
        hostname=row.hostname, last_heartbeat_time=timestamp(row.last_heartbeat_time),
        connect_time=timestamp(row.connect_time) if (live is not None or connected) else None,
        create_time=timestamp(row.create_time), update_time=timestamp(row.update_time),
    )
    if live is not None:
        out.current_job_count = live.running
        out.current_job_id = live.current_job_id
        out.draining = live.draining
        if row.max_concurrent_jobs:
            out.capacity_used = min(1.0, live.running / row.max_concurrent_jobs)
    return out
