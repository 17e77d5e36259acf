"""A UDP impairment relay for tests and benchmarks: loss, duplication, reordering, delay and jitter.

The kernel on our CI machines has no ``netem``, so bad networks are made in user space: a relay on
loopback that sits between a client and a (TFTP) server and mistreats the datagrams it forwards, at set
rates, per direction, with a seeded RNG so a run can be repeated.

Topology (one *flow* per client address and port)::

    client C ──► listen socket ──► flow socket U_C ──► server:port          (requests, ACKs)
    client C ◄── listen socket ◄── flow socket U_C ◄── server:port          (single-port replies)
    client C ◄── side socket S ◄── flow socket U_C ◄── server:TID           (RFC 1350 per-transfer replies)
    client C ──► side socket S ──► flow socket U_C ──► server:TID

- Each client (address, port) gets its own upstream socket U_C, so the server sees one distinct peer
  per client, as it would without the relay (single-port servers demultiplex on that address).
- A reply from the server's listening port goes back through the listen socket.  A reply from any
  other server port (a classic server's transfer ID) gets a client-facing *side socket* of its own,
  one per (flow, server port); the client sees that side socket as the server's TID and answers to
  it, and the relay forwards those answers from U_C to the matching server port.  Datagrams reaching
  a side socket from anyone but the flow's client are counted as ``stray`` and dropped.
- Idle flows (no datagram either way for ``idle_timeout`` seconds) are closed with their sockets.

What happens to each datagram, per direction (``Impairment``):

1. ``loss``: dropped with this probability.
2. ``duplicate``: sent twice with this probability.
3. ``reorder``: each copy is held back with this probability and released right after the next
   datagram on the same path (so the two swap places), or after ``reorder_hold_ms`` if none comes
   (then it is only late: a lock-step exchange has nothing to swap with).  At most one is held per path.
4. ``delay_ms`` ± ``jitter_ms`` (uniform): one-way delay before it leaves.  A round trip through the
   relay costs twice the delay.  As with netem, jitter larger than the gap between datagrams reorders.

Reproducibility: each direction has its own ``random.Random`` seeded from ``seed`` and the direction,
and every datagram consumes the same number of draws at arrival, so the n-th datagram in a direction
always meets the same fate for a given seed, whatever the timing.  A different datagram sequence
(e.g. retransmissions caused by timing) of course changes what follows.

Use::

    async with ImpairmentProxy(upstream=("127.0.0.1", port), loss=0.1, delay_ms=25) as proxy:
        ...  # point the client at proxy.address; read proxy.stats afterwards

    handle = ImpairmentProxy.start_in_thread(upstream=..., loss=0.1)  # for subprocess clients
    ...; handle.stats(); handle.stop()

CLI: ``python -m bench.impairment --listen 127.0.0.1:7000 --upstream 127.0.0.1:6969 --delay-ms 25
--loss 0.01`` (``--to-client loss=0.05`` style flags override one direction); Ctrl-C prints the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import json
import random
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

Addr = tuple[str, int]

RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # so bursts are not lost in the kernel and skew the loss figures
MAX_DATAGRAM = 65535
READS_PER_WAKEUP = 64  # drain this many datagrams per readiness callback, then let other sockets run
DRAWS_PER_DATAGRAM = 6  # loss, duplicate, and (reorder, jitter) for each of up to two copies


class Direction(StrEnum):
    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


@dataclass(frozen=True, slots=True)
class Impairment:
    """What the relay does to the datagrams going one way."""

    loss: float = 0.0
    """Probability (0..1) that a datagram is dropped."""
    duplicate: float = 0.0
    """Probability (0..1) that a datagram is sent twice."""
    reorder: float = 0.0
    """Probability (0..1) that a datagram is held back until the next one on its path has left."""
    reorder_hold_ms: float = 20.0
    """How long a held datagram waits for a successor before it leaves anyway."""
    delay_ms: float = 0.0
    """Fixed one-way delay."""
    jitter_ms: float = 0.0
    """Uniform random variation of the delay, ± this much (the delay never goes below 0)."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        for name in ("reorder_hold_ms", "delay_ms", "jitter_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(slots=True)
