"""Admission, client keys and the per-client send budget, on a fake clock."""

from __future__ import annotations

import pytest

from edgetftp.protocol.budget import BudgetTable
from edgetftp.transport.admission import (
    FLOOD_ANSWER_EVERY,
    MAX_TRACKED,
    PACE_FACTOR,
    Admission,
    client_key,
)

pytestmark = pytest.mark.unit


def admission(total: int = 10, per_client: int = 2, flood: int = 5, window: float = 10.0) -> Admission:
    return Admission(total, per_client, flood, window)


def test_client_keys_are_ipv4_addresses_and_ipv6_prefixes() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8::1:2") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("2001:db8:0:1::1", 48) == client_key("2001:db8::1", 48) == "2001:db8::/48"
    assert client_key("::1", 128) == "::1/128"


def test_a_full_quota_is_refused_silently_and_frees_up() -> None:
    gate = admission(per_client=2)
    for _ in range(2):
        assert gate.consider("a", 0.0).admit
        gate.opened("a")
    verdict = gate.consider("a", 0.0)
    assert (verdict.admit, verdict.reason, verdict.answer) == (False, "client-full", False)
    assert gate.consider("b", 0.0).admit  # another client is not affected
    gate.closed("a")
    assert gate.consider("a", 0.1).admit
    assert gate.running("a") == 1 and gate.total == 1


def test_a_full_server_is_refused_silently() -> None:
    gate = admission(total=3, per_client=3)
    for key in "abc":
        gate.opened(key)
    verdict = gate.consider("d", 0.0)
    assert (verdict.admit, verdict.reason, verdict.answer) == (False, "server-full", False)


def test_only_a_flood_beyond_the_threshold_gets_an_answer() -> None:
    gate = admission(per_client=1, flood=5, window=10.0)
    gate.opened("a")
    answers = [gate.consider("a", t * 0.001).answer for t in range(5 + 2 * FLOOD_ANSWER_EVERY)]
    assert [index for index, answer in enumerate(answers) if answer] == [5, 5 + FLOOD_ANSWER_EVERY]
    # the sixth refusal within 10 s is a flood; then one in FLOOD_ANSWER_EVERY is answered
    assert not gate.consider("b", 0.5).answer  # counted per client
    assert not gate.consider("a", 10.0).answer  # a new window starts quiet again


def test_remembered_refusals_are_bounded() -> None:
    gate = admission(total=0, flood=1, window=10.0)
    for index in range(MAX_TRACKED):
        gate.consider(f"k{index}", 0.0)
    assert not gate.consider("new", 1.0).answer  # untracked: silent, and nothing grows
    assert not gate.consider("new", 1.0).answer
    gate.consider("k1", 11.0)  # the old windows have expired: room again
    assert gate.consider("later", 11.0).answer is False
    assert gate.consider("later", 11.0).answer is True  # tracked again: its second refusal is a flood


def test_the_budget_table_is_a_token_bucket_per_client_key() -> None:
    table = BudgetTable(bytes_per_second=10_000, burst_seconds=1.0)
    first = table.for_client("192.0.2.1", 0.0)
    assert first is not None and table.for_client("192.0.2.1", 0.0) is first  # shared by its transfers
    assert all(first.take(1000, 0.0) for _ in range(10))  # the one-second burst
    assert not first.take(1000, 0.0)
    assert first.ready_at(1000, 0.0) == 0.1
    other = table.for_client("192.0.2.2", 0.0)
    assert other is not None and other.take(1000, 0.0)  # another client has its own bucket
    table.prune(0.2)
    assert len(table) == 1  # 192.0.2.2 has refilled and goes; 192.0.2.1 has not
    table.prune(5.0)
    assert len(table) == 0
    assert BudgetTable(0).for_client("192.0.2.1", 0.0) is None  # no limit configured


def test_new_requests_are_paced_per_client() -> None:
    """At most PACE_FACTOR x the per-client quota of new requests per second, in bursts as large."""
    gate = admission(per_client=1, flood=100)
    pace = PACE_FACTOR
    assert [gate.allow_start("a", 0.0).admit for _ in range(pace + 1)] == [True] * pace + [False]
    assert gate.allow_start("a", 0.0).reason == "client-pace"
    assert gate.allow_start("b", 0.0).admit  # its own pace
    assert not gate.allow_start("a", 0.8 / pace).admit  # 0.8 of a request refilled
    assert gate.allow_start("a", 1.0 / pace).admit  # one
    burst = [gate.allow_start("a", 10.0).admit for _ in range(pace + 1)]
    assert burst == [True] * pace + [False]  # a full burst again


def test_replacing_a_live_session_is_paced_at_the_quota_per_second() -> None:
    gate = admission(per_client=2, flood=100)
    assert [gate.allow_start("a", 0.0, replacing=True).admit for _ in range(3)] == [True, True, False]
    assert gate.allow_start("a", 0.0).admit  # a request on a fresh port is not a replacement
    assert gate.allow_start("a", 0.5, replacing=True).admit


def test_a_paced_flood_is_answered_only_beyond_the_threshold() -> None:
    gate = admission(per_client=1, flood=3)
    answers = [gate.allow_start("a", 0.0).answer for _ in range(PACE_FACTOR + 5)]
    # PACE_FACTOR admitted, 3 refused silently, then a flood: answered once, then one in FLOOD_ANSWER_EVERY
    assert answers == [False] * (PACE_FACTOR + 3) + [True, False]
