"""The HTTP origin source against a real aiohttp origin on loopback (in-process source, real sockets).

Request counts and request lines are read at the origin.  Freshness tests move an injected clock;
timeouts, outages and broken bodies are real (a slowed handler, the origin stopped, a raw TCP server
that sends malformed answers).
"""

from __future__ import annotations

import asyncio
import gzip
import os
from pathlib import Path
from string import ascii_letters, digits
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetftp.cli import build_layer
from edgetftp.policy import PolicyError, normalize
from edgetftp.settings import Settings
from edgetftp.sources.base import (
    AccessDenied,
    Content,
    FileNotFound,
    RequestContext,
    SourceError,
    SourceUnavailable,
)
from edgetftp.sources.http import (
    HttpSource,
    OriginFailure,
    context_headers,
    parse_header_line,
    parse_origin_url,
)
from edgetftp.sources.httpcache import parse_cache_control, response_policy
from tests.originsupport import (
    Answer,
    OriginServer,
    RawOrigin,
    ipxe_script,
    response_bytes,
    with_source,
)

pytestmark = pytest.mark.integration

MiB = 1 << 20
URL_SAFE = set(ascii_letters + digits + "-._~%")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def raw(origins: tuple[OriginServer, RawOrigin]) -> RawOrigin:
    origins[1].responses.clear()
    origins[1].paths.clear()
    return origins[1]


def make_source(
    url: str, clock: FakeClock | None = None, tmp: Path | None = None, **overrides: Any
) -> HttpSource:
    settings = Settings(source=url, origin_timeout=1.0, **overrides)
    source = build_layer(settings, url, clock=clock or FakeClock())
    assert isinstance(source, HttpSource)
    return source


def ctx(ip: str = "192.0.2.10", port: int = 2000, name: str = "boot.ipxe", **options: str) -> RequestContext:
    return RequestContext(
        client=(ip, port),
        filename=name,
        options=options,
        listener=("203.0.113.1", 69),
        request_id=f"r-{ip}-{port}",
    )


async def read_all(content: Content) -> bytes:
    if content.memory is not None:
        return bytes(content.memory)
    parts, offset = [], 0
    try:
        while True:
            part = await content.read(offset, 65536)
            parts.append(part)
            offset += len(part)
            if len(part) < 65536 or offset >= content.size:
                return b"".join(parts)
    finally:
        await content.aclose()


async def fetch(source: HttpSource, path: str, context: RequestContext | None = None) -> bytes:
    return await read_all(await source.open_for(path, context or ctx(name=path)))


# --- URLs, headers, policies (no network) ---


def test_origin_url_keeps_the_prefix_a_directory() -> None:
    assert parse_origin_url("http://o:8080/boot").base == "http://o:8080/boot/"
    assert parse_origin_url("https://o/").base == "https://o/"
    assert parse_origin_url("https://o").base == "https://o/"
    for bad in (
        "ftp://o/",
        "http:///x",
        "http://o/a?b=1",
        "http://o/a#f",
        "http://u:p@o/",
        "http://o:99999/",
    ):
        with pytest.raises(ValueError):
            parse_origin_url(bad)


@pytest.mark.parametrize(
    ("path", "tail"),
    [
        ("boot.ipxe", "boot.ipxe"),
        ("a b/c?d#e", "a%20b/c%3Fd%23e"),
        ("%2e%2e/etc/passwd", "%252e%252e/etc/passwd"),
        ("x%2fy", "x%252fy"),
        ("..hidden/ümlaut.efi", "..hidden/%C3%BCmlaut.efi"),
        ("a;b=c&d", "a%3Bb%3Dc%26d"),
    ],
)
def test_each_segment_is_escaped(path: str, tail: str) -> None:
    assert parse_origin_url("http://o/p/").url_for(path) == "http://o/p/" + tail


