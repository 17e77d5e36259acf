"""The S3 source and its edge cache against a real HTTP S3 endpoint (moto behind a counting proxy).

Counts of S3 requests are read at the proxy, i.e. at the endpoint.  Time-to-live tests move an
injected clock instead of sleeping; timeouts and outages are real (a hung response, moto stopped).
The end-to-end tests at the bottom run the real server with real TFTP clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from loguru import logger

from edgetftp.cli import build_source
from edgetftp.protocol import OptionAck
from edgetftp.settings import Settings
from edgetftp.sources.base import (
    AccessDenied,
    Content,
    FileNotFound,
    SourceChanged,
    SourceError,
    SourceUnavailable,
)
from edgetftp.sources.cache import ObjectChanged
from edgetftp.sources.s3 import (
    HEALTH_FRESH_SECONDS,
    RESUME_ATTEMPTS,
    S3Location,
    S3Options,
    S3Source,
    botocore_config,
    parse_s3_url,
)
from tests.conftest import ServerProcess
from tests.rawclient import RawClient
from tests.s3support import Fault, RecordingObserver, S3Endpoint, dummy_aws_environment, s3_endpoint
from tests.test_clients import concurrent_fetches, fetch_with

pytestmark = pytest.mark.integration

T = TypeVar("T")
MiB = 1 << 20


class FakeClock:
    """Monotonic time the test moves by hand (cache TTLs)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[S3Endpoint]:
    with s3_endpoint() as running:
        yield running


@pytest.fixture
def bucket(endpoint: S3Endpoint) -> str:
    name = f"edgetftp-{uuid.uuid4().hex[:12]}"
    endpoint.create_bucket(name)
    endpoint.proxy.clear_faults()
    endpoint.proxy.reset_counts()
    return name


def make_source(
    endpoint: S3Endpoint, bucket: str, prefix: str = "boot/", clock: FakeClock | None = None, **overrides: Any
) -> S3Source:
    options: dict[str, Any] = {
        "source": f"s3://{bucket}/{prefix}",
        "endpoint_url": endpoint.url,
        "force_path_style": True,
        "s3_timeout": 2.0,
        **overrides,
    }
    source = build_source(Settings(**options), clock=clock or FakeClock(), observer=RecordingObserver())
    assert isinstance(source, S3Source)
    return source


def events(source: S3Source) -> RecordingObserver:
    observer = source.cache.observer
    assert isinstance(observer, RecordingObserver)
    return observer


async def read_all(content: Content, chunk: int = 65536) -> bytes:
    """Read as the transport does: sequential offsets, window-sized requests."""
    parts = []
    offset = 0
    while offset < content.size:
        part = await content.read(offset, chunk)
        assert part, f"short read at {offset} of {content.size}"
        parts.append(part)
        offset += len(part)
    assert await content.read(offset, chunk) == b""
    return b"".join(parts)


async def fetch(source: S3Source, path: str, chunk: int = 65536) -> bytes:
    content = await source.open(path)
    try:
        if content.memory is not None:
            return bytes(content.memory)
        return await read_all(content, chunk)
    finally:
        await content.aclose()


def object_path(bucket: str, key: str) -> str:
    """The URL path the proxy sees for a key (path-style addressing)."""
    return f"/{bucket}/{key}"


# --- keys and locations (no network) ---


