"""Logs, Prometheus metrics and the health endpoint: what the transport reports, made visible.

One log line per finished transfer (never one per packet).  Metrics live in their own registry,
served with /healthz by a small WSGI server on a thread (prometheus-client's own way), so the
event loop never blocks on a scrape.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from edgetftp.netutil import format_address
from edgetftp.protocol.events import Outcome, TransferEnded

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


def setup_logging(level: str, json: bool) -> None:
    logger.remove()
    if json:
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format="{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}",
            backtrace=False,
            diagnose=False,
        )


class LogAndMetrics:
    """The transport's Observer: a log line per transfer, counters for everything."""

    def transfer_ended(self, peer: tuple[str, int], event: TransferEnded) -> None:
        stats = event.stats
        TRANSFERS.labels(event.outcome.value).inc()
        BYTES_SENT.inc(stats.bytes_sent)
        DATAGRAMS_SENT.inc(stats.datagrams_sent)
        RETRANSMITS.inc(stats.retransmits)
        if event.outcome is Outcome.COMPLETED:
            BLKSIZE.observe(stats.blksize)
            DURATION.observe(stats.duration)
        level = "INFO" if event.outcome in (Outcome.COMPLETED, Outcome.ABORTED) else "WARNING"
        logger.bind(
            client=format_address(peer),
            file=stats.filename,
            outcome=event.outcome.value,
            bytes=stats.bytes_sent,
            size=stats.size,
            duration=round(stats.duration, 4),
            blksize=stats.blksize,
            windowsize=stats.windowsize,
            anticipate=stats.anticipate,
            retransmits=stats.retransmits,
            error_code=event.error_code,
        ).log(
            level,
            "transfer {outcome} client={client} file={file!r} bytes={bytes} duration={duration:.3f}s "
            "blksize={blksize} windowsize={windowsize} anticipate={anticipate} "
            "retransmits={retransmits}{detail}",
            outcome=event.outcome.value,
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
        logger.debug("request refused client={} reason={}", format_address(peer), reason)

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
                return metrics_app(environ, start_response)  # type: ignore[no-any-return]
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