@given(st.text(max_size=120))
def test_any_accepted_name_stays_literal_segments_under_the_prefix(name: str) -> None:
    try:
        path = normalize(name)
    except PolicyError:
        return
    url = parse_origin_url("http://o/p%20q/").url_for(path)
    parts = urlsplit(url)
    assert not parts.query and not parts.fragment and parts.netloc == "o"
    assert parts.path.startswith("/p%20q/")
    segments = parts.path.removeprefix("/p%20q/").split("/")
    assert all(set(segment) <= URL_SAFE for segment in segments)  # nothing a server could reinterpret
    assert [unquote(segment) for segment in segments] == path.split("/")


@pytest.mark.parametrize("path", ["", "..", "a/../b", "./a", "a//b", "a/", "/a", "a\\b", "a\0b"])
def test_paths_that_could_leave_the_prefix_are_refused(path: str) -> None:
    with pytest.raises(AccessDenied):
        parse_origin_url("http://o/p/").url_for(path)


def test_context_headers_name_the_request() -> None:
    context = RequestContext(
        client=("2001:db8::5", 1234),
        filename="\\Boot\\ümlaut.efi",
        options={"blksize": "1428", "tsize": "0"},
        listener=("2001:db8::1", 69),
        request_id="abc",
    )
    assert context_headers(context, "ams") == {
        "X-TFTP-IP": "2001:db8::5",
        "X-TFTP-Port": "1234",
        "X-TFTP-File": "\\Boot\\%C3%BCmlaut.efi",
        "X-TFTP-Mode": "octet",
        "X-TFTP-Options": "blksize=1428,tsize=0",
        "X-TFTP-Request-Id": "abc",
        "X-TFTP-Listener": "[2001:db8::1]:69",
        "X-TFTP-Region": "ams",
    }


