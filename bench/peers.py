"""Servers under test: start them pinned to one CPU, measure their CPU time and memory, stop them.

CPU is measured for the server *and every process it forks* (tftpd-hpa forks one child per transfer):
1. a cgroup v2 of our own (``cpu.stat`` usage_usec, counts children while they run), else
2. a cgroup v1 ``cpuacct`` group (``cpuacct.usage``, nanoseconds), else
3. /proc/<pid>/stat utime+stime+cutime+cstime of the daemon plus its live children, in clock ticks
   (10 ms at 100 Hz); a child's time reaches the daemon's cutime/cstime only once it is reaped.
The server is placed in the group by a tiny ``sh`` wrapper that writes its own PID to ``cgroup.procs``
and then execs ``taskset -c CPU server...``, so the first instruction of the server is already counted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench.loadgen import ClientTiming, Session, SessionResult, TransferSpec, run_coroutine
from tests import serverproc
from tests.serverproc import ServerFailed as ServerFailed  # re-exported: bench.run catches it
from tests.serverproc import free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TFTPD_HPA = serverproc.TFTPD_HPA
_GROUP_PREFIX = "edgetftp-bench"
_JOIN_AND_EXEC = 'echo $$ > "$1" && shift && exec "$@"'


# --- CPU meters -------------------------------------------------------------------------------------------


class CpuMeter(Protocol):
    kind: str

    def command_prefix(self) -> list[str]: ...

    def seconds(self, pid: int) -> float: ...

    def pids(self) -> list[int]: ...

    def close(self) -> None: ...


@dataclass
class CgroupMeter:
    """A cgroup (v2 or v1 cpuacct) made for one server run; removed by ``close``."""

    directory: Path
    usage_file: str  # "cpu.stat" (v2) or "cpuacct.usage" (v1)
    kind: str

    def command_prefix(self) -> list[str]:
        return ["sh", "-c", _JOIN_AND_EXEC, "sh", str(self.directory / "cgroup.procs")]

    def seconds(self, pid: int) -> float:
        text = (self.directory / self.usage_file).read_text()
        if self.usage_file == "cpu.stat":
            usage = dict(line.split() for line in text.splitlines() if line.strip())
            return int(usage["usage_usec"]) / 1e6
        return int(text) / 1e9

    def pids(self) -> list[int]:
        return [int(line) for line in (self.directory / "cgroup.procs").read_text().split()]

    def close(self) -> None:
        for _ in range(50):  # a process that just exited may linger in the group for a moment
            try:
                self.directory.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


@dataclass
class ProcMeter:
    """Fallback without cgroups: /proc times of the daemon and its live children."""

    kind: str = "proc"

    def command_prefix(self) -> list[str]:
        return []

    def seconds(self, pid: int) -> float:
        total_ticks = _proc_ticks(pid, include_reaped_children=True)
        total_ticks += sum(_proc_ticks(child, include_reaped_children=True) for child in descendants(pid))
        return total_ticks / CLOCK_TICKS

    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


def _proc_ticks(pid: int, include_reaped_children: bool) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)"; comm may contain spaces
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return utime + stime + ((cutime + cstime) if include_reaped_children else 0)


def _own_cgroup_path(controller: str | None) -> str | None:
    """Our cgroup path: the v2 line ("0::/path") when controller is None, else the v1 line naming it."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if controller is None and hierarchy == "0" and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return None


def _mount_points(fstype: str, option: str | None = None) -> list[Path]:
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount_point, kind, options, *_ = line.split()
        if kind == fstype and (option is None or option in options.split(",")):
            points.append(Path(mount_point))
    return points


def _cgroup_candidates() -> list[tuple[Path, str, str]]:
    candidates = []
    v2_path = _own_cgroup_path(None)
    if v2_path is not None:
        for mount in _mount_points("cgroup2"):
            candidates.append((mount / v2_path.lstrip("/"), "cpu.stat", "cgroup2"))
    v1_path = _own_cgroup_path("cpuacct")
    if v1_path is not None:
        for mount in _mount_points("cgroup", "cpuacct"):
            candidates.append((mount / v1_path.lstrip("/"), "cpuacct.usage", "cgroup1-cpuacct"))
    return candidates


def _try_cgroup(parent: Path, usage_file: str, kind: str, label: str) -> CgroupMeter | None:
    if not (parent / usage_file).exists() or not os.access(parent, os.W_OK):
        return None
    directory = parent / f"{_GROUP_PREFIX}-{os.getpid()}-{label}-{time.monotonic_ns()}"
    try:
        directory.mkdir()
    except OSError:
        return None
    meter = CgroupMeter(directory, usage_file, kind)
    # prove that a process can join it (delegation rules may forbid it) before trusting it
    probe = subprocess.run([*meter.command_prefix(), "true"], capture_output=True, check=False)
    if probe.returncode != 0 or not (directory / usage_file).exists():
        meter.close()
        return None
    return meter


def make_cpu_meter(label: str, allow_cgroups: bool = True) -> CpuMeter:
    """The most precise meter available here (see the module docstring)."""
    if allow_cgroups:
        for parent, usage_file, kind in _cgroup_candidates():
            meter = _try_cgroup(parent, usage_file, kind, label)
            if meter is not None:
                return meter
    return ProcMeter()