def test_parse_s3_url_keeps_the_prefix_a_directory() -> None:
    assert parse_s3_url("s3://bucket/boot/") == S3Location("bucket", "boot/")
    assert parse_s3_url("s3://bucket/boot") == S3Location("bucket", "boot/")
    assert parse_s3_url("s3://bucket/a/b/") == S3Location("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == S3Location("bucket", "")
    assert parse_s3_url("s3://bucket/") == S3Location("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_url("s3:///boot/")
    with pytest.raises(ValueError):
        parse_s3_url("http://bucket/boot/")


@pytest.mark.parametrize(
    "path",
    ["", "../secret", "a/../../secret", "./a", "a/./b", "a//b", "a/", "/a", "a\\..\\b", "a\0b", "..", "."],
)
def test_key_for_refuses_paths_that_could_leave_the_prefix(path: str) -> None:
    with pytest.raises(AccessDenied):
        S3Location("bucket", "boot/").key_for(path)


def test_key_for_is_prefix_plus_path() -> None:
    location = S3Location("bucket", "boot/")
    assert location.key_for("ipxe.efi") == "boot/ipxe.efi"
    assert location.key_for("pxelinux.cfg/default") == "boot/pxelinux.cfg/default"
    assert location.key_for("..hidden/x..y") == "boot/..hidden/x..y"  # dots inside names are names


def test_importing_the_s3_source_does_not_load_the_sdk() -> None:
    code = (
        "import sys, edgetftp.sources.s3, edgetftp.sources.cache\n"
        "loaded = [m for m in ('aioboto3', 'aiobotocore', 'botocore', 'aiohttp') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (S3Options(region="eu-west-1"), "https://my-bucket.s3.dualstack.eu-west-1.amazonaws.com/boot/x?"),
        (
            S3Options(region="eu-west-1", dualstack=False),
            "https://my-bucket.s3.amazonaws.com/boot/x?",  # botocore presigns non-dualstack globally
        ),
        (
            S3Options(region="eu-west-1", accelerate=True),
            "https://my-bucket.s3-accelerate.dualstack.amazonaws.com/",
        ),
        (
            S3Options(endpoint_url="http://127.0.0.1:9", force_path_style=True),
            "http://127.0.0.1:9/my-bucket/boot/x?",
        ),
    ],
)
def test_client_options_choose_the_endpoint(options: S3Options, expected: str) -> None:
    import boto3  # the same botocore Config the server gives aioboto3; presigning needs no network

    with dummy_aws_environment():
        client = boto3.client(
            "s3",
            region_name=options.region,
            endpoint_url=options.endpoint_url,
            config=botocore_config(options),
        )
        url = client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": "boot/x"})
    assert url.startswith(expected), url
    assert "Signature" in url


def test_no_sign_request_sends_anonymous_requests() -> None:
    import boto3

    options = S3Options(region="eu-west-1", sign_request=False)
    with dummy_aws_environment():
        client = boto3.client("s3", region_name=options.region, config=botocore_config(options))
        url = client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": "boot/x"})
    assert url == "https://my-bucket.s3.dualstack.eu-west-1.amazonaws.com/boot/x"


def test_timeouts_retries_and_pool_reach_botocore() -> None:
    config = botocore_config(S3Options(timeout=1.5, retries=4, pool=7))
    assert (config.connect_timeout, config.read_timeout) == (1.5, 1.5)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert config.max_pool_connections == 7


# --- serving ---


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1432 * 3, 65536, MiB + 7])
def test_serves_objects_byte_exact(endpoint: S3Endpoint, bucket: str, size: int) -> None:
    data = payload(size)
    endpoint.put(bucket, "boot/file.bin", data)

    async def scenario() -> None:
        source = make_source(endpoint, bucket)
        await source.start()
        try:
            first = await source.open("file.bin")
            assert first.size == size
            assert sha256(await read_all(first, 1432)) == sha256(data)
            await first.aclose()
            second = await source.open("file.bin")  # now resident: the zero-copy path
            assert second.memory is not None
            assert sha256(bytes(second.memory)) == sha256(data)
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("GET") == (0 if size == 0 else 1)


def test_nested_keys_and_prefix_confinement(endpoint: S3Endpoint, bucket: str) -> None:
    nested = payload(3000, 1)
    endpoint.put(bucket, "boot/pxelinux.cfg/01-aa-bb/default", nested)
    endpoint.put(bucket, "boot-other/secret.efi", b"sibling prefix")
    endpoint.put(bucket, "secret.efi", b"bucket root")

    async def scenario() -> None:
        for prefix in ("boot/", "boot"):  # without the trailing slash, the sibling is still out of reach
            source = make_source(endpoint, bucket, prefix=prefix)
            await source.start()
            try:
                assert await fetch(source, "pxelinux.cfg/01-aa-bb/default") == nested
                with pytest.raises(FileNotFound):
                    await source.open("secret.efi")  # boot/secret.efi does not exist
                with pytest.raises(FileNotFound):
                    await source.open("-other/secret.efi")  # "boot/-other/...", never "boot-other/..."
                with pytest.raises(AccessDenied):
                    await source.open("../boot-other/secret.efi")
                with pytest.raises(AccessDenied):
                    await source.open("../secret.efi")
                with pytest.raises(FileNotFound):
                    await source.open("pxelinux.cfg")  # a "directory" is not an object
            finally:
                await source.aclose()

    run(scenario)
    requested = {r.path for r in endpoint.proxy.requests()}
    assert all(path.startswith(f"/{bucket}/boot/") for path in requested), requested


def test_large_object_streams_with_one_ranged_get(endpoint: S3Endpoint, bucket: str) -> None:
    """Streamed, one ranged GET per transfer from ACK 0: a size probe that ends at the OACK (held
    objects start their GET with it) must not start one."""
    data = payload(6 * MiB + 123, 2)
    endpoint.put(bucket, "boot/big.iso", data)

    async def scenario() -> None:
        source = make_source(endpoint, bucket, cache_bytes=2 * MiB, cache_object_max=MiB)
        await source.start()
        try:
            probe = await source.open("big.iso")
            assert probe.size == len(data)
            await probe.aclose()
            await asyncio.sleep(0.1)
            assert (endpoint.proxy.count("HEAD"), endpoint.proxy.count("GET")) == (1, 0)
            content = await source.open("big.iso")
            assert content.memory is None
            assert content.size == len(data)
            assert sha256(await read_all(content, 1468 * 8)) == sha256(data)
            await content.aclose()
        finally:
            await source.aclose()

    run(scenario)
    gets = [r for r in endpoint.proxy.requests() if r.method == "GET"]
    assert [r.range for r in gets] == [f"bytes=0-{len(data) - 1}"]
    assert gets[0].if_match  # pinned to the version the HEAD saw
    assert endpoint.proxy.count("HEAD") == 1


