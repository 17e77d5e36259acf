"""The origin cache's bounds (bytes, names, variants per name) and its LRU order, without a network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetftp.sources.httpcache import MAX_VARIANTS, HttpCache, ResponsePolicy

pytestmark = pytest.mark.unit

FRESH = ResponsePolicy(storable=True, lifetime=60.0, stale_if_error=0.0, vary=())
BY_CLIENT = ResponsePolicy(storable=True, lifetime=60.0, stale_if_error=0.0, vary=("x-tftp-ip",))


def store(cache: HttpCache, name: str, size: int, policy: ResponsePolicy = FRESH, ip: str = "") -> None:
    headers = {"X-TFTP-IP": ip} if ip else {}
    cache.store(name, headers, 200, memoryview(bytes(size)), policy, {})


def test_the_least_recently_used_name_goes_first_when_bytes_run_out() -> None:
    cache = HttpCache(total_bytes=300, clock=lambda: 0.0)
    store(cache, "a", 100)
    store(cache, "b", 100)
    store(cache, "c", 100)
    assert cache.lookup("a", {}) is not None  # "b" is now the oldest
    store(cache, "d", 100)
    assert [name for name in "abcd" if cache.lookup(name, {}) is not None] == ["a", "c", "d"]
    assert cache.resident_bytes == 300 and cache.stats.evictions == 1


def test_names_are_bounded_even_when_they_hold_no_bytes() -> None:
    cache = HttpCache(total_bytes=0, max_names=3, clock=lambda: 0.0)
    for name in "abcde":
        cache.store(name, {}, 404, None, FRESH, {})  # a remembered miss costs no body
    assert [name for name in "abcde" if cache.lookup(name, {}) is not None] == ["c", "d", "e"]


def test_variants_of_one_name_are_kept_per_header_value_and_forgotten_one_by_one() -> None:
    cache = HttpCache(total_bytes=1000, clock=lambda: 0.0)
    store(cache, "cfg", 10, BY_CLIENT, ip="192.0.2.1")
    store(cache, "cfg", 20, BY_CLIENT, ip="192.0.2.2")
    first = cache.lookup("cfg", {"X-TFTP-IP": "192.0.2.1"})
    assert first is not None and first.size == 10
    assert cache.lookup("cfg", {"X-TFTP-IP": "192.0.2.3"}) is None  # never another machine's answer
    cache.forget("cfg", {"X-TFTP-IP": "192.0.2.1"})
    assert cache.lookup("cfg", {"X-TFTP-IP": "192.0.2.1"}) is None
    assert cache.lookup("cfg", {"X-TFTP-IP": "192.0.2.2"}) is not None and cache.resident_bytes == 20
    store(cache, "cfg", 5)  # the origin stopped varying: its new answer replaces every variant
    assert cache.resident_bytes == 5


def test_a_name_keeps_at_most_max_variants_the_newest() -> None:
    cache = HttpCache(total_bytes=10 * MAX_VARIANTS, clock=lambda: 0.0)
    for client in range(MAX_VARIANTS + 5):
        store(cache, "cfg", 1, BY_CLIENT, ip=f"10.0.{client // 256}.{client % 256}")
    assert cache.lookup("cfg", {"X-TFTP-IP": "10.0.0.0"}) is None  # the oldest went
    assert cache.lookup("cfg", {"X-TFTP-IP": f"10.0.1.{MAX_VARIANTS + 4 - 256}"}) is not None
    assert cache.resident_bytes == MAX_VARIANTS


operations = st.lists(
    st.tuples(
        st.sampled_from(["store", "lookup", "forget"]),
        st.sampled_from("abcdef"),
        st.sampled_from(["", "192.0.2.1", "192.0.2.2"]),
        st.integers(0, 120),
    ),
    max_size=60,
)


@given(operations)
def test_resident_bytes_are_what_is_held_and_never_above_the_bounds(
    ops: list[tuple[str, str, str, int]],
) -> None:
    cache = HttpCache(total_bytes=250, object_max=100, max_names=4, clock=lambda: 0.0)
    for operation, name, ip, size in ops:
        headers = {"X-TFTP-IP": ip} if ip else {}
        if operation == "store":
            store(cache, name, size, BY_CLIENT if ip else FRESH, ip)
        elif operation == "lookup":
            cache.lookup(name, headers)
        else:
            cache.forget(name, headers)
        assert 0 <= cache.resident_bytes <= 250
    found = [
        (name, answer)
        for name in "abcdef"
        for ip in ("", "192.0.2.1", "192.0.2.2")
        if (answer := cache.lookup(name, {"X-TFTP-IP": ip} if ip else {})) is not None
    ]
    held = {id(answer): answer for _, answer in found}
    assert cache.resident_bytes == sum(answer.size for answer in held.values())
    assert len({name for name, _ in found}) <= 4
