"""Logs, Prometheus metrics and the health endpoint: what the transport reports, made visible.

One log line per finished transfer (never one per packet).  Metrics live in their own registry,
served with /healthz by a small WSGI server on a thread (prometheus-client's own way), so the
event loop never blocks on a scrape.

Logs: text by default; ``--log-json`` writes one flat JSON object per line with Elastic Common
Schema field names (``@timestamp``, ``log.level``, ``message``, ``client.ip``, ...; transfer details
that ECS has no field for under ``tftp.*``), which Vector, Loki, Datadog and CloudWatch parse as is.
Lines about requests that did not complete (missing files, refusals, timeouts) are rate-limited per
client address and in total (``JunkLogLimiter``); the metrics count every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import TYPE_CHECKING, Any, TextIO, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from edgetftp.netutil import format_address
from edgetftp.protocol.codes import ErrorCode
from edgetftp.protocol.events import Outcome, TransferEnded

if TYPE_CHECKING:
    from loguru import Message, Record

REGISTRY = CollectorRegistry(auto_describe=True)

TRANSFERS = Counter("edgetftp_transfers", "Finished transfers by outcome", ["outcome"], registry=REGISTRY)
BYTES_SENT = Counter("edgetftp_bytes_sent", "File bytes sent (first transmissions)", registry=REGISTRY)
DATAGRAMS_SENT = Counter("edgetftp_datagrams_sent", "Datagrams sent by transfers", registry=REGISTRY)
RETRANSMITS = Counter("edgetftp_retransmits", "Datagrams sent again after a timeout", registry=REGISTRY)
REFUSED = Counter(
    "edgetftp_requests_refused", "Requests refused before a transfer", ["reason"], registry=REGISTRY
)
DROPPED = Counter(
    "edgetftp_datagrams_dropped", "Datagrams ignored or not sent", ["reason"], registry=REGISTRY
)
ACTIVE = Gauge("edgetftp_active_sessions", "Transfers in progress", registry=REGISTRY)
BLKSIZE = Histogram(
    "edgetftp_negotiated_blksize",
    "blksize of finished transfers",
    buckets=(512, 1024, 1268, 1428, 1432, 1468, 4096, 8192, 16384, 65464),
    registry=REGISTRY,
)
DURATION = Histogram(
    "edgetftp_transfer_seconds",
    "Duration of completed transfers",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
# The S3 source and its cache count here too.
CACHE_HITS = Counter("edgetftp_cache_hits", "Opens answered from the cache", registry=REGISTRY)
CACHE_MISSES = Counter("edgetftp_cache_misses", "Opens that went to the store", registry=REGISTRY)
S3_REQUESTS = Counter("edgetftp_s3_requests", "S3 API calls by operation", ["operation"], registry=REGISTRY)
S3_ERRORS = Counter(
    "edgetftp_s3_errors", "Failed S3 API calls by operation", ["operation"], registry=REGISTRY
)
CACHE_EVENTS = Counter(
    "edgetftp_cache_events",
    "Cache events (negative-hit, revalidated, eviction, ...)",
    ["kind"],
    registry=REGISTRY,
)
SOURCE_ERRORS = Counter(
    "edgetftp_source_errors",
    "Failures of the source itself (unavailable, changed)",
    ["kind"],
    registry=REGISTRY,
)
RESIDENT_BYTES = Gauge(
    "edgetftp_resident_file_bytes",
    "File bytes held in memory: the cache plus buffers still pinned by transfers",
    registry=REGISTRY,
)


ECS_VERSION = "8.11.0"
TEXT_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}"


def setup_logging(level: str, json: bool, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr): text lines, or with ``json`` one ECS JSON object per line."""
    logger.remove()
    out = stream or sys.stderr
    if json:
        logger.add(EcsJsonSink(out), level=level.upper(), format="{message}", catch=True)
    else:
        logger.add(out, level=level.upper(), format=TEXT_FORMAT, backtrace=False, diagnose=False)