def test_header_lines() -> None:
    assert parse_header_line("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    for bad in ("no colon", ": v", "Bad Name: v", "X: a\rb"):
        with pytest.raises(ValueError):
            parse_header_line(bad)


def test_cache_control_parsing_and_policy() -> None:
    assert parse_cache_control('max-age=60, Private="a, b", S-MAXAGE=5, max-age=1') == {
        "max-age": "60",
        "private": "a, b",
        "s-maxage": "5",
    }
    policy = response_policy(
        200, {"Cache-Control": "max-age=60, s-maxage=10", "Age": "4"}, stale_if_error_max=30
    )
    assert (policy.storable, policy.lifetime, policy.stale_if_error) == (True, 6.0, 30)
    assert not response_policy(200, {"Cache-Control": "max-age=60, private"}, stale_if_error_max=30).storable
    assert not response_policy(200, {"Cache-Control": "no-store, max-age=60"}, stale_if_error_max=30).storable
    assert not response_policy(
        200, {"Cache-Control": "max-age=60", "Vary": "*"}, stale_if_error_max=30
    ).storable
    assert not response_policy(200, {}, stale_if_error_max=30).storable  # no lifetime, no validator
    revalidate_only = response_policy(200, {"ETag": '"x"'}, stale_if_error_max=30)
    assert (revalidate_only.storable, revalidate_only.lifetime) == (True, 0.0)
    no_cache = response_policy(200, {"Cache-Control": "no-cache, max-age=60"}, stale_if_error_max=30)
    assert (no_cache.storable, no_cache.lifetime) == (True, 0.0)
    assert not response_policy(404, {}, stale_if_error_max=30).storable
    assert response_policy(404, {"Cache-Control": "max-age=5"}, stale_if_error_max=30).storable
    strict = response_policy(200, {"Cache-Control": "max-age=5, must-revalidate"}, stale_if_error_max=30)
    assert strict.stale_if_error == 0
    asked = response_policy(200, {"Cache-Control": "max-age=5, stale-if-error=10"}, stale_if_error_max=30)
    assert asked.stale_if_error == 10
    capped = response_policy(200, {"Cache-Control": "max-age=5, stale-if-error=999"}, stale_if_error_max=30)
    assert capped.stale_if_error == 30
    expires = response_policy(
        200,
        {"Date": "Tue, 01 Dec 2026 06:00:00 GMT", "Expires": "Tue, 01 Dec 2026 06:01:00 GMT"},
        stale_if_error_max=0,
    )
    assert expires.lifetime == 60.0


def test_importing_the_origin_source_does_not_load_aiohttp() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgetftp.sources.http, edgetftp.sources.layered\nassert 'aiohttp' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- serving and the request line ---


def test_serves_a_file_with_its_size_and_context_headers(origin: OriginServer) -> None:
    data = os.urandom(300_000)
    origin.files["/boot/ipxe.efi"] = Answer(body=data)
    source = make_source(origin.prefix(), origin_header=["Authorization: Bearer s3cret"])

    async def scenario() -> tuple[Content, bytes]:
        content = await source.open_for("ipxe.efi", ctx(name="/ipxe.efi", blksize="1428", tsize="0"))
        return content, await read_all(content)

    content, body = with_source(source, scenario)
    assert body == data and content.tsize == len(data)
    (request,) = origin.logged()
    assert request.raw_path == "/boot/ipxe.efi"
    assert request.headers["X-TFTP-IP"] == "192.0.2.10"
    assert request.headers["X-TFTP-Port"] == "2000"
    assert request.headers["X-TFTP-File"] == "/ipxe.efi"
    assert request.headers["X-TFTP-Options"] == "blksize=1428,tsize=0"
    assert request.headers["X-TFTP-Listener"] == "203.0.113.1:69"
    assert request.headers["X-TFTP-Request-Id"] == "r-192.0.2.10-2000"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(
    "name",
    [
        "%2e%2e/etc/passwd",
        "..foo/bar..",
        "ümlaut.efi",
        "boot.ipxe?x=1",
        "a#frag",
        "x%2fy",
        "%2e%2e",
        "a b",
        "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff",
        "a;b",
        "&q=1",
    ],
)
def test_hostile_names_reach_the_origin_as_literal_segments(origin: OriginServer, name: str) -> None:
    source = make_source(origin.prefix("/tftp/root/"))

    async def scenario() -> None:
        with pytest.raises(FileNotFound):
            await source.open_for(name, ctx(name=name))

    with_source(source, scenario)
    (request,) = origin.logged()
    assert request.raw_path.startswith("/tftp/root/")
    assert "?" not in request.raw_path and "#" not in request.raw_path
    segments = request.raw_path.removeprefix("/tftp/root/").split("/")
    assert [unquote(segment) for segment in segments] == name.split("/")
    assert all(segment not in ("", ".", "..") for segment in segments)


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, FileNotFound), (410, FileNotFound), (401, AccessDenied), (403, AccessDenied)],
)
def test_status_mapping(origin: OriginServer, status: int, error: type[SourceError]) -> None:
    origin.files["/boot/x.efi"] = Answer(status=status, body=b"origin secret text")
    source = make_source(origin.prefix())

    async def scenario() -> None:
        with pytest.raises(error) as raised:
            await source.open_for("x.efi", ctx())
        assert "origin secret text" not in raised.value.public_message

    with_source(source, scenario)


@pytest.mark.parametrize("status", [500, 502, 503, 418, 204, 206])
def test_other_statuses_are_a_generic_error(origin: OriginServer, status: int) -> None:
    origin.files["/boot/x.efi"] = Answer(status=status, body=b"" if status == 204 else b"internal 0xdeadbeef")
    source = make_source(origin.prefix())

    async def scenario() -> None:
        with pytest.raises(SourceUnavailable) as raised:
            await source.open_for("x.efi", ctx())
        assert raised.value.public_message == "Source unavailable"

    with_source(source, scenario)
    retried = status in (502, 503)  # 502/503/504 are retried once (two attempts)
    assert origin.count("/boot/x.efi") == (2 if retried else 1)


