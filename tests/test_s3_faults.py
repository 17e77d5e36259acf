"""S3 failures seen through the real server: a TFTP client gets a prompt, clean ERROR; cached files keep
being served; service comes back by itself when the fault clears.

Faults are real TCP/HTTP events made by the counting proxy in front of moto (tests/s3support.py): every
request reset (the endpoint is down), responses held for 30 s (slow), 500 and 503 answers, and bodies
cut by a reset in the middle.  "Prompt" is a bound derived from the settings: the server gives a source
``--s3-timeout x --s3-retries`` (at least 2 s) to open a file or return a read.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetftp.protocol import Error
from tests.conftest import ServerProcess, free_port, free_tcp_port
from tests.rawclient import Fetch, RawClient
from tests.s3support import Fault, S3Endpoint, s3_endpoint

pytestmark = pytest.mark.integration

S3_TIMEOUT, S3_RETRIES = 1.0, 2
OPEN_TIMEOUT = max(10.0, S3_TIMEOUT * S3_RETRIES)  # what cli.open_timeout derives for an S3 source
PROMPT = OPEN_TIMEOUT + 1.5  # the source's deadline, plus scheduling slack on a busy CI machine
CACHE_OBJECT_MAX = 256 * 1024
LEAKS = ("InjectedFault", "s3://", "500", "503", "Service", "ClientError", "Timeout", "Connection", "boot/")

FILES = {
    "warm.efi": random.Random(1).randbytes(200_000),  # fetched once before the faults: cached
    "big.img": random.Random(2).randbytes(900_000),  # above --cache-object-max: streamed
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[S3Endpoint]:
    with s3_endpoint() as running:
        yield running


@pytest.fixture(scope="module")
def bucket(endpoint: S3Endpoint) -> str:
    name = f"faults-{uuid.uuid4().hex[:12]}"
    endpoint.create_bucket(name)
    for key, data in FILES.items():
        endpoint.put(name, f"boot/{key}", data)
    return name


@pytest.fixture(scope="module")
def server(endpoint: S3Endpoint, bucket: str) -> Iterator[ServerProcess]:
    process = ServerProcess(
        [
            *("--endpoint-url", endpoint.url, "--force-path-style"),
            *("--s3-timeout", str(S3_TIMEOUT), "--s3-retries", str(S3_RETRIES)),
            *("--cache-bytes", str(4 * CACHE_OBJECT_MAX), "--cache-object-max", str(CACHE_OBJECT_MAX)),
            f"s3://{bucket}/boot/",
        ]
    )
    with process:  # stopped even when warming the cache fails
        with RawClient(process.address, timeout=10) as client:
            assert client.fetch("warm.efi", blksize=1432).data == FILES["warm.efi"]
        yield process


@pytest.fixture(autouse=True)
def no_fault_left(endpoint: S3Endpoint) -> Iterator[None]:
    yield
    endpoint.proxy.clear_faults()


def timed_fetch(server: ServerProcess, name: str) -> tuple[Fetch, float]:
    started = time.monotonic()
    with RawClient(server.address, timeout=PROMPT + 5) as client:
        fetched = client.fetch(name, blksize=1432)
    return fetched, time.monotonic() - started


def assert_clean_error(error: Error | None) -> None:
    assert error is not None
    assert (error.code, error.message) == (0, "Source unavailable")
    assert not any(leak in error.message for leak in LEAKS)


FAULTS: dict[str, Callable[[], Fault]] = {
    "endpoint-down": lambda: Fault("reset"),
    "slow": lambda: Fault("delay", seconds=30.0),
    "http-500": lambda: Fault("status", status=500),
    "http-503": lambda: Fault("status", status=503),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_fault_gives_a_prompt_clean_error_cached_files_serve_and_service_recovers(
    endpoint: S3Endpoint, bucket: str, server: ServerProcess, kind: str
) -> None:
    name = f"cold-{kind}-{uuid.uuid4().hex[:6]}.efi"
    cold = random.Random(kind).randbytes(200_000)
    endpoint.put(bucket, f"boot/{name}", cold)
    fault = endpoint.proxy.inject(FAULTS[kind]())
    fetched, elapsed = timed_fetch(server, name)
    assert_clean_error(fetched.error)
    assert fetched.oack is None  # the ERROR comes before any OACK: PXE ROMs need that
    assert elapsed <= PROMPT, elapsed
    assert fault.hits >= 1  # the fault was really met at the endpoint

    warm, warm_elapsed = timed_fetch(server, "warm.efi")  # cached: no S3 call needed
    assert warm.error is None and warm.data == FILES["warm.efi"]

    endpoint.proxy.clear_faults()
    recovered, _ = timed_fetch(server, name)
    assert recovered.error is None and recovered.data == cold
    print(
        f"{kind}: ERROR 0 after {elapsed:.2f} s (bound {PROMPT:.1f} s); cached file in {warm_elapsed:.2f} s"
    )


def test_reset_mid_object_resumes_when_the_stream_makes_progress(
    endpoint: S3Endpoint, server: ServerProcess
) -> None:
    """Every GET is cut by a RST after 200 kB: each resume (Range from the offset) gets further."""
    fault = endpoint.proxy.inject(
        Fault("truncate", after_bytes=200_000, with_reset=True, methods=frozenset({"GET"}))
    )
    fetched, elapsed = timed_fetch(server, "big.img")
    assert fetched.error is None and fetched.data == FILES["big.img"]
    assert fault.hits >= 2
    print(f"big.img through {fault.hits} broken streams in {elapsed:.2f} s")


def test_reset_mid_object_without_progress_ends_with_a_prompt_clean_error(
    endpoint: S3Endpoint, server: ServerProcess
) -> None:
    """The first 400 kB arrive, then every GET is reset before its first byte: the transfer, already
    under way, ends with an ERROR 0 within the source's deadline; the next fetch after the fault works.
    (400 kB: more than the first read asks for, a window of 64 blocks and the read-ahead.)"""
    endpoint.proxy.inject(
        Fault("truncate", after_bytes=400_000, with_reset=True, methods=frozenset({"GET"}), times=1)
    )
    endpoint.proxy.inject(Fault("truncate", after_bytes=0, with_reset=True, methods=frozenset({"GET"})))
    started = time.monotonic()
    with RawClient(server.address, timeout=PROMPT + 5) as client:
        fetched = client.fetch("big.img", blksize=1432)
    elapsed = time.monotonic() - started
    assert_clean_error(fetched.error)
    # The OACK came, so the object resolved and the transfer was under way: it failed mid-object,
    # not at the open (how many blocks reached the client depends on read sizes and timing).
    assert fetched.oack is not None
    assert elapsed <= PROMPT + 1.0, elapsed
    endpoint.proxy.clear_faults()
    recovered, _ = timed_fetch(server, "big.img")
    assert recovered.error is None and recovered.data == FILES["big.img"]
    print(f"mid-object: ERROR 0 after {fetched.blocks} blocks, {elapsed:.2f} s from the RRQ")


# --- first contact: what is wrong at start (issue 11) ---

NO_CREDENTIALS_ENV = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def run_to_exit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``edgetftp ARGS`` expected to refuse to start: its exit code and output."""
    listen = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "edgetftp", "--listen", listen, *args]
    environment = {**os.environ, **(env or {})}
    for name in [name for name, value in environment.items() if value == ""]:
        del environment[name]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert last.startswith("edgetftp: ") and all(word in last for word in words), last
    assert "Traceback" not in result.stderr


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_for_health(port: int, status: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while healthz(port) != status:
        assert time.monotonic() < deadline, f"/healthz never became {status}"
        time.sleep(0.1)


def s3_args(endpoint: S3Endpoint, bucket: str, *extra: str) -> list[str]:
    return [
        *("--endpoint-url", endpoint.url, "--force-path-style"),
        *("--s3-timeout", str(S3_TIMEOUT), "--s3-retries", str(S3_RETRIES)),
        *extra,
        f"s3://{bucket}/boot/",
    ]


def test_start_refuses_a_bucket_that_does_not_exist(endpoint: S3Endpoint) -> None:
    result = run_to_exit(*s3_args(endpoint, f"missing-{uuid.uuid4().hex[:8]}"))
    assert_refused(result, "does not exist", "--s3-start-anyway")
    assert "S3 credentials: env" in result.stderr  # one line per check


def test_start_refuses_missing_credentials(endpoint: S3Endpoint, bucket: str) -> None:
    result = run_to_exit(*s3_args(endpoint, bucket), env=NO_CREDENTIALS_ENV)
    assert_refused(result, "no S3 credentials")


def test_start_refuses_credentials_s3_rejects(endpoint: S3Endpoint, bucket: str) -> None:
    endpoint.proxy.inject(Fault("status", status=403, code="InvalidAccessKeyId"))
    result = run_to_exit(*s3_args(endpoint, bucket))
    assert_refused(result, "credentials were refused", "InvalidAccessKeyId")


@pytest.mark.parametrize(("option", "value"), [("--endpoint-url", "not a url"), ("--region", "bad region!")])
def test_invalid_endpoint_or_region_is_one_line(option: str, value: str) -> None:
    result = run_to_exit(option, value, "s3://some-bucket/boot/")
    assert_refused(result, value)


def test_start_anyway_with_rejected_credentials_is_unhealthy(
    endpoint: S3Endpoint, bucket: str, start_server: Callable[..., ServerProcess]
) -> None:
    endpoint.proxy.inject(Fault("status", status=403, code="SignatureDoesNotMatch"))
    http_port = free_tcp_port()
    start_server(*s3_args(endpoint, bucket, "--s3-start-anyway", "--http-listen", f"127.0.0.1:{http_port}"))
    assert healthz(http_port) == 503  # from the first second
    time.sleep(1.5)  # a recheck or two later: still refused, still unhealthy
    assert healthz(http_port) == 503


def test_unreachable_endpoint_starts_unhealthy_until_s3_answers(
    endpoint: S3Endpoint, bucket: str, start_server: Callable[..., ServerProcess]
) -> None:
    endpoint.proxy.inject(Fault("reset"))
    http_port = free_tcp_port()
    server = start_server(*s3_args(endpoint, bucket, "--http-listen", f"127.0.0.1:{http_port}"))
    assert "S3 bucket:" in server.log() and "unreachable" in server.log()
    assert healthz(http_port) == 503
    with RawClient(server.address, timeout=PROMPT + 5) as client:
        assert_clean_error(client.fetch("warm.efi").error)
    errors = metric(http_port, "edgetftp_source_errors_total")
    endpoint.proxy.clear_faults()
    wait_for_health(http_port, 200)  # rechecked every second while unhealthy
    with RawClient(server.address, timeout=10) as client:
        assert client.fetch("warm.efi").data == FILES["warm.efi"]
    assert errors >= 1  # the outage counted as source errors, not as refused requests


def test_sigterm_drains_at_once_while_s3_hangs(endpoint: S3Endpoint, bucket: str, tmp_path: Path) -> None:
    endpoint.proxy.inject(Fault("delay", seconds=60.0))
    command = [
        *(sys.executable, "-m", "edgetftp", "--listen", f"127.0.0.1:{free_port()}"),
        *("--endpoint-url", endpoint.url, "--force-path-style", "--s3-timeout", "20"),
        f"s3://{bucket}/boot/",
    ]
    log_path = tmp_path / "edgetftp.log"
    with open(log_path, "w+b") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"S3 credentials" not in log_path.read_bytes():  # the bucket probe now hangs
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(15)
            elapsed = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    print(f"SIGTERM during a hung S3 probe: exited {process.returncode} after {elapsed:.2f} s")
    assert process.returncode == 0 and elapsed < 10  # the probe alone would hang 20 s


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_sigterm_drains_at_once_while_a_health_check_hangs(
    endpoint: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    """Unreachable at start (rechecked every second), then S3 hangs: SIGTERM does not wait for it."""
    endpoint.proxy.inject(Fault("reset"))
    server = ServerProcess(
        [
            *("--endpoint-url", endpoint.url, "--force-path-style", "--s3-timeout", "20"),
            f"s3://{bucket}/boot/",
        ]
    )
    try:
        endpoint.proxy.clear_faults()
        hang = endpoint.proxy.inject(Fault("delay", seconds=60.0))
        deadline = time.monotonic() + 10
        while hang.hits == 0:  # a periodic check has reached the endpoint and now hangs
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(15)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    print(f"SIGTERM during a hung health check: exited {server.proc.returncode} after {elapsed:.2f} s")
    assert server.proc.returncode == 0 and elapsed < 10  # the check alone would hang 20 s