class EcsJsonSink:
    """One flat JSON object per record: ``@timestamp``, ``log.level``, ``message``, then the fields
    bound as ``logger.bind(ecs={...})``.  No source paths, no icons: what a log shipper needs."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, message: Message) -> None:
        self._stream.write(
            json.dumps(ecs_document(message.record), separators=(",", ":"), default=str) + "\n"
        )
        self._stream.flush()


def ecs_document(record: Record) -> dict[str, Any]:
    extra = record["extra"]
    moment = record["time"].astimezone(UTC)
    document: dict[str, Any] = {
        "@timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
        "log.level": record["level"].name.lower(),
        "message": extra.get("summary") or record["message"],
        "ecs.version": ECS_VERSION,
    }
    document.update(extra.get("ecs", {}))
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        document["error.type"] = exception.type.__name__
        document["error.message"] = str(exception.value)
    return document


def metric_outcome(event: TransferEnded) -> Outcome:
    """The outcome as counted and logged: a request refused with ERROR 0 before anything was sent
    failed in the source (S3 down, open timed out), it was not refused by policy."""
    if event.outcome is Outcome.REJECTED and event.error_code == ErrorCode.NOT_DEFINED:
        return Outcome.SOURCE_ERROR
    return event.outcome


class JunkLogLimiter:
    """Bounds the log lines about requests that did not complete, whatever a scanner sends.

    Per minute: at most ``per_client`` lines for one client address and ``total`` lines in all;
    what goes over is counted and reported in one summary line when the minute is over.  Worst
    case: ``total`` + 1 lines a minute (100 + 1: about 30 KB/min, 43 MB/day at ~300 bytes a line).
    Memory: one counter per address that got a line this minute, so at most ``total`` entries.
    """

    def __init__(
        self,
        per_client: int = 5,
        total: int = 100,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client = per_client
        self.total = total
        self.window = window
        self._clock = clock
        self._started = clock()
        self._lines: dict[str, int] = {}
        self._logged = 0
        self.suppressed = 0

    def allow(self, client_ip: str) -> bool:
        self.tick()
        count = self._lines.get(client_ip, 0)
        if count >= self.per_client or self._logged >= self.total:
            self.suppressed += 1
            return False
        self._lines[client_ip] = count + 1
        self._logged += 1
        return True

    def seconds_left(self) -> float:
        return max(0.0, self.window - (self._clock() - self._started))

    def tick(self) -> None:
        """Close the minute when it is over: one summary line if anything was held back."""
        now = self._clock()
        if now - self._started < self.window:
            return
        if self.suppressed:
            logger.bind(summary="log lines suppressed", ecs={"tftp.suppressed": self.suppressed}).warning(
                "{} log lines about refused or unfinished requests suppressed in the last {:.0f}s "
                "(at most {} per client address and {} in all per minute; the metrics count them all)",
                self.suppressed,
                now - self._started,
                self.per_client,
                self.total,
            )
        self._started = now
        self._lines.clear()
        self._logged = 0
        self.suppressed = 0


class LogAndMetrics:
    """The transport's Observer: a log line per transfer, counters for everything."""

    def __init__(self, limiter: JunkLogLimiter | None = None) -> None:
        self.limiter = limiter or JunkLogLimiter()
        self._summary_timer: asyncio.TimerHandle | None = None

    def _log_allowed(self, client_ip: str) -> bool:
        if self.limiter.allow(client_ip):
            return True
        # The summary is due when the minute ends, even if the flood stopped: wake up for it.
        if self._summary_timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next event will tick
                loop = asyncio.get_running_loop()
                self._summary_timer = loop.call_later(self.limiter.seconds_left() + 0.01, self._summary_due)
        return False

    def _summary_due(self) -> None:
        self._summary_timer = None
        self.limiter.tick()
        if self.limiter.suppressed:  # woke a little early: the minute is not over yet
            loop = asyncio.get_running_loop()
            self._summary_timer = loop.call_later(self.limiter.seconds_left() + 0.01, self._summary_due)

    def transfer_ended(self, peer: tuple[str, int], event: TransferEnded) -> None:
        stats = event.stats
        outcome = metric_outcome(event)
        TRANSFERS.labels(outcome.value).inc()
        BYTES_SENT.inc(stats.bytes_sent)
        DATAGRAMS_SENT.inc(stats.datagrams_sent)
        RETRANSMITS.inc(stats.retransmits)
        if outcome is Outcome.COMPLETED:
            BLKSIZE.observe(stats.blksize)
            DURATION.observe(stats.duration)
        elif not self._log_allowed(peer[0]):
            return
        level = "INFO" if outcome in (Outcome.COMPLETED, Outcome.ABORTED) else "WARNING"
        logger.bind(summary=f"transfer {outcome.value}", ecs=transfer_fields(peer, event, outcome)).log(
            level,
            "transfer {outcome} client={client} file={file!r} bytes={bytes} duration={duration:.3f}s "
            "blksize={blksize} windowsize={windowsize} anticipate={anticipate} "
            "retransmits={retransmits}{detail}",
            outcome=outcome.value,
            client=format_address(peer),
            file=stats.filename,
            bytes=stats.bytes_sent,
            duration=stats.duration,
            blksize=stats.blksize,
            windowsize=stats.windowsize,
            anticipate=stats.anticipate,
            retransmits=stats.retransmits,
            detail=f" reason={event.reason!r}" if event.reason else "",
        )

    def request_refused(self, peer: tuple[str, int], reason: str) -> None:
        REFUSED.labels(reason).inc()
        if self._log_allowed(peer[0]):
            logger.bind(
                summary=f"request refused: {reason}",
                ecs={"client.ip": peer[0], "client.port": peer[1], "event.reason": reason},
            ).info("request refused client={} reason={}", format_address(peer), reason)

    def datagram_dropped(self, reason: str) -> None:
        DROPPED.labels(reason).inc()

    def sessions_changed(self, active: int) -> None:
        ACTIVE.set(active)

    def resource_exhausted(self, what: str, detail: str, suppressed: int) -> None:
        # The transport calls this once a minute at most, so a flood cannot turn it into log volume.
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.warning("out of {}: requests answered 'Server busy': {}{}", what, detail, more)

    def internal_error(self, where: str, exc: Exception) -> None:
        DROPPED.labels("internal-error").inc()
        logger.opt(exception=exc).error("internal error while handling a {} (server continues)", where)


