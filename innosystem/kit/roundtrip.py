"""A transaction's statements in one round trip: one write, one wait, the answers read as they come.

psycopg's pipeline mode sends each statement as it is queued: a poll, a flush and a `send` per
statement (each one waking the server's backend), and a generator step per statement on the
client. A small write transaction (BEGIN, an INSERT, an UPDATE, COMMIT) cost the client 450-530
µs of CPU that way, against 80 for one `SELECT 1`; queued in libpq's buffer and sent at once, as
here, 180-220 (docs/performance.md, session 21). The statements are converted and their
parameters dumped as psycopg's cursors do it. On a connection where psycopg prepares nothing of its
own (`prepare_threshold=None`: the hot paths' pool) each is prepared the second time the connection
runs it (a statement run once, say a rare shape of a multi-row INSERT, does not take a place), so
PostgreSQL plans it once per connection; elsewhere psycopg deallocates every prepared statement at
a ROLLBACK once it has prepared one of its own, so they run unnamed.

`run` drives libpq (`psycopg.pq`, psycopg's documented libpq wrapper) on a connection psycopg
holds, under the connection's lock, and leaves it as psycopg left it but for the transaction:
begun (`begin`), committed (`commit`), or failed at a statement and skipped to the end (libpq's
pipeline skips the rest up to its Sync), then left for the caller's rollback.
"""

from __future__ import annotations

import weakref
from collections import namedtuple
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg._queries import PostgresQuery, PostgresRawQuery  # how psycopg's cursors convert a query
from psycopg.adapt import Transformer
from psycopg.waiting import Wait

# A step: (statement, parameters, raw). A raw statement has PostgreSQL's own `$n` placeholders and a
# sequence of parameters (a raw cursor's); the others psycopg's `%s`/`%(name)s` (a cursor's).
Step = tuple[Any, Any, bool]

_OK = frozenset({pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY})
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FATAL = pq.ExecStatus.FATAL_ERROR
_COPY = frozenset({pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH})
_IDLE = pq.TransactionStatus.IDLE
MAX_PREPARED = 256  # statements prepared per connection; more run unprepared
MAX_SEEN = 1024  # statements run once, remembered to be prepared when run again


