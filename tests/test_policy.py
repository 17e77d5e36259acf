"""Path policy: hostile names never become a path outside the root."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetftp.policy import PathPolicy, PolicyError, extension_of, normalize

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
