"""Admission, client keys and the per-client send budget, on a fake clock."""

from __future__ import annotations

from edgetftp.protocol.budget import BudgetTable
from edgetftp.transport.admission import MAX_TRACKED, Admission, client_key


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
    answers = [gate.consider("a", t * 0.1).answer for t in range(8)]
    assert answers == [False] * 5 + [True] * 3  # the sixth refusal within 10 s is a flood
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
    assert gate.consider("later", 11.0).answer is True


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
