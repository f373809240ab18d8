"""The processor the BYOK end-to-end test's runner runs: reads one field through secure access."""

from __future__ import annotations

from typing import Any

from innosystem.runner.processors import Job

JOB = 1  # PurposeCode.PURPOSE_CODE_CUSTOMER_INITIATED_JOB


async def card_check(job: Job) -> dict[str, Any]:
    async with job.secure_access(JOB, ["payload.card.number"]) as fields:
        number = str(fields["payload.card.number"])
        return {"valid_length": len(number) >= 12, "encrypted_in_lease": job.payload["card"]["number"][:5]}
