"""The runner SDK: connect to the runners service over one bidirectional stream, receive
compatible jobs, run processors, report results (see docs/runners.md).

    from innosystem.runner import Runner, Registry, builtin

    processors = builtin.registry()            # echo, sleep, sha256, fail

    @processors.processor("resize")
    def resize(job):
        return {"ok": True}

    asyncio.run(Runner("127.0.0.1:50054", "isr_…", processors, max_concurrent_jobs=8).run())

or, from synchronous code (a demo, a benchmark), in a background thread:

    with RunnerThread(Runner(target, token, processors)) as thread:
        thread.wait_connected()

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
from innosystem.runner.threaded import RunnerThread

__all__ = ["Job", "JobCancelled", "JobError", "Kind", "Processor", "Registry", "Result", "Runner", "RunnerRejected",
           "RunnerThread", "batch", "builtin", "default_registry", "processor"]
