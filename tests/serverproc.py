"""One way to run a TFTP server under test, and one way to pick a free port, for the tests and the bench.

- A server (edgetftp, or tftpd-hpa as the reference) runs in a session of its own, so its process group
  id is its PID: ``stop`` signals that PID, then SIGKILLs the group, which takes the children it forked
  (tftpd-hpa forks one per transfer) along.  Nothing is ended by name.
- It is ready when it answers a real RRQ, never when a log line appears (the S3 source logs "serving"
  before its UDP socket is bound).  The probe asks for a name that cannot exist and accepts any TFTP
  ERROR from any port: per-transfer mode and tftpd-hpa answer from a new one.
- Every session started here is recorded: the test run ends by proving that none of them is alive
  (``live_started_processes``, called from tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TFTPD_HPA = "/usr/sbin/in.tftpd"
READY_PROBE_NAME = "readiness-probe-does-not-exist"
OPCODE_ERROR = 5
SERVER_DIR = Path(__file__).resolve().parent.parent / "server"
START_ATTEMPTS = 3  # a port picked free may be taken before the server binds it: try another

# argv for a server listening on (host, port)
Command = Callable[[str, int], list[str]]
# does the server at this address answer TFTP within this many seconds?
Probe = Callable[[tuple[str, int], float], bool]

_started_pids: list[int] = []
_default_log_dir: Path | None = None


class ServerFailed(RuntimeError):
    """The server exited, or did not answer TFTP, while it was being started."""


def set_default_log_dir(directory: Path | None) -> None:
    """Where servers started without ``log_dir`` write their logs (the test session sets one)."""
    global _default_log_dir
    _default_log_dir = directory


# --- ports and addresses -----------------------------------------------------------------------------------


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(
    family: socket.AddressFamily | None = None,
    host: str = "127.0.0.1",
    kind: socket.SocketKind = socket.SOCK_DGRAM,
) -> int:
    """A port nobody was bound to a moment ago (the kernel's pick; starters retry if it gets taken)."""
    with socket.socket(family or family_of(host), kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    return free_port(host=host, kind=socket.SOCK_STREAM)


def listen_spec(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reachable(host: str) -> str:
    """The address a client on this machine sends to for a server listening on ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def answers_tftp(address: tuple[str, int], timeout: float = 0.3) -> bool:
    """True when the server at ``address`` answers an RRQ for a name that cannot exist with a TFTP ERROR."""
    request = b"\x00\x01" + READY_PROBE_NAME.encode() + b"\x00octet\x00"
    with socket.socket(family_of(address[0]), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply, _ = sock.recvfrom(2048)
            except (TimeoutError, ConnectionRefusedError):
                return False
            if len(reply) >= 4 and reply[:2] == bytes([0, OPCODE_ERROR]):
                return True
    return False


def probe_through(prefix: Sequence[str], to: tuple[str, int] | None = None) -> Probe:
    """A readiness probe run under ``prefix`` (e.g. ``ip netns exec NS``), from where clients really are,
    sent to ``to`` (default: the server's own address)."""

    def probe(address: tuple[str, int], timeout: float) -> bool:
        host, port = to or address
        command = [*prefix, sys.executable, __file__, host, str(port), str(timeout)]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    return probe


# --- commands ----------------------------------------------------------------------------------------------


def edgetftp_command(args: Sequence[str], python: str = sys.executable) -> Command:
    """``python -m edgetftp --listen HOST:PORT ARGS`` (with a 1 s drain unless ARGS set one)."""
    flags = list(args) if "--drain-timeout" in args else ["--drain-timeout", "1", *args]

    def command(host: str, port: int) -> list[str]:
        return [python, "-m", "edgetftp", "--listen", listen_spec(host, port), *flags]

    return command


def tftpd_hpa_command(root: Path | str, extra_args: Sequence[str] = ()) -> Command:
    """tftpd-hpa serving ``root`` (chrooted, ``--secure``), classic RFC 1350: a new port per transfer."""

    def command(host: str, port: int) -> list[str]:
        listen = ["--listen", "--address", listen_spec(host, port)]
        return [TFTPD_HPA, "--foreground", *listen, *extra_args, "--secure", str(root)]

    return command


def tftpd_hpa_unavailable_reason() -> str | None:
    """Why tftpd-hpa cannot run here (a missing tool or privilege), or None."""
    if not os.access(TFTPD_HPA, os.X_OK):
        return f"tftpd-hpa is not installed ({TFTPD_HPA}; apt-get install tftpd-hpa)"
    if os.geteuid() != 0:
        return "tftpd-hpa --secure chroots and drops to `nobody`, which needs root"
    return None


def checkout_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, with this checkout's server/ first on PYTHONPATH, plus ``overrides``."""
    environment = {**os.environ, **(overrides or {})}
    paths = [str(SERVER_DIR), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


# --- the process -------------------------------------------------------------------------------------------


class ServerProcess:
    """A TFTP server subprocess started here, ready (unless ``wait=False``) when it answers TFTP.

    ``ServerProcess(["--timeout", "2", root])`` runs edgetftp with those flags; pass ``command`` (see
    ``tftpd_hpa_command``) for another server.  ``prefix`` goes before the command (taskset, a cgroup
    join); ``port`` pins the port (no retry on another one); ``probe`` replaces the readiness check
    (e.g. one run from inside a network namespace).  With ``wait=False`` nothing is sent to it (a
    server expected to refuse its settings, or one whose first datagram is the test's own): read
    ``wait_exit`` or ``wait_for_log``.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        *,
        command: Command | None = None,
        name: str = "edgetftp",
        log_dir: Path | None = None,
        prefix: Sequence[str] = (),
        port: int | None = None,
        wait: bool = True,
        ready_timeout: float = 20.0,
        probe: Probe | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self._command = command or edgetftp_command(args)
        self._environment = checkout_environment(env)
        self._prefix = list(prefix)
        self._probe = probe or answers_tftp
        self._log_dir = log_dir or _default_log_dir
        if self._log_dir is None:
            raise ValueError("no log_dir given and no default set (tests/conftest.py sets one)")
        self._log_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if port is not None or not wait else START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._spawn(port or free_port(host=host))
            if not wait:
                return
            try:
                self.wait_ready(ready_timeout)
                return
            except ServerFailed:
                self.stop()
                if attempt == attempts or "in use" not in self.log():
                    raise

    def _spawn(self, port: int) -> None:
        self.port = port
        self.args = [*self._prefix, *self._command(self.host, port)]
        self.log_path = self._log_dir_path() / f"{self.name}-{port}-{time.monotonic_ns()}.log"
        self.spawned_at = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment,
                start_new_session=True,  # its own process group: stopped with every child it forks
            )
        _started_pids.append(self.process.pid)

    def _log_dir_path(self) -> Path:
        assert self._log_dir is not None  # checked in __init__
        return self._log_dir

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Return once the server answers a TFTP request; ServerFailed if it exits or stays silent."""
        probe_to = (reachable(self.host), self.port)
        deadline = time.monotonic() + timeout
        probe_timeout = 0.1
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self._probe(probe_to, probe_timeout):
                return
            probe_timeout = min(probe_timeout * 2, 1.0)  # an S3 lookup may take a while to answer
        raise ServerFailed(f"{self.name} did not answer TFTP within {timeout} s:\n{self.log_tail()}")

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in log:\n{self.log()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """The exit status of a server that ends by itself (one refusing a setting exits 2)."""
        return self.process.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig``, wait, SIGKILL it if it lingers; then SIGKILL what is left of its process group."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its group id is its PID (start_new_session)
            _wait_until_gone(self.process.pid, timeout)
        return int(self.process.returncode)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- the end-of-run check ----------------------------------------------------------------------------------


def _stat_fields(pid_dir: Path) -> list[str] | None:
    try:
        text = (pid_dir / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session, ...


def is_live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = _stat_fields(Path(f"/proc/{pid}"))
    return fields is not None and fields[0] != "Z"


def live_processes_in_sessions(sessions: Sequence[int]) -> list[int]:
    """PIDs of live (non-zombie) processes whose session id is one of ``sessions``."""
    wanted = set(sessions)
    live = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(pid_dir)
        if fields is not None and fields[0] != "Z" and int(fields[3]) in wanted:
            live.append(int(pid_dir.name))
    return sorted(live)


def _wait_until_gone(session: int, timeout: float) -> None:
    """SIGKILL is delivered when the target next runs: on a busy machine a moment after kill() returns."""
    deadline = time.monotonic() + timeout
    while live_processes_in_sessions([session]) and time.monotonic() < deadline:
        time.sleep(0.01)


def live_started_processes() -> list[int]:
    """Processes still alive from the servers started here (each server's whole session)."""
    return live_processes_in_sessions(_started_pids)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def main(argv: Sequence[str]) -> int:
    """``python tests/serverproc.py HOST PORT [TIMEOUT]``: exit 0 if a TFTP server answers there (a probe
    that can be run where the server is reachable, e.g. inside a network namespace)."""
    host, port, *rest = argv
    return 0 if answers_tftp((host, int(port)), float(rest[0]) if rest else 1.0) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