def test_cache_disabled_streams_everything(endpoint: S3Endpoint, bucket: str) -> None:
    data = payload(40_000, 3)
    endpoint.put(bucket, "boot/small.efi", data)

    async def scenario() -> None:
        source = make_source(endpoint, bucket, cache_bytes=0, cache_object_max=0)
        await source.start()
        try:
            for _ in range(2):
                content = await source.open("small.efi")
                assert content.memory is None
                assert await read_all(content) == data
                await content.aclose()
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("GET") == 2


# --- the edge cache, counted at the endpoint ---


def test_concurrent_opens_share_one_head_and_one_get(endpoint: S3Endpoint, bucket: str) -> None:
    data = payload(MiB, 4)
    endpoint.put(bucket, "boot/ipxe.efi", data)
    clients = 200

    async def scenario() -> list[bytes]:
        source = make_source(endpoint, bucket)
        await source.start()
        try:
            return await asyncio.gather(*(fetch(source, "ipxe.efi", 1432) for _ in range(clients)))
        finally:
            await source.aclose()

    results = run(scenario)
    assert all(result == data for result in results)
    path = object_path(bucket, "boot/ipxe.efi")
    assert endpoint.proxy.count("HEAD", path) == 1
    assert endpoint.proxy.count("GET", path) == 1


def test_a_size_probe_starts_the_get_that_the_download_after_it_uses(
    endpoint: S3Endpoint, bucket: str
) -> None:
    """The GET of a held object starts with the OACK (it overlaps the client's round trip to ACK 0),
    so a UEFI size probe starts it too; probe and download still cost one HEAD and one GET."""
    data = payload(500_000, 5)
    endpoint.put(bucket, "boot/shimx64.efi", data)

    async def scenario() -> None:
        source = make_source(endpoint, bucket)
        await source.start()
        try:
            probe = await source.open("shimx64.efi")  # RRQ with tsize=0 ...
            assert probe.size == len(data)
            await probe.aclose()  # ... then ERROR 8 from the client, before any read
            await asyncio.sleep(0)
            assert events(source).cache["fetch"] == 1  # the body is on its way all the same
            assert await fetch(source, "shimx64.efi") == data  # the real download that follows
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("HEAD") == 1
    assert endpoint.proxy.count("GET") == 1


