"""``edgetftp [OPTIONS] SOURCE``: parse settings, build the source, serve until SIGTERM/SIGINT, drain."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence

from loguru import logger

from edgetftp import __version__
from edgetftp.netutil import AddressError, format_address
from edgetftp.observability import HealthServer, LogAndMetrics, setup_logging
from edgetftp.policy import PathPolicy
from edgetftp.protocol.transfer import TransferConfig
from edgetftp.settings import Settings, SettingsFailure, load_settings
from edgetftp.sources.base import Source
from edgetftp.transport import ServerConfig, TftpServer

HEALTH_CHECK_INTERVAL = 10.0  # seconds between source checks for /healthz


class StartupError(Exception):
    """Start-up failed for a reason the user can fix; the message is one line."""


def server_config(settings: Settings) -> ServerConfig:
    address = settings.listen_address
    return ServerConfig(
        host=address.host,
        port=address.port,
        port_mode=settings.reply_ports,
        mtu=settings.mtu,
        max_blksize=settings.max_blksize,
        transfer=TransferConfig(
            timeout=settings.timeout,
            max_timeout=settings.max_timeout,
            retries=settings.retries,
            max_window=settings.max_window,
            anticipate=settings.anticipate,
            max_silence=settings.max_silence,
        ),
        max_sessions=settings.max_sessions,
        max_sessions_per_client=settings.max_sessions_per_client,
        client_rate=settings.client_rate,
        policy=PathPolicy(extensions=settings.extensions),
        open_timeout=max(2.0, settings.s3_timeout * settings.s3_retries),
    )


def build_source(settings: Settings) -> Source:
    if settings.is_s3:
        try:
            from edgetftp.sources.s3 import s3_source_from_settings
        except ImportError as exc:
            raise StartupError(f"S3 source needs aioboto3: pip install 'edgetftp[s3]' ({exc})") from None
        return s3_source_from_settings(settings)
    from edgetftp.sources.local import LocalSource

    return LocalSource(
        settings.source,
        case_insensitive=settings.case_insensitive,
        resident_bytes=settings.cache_bytes,
        resident_max=settings.cache_object_max,
    )


async def serve(settings: Settings) -> int:
    """Run the server until a signal; returns the process exit code."""
    loop = asyncio.get_running_loop()
    source = build_source(settings)
    await source.start()
    server = TftpServer(server_config(settings), source, LogAndMetrics())
    try:
        server.start()
    except AddressError as exc:
        await source.aclose()
        raise StartupError(f"invalid setting --listen (EDGETFTP_LISTEN): {exc}") from None
    source_ok = True
    health = _start_health(settings, lambda: server.serving and source_ok)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    assert server.local_address is not None
    logger.info(
        "edgetftp {} serving {} on udp {} ({} port mode)",
        __version__,
        source.description,
        format_address(server.local_address),
        settings.port_mode,
    )
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEALTH_CHECK_INTERVAL)
        if not stop.is_set():
            source_ok = await _check_source(source)
    logger.info("draining {} transfers (up to {}s)", server.active_sessions, settings.drain_timeout)
    aborted = await server.drain(settings.drain_timeout)
    server.close()
    if health is not None:
        health.stop()
    await source.aclose()
    logger.info("stopped ({} transfers aborted at the drain deadline)", aborted)
    return 0


def _start_health(settings: Settings, is_healthy: object) -> HealthServer | None:
    address = settings.http_address
    if address is None:
        return None
    try:
        health = HealthServer(address.host, address.port, is_healthy)  # type: ignore[arg-type]
    except OSError as exc:
        raise StartupError(
            f"invalid setting --http-listen (EDGETFTP_HTTP_LISTEN): cannot bind {address}: {exc.strerror}"
        ) from None
    health.start()
    return health


async def _check_source(source: Source) -> bool:
    try:
        return await asyncio.wait_for(source.check(), 5.0)
    except Exception as exc:
        logger.warning("source check failed: {}", exc)
        return False


def _event_loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    try:
        settings = load_settings(argv)
    except SettingsFailure as exc:
        for line in str(exc).splitlines():
            print(f"edgetftp: {line}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    logger.debug("settings parsed in {:.3f}s", time.monotonic() - started)
    factory = _event_loop_factory()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(serve(settings))
    except StartupError as exc:
        print(f"edgetftp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
