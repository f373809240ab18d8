"""The jobs service's OpenTelemetry instruments (the kit exports them on /metrics)."""

from __future__ import annotations

from opentelemetry import metrics

from innosystem.kit.telemetry import SECONDS_BUCKETS

meter = metrics.get_meter("innosystem.jobs")

submitted = meter.create_counter("jobs.submitted", description="jobs submitted, by job_type and priority")
started = meter.create_counter("jobs.started", description="attempts started (leased), by job_type and priority")
succeeded = meter.create_counter("jobs.succeeded", description="jobs succeeded, by job_type and priority")
failed = meter.create_counter("jobs.failed", description="jobs failed terminally, by job_type and priority")
dispatch_latency = meter.create_histogram("jobs.dispatch.latency", unit="s",
                                          description="time from entering the queue to being leased",
                                          explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
attempt_duration = meter.create_histogram("jobs.attempt.duration", unit="s",
                                          description="time from lease to result, by job_type and outcome",
                                          explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
