"""``edgetftp [OPTIONS] SOURCE``: parse settings, build the source, serve until SIGTERM/SIGINT, drain."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from loguru import logger

from edgetftp import __version__, activation, privileges
from edgetftp.netutil import AddressError, bind_udp, format_address
from edgetftp.observability import HealthServer, LogAndMetrics, SourceMetrics, setup_logging
from edgetftp.policy import PathPolicy
from edgetftp.protocol.transfer import TransferConfig
from edgetftp.settings import Settings, SettingsFailure, load_settings
from edgetftp.sources.base import Source, SourceObserver, SourceUnavailable
from edgetftp.transport import ServerConfig, TftpServer

if TYPE_CHECKING:
    from edgetftp.sources.http import OriginOptions

HEALTH_CHECK_INTERVAL = 10.0  # seconds between source checks for /healthz
HEALTH_RETRY_INTERVAL = 1.0  # seconds between checks while the source is unhealthy


class StartupError(Exception):
    """Start-up failed for a reason the user can fix; the message is one line."""


def server_config(settings: Settings) -> ServerConfig:
    return ServerConfig(
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
        ipv6_prefix=settings.client_ipv6_prefix,
        policy=PathPolicy(extensions=settings.extensions),
        open_timeout=open_timeout(settings),
    )


def open_timeout(settings: Settings) -> float:
    """The longest a source may take to answer, its own retries included (docs/source-timeouts.md)."""
    schemes = {layer.split("://", 1)[0].lower() for layer in settings.source_layers if "://" in layer}
    longest = 10.0  # a directory: a cold read of a large file from a slow disk, on the thread pool
    if "s3" in schemes:
        longest = max(longest, settings.s3_timeout * settings.s3_retries)
    if schemes & {"http", "https"}:
        longest = max(longest, (2 * settings.origin_timeout + 1) * settings.origin_attempts)
    return longest


def build_source(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    observer: SourceObserver | None = None,
) -> Source:
    """The source for SOURCE: one layer, or several stacked (the first that has a file serves it).

    The one place Settings become source options.
    """
    layers = [
        build_layer(settings, layer, clock=clock, observer=observer) for layer in settings.source_layers
    ]
    if len(layers) == 1:
        return layers[0]
    from edgetftp.sources.layered import LayeredSource

    return LayeredSource(layers, errors_fall_through=settings.layer_errors_fall_through)


def build_layer(
    settings: Settings,
    layer: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    observer: SourceObserver | None = None,
) -> Source:
    scheme = layer.split("://", 1)[0].lower() if "://" in layer else ""
    if scheme == "s3":
        from edgetftp.sources.cache import CacheLimits
        from edgetftp.sources.s3 import S3Options, build_s3_source  # see require_source_extras

        options = S3Options(
            region=settings.region,
            endpoint_url=settings.endpoint_url,
            force_path_style=settings.force_path_style,
            dualstack=settings.dualstack,
            accelerate=settings.accelerate,
            sign_request=settings.sign_request,
            debug_api=settings.debug_api,
            timeout=settings.s3_timeout,
            retries=settings.s3_retries,
            pool=settings.s3_pool,
        )
        limits = CacheLimits(
            cache_bytes=settings.cache_bytes,
            object_max=settings.cache_object_max,
            ttl=settings.cache_ttl,
            negative_ttl=settings.negative_cache_ttl,
        )
        return build_s3_source(layer, options, limits, clock=clock, observer=observer)
    if scheme in ("http", "https"):
        from edgetftp.sources.http import build_http_source  # see require_source_extras

        return build_http_source(
            layer,
            origin_options(settings),
            cache_bytes=settings.cache_bytes,
            object_max=settings.cache_object_max,
            clock=clock,
            observer=observer,
        )
    from edgetftp.sources.local import LocalSource

    try:
        return LocalSource(
            layer,
            case_insensitive=settings.case_insensitive,
            cache_bytes=settings.cache_bytes,
            object_max=settings.cache_object_max,
            observer=observer,
        )
    except OSError as exc:
        detail = f"cannot open {layer}: {exc.strerror}"
        raise StartupError(f"invalid SOURCE (EDGETFTP_SOURCE): {detail}") from None


def origin_options(settings: Settings) -> OriginOptions:
    from edgetftp.sources.http import OriginOptions, parse_header_line

    return OriginOptions(
        timeout=settings.origin_timeout,
        attempts=settings.origin_attempts,
        pool=settings.origin_pool,
        buffer_max=settings.origin_buffer_max,
        stale_if_error_max=settings.origin_stale_if_error,
        cross_host_redirects=settings.origin_cross_host_redirects,
        static_headers=tuple(parse_header_line(line) for line in settings.origin_header),
        region=os.environ.get("FLY_REGION") or None,
    )


async def start_source(settings: Settings, source: Source) -> bool:
    """Start the source and make first contact; returns whether it is healthy now.

    Raises StartupError (exit 2, one line) for what the user must fix: an S3 endpoint or region
    botocore refuses, no credentials, a bucket that does not exist or refuses the credentials --
    unless ``--s3-start-anyway``.  An unreachable endpoint starts the server, unhealthy.
    """
    try:
        await source.start()
    except SourceUnavailable as exc:
        raise StartupError(f"invalid S3 settings (--endpoint-url, --region, ...): {exc}") from None
    status = await source.first_contact()
    if status.fatal and not settings.s3_start_anyway:
        await source.aclose()
        raise StartupError(f"{status.detail} (--s3-start-anyway starts regardless)")
    return status.healthy


def listening_sockets(settings: Settings) -> list[socket.socket]:
    """The sockets handed over by the system manager, else the ones bound from ``--listen``."""
    try:
        inherited = activation.inherited_udp_sockets()
    except activation.ActivationError as exc:
        raise StartupError(f"socket activation: {exc}") from None
    if inherited:
        if "listen" in settings.model_fields_set:
            passed = activation.describe(inherited)
            for sock in inherited:
                sock.close()
            raise StartupError(
                "invalid setting --listen (EDGETFTP_LISTEN): the system manager passed sockets "
                f"({passed}); serve on those and leave --listen unset"
            )
        return inherited
    return bind_listeners(settings)


def switch_user(settings: Settings) -> privileges.Identity | None:
    """The identity ``--user`` asks for, checked before anything is bound; None without ``--user``."""
    if settings.user is None:
        return None
    try:
        identity = privileges.resolve_identity(settings.user)
        privileges.check_can_switch(identity)
    except privileges.PrivilegeError as exc:
        raise StartupError(f"invalid setting --user (EDGETFTP_USER): {exc}") from None
    return identity


def drop_privileges(identity: privileges.Identity | None, sockets: list[socket.socket]) -> None:
    if identity is None:
        return
    try:
        privileges.drop_privileges(identity)
    except privileges.PrivilegeError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"invalid setting --user (EDGETFTP_USER): {exc}") from None
    logger.info("switched to {} after binding", identity)


async def serve(settings: Settings) -> int:
    """Run the server until a signal; returns the process exit code."""
    loop = asyncio.get_running_loop()
    identity = switch_user(settings)
    sockets = listening_sockets(settings)
    # Built (its modules imported) while the interpreter's files are surely readable; it touches no
    # network before start_source.
    source = build_source(settings, observer=SourceMetrics())
    # Every socket is bound; from here on the process never holds root (no datagram is read yet).
    drop_privileges(identity, sockets)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    starting = asyncio.ensure_future(start_source(settings, source))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():  # SIGTERM while S3 was being contacted: stop now
        starting.cancel()
        await source.aclose()
        for sock in sockets:
            sock.close()
        return 0
    health_state = {"ok": starting.result()}
    server = TftpServer(server_config(settings), source, LogAndMetrics())
    try:
        server.start(sockets)
    except AddressError as exc:
        await source.aclose()
        raise StartupError(f"invalid setting --listen (EDGETFTP_LISTEN): {exc}") from None
    health = _start_health(settings, lambda: server.serving and health_state["ok"])
    checker = asyncio.ensure_future(_watch_source(source, health_state, settings.s3_timeout))
    logger.info(
        "edgetftp {} serving {} on udp {} ({} port mode)",
        __version__,
        source.description,
        ", ".join(format_address(address) for address in server.local_addresses),
        settings.port_mode,
    )
    await stop.wait()
    checker.cancel()  # a hung health check must not delay the drain
    logger.info("draining {} transfers (up to {}s)", server.active_sessions, settings.drain_timeout)
    aborted = await server.drain(settings.drain_timeout)
    server.close()
    if health is not None:
        health.stop()
    await source.aclose()
    logger.info("stopped ({} transfers aborted at the drain deadline)", aborted)
    return 0


async def _watch_source(source: Source, state: dict[str, bool], timeout: float) -> None:
    """Keep ``state["ok"]`` current for /healthz: every interval, every second while unhealthy."""
    while True:
        await asyncio.sleep(HEALTH_CHECK_INTERVAL if state["ok"] else HEALTH_RETRY_INTERVAL)
        healthy = await _check_source(source, timeout)
        if healthy != state["ok"]:
            logger.log("INFO" if healthy else "WARNING", "source {}", "healthy" if healthy else "unhealthy")
        state["ok"] = healthy


def bind_listeners(settings: Settings) -> list[socket.socket]:
    """One bound UDP socket per --listen address; all or none (one line naming the setting)."""
    sockets: list[socket.socket] = []
    try:
        for address in settings.listen_addresses:
            sockets.append(bind_udp(address.host, address.port))
    except AddressError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"invalid setting --listen (EDGETFTP_LISTEN): {exc}") from None
    return sockets


def _start_health(settings: Settings, is_healthy: Callable[[], bool]) -> HealthServer | None:
    address = settings.http_address
    if address is None:
        return None
    try:
        health = HealthServer(address.host, address.port, is_healthy)
    except OSError as exc:
        raise StartupError(
            f"invalid setting --http-listen (EDGETFTP_HTTP_LISTEN): cannot bind {address}: {exc.strerror}"
        ) from None
    health.start()
    return health


async def _check_source(source: Source, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(source.check(), timeout + 1.0)  # the source bounds itself first
    except Exception as exc:
        logger.warning("source check failed: {}", exc)
        return False


#: What each remote SOURCE scheme imports lazily, and the extra that installs it.
SOURCE_EXTRAS = {
    "s3": ("S3 source", "s3", ("aioboto3", "aiobotocore", "botocore", "aiohttp")),
    "http": ("HTTP origin source", "origin", ("aiohttp",)),
    "https": ("HTTP origin source", "origin", ("aiohttp",)),
}


def require_source_extras(settings: Settings) -> None:
    """Fail with one line when a layer's extra is not installed (its libraries are imported only
    later, in the source's start(), where a missing module would end in a traceback)."""
    for layer in settings.source_layers:
        scheme = layer.split("://", 1)[0].lower() if "://" in layer else ""
        if scheme not in SOURCE_EXTRAS:
            continue
        what, extra, modules = SOURCE_EXTRAS[scheme]
        missing = [name for name in modules if importlib.util.find_spec(name) is None]
        if missing:
            raise StartupError(
                f"{what} needs the {extra} extra: pip install -e '.[{extra}]' "
                f"({', '.join(missing)} not installed)"
            )


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
        require_source_extras(settings)
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(serve(settings))
    except StartupError as exc:
        print(f"edgetftp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
