"""Processors a runner process loads by module path in the tests (`--processor NAME=module:function`)."""

from __future__ import annotations

from typing import Any

from innosystem.runner import Job, Result, batch, processor


@batch("sample-batch", max_batch_size=3)
def uppercase_batch(jobs: list[Job]) -> list[dict[str, Any]]:
    return [{"upper": str(j.payload.get("text", "")).upper(), "batch_size": len(jobs)} for j in jobs]


@processor("sample-costly")
def costly(job: Job) -> Result:
    """Reports `payload.cost` as its cost and as units of work (what a PER_UNIT price charges for)."""
    cost = int(job.payload.get("cost", 3))
    return Result({"ok": True}, cost_cents=cost, units=cost)


def sized(job: Job) -> dict[str, Any]:
    """A result of `payload.size` characters (to try results too large to store or to pass)."""
    return {"blob": "x" * int(job.payload.get("size", 10))}
