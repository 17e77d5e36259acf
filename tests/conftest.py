"""Shared fixtures: a content tree of awkward sizes and a real edgetftp process on a free port."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# CI replays a fixed set of examples (a landing must not depend on a lucky draw); locally every run
# explores new ones, which is how the property tests find bugs.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

# Servers started by the tests run this checkout's code, whatever edgetftp is installed.
_SERVER_DIR = str(Path(__file__).resolve().parent.parent / "server")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_SERVER_DIR, os.environ.get("PYTHONPATH")]))

# Sizes around the block boundaries of the blksizes the client tests use.
SIZES = {
    "empty.bin": 0,
    "s511.bin": 511,
    "s512.bin": 512,
    "s513.bin": 513,
    "s1024.bin": 1024,
    "x1428.bin": 1428 * 3,
    "x1432.bin": 1432 * 5,
    "big.bin": 2**20,
}


@dataclass
class ContentTree:
    root: Path
    digests: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.digests[name] = hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def content(tmp_path_factory: pytest.TempPathFactory) -> ContentTree:
    tree = ContentTree(tmp_path_factory.mktemp("content"))
    rng = __import__("random").Random(1350)
    for name, size in SIZES.items():
        tree.add(name, rng.randbytes(size))
    tree.add("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", b"DEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n")
    tree.add("Boot/x64/wdsnbp.com", rng.randbytes(3000))
    tree.add("text.txt", b"line one\nline two\r\nbare cr\rend\n" * 100)
    tree.add("rollover.bin", rng.randbytes(8 * 65536 + 100))  # blksize 8 crosses block 65535
    return tree


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """``python -m edgetftp`` started by a test and stopped by its PID."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        if "--drain-timeout" not in args:
            args = ["--drain-timeout", "1", *args]  # tests leave stalled sessions behind: stop promptly
        self.args = [sys.executable, "-m", "edgetftp", "--listen", listen, *args]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgetftp-{self.port}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "serving" in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgetftp exited {self.proc.returncode}: {self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"edgetftp did not start: {self.log()}")

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1") -> ServerProcess:
        server = ServerProcess(list(args), env=env, host=host)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(content: ContentTree) -> Iterator[ServerProcess]:
    """One server for the tests that only read from it."""
    server = ServerProcess(["--log-level", "DEBUG", str(content.root)])
    yield server
    server.stop()
