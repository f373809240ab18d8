"""`kit.db.pipelined(commit=True)` and `Writes.commit` send a whole transaction (BEGIN, statements,
COMMIT) in one round trip (`kit.roundtrip`); statements that open a transaction and leave it open
(billing's ledger lock) send its BEGIN with them. Every way out (an error, an error at COMMIT, a
cancellation) must commit nothing of the transaction and hand out the pooled connection next
ready for a real transaction. Round trips are counted by a relay between the pool and PostgreSQL:
one each time the server speaks after the client did."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database, Writes, driver_of, pipelined

_INSERT = text("INSERT INTO public.round_trips (k) VALUES (:k) RETURNING k")
_FAIL = text("SELECT 1 / :zero")
_COUNT = text("SELECT count(*) FROM public.round_trips WHERE k = :k")
_TABLE = Table("round_trips", MetaData(schema="public"), Column("k", Integer))


class Relay:
    """A TCP relay to PostgreSQL counting round trips (`turns`)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.turns = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        spoke = [False]  # the client sent something the server has not answered yet

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, from_client: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    if from_client:
                        spoke[0] = True  # before forwarding: the answer cannot overtake it
                    elif spoke[0]:
                        spoke[0] = False
                        self.turns += 1
                    w.write(data)
                    await w.drain()
            w.close()

        for task in (asyncio.create_task(pump(client_r, server_w, True)),
                     asyncio.create_task(pump(server_r, client_w, False))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@pytest.fixture
async def relayed(database_url: str) -> AsyncIterator[tuple[Database, Relay]]:
    parts = urlsplit(database_url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    db = Database(to_async_url(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}").geturl()), pool_size=1,
                  max_overflow=0)
    try:
        async with db.session() as s:  # connects (and SQLAlchemy's first-connect queries) before counting
            await s.execute(text("CREATE TABLE IF NOT EXISTS public.round_trips (k int, "
                                 "CONSTRAINT uq_round_trips_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"))
            await s.execute(text("TRUNCATE public.round_trips"))
        yield db, relay
    finally:
        await db.close()
        await relay.close()


async def _count(db: Database, k: int) -> int:
    async with db.session() as s:
        return int((await s.execute(_COUNT, {"k": k})).scalar_one())


async def _assert_real_transactions(db: Database, k: int) -> None:
    """The pooled connection is back with autocommit off: an error after an insert rolls it back."""
    async with db.session() as s:
        assert not (await driver_of(s)).autocommit
    with pytest.raises(DataError):
        async with db.session() as s:
            await s.execute(_INSERT, {"k": k})
            await s.execute(_FAIL, {"zero": 0})
    assert await _count(db, k) == 0


async def test_a_whole_pipelined_transaction_is_one_round_trip(relayed: tuple[Database, Relay]) -> None:
    db, relay = relayed
    before = relay.turns
    async with db.session() as s:
        rows = await pipelined(s, (_INSERT, {"k": 1}), (_INSERT, {"k": 2}), commit=True)
    assert relay.turns - before == 1  # BEGIN, both INSERTs and COMMIT; the session's own commit is a no-op
    assert [r.k for r in rows] == [2]
    assert await _count(db, 1) == 1 and await _count(db, 2) == 1
    await _assert_real_transactions(db, 3)


async def test_statements_are_prepared_once_per_connection(relayed: tuple[Database, Relay]) -> None:
    """A statement is prepared the second time a connection runs it and executed by name after;
    one whose preparation failed is not taken for prepared."""
    db, _ = relayed
    bad = text("SELECT no_such_column FROM public.round_trips WHERE k = :k")
    prepared = text("SELECT count(*) AS n FROM pg_prepared_statements WHERE name LIKE '\\_inno\\_%'")
    async with db.transaction() as conn:
        for k in (200, 201, 202):
            await pipelined(conn, (_INSERT, {"k": k}), commit=True)
        counts = [(await pipelined(conn, (prepared, {})))[0].n for _ in range(3)]
        for _ in range(3):
            with pytest.raises(DBAPIError, match="no_such_column"):
                await pipelined(conn, (bad, {"k": 1}))
            await conn.rollback()
        (row,) = await pipelined(conn, (prepared, {}))
    # the INSERT once; the count run once is not prepared, run again it is (and counts itself)
    assert counts == [1, 2, 2]
    assert row.n == 2  # the failing one, whose preparation failed, is not kept
    assert [await _next_transaction_counts(db, k) for k in (200, 201, 202)] == [1, 1, 1]


async def test_a_session_survives_psycopgs_deallocation_of_its_statements(relayed: tuple[Database, Relay]) -> None:
    """On a session's connection psycopg prepares statements of its own and deallocates them all at
    a ROLLBACK: the round trips' statements go on running there (they run unnamed)."""
    db, _ = relayed
    for k in (210, 211):
        with pytest.raises(DataError):
            async with db.session() as s:
                for _ in range(6):  # past psycopg's prepare threshold
                    await s.execute(_COUNT, {"k": k})
                await pipelined(s, (_INSERT, {"k": k}))
                await s.execute(_FAIL, {"zero": 0})  # then a ROLLBACK: psycopg's DEALLOCATE ALL
    async with db.session() as s:
        await pipelined(s, (_INSERT, {"k": 212}), commit=True)
    assert [await _count(db, k) for k in (210, 211, 212)] == [0, 0, 1]


async def test_copy_in_a_round_trip_is_refused_and_the_pool_goes_on(relayed: tuple[Database, Relay]) -> None:
    """COPY belongs to `copy_rows`: in a round trip it is refused (not hung on), and the pool's next
    transaction works."""
    db, _ = relayed
    with pytest.raises(DBAPIError, match="COPY"):
        async with db.transaction() as conn:
            await pipelined(conn, (text("COPY public.round_trips FROM STDIN"), {}))
    async with db.transaction() as conn:
        await pipelined(conn, (_INSERT, {"k": 220}), commit=True)
    assert await _next_transaction_counts(db, 220) == 1


async def test_writes_commit_is_one_round_trip_fresh_or_after_statements(relayed: tuple[Database, Relay]) -> None:
    db, relay = relayed
    before = relay.turns
    async with db.session() as s:
        writes = Writes()
        await writes.insert(s, _TABLE, [{"k": 10}, {"k": 11}])
        await writes.commit(s)
    assert relay.turns - before == 1  # BEGIN with the rows and COMMIT
    async with db.session() as s:
        await s.execute(_INSERT, {"k": 12})  # the transaction is open before the writes
        writes = Writes()
        writes.execute("UPDATE public.round_trips SET k = 13 WHERE k = 12")
        before = relay.turns
        await writes.commit(s)
        assert relay.turns - before == 1  # the UPDATE and COMMIT
    assert [await _count(db, k) for k in (10, 11, 12, 13)] == [1, 1, 0, 1]
    await _assert_real_transactions(db, 14)


async def test_a_transaction_opened_by_a_pipeline_costs_one_round_trip_more(relayed: tuple[Database, Relay]
                                                                            ) -> None:
    db, relay = relayed
    before = relay.turns
    async with db.session() as s:
        rows = await pipelined(s, (_INSERT, {"k": 60}))  # BEGIN with it, the transaction stays open
        writes = Writes()
        writes.execute("UPDATE public.round_trips SET k = 61 WHERE k = 60")
        await writes.commit(s)
        assert not (await driver_of(s)).autocommit  # off again once the transaction is over
    assert relay.turns - before == 2  # before: BEGIN, INSERT, COMMIT and the pipeline's exit, one each
    assert [r.k for r in rows] == [60]
    assert await _count(db, 60) == 0 and await _count(db, 61) == 1
    await _assert_real_transactions(db, 62)


async def test_an_error_after_a_pipeline_opened_the_transaction_rolls_it_back(relayed: tuple[Database, Relay]
                                                                              ) -> None:
    db, _ = relayed
    with pytest.raises(DataError):
        async with db.session() as s:
            await pipelined(s, (_INSERT, {"k": 70}))
            await s.execute(_FAIL, {"zero": 0})
    assert await _count(db, 70) == 0
    await _assert_real_transactions(db, 71)


async def test_a_connection_given_back_in_autocommit_comes_out_without_it(relayed: tuple[Database, Relay]) -> None:
    db, _ = relayed
    async with db.session() as s:
        await (await driver_of(s)).set_autocommit(True)
    await _assert_real_transactions(db, 80)


async def test_a_failing_statement_rolls_back_the_whole_pipeline(relayed: tuple[Database, Relay]) -> None:
    db, _ = relayed
    with pytest.raises(DataError):  # division by zero, after an insert in the same pipeline
        async with db.session() as s:
            await pipelined(s, (_INSERT, {"k": 20}), (_FAIL, {"zero": 0}), (_INSERT, {"k": 21}), commit=True)
    assert await _count(db, 20) == 0 and await _count(db, 21) == 0
    await _assert_real_transactions(db, 22)


@pytest.mark.parametrize("fresh", [True, False])
async def test_an_error_at_commit_raises_integrity_error_and_commits_nothing(relayed: tuple[Database, Relay],
                                                                             fresh: bool) -> None:
    db, _ = relayed
    with pytest.raises(IntegrityError):  # the deferred unique constraint is checked at COMMIT
        async with db.session() as s:
            if not fresh:
                await s.execute(_INSERT, {"k": 31})
            await pipelined(s, (_INSERT, {"k": 30}), (_INSERT, {"k": 30}), commit=True)
    with pytest.raises(IntegrityError):
        async with db.session() as s:
            if not fresh:
                await s.execute(_INSERT, {"k": 31})
            writes = Writes()
            await writes.insert(s, _TABLE, [{"k": 30}, {"k": 30}])
            await writes.commit(s)
    assert await _count(db, 30) == 0 and await _count(db, 31) == 0
    await _assert_real_transactions(db, 32)


async def _cancel_while_sleeping(use_case: Coroutine[Any, Any, None], database_url: str) -> None:
    """Run `use_case` until PostgreSQL runs its `pg_sleep`, then cancel it."""
    task = asyncio.create_task(use_case)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as watcher:
        for _ in range(2000):  # until PostgreSQL runs the sleep
            cur = await watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'")
            if (row := await cur.fetchone()) and row[0]:
                break
            await asyncio.sleep(0.005)
        else:
            pytest.fail("the sleep never reached PostgreSQL")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("committing", [True, False])
async def test_a_cancelled_transaction_leaves_a_usable_connection_without_autocommit(
        relayed: tuple[Database, Relay], database_url: str, committing: bool) -> None:
    db, _ = relayed
    sleep = text("SELECT pg_sleep(60)")

    async def use_case() -> None:
        async with db.session() as s:
            if committing:  # cancelled in the pipeline, waiting for its one round trip
                await pipelined(s, (_INSERT, {"k": 40}), (sleep, {}), commit=True)
            else:  # cancelled after a pipeline opened the transaction
                await pipelined(s, (_INSERT, {"k": 40}))
                await s.execute(sleep)

    await _cancel_while_sleeping(use_case(), database_url)
    assert await _count(db, 40) == 0
    await _assert_real_transactions(db, 41)
    async with db.session() as s:  # and it still commits whole transactions
        await pipelined(s, (_INSERT, {"k": 42}), commit=True)
    assert await _count(db, 42) == 1
    async with db.session() as s:
        await s.execute(text("DELETE FROM public.round_trips WHERE k = 42"))


async def test_a_failure_leaves_the_session_usable_for_sqlalchemy_statements(relayed: tuple[Database, Relay]) -> None:
    """After a pipelined commit, more statements in the same session start a new (real) transaction."""
    db, _ = relayed
    with pytest.raises(DBAPIError):
        async with db.session() as s:
            await pipelined(s, (_INSERT, {"k": 50}), commit=True)
            assert not (await driver_of(s)).autocommit
            await s.execute(_INSERT, {"k": 51})
            await s.execute(_FAIL, {"zero": 0})
    assert await _count(db, 50) == 1 and await _count(db, 51) == 0


async def test_statements_after_the_sessions_own_commit_are_a_real_transaction(relayed: tuple[Database, Relay]
                                                                               ) -> None:
    """A transaction a pipeline opened (autocommit on meanwhile) and the session committed: what the
    session runs next is a transaction of its own, not statements committed one by one. (A
    `Database.session()` refuses statements after its commit; a plain session may run them.)"""
    db, _ = relayed
    async with db.sessionmaker() as s:
        await pipelined(s, (_INSERT, {"k": 90}))
        await s.commit()
        await s.execute(_INSERT, {"k": 91})
        with pytest.raises(DataError):
            await s.execute(_FAIL, {"zero": 0})
        await s.rollback()
    assert await _count(db, 90) == 1 and await _count(db, 91) == 0


async def test_a_session_commits_rolls_back_and_always_gives_its_connection_back(relayed: tuple[Database, Relay]
                                                                                 ) -> None:
    """`Database.session()`: committed when the block ends, rolled back when it raises (the error
    goes on to the caller); and each way out returns the connection to the pool."""
    db, _ = relayed
    async with db.session() as s:
        await s.execute(_INSERT, {"k": 100})
    with pytest.raises(RuntimeError, match="the block failed"):
        async with db.session() as s:
            await s.execute(_INSERT, {"k": 101})
            raise RuntimeError("the block failed")
    with pytest.raises(DataError):
        async with db.session() as s:
            await s.execute(_INSERT, {"k": 102})
            await s.execute(_FAIL, {"zero": 0})
    assert [await _count(db, k) for k in (100, 101, 102)] == [1, 0, 0]
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_caller_cancelled_while_its_session_ends_waits_for_the_end(relayed: tuple[Database, Relay]) -> None:
    """A cancellation that comes while the transaction commits does not abandon the commit halfway:
    the commit finishes, the connection goes back to the pool, and only then is the cancellation
    raised in the caller."""
    db, _ = relayed
    ending = asyncio.Event()

    async def one() -> None:
        async with db.session() as s:
            await s.execute(_INSERT, {"k": 110})
            ending.set()  # the block ends: the commit starts at once

    task = asyncio.create_task(one())
    await ending.wait()
    task.cancel()  # the commit is under way (its round trip has not come back yet)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await _count(db, 110) == 1
    await _assert_real_transactions(db, 111)


async def _next_transaction_counts(db: Database, k: int) -> int:
    """The hot pool (one connection here) hands out its connection again: a fresh transaction reads."""
    async def read() -> int:
        async with db.transaction() as conn:
            return int((await pipelined(conn, (_COUNT, {"k": k})))[0][0])
    return await asyncio.wait_for(read(), 5)


async def test_a_hot_transaction_is_one_round_trip_and_commits_at_its_end(relayed: tuple[Database, Relay]) -> None:
    """`Database.transaction()`: the same one round trip as a session's pipelined transaction;
    statements left open are committed when the block ends; many rows go by COPY."""
    db, relay = relayed
    async with db.transaction():  # opens the pool's connection before counting
        pass
    before = relay.turns
    async with db.transaction() as conn:
        rows = await pipelined(conn, (_INSERT, {"k": 120}), (_INSERT, {"k": 121}), commit=True)
    assert relay.turns - before == 1 and [r.k for r in rows] == [121]
    async with db.transaction() as conn:
        await pipelined(conn, (_INSERT, {"k": 122}))  # the transaction stays open …
    async with db.transaction() as conn:  # … and was committed by the block's end
        writes = Writes()
        await writes.insert(conn, _TABLE, [{"k": 130 + i} for i in range(12)])  # COPY
        await writes.commit(conn)
        assert not conn.autocommit
    assert [await _next_transaction_counts(db, k) for k in (120, 121, 122, 130, 141)] == [1, 1, 1, 1, 1]


async def test_a_hot_transaction_rolls_back_on_error_and_keeps_the_error_class(relayed: tuple[Database, Relay]
                                                                              ) -> None:
    db, _ = relayed
    with pytest.raises(RuntimeError, match="the block failed"):
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": 150}))
            raise RuntimeError("the block failed")
    with pytest.raises(DataError):
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": 151}), (_FAIL, {"zero": 0}), commit=True)
    with pytest.raises(IntegrityError):  # the deferred unique constraint is checked at COMMIT
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": 152}), (_INSERT, {"k": 152}))
    assert [await _next_transaction_counts(db, k) for k in (150, 151, 152)] == [0, 0, 0]


async def test_a_hot_transaction_cancelled_mid_statement_commits_nothing(relayed: tuple[Database, Relay],
                                                                         database_url: str) -> None:
    """Cancelled while PostgreSQL runs its statement: nothing of it commits, and the pool's next
    transaction is a real one (the connection left mid-statement is reset or replaced)."""
    db, _ = relayed
    sleep = text("SELECT pg_sleep(60)")

    async def use_case() -> None:
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": 160}), (sleep, {}), commit=True)

    await _cancel_while_sleeping(use_case(), database_url)
    assert await _next_transaction_counts(db, 160) == 0
    with pytest.raises(DataError):
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": 161}))
            await pipelined(conn, (_FAIL, {"zero": 0}))
    assert await _next_transaction_counts(db, 161) == 0


async def test_a_statement_whose_preparation_a_cancel_skipped_is_prepared_again(relayed: tuple[Database, Relay],
                                                                                  database_url: str) -> None:
    """Cancelled in PostgreSQL's sleep, the round trip's later statements (and their preparation)
    never ran: the connection, which the pool keeps, prepares them again when next used."""
    db, _ = relayed
    sleep = text("SELECT pg_sleep(60)")
    fresh = text("SELECT :k + 1 AS n")
    async with db.transaction() as conn:  # run once: the next run prepares it
        await pipelined(conn, (fresh, {"k": 0}))

    async def use_case() -> None:
        async with db.transaction() as conn:
            await pipelined(conn, (sleep, {}), (fresh, {"k": 1}), commit=True)

    await _cancel_while_sleeping(use_case(), database_url)
    async with db.transaction() as conn:
        (row,) = await pipelined(conn, (fresh, {"k": 2}))
    assert row.n == 3


async def test_a_hot_transaction_on_a_dead_connection_fails_alone(relayed: tuple[Database, Relay],
                                                                  database_url: str) -> None:
    """The server ends the pool's connection (a restart, say): the next transaction fails with
    SQLAlchemy's OperationalError, as a session's would, and the one after gets a new connection."""
    db, _ = relayed
    async with db.transaction() as conn:
        pid = (await pipelined(conn, (text("SELECT pg_backend_pid() AS pid"), {})))[0].pid
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    await asyncio.sleep(0.2)  # the relay passes the close on
    with pytest.raises(OperationalError):
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": 170}), commit=True)
    async with db.transaction() as conn:
        await pipelined(conn, (_INSERT, {"k": 171}), commit=True)
    assert [await _next_transaction_counts(db, k) for k in (170, 171)] == [0, 1]


async def test_a_hot_transaction_gives_its_connection_back_before_its_block_returns(
        relayed: tuple[Database, Relay]) -> None:
    """No worker task of the pool's (a wake-up of the loop per transaction) takes the connection
    back: it is in the pool when the block has returned, and one left with its transaction open
    (an error before the block's end) comes back rolled back."""
    db, _ = relayed
    async with db.transaction():
        pass
    pool = db._pool
    assert pool is not None
    await asyncio.sleep(0.1)  # whatever the pool's own tasks had to do is done
    idle = pool.get_stats()["pool_available"]
    assert idle >= 1
    for k in (180, 181):
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": k}), commit=True)
        assert pool.get_stats()["pool_available"] == idle  # nothing awaited since the block ended
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await pipelined(conn, (_INSERT, {"k": 182}))  # BEGIN with it: the transaction is open
            assert not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            raise RuntimeError("the block failed")
    assert pool.get_stats()["pool_available"] == idle
    async with db.transaction() as conn:
        assert not conn.autocommit
    assert [await _next_transaction_counts(db, k) for k in (180, 181, 182)] == [1, 1, 0]
