"""Retention past PostgreSQL's 65,535 bind parameters (issue 14, item 12): every eligible job is
purged or deleted, in bounded batches, in one pass. Its own module: its own database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from tests.jobs.jobs_world import JobsWorld

# Finished jobs of one made-up customer, inserted in one set-oriented statement; `:age` days ago.
INSERT_FINISHED = text("""
    INSERT INTO jobs.jobs (id, project_id, customer_id, job_type_id, job_type_name, queue_name, status, priority,
        retry_max_attempts, retry_initial_interval_seconds, retry_backoff_multiplier, retry_max_interval_seconds,
        persistence_policy, settings, payload, result, error, error_type, runner_id, attempt_count, cost_cents,
        estimated_cost_cents, currency_code, hold_id, retry_count, create_time, complete_time, update_time,
        request_id, cancel_requested, cancel_reason, lease_session_id, dead_lettered, trace_context, purged)
    SELECT gen_random_uuid(), CAST(:project AS uuid), CAST(:customer AS uuid), CAST(:job_type AS uuid),
        'bulk', 'bulk', 4, 2, 3, 1, 2.0, 300, 2, '{}', jsonb_build_object('n', n), jsonb_build_object('ok', true),
        '', '', 'r1', 1, 1, 1, 'USD', '', 0, at, at, at, '', false, '', '', false, '{}', CAST(:purged AS boolean)
    FROM generate_series(1, CAST(:n AS integer)) AS n,
        (SELECT now() - make_interval(days => CAST(:age AS integer)) AS at) AS t""")


async def test_retention_purges_and_deletes_more_jobs_than_one_statement_can_name(world: JobsWorld) -> None:
    c = await world.customer()
    ids = {"project": c.project_id, "customer": c.principal.customer_id, "job_type": c.project_id}
    config = world.config
    async with world.app.deps.db.session() as s:
        await s.execute(INSERT_FINISHED, {**ids, "age": config.retention_days + 5, "purged": False, "n": 70_000})
        await s.execute(INSERT_FINISHED, {**ids, "age": config.delete_after_days + 5, "purged": True, "n": 66_000})
        await s.execute(text("INSERT INTO jobs.job_attempts (job_id, attempt, lease_id, runner_id, outcome, start_time,"
                             " details) SELECT id, 1, gen_random_uuid(), 'r1', 1, now(), '{\"secret\": 1}'"
                             " FROM jobs.jobs WHERE job_type_name = 'bulk' AND NOT purged LIMIT 100"))
    assert await world.app.loops.retain_once() == (70_000, 66_000)
    async with world.app.deps.db.session() as s:
        left = (await s.execute(text(  # a purged value is JSON null
            "SELECT count(*) FILTER (WHERE NOT purged OR payload <> 'null' OR result <> 'null'), count(*)"
            " FROM jobs.jobs WHERE job_type_name = 'bulk'"))).one()
        details = (await s.execute(text("SELECT count(*) FROM jobs.job_attempts WHERE details <> 'null'"))).scalar()
    assert tuple(left) == (0, 70_000) and details == 0
    assert await world.app.loops.retain_once() == (0, 0)  # nothing left over for the next pass
    world.clock.advance(timedelta(days=1).total_seconds())
    assert await world.app.loops.retain_once() == (0, 0)