def test_generated_scripts_differ_per_client(origin: OriginServer) -> None:
    source = make_source(origin.prefix())

    async def scenario() -> list[bytes]:
        contexts = [ctx("192.0.2.1", 1001), ctx("192.0.2.2", 1002), ctx("192.0.2.1", 1003)]
        return list(await asyncio.gather(*(fetch(source, "boot.ipxe", c) for c in contexts)))

    scripts = with_source(source, scenario)
    assert b"booting 192.0.2.1:1001" in scripts[0]
    assert b"booting 192.0.2.2:1002" in scripts[1]
    assert b"booting 192.0.2.1:1003" in scripts[2]
    assert origin.count("/boot/boot.ipxe") == 3  # no-store: every request asks


# --- caching by HTTP's rules ---


def test_cacheable_file_fetched_concurrently_costs_one_request(origin: OriginServer) -> None:
    data = os.urandom(200_000)
    origin.files["/boot/ipxe.efi"] = Answer(body=data, headers={"Cache-Control": "max-age=60"})
    origin.delay = 0.2  # the 50 requests overlap the first one
    source = make_source(origin.prefix())

    async def scenario() -> list[bytes]:
        return list(await asyncio.gather(*(fetch(source, "ipxe.efi", ctx(port=5000 + i)) for i in range(50))))

    assert all(body == data for body in with_source(source, scenario))
    assert origin.count("/boot/ipxe.efi") == 1


def test_concurrent_requests_share_an_unreachable_origin_but_not_an_error_status(
    origin: OriginServer,
) -> None:
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg")
    source = make_source(origin.prefix(), origin_attempts=1)

    async def many() -> list[BaseException | Content]:
        opens = (source.open_for("a.cfg", ctx(port=6000 + i)) for i in range(10))
        return list(await asyncio.gather(*opens, return_exceptions=True))

    async def scenario() -> None:
        origin.delay = 2.0  # slower than --origin-timeout 1: the first request times out ...
        results = await many()
        assert all(isinstance(r, OriginFailure) for r in results), results
        assert origin.count("/boot/a.cfg") == 1  # ... and the nine waiting behind it fail with it
        origin.delay, origin.fail_status = 0.2, 500
        results = await many()
        assert all(isinstance(r, OriginFailure) for r in results), results
        # A 500 may concern one client's answer only: each of the others asked for itself.
        assert origin.count("/boot/a.cfg") == 11

    with_source(source, scenario)


class CountingObserver:
    def __init__(self) -> None:
        self.events: list[str] = []

    def cache_event(self, kind: str) -> None:
        self.events.append(kind)

    def store_call(self, operation: str, failed: bool) -> None:
        self.events.append(f"{operation} {'failed' if failed else 'ok'}")

    def source_error(self, kind: str) -> None:
        self.events.append(f"error {kind}")

    def resident_bytes(self, total: int) -> None:
        self.events.append(f"resident {total}")  # the origin keeps its cache to itself: never expected


def test_observer_sees_requests_and_cache_events(origin: OriginServer) -> None:
    clock = FakeClock()
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg", headers={"Cache-Control": "max-age=5", "ETag": '"e"'})
    observer = CountingObserver()
    options: dict[str, Any] = {"source": origin.prefix(), "origin_timeout": 1.0, "origin_attempts": 1}
    settings = Settings(**options)
    source = build_layer(settings, origin.prefix(), clock=clock, observer=observer)
    assert isinstance(source, HttpSource)

    async def scenario() -> None:
        await fetch(source, "a.cfg")
        await fetch(source, "a.cfg")
        clock.advance(6)
        await fetch(source, "a.cfg")
        clock.advance(6)
        origin.stop()
        try:
            await fetch(source, "a.cfg")
        finally:
            origin.start()

    with_source(source, scenario)
    assert observer.events == [
        *["miss", "GET ok"],
        "hit",
        *["miss", "GET ok", "revalidated"],
        *["miss", "GET failed", "error unavailable", "stale-served"],
    ]