def test_missing_keys_are_remembered_for_the_negative_ttl(endpoint: S3Endpoint, bucket: str) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        source = make_source(endpoint, bucket, clock=clock, negative_cache_ttl=10)
        await source.start()
        try:
            for _ in range(20):
                with pytest.raises(FileNotFound):
                    await source.open("nope.efi")
            outcomes = await asyncio.gather(
                *(source.open("other.efi") for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(outcome, FileNotFound) for outcome in outcomes)
            assert endpoint.proxy.count("HEAD") == 2
            endpoint.put(bucket, "boot/nope.efi", b"now it exists")
            clock.advance(9)
            with pytest.raises(FileNotFound):
                await source.open("nope.efi")  # still remembered
            clock.advance(2)
            assert await fetch(source, "nope.efi") == b"now it exists"
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("HEAD", object_path(bucket, "boot/nope.efi")) == 2
    assert endpoint.proxy.count("GET") == 1


def test_forbidden_keys_are_remembered_for_the_negative_ttl(endpoint: S3Endpoint, bucket: str) -> None:
    """GetObject-only credentials get a 403, not a 404, for a missing key: remembered all the same."""
    clock = FakeClock()
    endpoint.proxy.inject(Fault("status", status=403, methods=frozenset({"HEAD"})))

    async def scenario() -> None:
        source = make_source(endpoint, bucket, clock=clock, negative_cache_ttl=10)
        await source.start()
        try:
            for round_ in range(40):
                for index in range(5):
                    with pytest.raises(AccessDenied):
                        await source.open(f"missing-{index}.efi")
                    if round_:
                        with pytest.raises(AccessDenied):
                            source.open_now(f"missing-{index}.efi")  # without a task
            assert endpoint.proxy.count("HEAD") == 5  # 200 opens for 5 names: 5 HEADs
            clock.advance(11)
            with pytest.raises(AccessDenied):
                await source.open("missing-0.efi")  # the TTL ran out: asked again
            assert endpoint.proxy.count("HEAD") == 6
        finally:
            await source.aclose()

    run(scenario)


def test_every_ranged_get_is_pinned_to_the_etag(endpoint: S3Endpoint, bucket: str) -> None:
    """Resumed streams carry If-Match too; an object replaced mid-stream ends in SourceChanged."""
    old, new = payload(3 * MiB, 21), payload(3 * MiB, 22)
    endpoint.put(bucket, "boot/k", old)
    endpoint.proxy.inject(
        Fault("truncate", after_bytes=400_000, with_reset=True, methods=frozenset({"GET"}), times=2)
    )

    async def scenario() -> None:
        source = make_source(endpoint, bucket, cache_bytes=MiB, cache_object_max=MiB)
        await source.start()
        try:
            content = await source.open("k")
            assert await content.read(0, 2 * MiB) == old[: 2 * MiB]  # through two broken streams
            endpoint.put(bucket, "boot/k", new)
            content2 = await source.open("k")  # fresh metadata: still the old version's ETag
            with pytest.raises(SourceChanged) as caught:
                await content2.read(MiB, 65536)  # a new GET from another offset: 412 from If-Match
            assert caught.value.public_message == "File changed"
            await content.aclose()
            await content2.aclose()
        finally:
            await source.aclose()

    run(scenario)
    gets = [r for r in endpoint.proxy.requests() if r.method == "GET"]
    assert len(gets) >= 4 and all(r.if_match and r.if_match == gets[0].if_match for r in gets)


def test_revalidation_by_etag_after_the_ttl(endpoint: S3Endpoint, bucket: str) -> None:
    clock = FakeClock()
    old, new = payload(200_000, 6), payload(150_000, 7)
    endpoint.put(bucket, "boot/menu.ipxe", old)
    path = object_path(bucket, "boot/menu.ipxe")

    async def scenario() -> None:
        source = make_source(endpoint, bucket, clock=clock, cache_ttl=60)
        await source.start()
        try:
            assert await fetch(source, "menu.ipxe") == old
            clock.advance(61)
            content = await source.open("menu.ipxe")  # HEAD: same ETag, the bytes stay resident
            assert content.memory is not None and bytes(content.memory) == old
            assert (endpoint.proxy.count("HEAD", path), endpoint.proxy.count("GET", path)) == (2, 1)
            endpoint.put(bucket, "boot/menu.ipxe", new)
            clock.advance(30)
            assert await fetch(source, "menu.ipxe") == old  # within the TTL the cached copy is served
            clock.advance(31)
            assert await fetch(source, "menu.ipxe") == new  # HEAD sees a new ETag: fetched again
            assert events(source).cache["revalidated"] == 1
        finally:
            await source.aclose()

    run(scenario)
    assert (endpoint.proxy.count("HEAD", path), endpoint.proxy.count("GET", path)) == (3, 2)


def test_open_now_answers_from_fresh_metadata_only(endpoint: S3Endpoint, bucket: str) -> None:
    clock = FakeClock()
    big, small = payload(2 * MiB, 15), payload(5000, 16)
    endpoint.put(bucket, "boot/big.iso", big)
    endpoint.put(bucket, "boot/small.efi", small)

    async def scenario() -> None:
        source = make_source(endpoint, bucket, clock=clock, cache_bytes=MiB, cache_object_max=MiB)
        await source.start()
        try:
            assert source.open_now("small.efi") is None  # nothing known yet: open() must ask S3
            with pytest.raises(FileNotFound):
                await source.open("missing.efi")
            with pytest.raises(FileNotFound):
                source.open_now("missing.efi")  # a remembered miss, without a task
            assert await fetch(source, "small.efi") == small
            resident = source.open_now("small.efi")
            assert resident is not None and resident.memory is not None and bytes(resident.memory) == small
            await (await source.open("big.iso")).aclose()
            streamed = source.open_now("big.iso")  # fresh metadata: a stream, built without I/O
            assert streamed is not None and streamed.memory is None
            assert sha256(await read_all(streamed)) == sha256(big)
            await streamed.aclose()
            clock.advance(61)
            assert source.open_now("small.efi") is None  # stale: revalidation needs a HEAD
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("HEAD") == 3


def test_lru_keeps_the_total_under_cache_bytes(endpoint: S3Endpoint, bucket: str) -> None:
    objects = {f"f{i}.efi": payload(MiB, 10 + i) for i in range(3)}
    for name, data in objects.items():
        endpoint.put(bucket, f"boot/{name}", data)

    async def scenario() -> None:
        source = make_source(endpoint, bucket, cache_bytes=2 * MiB + 1000, cache_object_max=MiB)
        await source.start()
        try:
            for name, data in objects.items():
                assert await fetch(source, name) == data
            assert source.cache.resident_bytes <= 2 * MiB + 1000
            assert (await source.open("f2.efi")).memory is not None
            assert (await source.open("f1.efi")).memory is not None
            assert (await source.open("f0.efi")).memory is None  # least recently used: evicted
            assert await fetch(source, "f0.efi") == objects["f0.efi"]
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("GET", object_path(bucket, "boot/f0.efi")) == 2
    assert endpoint.proxy.count("GET", object_path(bucket, "boot/f1.efi")) == 1


# --- errors ---


@pytest.mark.parametrize(
    ("fault", "error", "attempts"),
    [
        pytest.param(Fault("status", status=403), AccessDenied, (1, 1), id="403"),
        pytest.param(Fault("status", status=500), SourceUnavailable, (2, 2), id="500"),
        pytest.param(Fault("status", status=503), SourceUnavailable, (2, 2), id="503"),
        # aiohttp itself tries an idempotent request once more when a reused connection dies.
        pytest.param(Fault("reset"), SourceUnavailable, (2, 4), id="connection-reset"),
    ],
)
def test_s3_errors_map_to_source_errors(
    endpoint: S3Endpoint, bucket: str, fault: Fault, error: type[Exception], attempts: tuple[int, int]
) -> None:
    endpoint.put(bucket, "boot/x.efi", b"x")
    endpoint.proxy.inject(fault)

    async def scenario() -> None:
        source = make_source(endpoint, bucket, s3_retries=2)
        await source.start()
        try:
            with pytest.raises(error) as caught:
                await source.open("x.efi")
            assert isinstance(caught.value, SourceError)
            assert caught.value.public_message in ("Access violation", "Source unavailable")
            assert "head_object s3://" in str(caught.value)  # the detail is for the log
        finally:
            await source.aclose()

    run(scenario)
    low, high = attempts
    assert low <= endpoint.proxy.count("HEAD") <= high  # bounded retries (s3_retries=2); no retry on 403


def test_hung_endpoint_fails_promptly(endpoint: S3Endpoint, bucket: str) -> None:
    endpoint.put(bucket, "boot/x.efi", b"x")
    endpoint.proxy.inject(Fault("delay", seconds=30))

    async def scenario() -> float:
        source = make_source(endpoint, bucket, s3_timeout=0.5, s3_retries=3)
        await source.start()
        try:
            started = time.monotonic()
            with pytest.raises(SourceUnavailable):
                await source.open("x.efi")
            return time.monotonic() - started
        finally:
            endpoint.proxy.clear_faults()
            await source.aclose()

    elapsed = run(scenario)
    # A bound on behaviour, not a speed target: the call deadline (2 x s3_timeout) must apply,
    # far from botocore's 60 s default read timeout.
    assert elapsed < 5, elapsed


def test_broken_stream_resumes_with_range(endpoint: S3Endpoint, bucket: str) -> None:
    data = payload(5 * MiB, 8)
    endpoint.put(bucket, "boot/big.img", data)
    endpoint.proxy.inject(Fault("truncate", after_bytes=MiB + 5, methods=frozenset({"GET"}), times=2))

    async def scenario() -> None:
        source = make_source(endpoint, bucket, cache_bytes=2 * MiB, cache_object_max=MiB)
        await source.start()
        try:
            assert sha256(await fetch(source, "big.img", 1432 * 4)) == sha256(data)
        finally:
            await source.aclose()

    run(scenario)
    ranges = [r.range for r in endpoint.proxy.requests() if r.method == "GET"]
    assert len(ranges) == 3, ranges
    starts = [int(str(value).removeprefix("bytes=").split("-")[0]) for value in ranges]
    assert starts[0] == 0
    assert starts == [0, MiB + 5, 2 * (MiB + 5)]  # each resume starts where the stream ended
    assert all(str(value).endswith(f"-{len(data) - 1}") for value in ranges)


def test_broken_download_of_a_cacheable_object_resumes(endpoint: S3Endpoint, bucket: str) -> None:
    data = payload(3 * MiB, 9)
    endpoint.put(bucket, "boot/initrd", data)
    endpoint.proxy.inject(
        Fault("truncate", after_bytes=100_000, with_reset=True, methods=frozenset({"GET"}), times=1)
    )

    async def scenario() -> None:
        source = make_source(endpoint, bucket)
        await source.start()
        try:
            results = await asyncio.gather(*(fetch(source, "initrd") for _ in range(10)))
            assert all(result == data for result in results)
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("GET") == 2


def test_stream_that_keeps_breaking_gives_up(endpoint: S3Endpoint, bucket: str) -> None:
    endpoint.put(bucket, "boot/big.img", payload(3 * MiB, 10))
    endpoint.proxy.inject(Fault("truncate", after_bytes=0, methods=frozenset({"GET"})))

    async def scenario() -> None:
        source = make_source(endpoint, bucket, cache_bytes=MiB, cache_object_max=MiB)
        await source.start()
        try:
            content = await source.open("big.img")
            with pytest.raises(SourceUnavailable):
                await read_all(content)
            await content.aclose()
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("GET") == 1 + RESUME_ATTEMPTS  # bounded: resumes, not a loop


def test_object_replaced_between_head_and_get_is_never_mixed(endpoint: S3Endpoint, bucket: str) -> None:
    old, new = payload(3 * MiB, 11), payload(3 * MiB, 12)
    endpoint.put(bucket, "boot/kernel", old)

    async def scenario() -> None:
        source = make_source(endpoint, bucket, cache_bytes=MiB, cache_object_max=MiB)
        await source.start()
        try:
            content = await source.open("kernel")
            endpoint.put(bucket, "boot/kernel", new)
            with pytest.raises(ObjectChanged):
                await content.read(0, 65536)  # If-Match: 412, not bytes of another version
            await content.aclose()
            assert await fetch(source, "kernel") == new  # the metadata was dropped: a fresh HEAD
        finally:
            await source.aclose()

    run(scenario)
    assert endpoint.proxy.count("HEAD") == 2


def test_outage_serves_cached_objects_and_recovers(endpoint: S3Endpoint, bucket: str) -> None:
    clock = FakeClock()
    warm, cold = payload(300_000, 13), payload(200_000, 14)
    endpoint.put(bucket, "boot/warm.efi", warm)
    endpoint.put(bucket, "boot/cold.efi", cold)

    async def scenario() -> None:
        source = make_source(endpoint, bucket, clock=clock, cache_ttl=30, s3_timeout=1.0)
        await source.start()
        try:
            assert await fetch(source, "warm.efi") == warm
            assert await source.check()
            endpoint.moto.stop()  # the proxy now resets every connection: S3 is down
            clock.advance(max(31.0, HEALTH_FRESH_SECONDS + 1))
            assert not await source.check()
            started = time.monotonic()
            with pytest.raises(SourceUnavailable):
                await source.open("cold.efi")
            assert time.monotonic() - started < 6  # not a hang (behaviour bound, see above)
            assert await fetch(source, "warm.efi") == warm  # stale-if-error: the cached copy
            assert await fetch(source, "warm.efi") == warm  # ... without asking again at once
            assert events(source).cache["stale-served"] == 1
            endpoint.moto.start()  # same port: S3 is back, with its data
            clock.advance(2)
            assert await fetch(source, "cold.efi") == cold
            assert await fetch(source, "warm.efi") == warm
            assert await source.check()
        finally:
            await source.aclose()

    try:
        run(scenario)
    finally:
        if endpoint.moto._server is None:
            endpoint.moto.start()


def test_debug_api_logs_each_call(endpoint: S3Endpoint, bucket: str) -> None:
    endpoint.put(bucket, "boot/x.efi", b"hello")
    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{message}")

    async def scenario() -> None:
        source = make_source(endpoint, bucket, debug_api=True)
        await source.start()
        try:
            assert await fetch(source, "x.efi") == b"hello"
            with pytest.raises(FileNotFound):
                await source.open("missing.efi")
        finally:
            await source.aclose()

    try:
        run(scenario)
    finally:
        logger.remove(sink)
    calls = [line for line in lines if line.startswith("S3 ")]
    assert any("head_object" in line and "boot/x.efi" in line and "200" in line for line in calls), calls
    assert any("get_object" in line and "Range=bytes=0-4" in line for line in calls), calls
    assert any("head_object" in line and "missing.efi" in line and "failed" in line for line in calls), calls


def test_check_reports_a_missing_bucket(endpoint: S3Endpoint) -> None:
    async def scenario() -> bool:
        source = make_source(endpoint, f"absent-{uuid.uuid4().hex[:8]}")
        await source.start()
        try:
            return await source.check()
        finally:
            await source.aclose()

    assert run(scenario) is False


# --- end to end: the real server (python -m edgetftp s3://...) and real TFTP clients ---

E2E_OBJECTS = {
    "empty.bin": payload(0, 20),
    "one.bin": payload(1, 20),
    "x512.bin": payload(512 * 4, 20),
    "x1428.bin": payload(1428 * 3, 20),
    "x1432.bin": payload(1432 * 5, 20),
    "big.bin": payload(3 * MiB + 17, 20),
    "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff": b"DEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n",
}
CLIENT_CASES = [
    pytest.param(client, blksize, id=f"{client}-{blksize or 'default'}")
    for client, binary, sizes in (
        ("curl", "curl", (None, 1432)),
        ("atftp", "atftp", (1432,)),
        ("tftp-hpa", "tftp", (None,)),
        ("busybox", "busybox", (1432,)),
    )
    for blksize in sizes
    if shutil.which(binary)
]


def s3_server_args(endpoint: S3Endpoint, bucket: str, *extra: str) -> list[str]:
    return ["--endpoint-url", endpoint.url, "--force-path-style", *extra, f"s3://{bucket}/boot/"]


@pytest.fixture(scope="module")
def e2e_bucket(endpoint: S3Endpoint) -> str:
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    endpoint.create_bucket(bucket)
    for name, data in E2E_OBJECTS.items():
        endpoint.put(bucket, f"boot/{name}", data)
    endpoint.put(bucket, "boot-other/secret.efi", b"sibling prefix")
    return bucket


@pytest.fixture(scope="module")
def s3_server(endpoint: S3Endpoint, e2e_bucket: str) -> Iterator[ServerProcess]:
    server = ServerProcess(s3_server_args(endpoint, e2e_bucket))  # environment: dummy AWS credentials
    yield server
    server.stop()


@pytest.mark.parametrize(("client", "blksize"), CLIENT_CASES)
def test_e2e_real_clients_fetch_s3_objects(
    s3_server: ServerProcess, tmp_path: Path, client: str, blksize: int | None
) -> None:
    for name, data in E2E_OBJECTS.items():
        if not data and client == "curl" and blksize:
            continue  # curl 7.88 fails on any empty file once it has sent options (field notes §12)
        out = tmp_path / name.replace("/", "_")
        result = fetch_with(client, s3_server.address, name, out, blksize)
        assert out.exists(), (name, result.stderr)
        assert sha256(out.read_bytes()) == sha256(data), (name, result.stderr)
        out.unlink()


def test_e2e_errors_carry_no_s3_text(endpoint: S3Endpoint, s3_server: ServerProcess) -> None:
    endpoint.proxy.reset_counts()
    with RawClient(s3_server.address, timeout=15) as client:
        for name, code in (("missing.efi", 1), ("secret.efi", 1), ("../boot-other/secret.efi", 2)):
            fetched = client.fetch(name, blksize=1432)
            assert fetched.error is not None and fetched.error.code == code, (name, fetched)
        endpoint.proxy.inject(Fault("status", status=503))
        try:
            fetched = client.fetch(f"cold-{uuid.uuid4().hex}.efi")
        finally:
            endpoint.proxy.clear_faults()
    assert fetched.error is not None and fetched.error.code == 0
    for leak in ("503", "InjectedFault", "s3://", "Service", "ClientError"):
        assert leak not in fetched.error.message
    assert all("boot-other" not in r.path for r in endpoint.proxy.requests())


def test_e2e_size_probe_and_its_download_cost_one_head_and_one_get(
    endpoint: S3Endpoint, e2e_bucket: str, s3_server: ServerProcess
) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}.efi"
    data = payload(700_000, 21)
    endpoint.put(e2e_bucket, f"boot/{name}", data)
    endpoint.proxy.reset_counts()
    path = object_path(e2e_bucket, f"boot/{name}")
    with RawClient(s3_server.address, timeout=5) as client:
        client.rrq(name, tsize=0, blksize=1468)  # EDK II: ask the size ...
        packet, address = client.receive()
        assert isinstance(packet, OptionAck) and packet.options["tsize"] == str(len(data))
        client.abort(address)  # ... then ERROR 8 (the GET started with the OACK all the same)
        fetched = client.fetch(name, blksize=1468)  # and the download that follows uses it
    assert fetched.data == data
    assert (endpoint.proxy.count("HEAD", path), endpoint.proxy.count("GET", path)) == (1, 1)