class DirectionStats:
    """Counters for one direction.  ``sent`` counts copies that left (duplicates included)."""

    received: int = 0
    bytes_received: int = 0
    dropped: int = 0
    duplicated: int = 0
    held: int = 0
    reordered: int = 0
    """Held datagrams that left behind a later one (``held`` minus those released by the hold timer)."""
    sent: int = 0
    bytes_sent: int = 0
    send_errors: int = 0


@dataclass(slots=True)
class ProxyStats:
    to_server: DirectionStats = field(default_factory=DirectionStats)
    to_client: DirectionStats = field(default_factory=DirectionStats)
    flows: int = 0
    """Client (address, port) flows opened."""
    transfer_ports: int = 0
    """Side sockets opened: server source ports other than the upstream one (RFC 1350 TIDs)."""
    stray: int = 0
    """Datagrams ignored because they reached a side socket from someone other than its client."""

    def direction(self, direction: Direction) -> DirectionStats:
        return self.to_server if direction is Direction.TO_SERVER else self.to_client

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Tap = Callable[[Direction, bytes, Addr, Addr], None]
"""Called for each datagram as it arrives, before impairment: (direction, data, client, server)."""

Spare = Callable[[Direction, bytes], bool]
"""True for a datagram that must not be dropped or duplicated: (direction, data)."""


def _plain(addr: Any) -> Addr:
    """Flatten an IPv6 4-tuple to (host, port) so it can be compared and used as a key."""
    return (addr[0], addr[1])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _wildcard_or_loopback(host: str) -> str:
    return "::1" if _family(host) is socket.AF_INET6 else "127.0.0.1"


def _open_socket(bind: Addr) -> socket.socket:
    sock = socket.socket(_family(bind[0]), socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RECEIVE_BUFFER_BYTES)
        sock.bind(bind)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Path:
    """One direction of one relayed path: the socket it leaves from and its destination."""

    __slots__ = ("closed", "dest", "direction", "held", "held_timer", "sock")

    def __init__(self, sock: socket.socket, dest: Addr, direction: Direction) -> None:
        self.sock = sock
        self.dest = dest
        self.direction = direction
        self.held: tuple[bytes, float] | None = None  # (datagram, its delay in seconds)
        self.held_timer: asyncio.TimerHandle | None = None
        self.closed = False


@dataclass(eq=False)
class _Flow:
    client: Addr
    upstream_sock: socket.socket
    last_active: float
    side_socks: dict[Addr, socket.socket] = field(default_factory=dict)  # server TID -> client-facing
    paths: dict[tuple[Direction, Addr], _Path] = field(default_factory=dict)


