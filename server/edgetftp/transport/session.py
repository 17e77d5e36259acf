"""The per-session driver: resolve the file, send what the core queued, arm its timer, feed it.

One step (``flush``) after every call into the transfer: send ``datagrams_to_send()``, pop its end
event, re-arm its timer, and start a read when a streamed file's transfer wants more bytes.  The
core decides how much it wants (``bytes_wanted``) and when the file ends (``feed(..., eof)``); the
driver only moves bytes from the source to it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

from edgetftp.policy import PathPolicy, PolicyError
from edgetftp.protocol.codes import ErrorCode
from edgetftp.protocol.events import Outcome, TransferEnded
from edgetftp.protocol.packets import ReadRequest
from edgetftp.protocol.transfer import ReadTransfer
from edgetftp.sources.base import Content, RequestContext, Source, SourceError
from edgetftp.transport.config import Observer, Peer
from edgetftp.transport.sender import Ancillary, DatagramSender, Endpoint
from edgetftp.transport.timers import TimerQueue

STREAM_READ_MIN = 64 * 1024  # bytes per source read at least: fewer, larger reads


class Session:
    """One transfer and what the transport keeps beside it."""

    __slots__ = (
        "ancillary",
        "client_key",
        "closed",
        "content",
        "endpoint",
        "key",
        "offset",
        "peer",
        "reading",
        "request_bytes",
        "streaming",
        "tasks",
        "timer_at",
        "timer_token",
        "transfer",
    )

    def __init__(
        self,
        key: tuple[int, Peer],
        client_key: str,
        request_bytes: bytes,
        transfer: ReadTransfer,
        endpoint: Endpoint,
        ancillary: Ancillary,
    ) -> None:
        self.key = key  # (listener index, client address): how the server finds it
        self.peer = key[1]
        self.client_key = client_key  # what limits are counted by (address, or IPv6 prefix)
        self.request_bytes = request_bytes
        self.transfer = transfer
        self.endpoint = endpoint
        self.ancillary = ancillary
        self.content: Content | None = None
        self.offset = 0  # bytes read from a streamed content so far
        self.streaming = False  # the content is read piece by piece (not resident)
        self.reading = False
        self.closed = False
        self.timer_at = math.inf
        self.timer_token = 0
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def started(self) -> float:
        return self.transfer.stats.started

    @property
    def peer_confirmed(self) -> bool:
        return self.transfer.peer_confirmed


class SessionDriver:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sender: DatagramSender,
        observer: Observer,
        open_timeout: float,
        on_end: Callable[[Session, TransferEnded], None],
    ) -> None:
        self._loop = loop
        self._sender = sender
        self._observer = observer
        self._open_timeout = open_timeout
        self._on_end = on_end
        self.timers: TimerQueue[Session] = TimerQueue(loop, self._on_timer)
        self._background: set[asyncio.Task[None]] = set()  # strong references to detached tasks

    # --- the step after every call into the transfer -------------------------------------------

    def flush(self, session: Session) -> None:
        transfer = session.transfer
        outgoing = transfer.datagrams_to_send()
        if len(outgoing) == 1 and not session.ancillary:  # the lock-step hot path, inline
            try:
                session.endpoint.sock.sendto(outgoing[0], session.peer)
            except OSError:  # a full buffer or an unreachable peer: the retransmission timer covers it
                self._observer.datagram_dropped("send-error")
        elif outgoing:
            self._sender.send(session.endpoint, outgoing, session.peer, session.ancillary)
        event = transfer.next_event()
        if event is not None:
            self._end(session, event)
            return
        deadline = transfer.get_timer()
        if deadline is not None and deadline < session.timer_at:
            self.timers.push(session, deadline)
        if session.streaming and not session.reading and transfer.bytes_wanted() > 0:
            session.reading = True
            self._spawn(session, self._read_more(session))

    def deliver(self, session: Session, data: bytes | memoryview) -> None:
        session.transfer.receive_datagram(data, self._loop.time())
        self.flush(session)

    def _on_timer(self, session: Session, now: float) -> None:
        deadline = session.transfer.get_timer()
        if deadline is None:
            return
        if deadline > now:
            self.timers.push(session, deadline)  # the deadline moved later since it was queued
            return
        try:
            session.transfer.handle_timer(now)
            self.flush(session)
        except Exception as exc:  # one broken session must not stop the timers
            self._observer.internal_error("timer", exc)

    # --- resolving the file ----------------------------------------------------------------------

    def resolve(
        self,
        session: Session,
        request: ReadRequest,
        source: Source,
        policy: PathPolicy,
        context: RequestContext,
    ) -> None:
        """Look the file up (from memory when the source can) and accept or reject the transfer."""
        now = self._loop.time()
        try:
            path = policy.check(request.filename)
            content = source.open_now_for(path, context)
        except (PolicyError, SourceError) as exc:
            session.transfer.reject(exc.error_code, exc.public_message, now, str(exc))
            return
        if content is None:
            self._spawn(session, self._open_slowly(session, source, path, context))
        else:
            self._start(session, content)

    async def _open_slowly(
        self, session: Session, source: Source, path: str, context: RequestContext
    ) -> None:
        try:
            async with asyncio.timeout(self._open_timeout):
                content = await source.open_for(path, context)
        except (SourceError, TimeoutError) as exc:
            if not session.closed:
                error = exc if isinstance(exc, SourceError) else SourceError(f"open timed out: {path}")
                session.transfer.reject(error.error_code, error.public_message, self._loop.time(), str(error))
                self.flush(session)
            return
        if session.closed:
            await content.aclose()
            return
        self._start(session, content)
        self.flush(session)

    def _start(self, session: Session, content: Content) -> None:
        session.content = content
        now = self._loop.time()
        session.transfer.accept(content.tsize, now)  # None: tsize is left out of the OACK
        if content.memory is not None:
            session.offset = content.size
            session.transfer.feed(content.memory, True, now)
        else:
            session.streaming = True

    # --- streamed sources ------------------------------------------------------------------------

    async def _read_more(self, session: Session) -> None:
        content, transfer = session.content, session.transfer
        assert content is not None
        try:
            while not session.closed and (wanted := transfer.bytes_wanted()) > 0:
                length = max(wanted, STREAM_READ_MIN)
                async with asyncio.timeout(self._open_timeout):
                    chunk = await content.read(session.offset, length)
                if session.closed:
                    return
                session.offset += len(chunk)
                eof = len(chunk) < length or session.offset >= content.size
                transfer.feed(chunk, eof, self._loop.time())
                self.flush(session)
        except (SourceError, TimeoutError) as exc:
            if not session.closed:
                detail = str(exc) or "read timed out"
                message = exc.public_message if isinstance(exc, SourceError) else SourceError.public_message
                now = self._loop.time()
                transfer.abort(ErrorCode.NOT_DEFINED, message, now, Outcome.SOURCE_ERROR, detail)
                self.flush(session)
        finally:
            session.reading = False

    # --- the end ---------------------------------------------------------------------------------

    def _end(self, session: Session, event: TransferEnded) -> None:
        session.closed = True
        for task in session.tasks:
            task.cancel()
        content = session.content
        if content is not None and content.memory is None:
            self._spawn_detached(content.aclose())
        self._on_end(session, event)

    def _spawn(self, session: Session, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    def _spawn_detached(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
