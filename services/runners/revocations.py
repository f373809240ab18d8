"""Closes the streams of runners whose customer lost its access, as soon as tenancy says so.

Tenancy publishes on `kit.clients.ACCESS_REVOKED_CHANNEL` after it commits a change that ends API
keys' validity: a customer or a reseller deactivated or deleted, or a key rotated. The event does
not say which (after a key rotation the customer is still active and its runners must stay
connected), so an event makes this replica ask tenancy again about the customers concerned whose
runners it holds, and close the streams of those no longer active with a fatal `CUSTOMER_INACTIVE`
error. New connections of such runners are refused at authentication (customers.py).

Missed events: pub/sub keeps nothing for an absent subscriber, so after every (re)subscription
every customer with a stream here is checked again. A customer deactivated between a runner's
authentication and the registration of its session (the event found no stream to close) is
caught by `opened`: a new session whose customer (or reseller) had an event shortly before is
checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from google.rpc import code_pb2
from redis.exceptions import RedisError

from innosystem.kit.clients import ACCESS_REVOKED_CHANNEL
from innosystem.kit.errors import DomainError
from innosystem.runners.v1 import runners_pb2 as pb
from services.runners.customers import Customers
from services.runners.session import Session, stream_error

log = logging.getLogger(__name__)

# An event this recent makes a newly opened session of its customer be checked again.
RECENT_SECONDS = 60.0
# Tenancy not answering a re-check: waits between tries; after the last, the streams are closed
# (access that was announced revoked and cannot be confirmed is not kept), to reconnect later.
RETRY_DELAYS = (0.5, 1.0, 2.0)
RESUBSCRIBE_SECONDS = 1.0


class RevocationFollower:
    def __init__(self, customers: Customers, sessions: Mapping[str, Session], redis: aioredis.Redis) -> None:
        self._customers, self._sessions, self._redis = customers, sessions, redis
        self._recent: dict[str, float] = {}  # customer or reseller id → time of its last event
        self._checking: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # an event arrived while its check was under way

    async def run(self) -> None:
        """Background loop: follow the channel, resubscribing (and checking everyone) after a loss."""
        try:
            while True:
                pubsub = self._redis.pubsub()
                try:
                    await pubsub.subscribe(ACCESS_REVOKED_CHANNEL)
                    self._check_all()  # whatever was published while this replica was not subscribed
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                        if message is not None:
                            self.event(message.get("data"))
                except (RedisError, OSError) as exc:
                    log.warning("access revocations not followed (runner streams are checked again on "
                                "resubscription): %s", exc or type(exc).__name__)
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
        finally:  # the replica is stopping: checks under way end with it
            for task in list(self._checking.values()):
                task.cancel()

    def event(self, data: Any) -> None:
        """One revocation: {"customer_id": …} or {"reseller_id": …}."""
        try:
            body = json.loads(data)
            customer_id, reseller_id = str(body.get("customer_id") or ""), str(body.get("reseller_id") or "")
        except (ValueError, TypeError, AttributeError):
            log.warning("malformed revocation; checking every customer with a runner here")
            self._check_all()
            return
        now = time.monotonic()
        for key in (customer_id, reseller_id):
            if key:
                self._recent[key] = now
        if len(self._recent) > 10_000:
            self._recent = {k: t for k, t in self._recent.items() if now - t < RECENT_SECONDS}
        for held in self._held_customers():
            # A customer whose reseller is not known yet is checked on any reseller's event.
            if held == customer_id or (reseller_id and self._customers.reseller_of(held) in (reseller_id, None)):
                self._check(held)

    def opened(self, session: Session) -> None:
        """A session was registered: check its customer again if an event concerned it lately."""
        if not session.customer_id:
            return
        now = time.monotonic()
        for key in (session.customer_id, self._customers.reseller_of(session.customer_id)):
            if key and now - self._recent.get(key, -RECENT_SECONDS) < RECENT_SECONDS:
                self._check(session.customer_id)
                return

    def _held_customers(self) -> set[str]:
        return {s.customer_id for s in self._sessions.values() if s.customer_id}

    def _check_all(self) -> None:
        for customer_id in self._held_customers():
            self._check(customer_id)

    def _check(self, customer_id: str) -> None:
        if customer_id in self._checking:
            self._again.add(customer_id)  # the check under way may have read the state before the change
            return
        task = asyncio.create_task(self._checks(customer_id))
        self._checking[customer_id] = task
        task.add_done_callback(lambda _: self._checking.pop(customer_id, None))

    async def _checks(self, customer_id: str) -> None:
        while True:
            self._again.discard(customer_id)
            await self._check_once(customer_id)
            if customer_id not in self._again:
                return

    async def _check_once(self, customer_id: str) -> None:
        for delay in (*RETRY_DELAYS, None):
            try:
                if await self._customers.active(customer_id):
                    return
                self._close(customer_id, stream_error(
                    code_pb2.UNAUTHENTICATED, "CUSTOMER_INACTIVE", f"customer {customer_id}, the owner of this "
                    "runner, is inactive or deleted: its runner tokens no longer work", fatal=True))
                return
            except DomainError as err:
                if delay is None:
                    log.warning("customer %s: access revoked and not confirmed by tenancy (%s); closing its runners' "
                                "streams", customer_id, err)
                    self._close(customer_id, stream_error(
                        code_pb2.UNAVAILABLE, "ACCESS_UNCONFIRMED", "the customer's access changed and could not "
                        "be confirmed; reconnect", fatal=True))
                    return
                await asyncio.sleep(delay)

    def _close(self, customer_id: str, final: pb.ConnectResponse) -> None:
        for session in list(self._sessions.values()):
            if session.customer_id == customer_id and not session.closed.is_set():
                log.info("runner %s: closing its stream (%s)", session.runner_id, final.error.status.message)
                session.close(final)