def test_e2e_concurrent_clients_cost_one_get(
    endpoint: S3Endpoint, e2e_bucket: str, s3_server: ServerProcess, tmp_path: Path
) -> None:
    name = f"ipxe-{uuid.uuid4().hex[:8]}.efi"
    data = payload(MiB, 22)
    endpoint.put(e2e_bucket, f"boot/{name}", data)
    endpoint.proxy.reset_counts()
    results = concurrent_fetches(s3_server, name, tmp_path, 30)
    assert all(sha256(result) == sha256(data) for result in results)
    path = object_path(e2e_bucket, f"boot/{name}")
    assert (endpoint.proxy.count("HEAD", path), endpoint.proxy.count("GET", path)) == (1, 1)


def test_e2e_outage_serves_cached_objects_and_recovers(
    endpoint: S3Endpoint, e2e_bucket: str, tmp_path: Path
) -> None:
    warm, cold = payload(400_000, 23), payload(300_000, 24)
    endpoint.put(e2e_bucket, "boot/warm.efi", warm)
    endpoint.put(e2e_bucket, "boot/cold.efi", cold)
    # TTL 0: every open asks S3 first, so the outage is really seen and the stale copy really used.
    args = s3_server_args(endpoint, e2e_bucket, "--cache-ttl", "0", "--s3-timeout", "1", "--s3-retries", "2")
    server = ServerProcess(args)
    try:
        assert fetch_with("curl", server.address, "warm.efi", tmp_path / "w0", 1432).returncode == 0
        endpoint.moto.stop()
        try:
            for attempt in range(3):
                out = tmp_path / f"w{attempt + 1}"
                fetch_with("curl", server.address, "warm.efi", out, 1432)
                assert out.read_bytes() == warm
            with RawClient(server.address, timeout=10) as client:
                fetched = client.fetch("cold.efi", blksize=1432)
            assert fetched.error is not None and fetched.error.code == 0
        finally:
            endpoint.moto.start()
        out = tmp_path / "cold"
        fetch_with("atftp", server.address, "cold.efi", out, 1432)
        assert out.read_bytes() == cold
        assert "serving the cached copy of boot/warm.efi" in server.log()
    finally:
        server.stop()


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_e2e_streaming_memory_stays_bounded(endpoint: S3Endpoint, e2e_bucket: str, tmp_path: Path) -> None:
    data = payload(48 * MiB, 25)
    endpoint.put(e2e_bucket, "boot/huge.img", data)
    args = s3_server_args(endpoint, e2e_bucket, "--cache-bytes", str(MiB), "--cache-object-max", str(MiB))
    server = ServerProcess(args)
    try:
        out = tmp_path / "warmup"
        assert (
            fetch_with("atftp", server.address, "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", out, 1432).returncode
            == 0
        )
        before = peak_rss_bytes(server.proc.pid)
        out = tmp_path / "huge"
        result = fetch_with("atftp", server.address, "huge.img", out, 8192)
        assert sha256(out.read_bytes()) == sha256(data), result.stderr
        growth = peak_rss_bytes(server.proc.pid) - before
    finally:
        server.stop()
    # A memory bound, not a speed target: the object is 48 MiB; a transfer holds its window, its
    # read-ahead and aiohttp's socket buffer.
    assert growth < 12 * MiB, growth


