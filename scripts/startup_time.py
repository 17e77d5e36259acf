"""Start-up time: from exec of ``edgetftp`` to the first file served, local source, median of N.

    python3 scripts/startup_time.py [--runs 9] [--python .venv/bin/python]

Spawns ``python -m edgetftp --listen 127.0.0.1:PORT content/`` and sends an RRQ for boot.ipxe every
2 ms until DATA 1 comes back; prints each run and the median of the wall time, and of the server's
own CPU time by then (/proc/PID/schedstat), which a busy machine disturbs much less.  A figure, not
a test: CI machines are too noisy to assert on it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RRQ = b"\0\1boot.ipxe\0octet\0"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU time the process has run so far (nanoseconds in /proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0]) / 1e9


def time_to_first_file(python: str) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "server")}
    command = [python, "-m", "edgetftp", "--listen", f"127.0.0.1:{port}", str(REPO / "content")]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.002)
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            while time.perf_counter() - started < 10:
                client.sendto(RRQ, ("127.0.0.1", port))
                try:
                    reply = client.recv(2048)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                if reply[:4] == b"\0\3\0\1":  # DATA block 1
                    return time.perf_counter() - started, cpu_seconds(proc.pid)
            raise RuntimeError(f"no DATA within 10 s (exit {proc.poll()})")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--python", default=sys.executable, help="the interpreter to start (a venv's)")
    args = parser.parse_args()
    runs = [time_to_first_file(args.python) for _ in range(args.runs)]
    print("wall (s):", " ".join(f"{wall:.3f}" for wall, _ in runs))
    print("cpu  (s):", " ".join(f"{cpu:.3f}" for _, cpu in runs))
    wall = statistics.median(wall for wall, _ in runs)
    cpu = statistics.median(cpu for _, cpu in runs)
    print(f"start-up to the first served file, median of {args.runs}: {wall:.3f} s wall, {cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
