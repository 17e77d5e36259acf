"""The lock-step ceiling of this machine's loopback: a UDP ping-pong across two CPUs.

One process (echo) pinned to CPU 0 bounces every datagram back; this process, pinned to CPU 1, sends a
DATA-sized datagram and waits for it, ``count`` times.  Lock-step TFTP can do no better than one block
per round trip, so ``blksize / round trip`` is its ceiling.  Both ends use blocking sockets, which in
Python cost little more than the system calls; the issue's C ping-pong measured about 13.6 MB/s at blksize
1428 on its machines, so compare this figure with that one rather than with TFTP servers directly.

    python -m bench.pingpong --count 20000 --size 1432
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time

from bench.stats import percentile


def _echo(port_queue: multiprocessing.Queue[int], cpu: int | None) -> None:
    if cpu is not None and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port_queue.put(sock.getsockname()[1])
        buffer = bytearray(65536)
        while True:
            size, address = sock.recvfrom_into(buffer)
            if size == 1:  # the stop signal
                return
            sock.sendto(memoryview(buffer)[:size], address)


def ping_pong(
    count: int, size: int, echo_cpu: int | None = 0, client_cpu: int | None = 1
) -> dict[str, float]:
    """Round trips of ``size``-byte datagrams; returns median/p99 microseconds and the lock-step MB/s."""
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    echo = multiprocessing.Process(target=_echo, args=(ports, echo_cpu), daemon=True)
    echo.start()
    if client_cpu is not None and client_cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {client_cpu})
    payload = b"\0" * size
    buffer = bytearray(65536)
    round_trips: list[float] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            sock.connect(("127.0.0.1", ports.get(timeout=10)))
            for _ in range(count // 20):  # warm-up: caches, scheduler, frequency
                sock.send(payload)
                sock.recv_into(buffer)
            started = time.perf_counter()
            for _ in range(count):
                sent_at = time.perf_counter()
                sock.send(payload)
                sock.recv_into(buffer)
                round_trips.append(time.perf_counter() - sent_at)
            elapsed = time.perf_counter() - started
            sock.send(b"x")
    finally:
        echo.join(timeout=5)
        if echo.is_alive():
            echo.kill()
    per_round_trip = elapsed / count
    return {
        "datagram_bytes": size,
        "round_trips": count,
        "median_us": (percentile(round_trips, 0.5) or 0.0) * 1e6,
        "p99_us": (percentile(round_trips, 0.99) or 0.0) * 1e6,
        "mean_us": per_round_trip * 1e6,
        "lock_step_ceiling_mb_s": (size - 4) / per_round_trip / 1e6,  # payload of one DATA per round trip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pingpong", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="round trips to time")
    parser.add_argument("--size", type=int, default=1432, help="datagram bytes (DATA of blksize 1428 = 1432)")
    parser.add_argument("--no-pin", action="store_true", help="leave both ends unpinned")
    args = parser.parse_args(argv)
    cpus = (None, None) if args.no_pin else (0, 1)
    result = ping_pong(args.count, args.size, *cpus)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