def transfer_fields(peer: tuple[str, int], event: TransferEnded, outcome: Outcome) -> dict[str, Any]:
    """A finished transfer in ECS terms; details ECS has no field for go under ``tftp.*``."""
    stats = event.stats
    fields: dict[str, Any] = {
        "client.ip": peer[0],
        "client.port": peer[1],
        "file.path": stats.filename,
        "event.outcome": "success" if outcome is Outcome.COMPLETED else "failure",
        "event.duration": round(stats.duration * 1e9),  # ECS: nanoseconds
        "server.bytes": stats.bytes_sent,
        "tftp.outcome": outcome.value,
        "tftp.blksize": stats.blksize,
    }
    # Fields left out at their usual value keep a line under 400 bytes even from a long IPv6 address.
    if stats.size is not None:
        fields["file.size"] = stats.size
    if stats.windowsize != 1:
        fields["tftp.windowsize"] = stats.windowsize
    if stats.anticipate:
        fields["tftp.anticipate"] = stats.anticipate
    if stats.retransmits:
        fields["tftp.retransmits"] = stats.retransmits
    if event.error_code is not None:
        fields["tftp.error_code"] = event.error_code
    if event.reason:
        fields["event.reason"] = event.reason
    return fields


class SourceMetrics:
    """The sources' observer (sources.base.SourceObserver): their events as Prometheus metrics."""

    def cache_event(self, kind: str) -> None:
        if kind == "hit":
            CACHE_HITS.inc()
        elif kind == "miss":
            CACHE_MISSES.inc()
        else:
            CACHE_EVENTS.labels(kind).inc()

    def store_call(self, operation: str, failed: bool) -> None:
        S3_REQUESTS.labels(operation).inc()
        if failed:
            S3_ERRORS.labels(operation).inc()

    def source_error(self, kind: str) -> None:
        SOURCE_ERRORS.labels(kind).inc()

    def resident_bytes(self, total: int) -> None:
        RESIDENT_BYTES.set(total)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the transfer log


class HealthServer:
    """``GET /healthz`` (200 while ``is_healthy()``) and ``GET /metrics``, on a daemon thread."""

    def __init__(self, host: str, port: int, is_healthy: Callable[[], bool]) -> None:
        metrics_app = make_wsgi_app(REGISTRY)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                healthy = is_healthy()
                start_response(
                    "200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                return [b"ok\n" if healthy else b"unhealthy\n"]
            if path == "/metrics":
                return cast(Iterable[bytes], metrics_app(environ, start_response))  # (untyped library)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]

        self._server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
