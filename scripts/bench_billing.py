"""Billing throughput: reserves + captures per second, one hot wallet vs 1000 wallets.

    python scripts/bench_billing.py [--seconds 5] [--clients 64] [--grpc] [--out bench_billing.json]

Starts an embedded PostgreSQL and Valkey in a temporary folder, migrates, and drives billing with
concurrent clients, each looping Reserve then Capture: in-process by default (the service layer:
ledger, Open-to-Buy and group commit exactly as served, no gRPC hop), or with `--grpc` through a
real `innosystem serve billing` process, signed as the jobs service. Prints the figures and
writes them as JSON. A benchmark measures; it checks nothing but that the ledger stayed consistent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from innosystem.kit import principal as principals
from innosystem.kit.clients import channel
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database
from innosystem.kit.migrate import upgrade
from innosystem.kit.redis import connect
from innosystem.stack import Stack
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.otb import OpenToBuy
from services.billing.service import ON_DEMAND, BillingService

ADMIN = Principal(kind=principals.ADMIN, key_id="bench")
RATES: dict[uuid.UUID, int] = {}


async def rates(reseller_id: uuid.UUID) -> int:
    return RATES[reseller_id]


async def scenario(billing: BillingService, name: str, wallets: int, clients: int, seconds: float) -> dict[str, Any]:
    customers = [str(uuid.uuid4()) for _ in range(wallets)]
    reseller = uuid.uuid4()
    RATES[reseller] = 1000
    for c in customers:
        await billing.open_wallet(c, str(reseller), "USD", 0)
        await billing.top_up(ADMIN, c, 10**10, "", "fund", "")
        await billing.rebuild_wallet(uuid.UUID(c), "USD")  # loaded in Redis, as after start-up
    batches0, ops0 = billing.commit.batches, billing.commit.operations
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            customer = customers[(k * 7919 + i) % wallets]
            hold_id = f"{name}-{k}-{i}"
            i += 1
            t0 = time.perf_counter()
            await billing.reserve(hold_id, customer, 100, "USD", job_id=hold_id)
            await billing.capture(hold_id, 90)
            latencies.append(time.perf_counter() - t0)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    batches = billing.commit.batches - batches0
    ops = billing.commit.operations - ops0
    return {
        "scenario": name, "wallets": wallets, "clients": clients, "seconds": round(elapsed, 2),
        "reserve_capture_pairs": done,
        "pairs_per_second": round(done / elapsed, 1),
        "operations_per_second": round(2 * done / elapsed, 1),
        "pair_latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "pair_latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "commits": batches, "operations_per_commit": round(ops / batches, 1) if batches else None,
    }


class GrpcBilling:
    """The same two calls as BillingService.reserve/capture, over gRPC to a billing process."""

    def __init__(self, address: str, secret: str) -> None:
        self.channel = channel(address, service="jobs", secret=secret.encode())
        self.stub = billing_pb2_grpc.BillingServiceStub(self.channel)
        # Wallets are opened by tenancy (each internal method admits only its callers: kit/callers.py).
        self.tenancy_channel = channel(address, service="tenancy", secret=secret.encode())
        self.wallets = billing_pb2_grpc.BillingServiceStub(self.tenancy_channel)
        self.secret = secret.encode()

    async def open(self, customer: str, reseller: str) -> None:
        await self.wallets.OpenWallet(pb.OpenWalletRequest(customer_id=customer, reseller_id=reseller), timeout=10)
        admin = principals.sign(ADMIN, self.secret, "/innosystem.billing.v1.BillingService/TopUpWallet")
        await self.stub.TopUpWallet(pb.TopUpWalletRequest(customer_id=customer, amount_cents=10**10,
                                                          request_id="fund"), metadata=admin, timeout=10)

    async def reserve(self, hold_id: str, customer: str, amount: int, currency: str, job_id: str) -> None:
        await self.stub.Reserve(pb.ReserveRequest(hold_id=hold_id, customer_id=customer, amount_cents=amount,
                                                  currency_code=currency, job_id=job_id), timeout=30)

    async def capture(self, hold_id: str, amount: int) -> None:
        await self.stub.Capture(pb.CaptureRequest(hold_id=hold_id, amount_cents=amount), timeout=30)


async def grpc_scenario(client: GrpcBilling, name: str, wallets: int, clients: int,
                        seconds: float) -> dict[str, Any]:
    customers = [str(uuid.uuid4()) for _ in range(wallets)]
    for c in customers:
        await client.open(c, "")
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            customer = customers[(k * 7919 + i) % wallets]
            hold_id = f"{name}-{k}-{i}"
            i += 1
            t0 = time.perf_counter()
            await client.reserve(hold_id, customer, 100, "USD", hold_id)
            await client.capture(hold_id, 90)
            latencies.append(time.perf_counter() - t0)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "scenario": name + "_grpc", "wallets": wallets, "clients": clients, "seconds": round(elapsed, 2),
        "reserve_capture_pairs": done, "pairs_per_second": round(done / elapsed, 1),
        "operations_per_second": round(2 * done / elapsed, 1),
        "pair_latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "pair_latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "commits": None, "operations_per_commit": None,
    }


async def run_grpc(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    client = GrpcBilling(stack.address("billing"), stack.internal_secret)
    try:
        results = [await grpc_scenario(client, "hot_wallet", 1, args.clients, args.seconds),
                   await grpc_scenario(client, "wallets_1000", 1000, args.clients, args.seconds)]
        admin = principals.sign(ADMIN, client.secret, "/innosystem.billing.v1.BillingService/Reconcile")
        report = await client.stub.Reconcile(pb.ReconcileRequest(), metadata=admin, timeout=120)
        return {"results": results, "reconciliation_consistent": report.consistent,
                "transfers": report.transfers_checked}
    finally:
        await client.channel.close()
        await client.tenancy_channel.close()


async def run(pg_url: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    db = Database(to_async_url(pg_url), pool_size=5)
    client = connect(redis_url)
    billing = BillingService(db, OpenToBuy(client), rates)
    try:
        results = [await scenario(billing, "hot_wallet", 1, args.clients, args.seconds),
                   await scenario(billing, "wallets_1000", 1000, args.clients, args.seconds)]
        report = await billing.reconcile(ON_DEMAND)
        return {"results": results, "reconciliation_consistent": report.consistent,
                "transfers": report.transfers_checked}
    finally:
        await billing.close()
        await client.aclose()
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--grpc", action="store_true", help="through a billing process over gRPC")
    parser.add_argument("--out", default="bench_billing.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        valkey = EmbeddedValkey(Path(tmp) / "valkey", persist=False)
        url = pg.start()
        valkey.start()
        try:
            upgrade(url, "billing")
            if args.grpc:
                stack = Stack(database_url=url, redis_url=valkey.url, http_port=free_port(), fixed_ports=False,
                              log_dir=Path(tmp) / "logs")
                stack.start(services=("billing",), gateway=False)
                try:
                    stack.wait_ready(60)
                    out = asyncio.run(run_grpc(stack, args))
                finally:
                    stack.stop()
            else:
                out = asyncio.run(run(url, valkey.url, args))
        finally:
            valkey.stop()
            pg.stop()
    out["machine"] = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    for r in out["results"]:
        print(f"{r['scenario']:>13}: {r['pairs_per_second']:>8} reserve+capture pairs/s "
              f"({r['operations_per_second']} ops/s), p50 {r['pair_latency_ms_p50']} ms, "
              f"p99 {r['pair_latency_ms_p99']} ms, {r['operations_per_commit']} ops/commit")
    print(f"reconciliation consistent: {out['reconciliation_consistent']} ({out['transfers']} transfers)")
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
