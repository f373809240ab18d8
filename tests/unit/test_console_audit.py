"""The audit table's entries for the batch job actions: a dry run is not an administrative action."""

from __future__ import annotations

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.audit import AUDITED


def test_batch_actions_are_audited_with_filter_and_counts_but_not_their_dry_runs() -> None:
    audited = AUDITED["/innosystem.jobs.v1.JobService/BatchRetryJobs"]
    request = pb.BatchRetryJobsRequest(project_id="p1", filter=pb.JobFilter(status=types_pb.JOB_STATUS_FAILED))
    answer = pb.BatchJobsResponse(matched_count=3, changed_count=2, skipped_count=1)
    assert audited.when(request)
    assert audited.target(request, answer) == "projects/p1/jobs"
    assert audited.detail(request, answer) == "filter {status: JOB_STATUS_FAILED}: 2 of 3 changed"
    dry = pb.BatchCancelJobsRequest(project_id="p1", filter=pb.JobFilter(priority=1), validate_only=True)
    assert not AUDITED["/innosystem.jobs.v1.JobService/BatchCancelJobs"].when(dry)
