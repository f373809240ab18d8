"""A stream's outgoing queue is bounded (outbox.py): full at its mark (no jobs leased then),
never past the hard bound (the stream is closed as a slow consumer instead), and its end always
fits."""

from __future__ import annotations

from innosystem.jobs.v1 import jobs_pb2
from innosystem.runners.v1 import runners_pb2 as pb
from services.runners.outbox import HARD_FACTOR, Outbox
from services.runners.session import Session


def _session(messages: int = 4, size: int = 1 << 20, slots: int = 10) -> Session:
    return Session(runner_id="r", session_id="s", customer_id="", processors=["echo"], tags=[], max_slots=slots,
                   reported_free=slots, out=Outbox(messages, size))


def _ack(n: int) -> pb.ConnectResponse:
    return pb.ConnectResponse(result_ack=pb.ResultAck(job_id=f"j{n}", lease_id=f"l{n}"))


def test_a_full_queue_leases_nothing_until_it_has_room_again_and_then_wakes_the_lease_loop() -> None:
    s = _session(messages=4)
    assert s.wanted() == 4  # at most the room left, though 10 slots are free
    for n in range(3):
        s.send(_ack(n))
    assert s.wanted() == 1 and s.out.full_for() == 0
    s.send(_ack(3))
    assert s.out.full() and s.wanted() == 0 and s.free() == 10  # slots free, but nothing to lease
    s.changed.clear()
    assert s.out.get_nowait() == _ack(0)
    assert s.changed.is_set() and s.wanted() == 1 and s.out.full_for() == 0


def test_the_byte_mark_counts_too() -> None:
    s = _session(messages=100, size=2048)
    s.assign(jobs_pb2.JobLease(job_id="j1", lease_id="l1"))
    assert not s.out.full()
    s.send(pb.ConnectResponse(error=pb.StreamError(status={"message": "x" * 3000})))
    assert s.out.full() and s.wanted() == 0 and s.out.bytes > 2048


def test_past_the_hard_bound_the_stream_is_closed_as_a_slow_consumer_its_backlog_dropped() -> None:
    s = _session(messages=2)
    for n in range(HARD_FACTOR * 2):
        s.send(_ack(n))
    assert not s.closed.is_set() and len(s.out) == HARD_FACTOR * 2
    s.send(_ack(99))  # one too many: refused, and the stream ends
    assert s.closed.is_set() and s.slow
    final = s.out.get_nowait()
    assert final is not None and final.error.fatal
    assert final.error.status.message.startswith("SLOW_CONSUMER: the runner does not read its stream")
    assert s.out.get_nowait() is None and len(s.out) == 0
    s.send(_ack(100))  # after the end nothing is queued
    assert len(s.out) == 0


def test_the_end_of_a_stream_always_fits() -> None:
    s = _session(messages=1)
    for n in range(HARD_FACTOR):
        s.send(_ack(n))
    s.close(pb.ConnectResponse(error=pb.StreamError(fatal=True)))
    assert len(s.out) == HARD_FACTOR + 2 and not s.slow  # the backlog, the final error, the end
