"""S3 failures seen through the real server: a TFTP client gets a prompt, clean ERROR; cached files keep
being served; service comes back by itself when the fault clears.

Faults are real TCP/HTTP events made by the counting proxy in front of moto (tests/s3support.py): every
request reset (the endpoint is down), responses held for 30 s (slow), 500 and 503 answers, and bodies
cut by a reset in the middle.  "Prompt" is a bound derived from the settings: the server gives a source
``--s3-timeout x --s3-retries`` (at least 2 s) to open a file or return a read.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from edgetftp.protocol import Error
from tests.conftest import ServerProcess
from tests.rawclient import Fetch, RawClient
from tests.s3support import Fault, S3Endpoint, s3_endpoint

pytestmark = pytest.mark.integration

S3_TIMEOUT, S3_RETRIES = 1.0, 2
OPEN_TIMEOUT = max(2.0, S3_TIMEOUT * S3_RETRIES)  # what cli.server_config derives from the two
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
    """The first 100 kB arrive, then every GET is reset before its first byte: the transfer, already
    under way, ends with an ERROR 0 within the source's deadline; the next fetch after the fault works."""
    endpoint.proxy.inject(
        Fault("truncate", after_bytes=100_000, with_reset=True, methods=frozenset({"GET"}), times=1)
    )
    endpoint.proxy.inject(Fault("truncate", after_bytes=0, with_reset=True, methods=frozenset({"GET"})))
    started = time.monotonic()
    with RawClient(server.address, timeout=PROMPT + 5) as client:
        fetched = client.fetch("big.img", blksize=1432)
    elapsed = time.monotonic() - started
    assert_clean_error(fetched.error)
    assert fetched.oack is not None and fetched.blocks > 0  # it failed mid-transfer, not at the open
    assert elapsed <= PROMPT + 1.0, elapsed
    endpoint.proxy.clear_faults()
    recovered, _ = timed_fetch(server, "big.img")
    assert recovered.error is None and recovered.data == FILES["big.img"]
    print(f"mid-object: ERROR 0 after {fetched.blocks} blocks, {elapsed:.2f} s from the RRQ")
