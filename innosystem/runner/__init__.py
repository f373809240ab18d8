"""The runner SDK: connect to the runners service over one bidirectional stream, receive
compatible jobs, run processors, report results (see docs/runners.md).

    from innosystem.runner import Runner, Registry, builtin

    processors = builtin.registry()            # echo, sleep, sha256, fail

    @processors.processor("resize")
    def resize(job):
        return {"ok": True}

    asyncio.run(Runner("127.0.0.1:50054", "isr_…", processors, max_concurrent_jobs=8).run())

This package imports no service code: a runner needs only the published protos.
"""

from innosystem.runner import builtin
from innosystem.runner.client import Runner, RunnerRejected
from innosystem.runner.processors import (
    Job,
    JobCancelled,
    JobError,
    Kind,
    Processor,
    Registry,
    Result,
    batch,
    default_registry,
    processor,
)

__all__ = ["Job", "JobCancelled", "JobError", "Kind", "Processor", "Registry", "Result", "Runner", "RunnerRejected",
           "batch", "builtin", "default_registry", "processor"]
