"""Option negotiation: only what was asked, never an invalid value echoed, clamps applied."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetftp.protocol import Limits, negotiate

pytestmark = pytest.mark.unit

LIMITS = Limits(max_blksize=1468, max_window=64)


def test_no_options_means_no_oack() -> None:
    granted = negotiate({}, "octet", 100, LIMITS)
    assert granted.oack == {} and granted.blksize == 512 and granted.windowsize == 1


def test_only_requested_options_are_acknowledged() -> None:
    assert negotiate({"blksize": "1428"}, "octet", 100, LIMITS).oack == {"blksize": "1428"}
    assert negotiate({"tsize": "0"}, "octet", 100, LIMITS).oack == {"tsize": "100"}


@pytest.mark.parametrize(
    ("asked", "granted"),
    [("1432", "1432"), ("1468", "1468"), ("65464", "1468"), ("99999", "1468"), ("8", "8")],
)
def test_blksize_is_clamped_to_the_limit(asked: str, granted: str) -> None:
    assert negotiate({"blksize": asked}, "octet", 1, LIMITS).oack["blksize"] == granted


@pytest.mark.parametrize("bad", ["7", "0", "-1", "abc", "", "1e3", " ", "0x100"])
def test_invalid_blksize_is_ignored(bad: str) -> None:
    assert "blksize" not in negotiate({"blksize": bad}, "octet", 1, LIMITS).oack


@pytest.mark.parametrize(
    ("asked", "ok"), [("1", True), ("255", True), ("0", False), ("256", False), ("x", False)]
)
def test_timeout_range(asked: str, ok: bool) -> None:
    assert ("timeout" in negotiate({"timeout": asked}, "octet", 1, LIMITS).oack) is ok


def test_tsize_reports_the_real_size_only_in_octet() -> None:
    assert negotiate({"tsize": "0"}, "octet", 966768, LIMITS).oack["tsize"] == "966768"
    assert "tsize" not in negotiate({"tsize": "0"}, "netascii", 966768, LIMITS).oack


def test_windowsize_is_capped() -> None:
    assert negotiate({"windowsize": "500"}, "octet", 1, LIMITS).oack["windowsize"] == "64"
    assert negotiate({"windowsize": "8"}, "octet", 1, LIMITS).windowsize == 8


def test_unknown_options_are_ignored() -> None:
    assert negotiate({"utimeout": "1000", "rollover": "0", "multicast": ""}, "octet", 1, LIMITS).oack == {}


@given(
    st.dictionaries(st.sampled_from(["blksize", "timeout", "tsize", "windowsize", "x"]), st.text(max_size=8))
)
def test_granted_values_are_always_valid(requested: dict[str, str]) -> None:
    granted = negotiate(requested, "octet", 1234, LIMITS)
    assert set(granted.oack) <= set(requested)
    assert 8 <= granted.blksize <= 1468
    assert 1 <= granted.windowsize <= 64
    if "timeout" in granted.oack:
        assert 1 <= int(granted.oack["timeout"]) <= 255


@pytest.mark.parametrize("odd", ["\u00b2", "\u0661\u0662", "\uff11\uff12", "\u00bd"])
def test_non_ascii_digits_are_ignored_not_fatal(odd: str) -> None:
    """str.isdigit() says yes to these, int() does not: found by the property test above."""
    assert negotiate({"blksize": odd, "windowsize": odd, "timeout": odd}, "octet", 1, LIMITS).oack == {}


def test_windowsize_is_capped_by_the_window_bytes() -> None:
    """One ACK may draw at most max_window_bytes: a big blksize gets a small window."""
    limits = Limits(max_blksize=65464, max_window=64, max_window_bytes=128 * 1024)
    big = negotiate({"blksize": "65464", "windowsize": "64"}, "octet", 10, limits)
    internet = negotiate({"blksize": "1468", "windowsize": "64"}, "octet", 10, limits)
    assert (big.blksize, big.windowsize) == (65464, 2)
    assert (internet.blksize, internet.windowsize) == (1468, 64)