def test_max_age_then_revalidation_with_etag(origin: OriginServer) -> None:
    clock = FakeClock()
    data = b"#!ipxe\nshell\n"
    origin.files["/boot/menu.ipxe"] = Answer(
        body=data, headers={"Cache-Control": "max-age=30", "ETag": '"v1"'}
    )
    source = make_source(origin.prefix(), clock)

    async def scenario() -> None:
        assert await fetch(source, "menu.ipxe") == data
        assert source.open_now_for("menu.ipxe", ctx()) is not None  # fresh: answered from memory
        clock.advance(29)
        assert await fetch(source, "menu.ipxe") == data
        assert origin.count("/boot/menu.ipxe") == 1
        clock.advance(2)
        assert source.open_now_for("menu.ipxe", ctx()) is None  # stale
        assert await fetch(source, "menu.ipxe") == data  # revalidated: 304
        assert origin.count("/boot/menu.ipxe") == 2
        assert origin.logged()[-1].headers.get("If-None-Match") == '"v1"'
        assert source.cache.stats.revalidated == 1
        clock.advance(31)
        new = b"#!ipxe\nreboot\n"
        origin.files["/boot/menu.ipxe"] = Answer(
            body=new, headers={"Cache-Control": "max-age=30", "ETag": '"v2"'}
        )
        assert await fetch(source, "menu.ipxe") == new  # changed: 200 with the new body

    with_source(source, scenario)


def test_last_modified_revalidation(origin: OriginServer) -> None:
    clock = FakeClock()
    stamp = "Tue, 01 Dec 2026 05:00:00 GMT"
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg", headers={"Last-Modified": stamp})  # no lifetime
    source = make_source(origin.prefix(), clock)

    async def scenario() -> None:
        assert await fetch(source, "a.cfg") == b"cfg"
        assert await fetch(source, "a.cfg") == b"cfg"

    with_source(source, scenario)
    requests = [r for r in origin.logged() if r.raw_path == "/boot/a.cfg"]
    assert len(requests) == 2 and requests[1].headers.get("If-Modified-Since") == stamp


@pytest.mark.parametrize("cache_control", ["no-store, max-age=60", "private, max-age=60"])
def test_no_store_and_private_are_never_kept(origin: OriginServer, cache_control: str) -> None:
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg", headers={"Cache-Control": cache_control})
    source = make_source(origin.prefix())

    async def scenario() -> None:
        for _ in range(3):
            assert await fetch(source, "a.cfg") == b"cfg"

    with_source(source, scenario)
    assert origin.count("/boot/a.cfg") == 3 and source.cache.resident_bytes == 0


def test_vary_by_client_address_keeps_one_answer_per_client(origin: OriginServer) -> None:
    origin.generated_headers = {"Cache-Control": "max-age=60", "Vary": "X-TFTP-IP"}
    source = make_source(origin.prefix())

    async def scenario() -> list[bytes]:
        first = [await fetch(source, "boot.ipxe", ctx(ip, 1000)) for ip in ("192.0.2.1", "192.0.2.2")]
        again = [await fetch(source, "boot.ipxe", ctx(ip, 2000)) for ip in ("192.0.2.2", "192.0.2.1")]
        return first + again

    a1, b1, b2, a2 = with_source(source, scenario)
    assert b"192.0.2.1" in a1 and b"192.0.2.2" in b1
    assert a2 == a1 and b2 == b1  # each client's own answer, from the cache
    assert origin.count("/boot/boot.ipxe") == 2