# --- process helpers --------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The children of all of ``pid``'s threads; none once it has exited (even while we look)."""
    found: list[int] = []
    with contextlib.suppress(OSError):  # the process or a thread can end between two reads
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of all its threads, recursively)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children(pending.pop()):
            found.append(child)
            pending.append(child)
    return found


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def pin_prefix(cpu: int | None) -> list[str]:
    """``taskset -c CPU`` when that CPU exists and taskset is installed, else nothing."""
    if cpu is None or cpu not in os.sched_getaffinity(0) or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def pin_self(cpu: int | None) -> bool:
    """Pin this process (the load generator) to ``cpu`` if it exists."""
    if cpu is None or cpu not in os.sched_getaffinity(0):
        return False
    os.sched_setaffinity(0, {cpu})
    return True


# --- peers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A server implementation and how to launch it on HOST:PORT serving SOURCE."""

    name: str
    executable: str  # checked by ``available``
    extra_args: tuple[str, ...] = ()
    server_dir: str | None = None  # another checkout's server/ (an older build), else this checkout's

    def command(self, host: str, port: int, source: str) -> list[str]:
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.name == "tftpd-hpa":
            return [self.executable, "--foreground", "--listen", "--address", listen, "--secure", source]
        build = ["env", f"PYTHONPATH={self.server_dir}"] if self.server_dir else []
        return [
            *build,
            self.executable,
            "-m",
            "edgetftp",
            "--listen",
            listen,
            "--max-sessions",
            "100000",
            "--max-sessions-per-client",
            "100000",  # every benchmark session comes from 127.0.0.1
            "--drain-timeout",
            "0",
            "--client-rate",
            "0",  # one address sends the whole load: a per-address budget would measure itself
            *self.extra_args,
            source,
        ]

    def available(self) -> str | None:
        """None when it can run here, else why not: a missing tool only (a failing edgetftp is a failure)."""
        if self.name == "tftpd-hpa" and not os.access(self.executable, os.X_OK):
            return f"{self.executable} is not installed"
        return None


EDGETFTP = Peer("edgetftp", sys.executable)
TFTPD_HPA_PEER = Peer("tftpd-hpa", TFTPD_HPA)


def edgetftp_with(*args: str) -> Peer:
    return Peer("edgetftp", sys.executable, tuple(args))


def edgetftp_build(checkout: str, *args: str) -> Peer:
    """Another checkout's edgetftp (``git worktree add`` of an older commit): the reference column."""
    return Peer("edgetftp-base", sys.executable, tuple(args), server_dir=os.path.join(checkout, "server"))


class ServerProcess(serverproc.ServerProcess):
    """A server under test (tests/serverproc.py's process), with its CPU meter and startup time."""

    def __init__(
        self,
        peer: Peer,
        source: str,
        log_dir: Path,
        meter: CpuMeter,
        *,
        host: str,
        port: int | None,
        cpu: int | None,
        env: dict[str, str] | None,
    ) -> None:
        self.peer = peer
        self.meter = meter
        self.startup_seconds: float | None = None  # spawn -> first file served (``wait_until_serving``)

        def command(listen_host: str, listen_port: int) -> list[str]:
            return peer.command(listen_host, listen_port, source)

        prefix = [*meter.command_prefix(), *pin_prefix(cpu)]
        super().__init__(
            env=env,
            host=host,
            command=command,
            name=peer.name,
            log_dir=log_dir,
            prefix=prefix,
            port=port,
            wait=False,
        )

    def cpu_seconds(self) -> float:
        return self.meter.seconds(self.pid)

    def rss_bytes(self) -> int:
        """Resident set of the server process itself."""
        return _status_kib(self.pid, "VmRSS") * 1024

    def pss_bytes_with_children(self) -> int:
        """Proportional set size of the server and its children (shared pages split, not double-counted)."""
        return sum(_pss_kib(pid) for pid in [self.pid, *descendants(self.pid)]) * 1024

    def process_count(self) -> int:
        return 1 + len(descendants(self.pid))

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until forked children have exited, so their CPU time is in the meter (or reaped)."""
        deadline = time.monotonic() + timeout
        while descendants(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait_until_serving(self, probe_file: str, timeout: float = 20.0) -> float:
        """Fetch ``probe_file`` until it arrives; returns (and records) seconds from spawn to that moment."""
        deadline = time.monotonic() + timeout
        timing = ClientTiming(rrq_timeout=0.005, ack_timeout=0.5, retries=40)
        reason = "not tried"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise ServerFailed(f"{self.peer.name} exited with {status}: {self.log_tail(15)}")
            result = run_coroutine(_fetch_once(self.address, probe_file, timing))
            if result.ok:
                self.startup_seconds = time.perf_counter() - self.spawned_at
                return self.startup_seconds
            reason = result.reason or "?"
            if reason.startswith("ERROR"):
                raise ServerFailed(f"{self.peer.name} refused {probe_file}: {reason}")
        raise ServerFailed(f"{self.peer.name} did not serve {probe_file} within {timeout} s: {reason}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the server and its process group; end what is left in its cgroup, each by PID; remove it."""
        try:
            return super().stop(sig, timeout)
        finally:
            for leftover in self.meter.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
            self.meter.close()


async def _fetch_once(server: tuple[str, int], filename: str, timing: ClientTiming) -> SessionResult:
    return await Session(server, TransferSpec(filename), timing).run()


def start_server(
    peer: Peer,
    source: str,
    log_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    cpu: int | None = 0,
    env: dict[str, str] | None = None,
    allow_cgroups: bool = True,
) -> ServerProcess:
    """Spawn ``peer`` serving ``source`` on a free port, pinned to ``cpu``; not yet waited for."""
    meter = make_cpu_meter(peer.name, allow_cgroups)
    try:
        return ServerProcess(
            peer, source, log_dir, meter, host=host, port=port or free_port(host=host), cpu=cpu, env=env
        )
    except BaseException:
        meter.close()
        raise
