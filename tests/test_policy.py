"""Path policy: hostile names never become a path outside the root."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetftp.policy import ClientRateLimit, PathPolicy, PolicyError, extension_of, normalize

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("boot.ipxe", "boot.ipxe"),
        ("/boot.ipxe", "boot.ipxe"),
        ("//boot.ipxe", "boot.ipxe"),
        ("\\Boot\\x64\\wdsnbp.com", "Boot/x64/wdsnbp.com"),
        ("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"),
        ("%2e%2e/etc/passwd", "%2e%2e/etc/passwd"),  # literal: nothing is decoded
        ("..foo/bar..", "..foo/bar.."),
        ("ümlaut.efi", "ümlaut.efi"),
    ],
)
def test_accepted_names(name: str, path: str) -> None:
    assert normalize(name) == path


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/",
        "..",
        "../etc/passwd",
        "a/../../etc/passwd",
        "a/./b",
        "./a",
        "a//b",
        "a/",
        "\\..\\x",
        "a\0b",
        "a\nb",
        "a\x7fb",
        "a\x1bb",
        "bad\udcffutf8",
        "x" * 600,
        "a/" * 40 + "b",
        "..\\..\\windows",
    ],
)
def test_refused_names(name: str) -> None:
    with pytest.raises(PolicyError):
        normalize(name)


@given(st.text(max_size=80))
def test_normalized_paths_never_climb(name: str) -> None:
    try:
        path = normalize(name)
    except PolicyError:
        return
    segments = path.split("/")
    assert not path.startswith("/") and "\\" not in path and "\0" not in path
    assert all(segment not in ("", ".", "..") for segment in segments)


def test_extension_allow_list() -> None:
    policy = PathPolicy(frozenset({".ipxe", ".efi", ".0"}))
    assert policy.check("/Boot.IPXE") == "Boot.IPXE"
    assert policy.check("pxelinux.0") == "pxelinux.0"
    for name in ("passwd", "x.sh", "boot.ipxe.bak", ".efi"):
        with pytest.raises(PolicyError):
            policy.check(name)


def test_extension_of() -> None:
    assert extension_of("a/b.KPXE") == ".kpxe"
    assert extension_of("a.b/c") == ""
    assert extension_of(".hidden") == ""


def test_client_rate_limit_is_a_token_bucket_per_address() -> None:
    limit = ClientRateLimit(bytes_per_second=10_000, burst_seconds=1.0)
    assert all(limit.allow("192.0.2.1", 1000, 0.0) for _ in range(10))  # the one-second burst
    assert not limit.allow("192.0.2.1", 1000, 0.0)  # over budget
    assert limit.allow("192.0.2.2", 1000, 0.0)  # another address has its own bucket
    assert not limit.allow("192.0.2.1", 1000, 0.05)  # 500 bytes refilled: not enough
    assert limit.allow("192.0.2.1", 1000, 0.1)  # 1,000 bytes refilled
    limit.prune(0.2)
    assert len(limit) == 1  # 192.0.2.2 has refilled and goes; 192.0.2.1 has not
    limit.prune(5.0)
    assert len(limit) == 0