class ImpairmentProxy:
    """An asyncio UDP relay that impairs traffic between clients and one upstream server."""

    def __init__(
        self,
        upstream: Addr,
        *,
        listen: Addr = ("127.0.0.1", 0),
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_hold_ms: float = 20.0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        to_server: Impairment | None = None,
        to_client: Impairment | None = None,
        seed: int | str = 0,
        idle_timeout: float = 120.0,
        tap: Tap | None = None,
        spare: Spare | None = None,
    ) -> None:
        """The keyword impairments apply to both directions unless ``to_server``/``to_client`` is given.

        ``spare`` picks datagrams that are never dropped or duplicated (still delayed and reordered):
        for clients that cannot survive losing or seeing twice a particular packet.
        """
        both = Impairment(loss, duplicate, reorder, reorder_hold_ms, delay_ms, jitter_ms)
        self.impairments = {
            Direction.TO_SERVER: to_server or both,
            Direction.TO_CLIENT: to_client or both,
        }
        self.upstream = _resolve(upstream)
        self._listen_request = listen
        self._rngs = {d: random.Random(f"{seed}:{d.value}") for d in Direction}
        self._idle_timeout = idle_timeout
        self._tap = tap
        self._spare = spare
        self.stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listen_sock: socket.socket | None = None
        self._flows: dict[Addr, _Flow] = {}
        self._delay_line: list[tuple[float, int, _Path, bytes]] = []
        self._delay_seq = itertools.count()
        self._delay_timer: asyncio.TimerHandle | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def address(self) -> Addr:
        """Where clients send to (the listen socket's bound address)."""
        if self._listen_sock is None:
            raise RuntimeError("the proxy is not started")
        return _plain(self._listen_sock.getsockname())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        host, port = _resolve(self._listen_request)
        self._listen_sock = _open_socket((host, port))
        self._loop.add_reader(self._listen_sock.fileno(), self._drain, self._listen_sock, self._from_client)
        self._schedule_sweep()

    async def aclose(self) -> None:
        if self._loop is None:
            return
        for flow in list(self._flows.values()):
            self._close_flow(flow)
        if self._listen_sock is not None:
            self._loop.remove_reader(self._listen_sock.fileno())
            self._listen_sock.close()
        for timer in (self._delay_timer, self._sweep_timer):
            if timer is not None:
                timer.cancel()
        self._delay_line.clear()
        self._loop = None

    async def __aenter__(self) -> ImpairmentProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @classmethod
    def start_in_thread(cls, upstream: Addr, **options: Any) -> ProxyThread:
        """Run a proxy on its own event loop in a daemon thread (for clients that are subprocesses)."""
        return ProxyThread(cls(upstream, **options))

    # -- receiving -------------------------------------------------------------------------------------

    def _drain(self, sock: socket.socket, handler: Callable[[bytes, Addr], None]) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error reported on the socket; nothing to relay
                continue
            handler(data, _plain(addr))

    def _from_client(self, data: bytes, client: Addr) -> None:
        flow = self._flows.get(client) or self._open_flow(client)
        self._relay(flow, Direction.TO_SERVER, data, self.upstream)

    def _from_server(self, flow: _Flow, data: bytes, server: Addr) -> None:
        if server != self.upstream and server not in flow.side_socks:
            self._open_side_socket(flow, server)
        self._relay(flow, Direction.TO_CLIENT, data, server)

    def _from_client_to_tid(self, flow: _Flow, server: Addr, data: bytes, sender: Addr) -> None:
        if sender != flow.client:
            self.stats.stray += 1
            return
        self._relay(flow, Direction.TO_SERVER, data, server)

    def _open_flow(self, client: Addr) -> _Flow:
        assert self._loop is not None
        sock = _open_socket((_wildcard_or_loopback(self.upstream[0]), 0))
        flow = _Flow(client, sock, self._loop.time())
        self._flows[client] = flow
        self.stats.flows += 1
        self._loop.add_reader(sock.fileno(), self._drain, sock, lambda d, a: self._from_server(flow, d, a))
        return flow

    def _open_side_socket(self, flow: _Flow, server: Addr) -> None:
        assert self._loop is not None and self._listen_sock is not None
        sock = _open_socket((_plain(self._listen_sock.getsockname())[0], 0))
        flow.side_socks[server] = sock
        self.stats.transfer_ports += 1
        self._loop.add_reader(
            sock.fileno(), self._drain, sock, lambda d, a: self._from_client_to_tid(flow, server, d, a)
        )

    def _close_flow(self, flow: _Flow) -> None:
        assert self._loop is not None
        self._flows.pop(flow.client, None)
        for path in flow.paths.values():
            path.closed = True
            if path.held_timer is not None:
                path.held_timer.cancel()
        for sock in (flow.upstream_sock, *flow.side_socks.values()):
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweep_timer = self._loop.call_later(max(1.0, self._idle_timeout / 4), self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        deadline = self._loop.time() - self._idle_timeout
        for flow in [f for f in self._flows.values() if f.last_active < deadline]:
            self._close_flow(flow)
        self._schedule_sweep()

    # -- impairing -------------------------------------------------------------------------------------

    def _path(self, flow: _Flow, direction: Direction, server: Addr) -> _Path:
        key = (direction, server)
        path = flow.paths.get(key)
        if path is None:
            if direction is Direction.TO_SERVER:
                path = _Path(flow.upstream_sock, server, direction)
            else:
                assert self._listen_sock is not None
                sock = self._listen_sock if server == self.upstream else flow.side_socks[server]
                path = _Path(sock, flow.client, direction)
            flow.paths[key] = path
        return path

    def _relay(self, flow: _Flow, direction: Direction, data: bytes, server: Addr) -> None:
        assert self._loop is not None
        flow.last_active = self._loop.time()
        if self._tap is not None:
            self._tap(direction, data, flow.client, server)
        stats = self.stats.direction(direction)
        stats.received += 1
        stats.bytes_received += len(data)
        config = self.impairments[direction]
        rng = self._rngs[direction]
        draws = [rng.random() for _ in range(DRAWS_PER_DATAGRAM)]  # fixed count: fate depends on order only
        spared = self._spare is not None and self._spare(direction, data)
        if draws[0] < config.loss and not spared:
            stats.dropped += 1
            return
        copies = 2 if draws[1] < config.duplicate and not spared else 1
        if copies == 2:
            stats.duplicated += 1
        path = self._path(flow, direction, server)
        for copy in range(copies):
            reorder_draw, jitter_draw = draws[2 + 2 * copy], draws[3 + 2 * copy]
            delay_ms = config.delay_ms + (2 * jitter_draw - 1) * config.jitter_ms
            self._reorder_stage(path, data, max(0.0, delay_ms) / 1000, reorder_draw < config.reorder)

    def _reorder_stage(self, path: _Path, data: bytes, delay: float, hold: bool) -> None:
        assert self._loop is not None
        stats = self.stats.direction(path.direction)
        if path.held is not None:
            held_data, held_delay = path.held
            self._release(path)
            self._enqueue(path, data, delay)  # the later datagram overtakes the held one
            self._enqueue(path, held_data, held_delay)
            stats.reordered += 1
        elif hold:
            path.held = (data, delay)
            stats.held += 1
            hold_seconds = self.impairments[path.direction].reorder_hold_ms / 1000
            path.held_timer = self._loop.call_later(hold_seconds, self._release_held, path)
        else:
            self._enqueue(path, data, delay)

    def _release(self, path: _Path) -> None:
        path.held = None
        if path.held_timer is not None:
            path.held_timer.cancel()
            path.held_timer = None

    def _release_held(self, path: _Path) -> None:
        if path.held is None:
            return
        data, delay = path.held
        self._release(path)
        self._enqueue(path, data, delay)

    def _enqueue(self, path: _Path, data: bytes, delay: float) -> None:
        """Send after ``delay`` seconds; equal delays keep arrival order (the sequence number breaks ties)."""
        assert self._loop is not None
        if delay <= 0:
            self._send(path, data)
            return
        due = self._loop.time() + delay
        heapq.heappush(self._delay_line, (due, next(self._delay_seq), path, data))
        if self._delay_line[0][0] == due:  # a new earliest deadline: re-arm the single timer
            if self._delay_timer is not None:
                self._delay_timer.cancel()
            self._delay_timer = self._loop.call_at(due, self._flush_delay_line)

    def _flush_delay_line(self) -> None:
        assert self._loop is not None
        self._delay_timer = None
        now = self._loop.time()
        while self._delay_line and self._delay_line[0][0] <= now:
            _, _, path, data = heapq.heappop(self._delay_line)
            self._send(path, data)
        if self._delay_line:
            self._delay_timer = self._loop.call_at(self._delay_line[0][0], self._flush_delay_line)

    def _send(self, path: _Path, data: bytes) -> None:
        if path.closed:
            return
        stats = self.stats.direction(path.direction)
        try:
            path.sock.sendto(data, path.dest)
        except OSError:  # a full socket buffer or a vanished peer: the datagram is lost, as on a network
            stats.send_errors += 1
            return
        stats.sent += 1
        stats.bytes_sent += len(data)


class ProxyThread:
    """A proxy running on its own event loop in a daemon thread; ``stop()`` ends it."""

    def __init__(self, proxy: ImpairmentProxy, start_timeout: float = 10.0) -> None:
        self.proxy = proxy
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="impairment-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout):
            raise RuntimeError("the impairment proxy did not start in time")
        if self._error is not None:
            raise self._error

    @property
    def address(self) -> Addr:
        return self.proxy.address

    def stats(self) -> ProxyStats:
        """A consistent copy of the counters, taken on the proxy's own loop."""
        if self._loop is None or not self._thread.is_alive():
            return _copy_stats(self.proxy.stats)

        async def snapshot() -> ProxyStats:
            return _copy_stats(self.proxy.stats)

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.proxy.start()
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.proxy.aclose()


def _copy_stats(stats: ProxyStats) -> ProxyStats:
    return ProxyStats(
        to_server=dataclasses.replace(stats.to_server),
        to_client=dataclasses.replace(stats.to_client),
        flows=stats.flows,
        transfer_ports=stats.transfer_ports,
        stray=stats.stray,
    )


def _resolve(addr: Addr) -> Addr:
    """Turn a (host, port) into numeric form, so replies can be matched against it."""
    host, port = addr
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return _plain(infos[0][4])


# -- CLI -----------------------------------------------------------------------------------------------


def parse_host_port(text: str) -> Addr:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def _override(base: Impairment, assignments: list[str]) -> Impairment:
    names = {f.name for f in dataclasses.fields(Impairment)}
    changes: dict[str, float] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            raise SystemExit(f"bad override {assignment!r}: expected NAME=VALUE with NAME in {sorted(names)}")
        changes[name] = float(value)
    return dataclasses.replace(base, **changes)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.impairment",
        description="UDP relay that drops, duplicates, reorders and delays datagrams (both directions).",
    )
    parser.add_argument("--listen", type=parse_host_port, default=("127.0.0.1", 7000), help="HOST:PORT")
    parser.add_argument("--upstream", type=parse_host_port, required=True, help="server HOST:PORT")
    parser.add_argument("--loss", type=float, default=0.0, help="drop probability 0..1")
    parser.add_argument("--duplicate", type=float, default=0.0, help="duplication probability 0..1")
    parser.add_argument("--reorder", type=float, default=0.0, help="hold-back probability 0..1")
    parser.add_argument("--reorder-hold-ms", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (RTT = 2x)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +/- on the delay")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--to-server", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--to-client", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--stats-interval", type=float, default=0.0, help="print counters every S seconds")
    return parser


async def _run_cli(args: argparse.Namespace) -> None:
    both = Impairment(
        args.loss, args.duplicate, args.reorder, args.reorder_hold_ms, args.delay_ms, args.jitter_ms
    )
    proxy = ImpairmentProxy(
        args.upstream,
        listen=args.listen,
        to_server=_override(both, args.to_server),
        to_client=_override(both, args.to_client),
        seed=args.seed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with proxy:
        host, port = proxy.address
        settings = {d.value: dataclasses.asdict(i) for d, i in proxy.impairments.items()}
        print(f"relaying {host}:{port} -> {proxy.upstream[0]}:{proxy.upstream[1]} {json.dumps(settings)}")
        sys.stdout.flush()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=args.stats_interval or None)
            if args.stats_interval and not stop.is_set():
                print(json.dumps(proxy.stats.as_dict()), flush=True)
        print(json.dumps(proxy.stats.as_dict()), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = build_arg_parser().parse_args(argv)
    asyncio.run(_run_cli(args))


if __name__ == "__main__":
    main()
