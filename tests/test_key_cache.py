"""The API's cache of checked keys (`api.keycache`), on its own clock."""

from api.keycache import KeyCache
from shared.auth import KeyOwner

ALICE = KeyOwner(id="user-alice", is_admin=False)


def test_a_checked_key_is_remembered_for_its_ttl_and_then_checked_again() -> None:
    cache = KeyCache(ttl_s=5.0)
    cache.put("hash-a", ALICE, now=100.0)

    assert cache.get("hash-a", now=104.9) == ALICE
    assert cache.get("hash-a", now=105.0) is None
    assert "hash-a" not in cache.entries  # an expired entry is dropped when found
    assert cache.get("hash-b", now=100.0) is None


def test_a_zero_ttl_remembers_nothing() -> None:
    cache = KeyCache(ttl_s=0.0)
    cache.put("hash-a", ALICE, now=100.0)

    assert cache.get("hash-a", now=100.0) is None


def test_a_full_cache_drops_expired_entries_first_then_the_oldest_half() -> None:
    cache = KeyCache(ttl_s=10.0, max_entries=4)
    for n in range(4):
        cache.put(f"hash-{n}", ALICE, now=float(n * 5))  # hash-0 and hash-1 expire at 10 and 15
    cache.put("hash-4", ALICE, now=16.0)

    assert sorted(cache.entries) == ["hash-2", "hash-3", "hash-4"]

    cache.put("hash-5", ALICE, now=16.0)
    cache.put("hash-6", ALICE, now=16.0)  # full, nothing expired: the oldest half goes

    assert sorted(cache.entries) == ["hash-4", "hash-5", "hash-6"]