def test_concurrent_clients_never_get_each_others_varied_answer(origin: OriginServer) -> None:
    origin.generated_headers = {"Cache-Control": "max-age=60", "Vary": "X-TFTP-IP"}
    origin.delay = 0.2
    source = make_source(origin.prefix())
    addresses = [f"192.0.2.{i}" for i in range(1, 11)]

    async def scenario() -> list[bytes]:
        return list(await asyncio.gather(*(fetch(source, "boot.ipxe", ctx(ip, 1000)) for ip in addresses)))

    scripts = with_source(source, scenario)
    for ip, script in zip(addresses, scripts, strict=True):
        assert f"booting {ip}:1000".encode() in script
    assert origin.count("/boot/boot.ipxe") == len(addresses)


def test_vary_star_is_never_kept(origin: OriginServer) -> None:
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg", headers={"Cache-Control": "max-age=60", "Vary": "*"})
    source = make_source(origin.prefix())

    async def scenario() -> None:
        for _ in range(2):
            assert await fetch(source, "a.cfg") == b"cfg"

    with_source(source, scenario)
    assert origin.count("/boot/a.cfg") == 2


def test_404_is_remembered_only_when_the_origin_allows_it(origin: OriginServer) -> None:
    clock = FakeClock()
    source = make_source(origin.prefix(), clock)

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(FileNotFound):
                await source.open_for("plain-missing.cfg", ctx())
        origin.missing_headers = {"Cache-Control": "max-age=10"}
        for _ in range(3):
            with pytest.raises(FileNotFound):
                await source.open_for("kept-missing.cfg", ctx())
        with pytest.raises(FileNotFound):
            source.open_now_for("kept-missing.cfg", ctx())  # answered from memory
        clock.advance(11)
        assert source.open_now_for("kept-missing.cfg", ctx()) is None

    with_source(source, scenario)
    assert origin.count("/boot/plain-missing.cfg") == 2
    assert origin.count("/boot/kept-missing.cfg") == 1


def test_stale_if_error_serves_a_kept_copy_for_a_bounded_time(origin: OriginServer) -> None:
    clock = FakeClock()
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg", headers={"Cache-Control": "max-age=10"})
    source = make_source(origin.prefix(), clock, origin_stale_if_error=60)

    async def scenario() -> None:
        assert await fetch(source, "a.cfg") == b"cfg"
        clock.advance(20)
        origin.fail_status = 500
        assert await fetch(source, "a.cfg") == b"cfg"  # stale, origin failing
        assert source.cache.stats.stale_served == 1
        clock.advance(100)  # past max-age + stale-if-error
        with pytest.raises(OriginFailure):
            await source.open_for("a.cfg", ctx())
        origin.fail_status = None
        assert await fetch(source, "a.cfg") == b"cfg"  # recovered

    with_source(source, scenario)


def test_must_revalidate_forbids_stale(origin: OriginServer) -> None:
    clock = FakeClock()
    origin.files["/boot/a.cfg"] = Answer(
        body=b"cfg", headers={"Cache-Control": "max-age=10, must-revalidate"}
    )
    source = make_source(origin.prefix(), clock)

    async def scenario() -> None:
        assert await fetch(source, "a.cfg") == b"cfg"
        clock.advance(11)
        origin.fail_status = 503
        with pytest.raises(OriginFailure):
            await source.open_for("a.cfg", ctx())

    with_source(source, scenario)


# --- failures and bad input ---


def test_origin_down_then_back(origin: OriginServer) -> None:
    source = make_source(origin.prefix())
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg")

    async def scenario() -> None:
        origin.stop()
        try:
            with pytest.raises(OriginFailure):
                await source.open_for("a.cfg", ctx())
        finally:
            origin.start()
        assert await fetch(source, "a.cfg") == b"cfg"

    with_source(source, scenario)


def test_slow_origin_times_out(origin: OriginServer) -> None:
    origin.files["/boot/a.cfg"] = Answer(body=b"cfg")
    origin.delay = 3.0
    source = make_source(origin.prefix(), origin_attempts=1)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OriginFailure, match="timed out"):
            await source.open_for("a.cfg", ctx())
        return loop.time() - started

    assert with_source(source, scenario) < 2.5