BENCH_ROUNDS = 21


@pytest.mark.slow
def test_bench_s3_cache_figures(endpoint: S3Endpoint, tmp_path: Path) -> None:
    """Prints: S3 requests per N identical fetches, and warm-S3 vs local-file serve times (median)."""
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    endpoint.create_bucket(bucket)
    data = payload(MiB, 30)
    endpoint.put(bucket, "boot/ipxe.efi", data)
    local_root = tmp_path / "local"
    local_root.mkdir()
    (local_root / "ipxe.efi").write_bytes(data)
    many = ["--max-sessions-per-client", "100"]  # every client here is 127.0.0.1
    s3 = ServerProcess(s3_server_args(endpoint, bucket, *many))
    local = ServerProcess([*many, str(local_root)])
    lines = []
    try:
        for clients in (1, 10, 50):
            name = f"n{clients}.efi"
            endpoint.put(bucket, f"boot/{name}", data)
            endpoint.proxy.reset_counts()
            results = concurrent_fetches(s3, name, tmp_path, clients)
            assert all(result == data for result in results)
            path = object_path(bucket, f"boot/{name}")
            lines.append(
                f"{clients:3d} concurrent fetches of a cold 1 MiB object: "
                f"{endpoint.proxy.count('HEAD', path)} HEAD, {endpoint.proxy.count('GET', path)} GET"
            )
        assert fetch_with("curl", s3.address, "ipxe.efi", tmp_path / "warmup", 1432).returncode == 0
        servers = {"warm S3": s3, "local": local}
        for client, blksize in (("curl", 1432), ("atftp", 1432), ("busybox", 1432), ("tftp-hpa", None)):
            samples: dict[str, list[float]] = {label: [] for label in servers}
            for round_number in range(BENCH_ROUNDS):
                order = list(servers) if round_number % 2 else list(reversed(servers))  # interleaved
                for label in order:
                    out = tmp_path / "bench.out"
                    started = time.perf_counter()
                    fetch_with(client, servers[label].address, "ipxe.efi", out, blksize)
                    samples[label].append(time.perf_counter() - started)
                    assert out.read_bytes() == data
            medians = {label: statistics.median(values) * 1000 for label, values in samples.items()}
            lines.append(
                f"{client} blksize {blksize or 512}, 1 MiB, median of {BENCH_ROUNDS}: "
                f"warm S3 {medians['warm S3']:.1f} ms, local file {medians['local']:.1f} ms"
            )
    finally:
        s3.stop()
        local.stop()
    print("\n" + "\n".join(lines))
