"""`make bench`'s check of the issues' targets (scripts/bench_e2e.py `check_targets`): each figure
read from where the benchmark writes it, compared in the right direction."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

bench = importlib.import_module("bench_e2e")


def _results(**overrides: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "ratio_drain_ours_over_yardstick": 0.41,
        "cpu": {"drain": {"total_ms_per_job": 0.7, "peak_rss_mb": {"jobs": 130.0, "postgres": 301.0, "gone": None}},
                "submit": {"gateway_batch": {"total_ms_per_job": 0.25}, "grpc_batch": {"total_ms_per_job": 0.3},
                           "grpc_single": {"total_ms_per_job": 1.6}, "gateway_single": {"total_ms_per_job": 0.99}}},
        "dispatch_latency_light": {"p50_ms": 9.9, "p99_ms": 31.0, "refused": {}},
        "dispatch_latency": {"p50_ms": 15.0, "p99_ms": 49.0, "refused": {"RESOURCE_EXHAUSTED": 2}},
        "submit_gateway_batch_jobs_per_s": 10_000.0,
        "submit_gateway_single_jobs_per_s": 999.0,
        "submit_latency_gateway": {"p50_ms": 5.1, "p99_ms": 20.0, "refused": {}},
        "submit_latency_gateway_new_connections": {"p50_ms": 6.0, "p99_ms": 30.0, "refused": {"HTTP 503": 1}},
    }
    results.update(overrides)
    return results


def test_each_target_in_its_direction() -> None:
    met = {name: v["met"] for name, v in bench.check_targets(_results()).items()}
    assert met == {
        "drain / yardstick": True, "CPU per drained job, ms": False,
        "dispatch 50/s p50, ms": True, "dispatch 50/s p99, ms": False,
        "dispatch 200/s p50, ms": True, "dispatch 200/s p99, ms": True,
        "peak RSS of a process, MB": False,  # PostgreSQL's 301 MB, the highest of all
        "gateway batches, jobs/s": True, "gateway singles, jobs/s": False,
        "gRPC singles, jobs/s": None,  # not in these results: not measured, not met
        "gateway submit 50/s p50, ms": False, "gateway submit 50/s p99, ms": True,
        "CPU per job, gateway batches, ms": True, "CPU per job, gRPC batches, ms": True,
        "CPU per job, gRPC singles, ms": False, "CPU per job, gateway singles, ms": True,
        "nothing refused": False,
    }


def test_a_refusal_in_any_latency_phase_counts() -> None:
    assert bench.check_targets(_results())["nothing refused"]["value"] == 3
    phases = ("dispatch_latency", "dispatch_latency_light", "submit_latency_gateway",
              "submit_latency_gateway_new_connections")
    quiet = {k: {"p50_ms": 1.0, "p99_ms": 1.0, "refused": {}} for k in phases}
    assert bench.check_targets(_results(**quiet))["nothing refused"]["met"] is True


def test_an_external_stack_without_cpu_figures() -> None:
    targets = bench.check_targets(_results(cpu={"skipped": "an external stack"}))
    assert targets["CPU per drained job, ms"]["met"] is None and targets["peak RSS of a process, MB"]["value"] is None
    assert targets["gateway batches, jobs/s"]["met"] is True


def test_the_drain_ends_at_its_last_stamp_inside_the_poll() -> None:
    """The finish line is the last job's stamp (the wallet's last capture, the yardstick's last
    job) when it falls between the start and the poll that saw the end; else the poll's."""
    assert bench.finish_line(began_at=1000.0, polled=8.5, last=1008.25) == 8.25
    assert bench.finish_line(began_at=1000.0, polled=8.5, last=None) == 8.5
    assert bench.finish_line(began_at=1000.0, polled=8.5, last=1009.0) == 8.5  # after the poll: another write
    assert bench.finish_line(began_at=1000.0, polled=8.5, last=999.0) == 8.5  # before the start: nothing drained
