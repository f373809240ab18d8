"""A session's slot accounting: the service never has more jobs running on a runner than its slots,
nor more results awaiting their ack than that."""

from __future__ import annotations

from innosystem.jobs.v1 import jobs_pb2
from innosystem.runners.v1 import runners_pb2 as pb
from services.runners.repository import AVAILABLE, BUSY, ERROR
from services.runners.session import Session


def _session(slots: int = 2, free: int | None = None, processors: tuple[str, ...] = ("echo",)) -> Session:
    return Session(runner_id="r", session_id="s", customer_id="", processors=list(processors), tags=[],
                   max_slots=slots, reported_free=slots if free is None else free)


def _lease(n: int) -> jobs_pb2.JobLease:
    return jobs_pb2.JobLease(job_id=f"j{n}", lease_id=f"l{n}")


def test_assignments_use_up_slots_and_a_result_frees_one_at_once_up_to_slots_awaiting_acks() -> None:
    s = _session(2)
    s.assign(_lease(1))
    s.assign(_lease(2))
    assert s.free() == 0 and s.status() == BUSY
    s.finish("j1", "l1", completing=True)
    assert s.free() == 1 and s.status() == AVAILABLE  # the processor is done: its slot is free
    s.acked("j1", "l1")
    assert s.free() == 1  # freed once, not again on the ack
    s.acked("j1", "l1")  # a second ack changes nothing
    assert s.free() == 1
    # Results awaiting their ack past the slot count hold their slots until acknowledged.
    for n in (3, 4, 5):  # j2 runs; each new job ends at once with its result awaiting the ack
        assert s.free() == 1
        s.assign(_lease(n))
        s.finish(f"j{n}", f"l{n}", completing=True)
    assert len(s.completing) == 3 and s.free() == 0  # the third awaiting result is one too many
    s.acked("j3", "l3")
    assert s.free() == 0  # j5 was counted late: its slot frees with its own ack
    s.acked("j5", "l5")
    assert s.free() == 1


def test_a_slot_update_counts_assignments_the_runner_had_not_seen() -> None:
    s = _session(3)
    for n in range(3):
        s.assign(_lease(n))
    s.finish("j0", "l0")  # a return: free at once
    # the runner counted 3 free before it saw any assignment (seq 0): 3 sent since → 0 free, +1 returned
    s.slots(pb.SlotUpdate(free_slots=3, last_assignment_seq=0))
    assert s.free() == 0
    s.slots(pb.SlotUpdate(free_slots=1, last_assignment_seq=3))
    assert s.free() == 1


def test_draining_maintenance_closed_and_no_processors_mean_no_jobs() -> None:
    draining = _session(4)
    draining.slots(pb.SlotUpdate(free_slots=4, last_assignment_seq=0, draining=True))
    maintenance = _session(4)
    maintenance.maintenance = True
    closed = _session(4)
    closed.close()
    refused = _session(4, processors=())
    assert [s.free() for s in (draining, maintenance, closed, refused)] == [0, 0, 0, 0]
    assert refused.status() == ERROR
    assert closed.out.get_nowait() is None  # the stream's end


def test_a_lost_lease_frees_its_slot_and_a_finished_job_is_remembered_as_recent() -> None:
    s = _session(1)
    s.assign(_lease(1))
    s.drop("j1")
    assert s.free() == 1 and "j1" not in s.held
    s.assign(_lease(2))
    s.finish("j2", "l2", completing=True)
    assert ("j2", "l2") in s.recent


def test_a_runner_holding_jobs_beyond_its_slots_is_given_that_many_more_while_it_says_so() -> None:
    s = Session(runner_id="r", session_id="s", customer_id="", processors=["echo"], tags=[], max_slots=2,
                prefetch=3, reported_free=5)
    assert s.room() == 5 and s.free() == 5
    for n in range(5):
        s.assign(_lease(n))
    assert s.free() == 0 and s.status() == BUSY
    # Results free their place at once up to room() awaiting their ack, as the runner counts them.
    for n in range(5):
        s.finish(f"j{n}", f"l{n}", completing=True)
    assert s.free() == 5
    # The runner's jobs run long: it holds none beyond its slots and says so.
    s.slots(pb.SlotUpdate(free_slots=2, last_assignment_seq=s.seq))
    assert s.free() == 2
