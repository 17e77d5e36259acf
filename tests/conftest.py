"""Shared fixtures: a content tree of awkward sizes and a real edgetftp process on a free port.

The session also keeps the machine clean, and fails the run when it does not:
- every test file names its layer (``unit``, ``integration`` or ``slow``; see docs/testing.md);
- subprocesses and ``tempfile`` write under the session's pytest temp directory (``TMPDIR`` points
  there), and what remains in it at the end is a leak;
- no process a server helper started (tests/serverproc.py), and no child of this process, is alive at
  the end, and nothing new is left at the top of /tmp.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings

from bench.peers import descendants
from tests import serverproc
from tests.serverproc import ServerProcess, free_port, free_tcp_port

if TYPE_CHECKING:
    from tests.originsupport import OriginServer, RawOrigin

__all__ = ["SIZES", "ContentTree", "ServerProcess", "free_port", "free_tcp_port"]

# CI replays a fixed set of examples (a landing must not depend on a lucky draw); locally every run
# explores new ones, which is how the property tests find bugs.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

# Subprocesses the tests start run this checkout's code, whatever edgetftp is installed.
os.environ["PYTHONPATH"] = serverproc.checkout_environment()["PYTHONPATH"]

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


@pytest.fixture
def server_processes() -> Iterator[list[ServerProcess]]:
    """Servers a test started (put them here): each is stopped at the end, even if stopping another fails."""
    started: list[ServerProcess] = []
    yield started
    with contextlib.ExitStack() as stack:
        for server in started:
            stack.callback(server.stop)


@pytest.fixture
def start_server(server_processes: list[ServerProcess]) -> Callable[..., ServerProcess]:
    def start(*args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1") -> ServerProcess:
        server = ServerProcess(list(args), env=env, host=host)
        server_processes.append(server)
        return server

    return start


@pytest.fixture(scope="module")
def shared_server(content: ContentTree) -> Iterator[ServerProcess]:
    """One server for the tests that only read from it."""
    server = ServerProcess(["--log-level", "DEBUG", str(content.root)])
    yield server
    server.stop()


# --- a real HTTP origin (tests/originsupport.py) ---------------------------------------------------------


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[OriginServer, RawOrigin]]:
    """An aiohttp origin and a raw TCP origin on loopback, shared by one test module."""
    from tests.originsupport import running_origin  # aiohttp is imported only where an origin is used

    with running_origin() as running:
        yield running


@pytest.fixture
def origin(origins: tuple[OriginServer, RawOrigin]) -> OriginServer:
    """The module's HTTP origin, running and with nothing left from the test before."""
    server = origins[0]
    server.start()
    server.reset()
    return server


# --- layers ------------------------------------------------------------------------------------------------

LAYERS = ("unit", "integration", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test is in a layer, and a unit test in no other, so ``-m unit`` really is the inner loop.

    A test in an integration file may add ``slow``: ``-m "not slow"`` then leaves it out.
    """
    wrong = []
    for item in items:
        layers = {mark.name for mark in item.iter_markers() if mark.name in LAYERS}
        if not layers or ("unit" in layers and len(layers) > 1):
            wrong.append(f"{item.nodeid}: {sorted(layers) or 'no layer'}")
    if wrong:
        listing = "\n  ".join(wrong[:20])
        raise pytest.UsageError(
            f"{len(wrong)} tests need a layer marker {LAYERS} (a pytestmark):\n  {listing}"
        )


# --- a clean machine at the end ----------------------------------------------------------------------------

TMP = Path("/tmp")
# On a machine shared with other work, new /tmp entries may not be ours: report them without failing.
SHARED_TMP = os.environ.get("EDGETFTP_TESTS_SHARED_TMP") == "1"
_tmp_before: set[str] = set()
_private_tmp: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    _tmp_before.update(entry.name for entry in TMP.iterdir())


@pytest.fixture(scope="session", autouse=True)
def session_temp_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TMPDIR (for subprocesses and ``tempfile``) and server logs live under the session's pytest dir."""
    base = tmp_path_factory.getbasetemp()
    private = base / "tmpdir"
    private.mkdir()
    _private_tmp.append(private)
    serverproc.set_default_log_dir(base / "server-logs")
    saved_environment, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(private), str(private)
    try:
        yield private
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_environment is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_environment
        serverproc.set_default_log_dir(None)


def _live_children(pid: int) -> list[int]:
    """Live (non-zombie) descendants of ``pid``."""
    return [child for child in descendants(pid) if serverproc.is_live(child)]


def leftover_processes() -> list[int]:
    """Live processes this run started: a server helper's whole session, or any child of this process."""
    return sorted({*serverproc.live_started_processes(), *_live_children(os.getpid())})


def leftovers(processes: list[int], *, shared_tmp: bool = SHARED_TMP) -> list[str]:
    """What this run left behind: live processes, files in its TMPDIR, new entries in /tmp.

    (An xdist controller runs no test, so it made no TMPDIR of its own: it checks /tmp alone.)
    """
    problems = [f"process {pid} still alive: {serverproc.command_line(pid)}" for pid in processes]
    for private in filter(Path.exists, _private_tmp):
        problems += [f"left in TMPDIR: {path}" for path in sorted(private.iterdir())]
    if not shared_tmp:
        new = sorted({entry.name for entry in TMP.iterdir()} - _tmp_before)
        problems += [f"new in /tmp: {TMP / name}" for name in new if not name.startswith("pytest-of-")]
    return problems


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_xdist_controller(config: pytest.Config) -> bool:
    """The process that hands tests to ``pytest -n`` workers (which are its children) and runs none."""
    return not _is_xdist_worker(config) and bool(getattr(config.option, "numprocesses", None))


_worker_leftovers: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """Under ``pytest -n``: collect what each worker found it left behind (reported at the end)."""
    _worker_leftovers.extend(getattr(node, "workeroutput", {}).get("leftovers", []))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if it left anything behind; then end the processes it left, each by its PID.

    Under ``pytest -n`` each worker checks its own processes and TMPDIR and hands its findings to the
    controller, which adds the /tmp check (once every worker has finished) and fails the run.
    """
    config = session.config
    if _is_xdist_controller(config):
        problems = _worker_leftovers + leftovers([])
    else:
        processes = leftover_processes()
        problems = leftovers(processes, shared_tmp=_is_xdist_worker(config))
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if _is_xdist_worker(config):
            config.workeroutput["leftovers"] = problems  # type: ignore[attr-defined]  # set by xdist
            return
    if not problems:
        return
    text = "the test run left things behind:\n  " + "\n  ".join(problems)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.line("")
        reporter.write_sep("=", "leftovers", red=True)
        reporter.write_line(text)
    else:
        print(text)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