def test_body_shorter_than_content_length_is_an_error(raw: RawOrigin) -> None:
    raw.responses["/boot/short.bin"] = [response_bytes("200 OK", {"Content-Length": "1000"}, b"x" * 600)]
    raw.responses["/boot/big-short.bin"] = [
        response_bytes("200 OK", {"Content-Length": str(20 * MiB)}, b"y" * 100_000),
        b"y" * 100_000,
    ]
    source = make_source(raw.url + "/boot/", origin_buffer_max=MiB)

    async def scenario() -> None:
        with pytest.raises(SourceUnavailable):
            await source.open_for("short.bin", ctx())  # buffered: the error comes before any answer
        content = await source.open_for("big-short.bin", ctx())  # streamed: the error comes mid-body
        assert content.tsize == 20 * MiB
        with pytest.raises(SourceUnavailable):
            await read_all(content)

    with_source(source, scenario)


def test_body_longer_than_content_length(raw: RawOrigin) -> None:
    declared = response_bytes("200 OK", {"Content-Length": "10"}, b"0123456789")
    raw.responses["/boot/long.bin"] = [declared + b"EXTRA-GARBAGE"]  # in the same segment
    raw.responses["/boot/long-later.bin"] = [declared, b"EXTRA-GARBAGE"]  # after the declared end
    raw.responses["/boot/next.bin"] = [response_bytes("200 OK", {"Content-Length": "4"}, b"next")]
    source = make_source(raw.url + "/boot/")

    async def scenario() -> tuple[bytes, bytes]:
        with pytest.raises(SourceUnavailable):
            await source.open_for("long.bin", ctx())  # the parser sees the excess: refused
        return await fetch(source, "long-later.bin"), await fetch(source, "next.bin")

    later, following = with_source(source, scenario)
    # Bytes arriving after the declared end belong to no response (HTTP/1.1 framing): the file is
    # the 10 declared bytes, and the connection they arrived on is not reused for the next request.
    assert (later, following) == (b"0123456789", b"next")


def test_reset_mid_body_is_an_error(raw: RawOrigin) -> None:
    raw.responses["/boot/reset.bin"] = [
        response_bytes("200 OK", {"Content-Length": "5000"}, b"z" * 2000),
        RawOrigin.RESET,
    ]
    raw.responses["/boot/reset-chunked.bin"] = [
        response_bytes("200 OK", {"Transfer-Encoding": "chunked"}, b"400\r\n" + b"c" * 1024 + b"\r\n"),
        RawOrigin.RESET,
    ]
    source = make_source(raw.url + "/boot/")

    async def scenario() -> None:
        for name in ("reset.bin", "reset-chunked.bin"):
            with pytest.raises(SourceUnavailable):
                await fetch(source, name)

    with_source(source, scenario)


def test_unknown_length_small_body_is_buffered_for_its_size(raw: RawOrigin) -> None:
    chunks = (
        b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (b"a" * 3000, b"b" * 4000)) + b"0\r\n\r\n"
    )
    raw.responses["/boot/chunked.bin"] = [response_bytes("200 OK", {"Transfer-Encoding": "chunked"}, chunks)]
    source = make_source(raw.url + "/boot/")

    async def scenario() -> Content:
        return await source.open_for("chunked.bin", ctx())

    content = with_source(source, scenario)
    assert content.tsize == 7000 and content.memory is not None
    assert bytes(content.memory) == b"a" * 3000 + b"b" * 4000