class _Prepared:
    """The statements prepared on one connection: (query, parameter types) → name."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.names: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self.seen: set[tuple[bytes, tuple[int, ...]]] = set()
        self.count = 0

    def new(self, key: tuple[bytes, tuple[int, ...]]) -> bytes | None:
        """A name to prepare the statement under, at its second run; None: run it unnamed."""
        if not self.allowed or len(self.names) >= MAX_PREPARED:
            return None
        if key not in self.seen:
            if len(self.seen) >= MAX_SEEN:
                self.seen.clear()
            self.seen.add(key)
            return None
        self.seen.discard(key)
        self.count += 1
        name = self.names[key] = b"_inno_%d" % self.count
        return name

    def withdraw(self, name: bytes) -> None:
        self.names = {k: v for k, v in self.names.items() if v != name}


_prepared: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _Prepared] = weakref.WeakKeyDictionary()


def _exchange(pgconn: pq.abc.PGconn, sends: Sequence[Callable[[], None]]) -> Any:
    """libpq's pipeline: every send queued, one Sync, flushed at once; each statement's results
    (one list per statement, in order) up to the Sync."""
    for send in sends:
        send()
    pgconn.pipeline_sync()
    while pgconn.flush():  # the rest did not fit the socket's buffer
        yield Wait.RW
        pgconn.consume_input()
    results: list[list[pq.abc.PGresult]] = []
    current: list[pq.abc.PGresult] = []
    while True:
        while pgconn.is_busy():
            yield Wait.R
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:  # the end of one statement's results
            results.append(current)
            current = []
        elif result.status == _SYNC:
            return results
        elif result.status in _COPY:  # a programming error: the connection is left to be discarded
            raise psycopg.NotSupportedError("COPY cannot run in one round trip (kit.db.copy_rows runs it)")
        else:
            current.append(result)


def begins(driver: psycopg.AsyncConnection[Any]) -> bool:
    """Whether a transaction's first statements carry its BEGIN: the connection is idle and wants
    transactions (psycopg would begin one), with no settings of its own for the BEGIN to carry."""
    return (driver.pgconn.transaction_status == _IDLE and not driver.autocommit
            and driver.isolation_level is None and driver.read_only is None and driver.deferrable is None)


async def run(driver: psycopg.AsyncConnection[Any], steps: Sequence[Step], *, commit: bool = False
              ) -> list[pq.abc.PGresult | None]:
    """Run `steps` in one round trip, with the transaction's BEGIN when they are its first (see
    `begins`; a connection with transaction settings of its own is refused) and with `commit` its
    COMMIT. Returns each step's last result, None for one skipped after an error; the first error
    is raised as psycopg raises it, once every answer is read."""
    pgconn = driver.pgconn
    begin = begins(driver)
    if not begin and pgconn.transaction_status == _IDLE and not driver.autocommit:
        raise psycopg.NotSupportedError("one round trip takes no transaction settings of the connection's own")
    tx = Transformer(driver)
    prepared = _prepared.get(driver)
    if prepared is None:
        prepared = _prepared[driver] = _Prepared(driver.prepare_threshold is None)
    sends: list[Callable[[], None]] = [lambda: pgconn.send_query_params(b"BEGIN", None)] if begin else []
    preparing: dict[int, bytes] = {}  # send index → the name it prepares
    executing: list[int] = []  # per step, its execution's send index
    for statement, params, raw in steps:
        q = (PostgresRawQuery if raw else PostgresQuery)(tx)
        q.convert(statement, params)
        key = (q.query, q.types)
        name = prepared.names.get(key)
        if name is None and (name := prepared.new(key)) is not None:  # withdrawn below unless prepared
            preparing[len(sends)] = name
            sends.append(_sender(pgconn.send_prepare, name, q.query, q.types))
        executing.append(len(sends))
        if name is not None:
            sends.append(_sender(pgconn.send_query_prepared, name, q.params, q.formats))
        else:
            sends.append(_sender(pgconn.send_query_params, q.query, q.params, q.types, q.formats))
    if commit:
        sends.append(lambda: pgconn.send_query_params(b"COMMIT", None))
    async with driver.lock:
        pgconn.enter_pipeline_mode()
        try:
            answers: list[list[pq.abc.PGresult]] = await driver.wait(_exchange(pgconn, sends))
        except BaseException:  # a cancel, a lost connection: whether each PREPARE happened is unknown
            for name in preparing.values():
                prepared.withdraw(name)  # prepared again, under a new name, if the connection lives on
            raise
        finally:
            if pgconn.pipeline_status != pq.PipelineStatus.OFF:
                try:
                    pgconn.exit_pipeline_mode()
                except psycopg.OperationalError:  # answers left unread (a cancel): the pool discards it
                    pass
    last = [answer[-1] if answer else None for answer in answers]
    for i, name in preparing.items():
        if (result := last[i]) is None or result.status not in _OK:
            prepared.withdraw(name)
    if failed := next((r for r in last if r is not None and r.status == _FATAL), None):
        raise errors.error_from_result(failed, encoding=driver.info.encoding)
    return [r if r is not None and r.status in _OK else None for r in (last[i] for i in executing)]


def _sender(method: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: method(*args)


def rows(driver: psycopg.AsyncConnection[Any], result: pq.abc.PGresult | None, kind: str = "named") -> list[Any]:
    """A result's rows: `named` (attribute access, as SQLAlchemy's rows), `dict` or `tuple`."""
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        return []
    tx = Transformer(driver)
    tx.set_pgresult(result)
    names = tuple((result.fname(i) or b"").decode() for i in range(result.nfields))
    make: Callable[[Sequence[Any]], Any]
    if kind == "dict":
        make = lambda values: dict(zip(names, values, strict=True))  # noqa: E731
    elif kind == "tuple":
        make = tuple
    else:
        make = _named(names)._make
    return tx.load_rows(0, result.ntuples, make)


@lru_cache(maxsize=256)
def _named(names: tuple[str, ...]) -> Any:
    return namedtuple("Row", names, rename=True)
