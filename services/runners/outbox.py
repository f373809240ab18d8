"""A runner stream's outgoing messages, bounded: a runner that stops reading cannot make the
service buffer without limit.

The stream writes these messages as fast as the runner reads them (HTTP/2 flow control: once the
transport's window is full, a write waits until the runner reads). What the runner has not taken
piles up here, so the queue has a mark, in messages and in bytes; at or over either it is *full*:

- no new jobs are leased for the runner (the lease loop asks for at most `room()` jobs, and jobs
  that arrive while the queue is full go back to the queue unstarted, uncounted);
- a queue that stays full for the slow-consumer timeout closes the stream (`SLOW_CONSUMER`, see
  the hub), its leases released as for any lost runner;
- meanwhile only answers to the runner's own messages (acks, errors, grants) can still arrive, and
  they cannot grow the queue past `HARD_FACTOR` times the mark: a put past that fails, and the
  stream is closed at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from innosystem.runners.v1 import runners_pb2 as pb

# Past this many times the mark, the queue takes nothing more (its stream is closed instead).
HARD_FACTOR = 4


class Outbox:
    def __init__(self, max_messages: int = 1_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._items: deque[tuple[pb.ConnectResponse | None, int]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._full_since: float | None = None
        self._ended = False
        # Called when a full queue has room again (the session wakes its lease loop with it).
        self.on_room: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def full(self) -> bool:
        return len(self._items) >= self.max_messages or self._bytes >= self.max_bytes

    def room(self) -> int:
        """Messages that may still be queued before the mark (jobs to lease at most)."""
        return 0 if self.full() else self.max_messages - len(self._items)

    def full_for(self, now: float | None = None) -> float:
        """Seconds the queue has been full without a break; 0 if it is not full."""
        if self._full_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self._full_since

    def put(self, message: pb.ConnectResponse) -> bool:
        """Queue `message`; False (nothing queued) past the hard bound, or once the stream ended."""
        if self._ended:
            return False
        size = message.ByteSize()
        if (len(self._items) >= HARD_FACTOR * self.max_messages
                or self._bytes + size > HARD_FACTOR * self.max_bytes):
            return False
        self._items.append((message, size))
        self._bytes += size
        self._changed()
        return True

    def end(self, final: pb.ConnectResponse | None = None, *, discard: bool = False) -> None:
        """No more messages: `final` (a fatal StreamError) is the last one written, then the stream
        ends. `discard` drops what is still queued first (a runner that does not read gets its
        final error right after what its transport already holds, not after the backlog)."""
        if self._ended:
            return
        self._ended = True
        if discard:
            self._items.clear()
            self._bytes = 0
        if final is not None:
            self._items.append((final, 0))  # always fits: the end is never refused
        self._items.append((None, 0))
        self._changed()

    def get_nowait(self) -> pb.ConnectResponse | None:
        message, size = self._items.popleft()
        self._bytes -= size
        self._changed()
        return message

    async def get(self) -> pb.ConnectResponse | None:
        """The next message to write; None when the stream is to end."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()

    def _changed(self) -> None:
        if self._items:
            self._ready.set()
        if self.full():
            if self._full_since is None:
                self._full_since = time.monotonic()
        elif self._full_since is not None:
            self._full_since = None
            if self.on_room is not None:
                self.on_room()