def test_unknown_length_large_body_streams_without_tsize(origin: OriginServer) -> None:
    source = make_source(origin.prefix(), origin_buffer_max=256 * 1024)

    async def scenario() -> tuple[int | None, bytes]:
        content = await source.open_for("huge-chunked.img", ctx())
        try:
            first = await content.read(0, 512 * 1024)
            second = await content.read(512 * 1024, 1000)
        finally:
            await content.aclose()
        return content.tsize, first + second

    tsize, start = with_source(source, scenario)
    pattern = bytes(range(256)) * 4096
    assert tsize is None and start == pattern[: len(start)] and len(start) == 512 * 1024 + 1000


def test_gzip_encoded_bodies_are_refused(origin: OriginServer) -> None:
    origin.files["/boot/a.cfg"] = Answer(
        body=gzip.compress(b"cfg" * 100), headers={"Content-Encoding": "gzip"}
    )
    source = make_source(origin.prefix())

    async def scenario() -> None:
        with pytest.raises(SourceUnavailable, match="Content-Encoding gzip"):
            await source.open_for("a.cfg", ctx())

    with_source(source, scenario)


def test_redirects_same_host_followed_other_host_refused_loops_refused(origin: OriginServer) -> None:
    origin.files["/boot/moved.cfg"] = Answer(status=302, headers={"Location": "/elsewhere/real.cfg"})
    origin.files["/elsewhere/real.cfg"] = Answer(body=b"real")
    origin.files["/boot/away.cfg"] = Answer(
        status=301, headers={"Location": f"http://localhost:{origin.port}/elsewhere/real.cfg"}
    )
    origin.files["/boot/loop-a.cfg"] = Answer(status=307, headers={"Location": "/boot/loop-b.cfg"})
    origin.files["/boot/loop-b.cfg"] = Answer(status=307, headers={"Location": "/boot/loop-a.cfg"})
    source = make_source(origin.prefix())

    async def scenario() -> None:
        assert await fetch(source, "moved.cfg") == b"real"
        with pytest.raises(SourceUnavailable, match="another host"):
            await source.open_for("away.cfg", ctx())
        with pytest.raises(SourceUnavailable, match="loop"):
            await source.open_for("loop-a.cfg", ctx())

    with_source(source, scenario)
    assert origin.count("/boot/loop-a.cfg") == 1 and origin.count("/boot/loop-b.cfg") == 1

    allowing = make_source(origin.prefix(), origin_cross_host_redirects=True)

    async def followed() -> bytes:
        return await fetch(allowing, "away.cfg")

    assert with_source(allowing, followed) == b"real"


def test_huge_body_streams_with_bounded_memory_and_closes_on_abort(origin: OriginServer) -> None:
    source = make_source(origin.prefix())

    async def scenario() -> tuple[int | None, int, int]:
        content = await source.open_for("huge.img", ctx())
        for block in range(200):  # 200 windows of 64 KiB: 12.5 MiB of a 2 GiB body
            await content.read(block * 65536, 65536)
        await content.aclose()  # the client aborted
        await asyncio.sleep(0.3)
        return content.tsize, origin.streamed_bytes, origin.open_streams

    tsize, streamed, still_open = with_source(source, scenario)
    assert tsize == 2 << 30
    assert streamed < 64 * MiB  # the origin was read as the client went, not ahead of it
    assert still_open == 0  # the abort closed the origin's stream


def test_script_generator_reads_the_headers() -> None:
    assert b"booting 1.2.3.4:5" in ipxe_script({"X-TFTP-IP": "1.2.3.4", "X-TFTP-Port": "5"})


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["http://127.0.0.1:9/a?b=1"], "invalid SOURCE"),
        (["/nonexistent-dir,http://127.0.0.1:9/boot/"], "invalid SOURCE"),
        (["--origin-header", "no colon here", "http://127.0.0.1:9/boot/"], "--origin-header"),
        (["--origin-timeout", "0", "http://127.0.0.1:9/boot/"], "--origin-timeout"),
    ],
)
def test_bad_origin_settings_fail_with_one_line(args: list[str], named: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "edgetftp", *args], capture_output=True, timeout=60, check=False
    )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and named in lines[0], lines
