"""The bootstrap cache's rules, and its file: atomic, shared, and never trusted when damaged."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from qp2p.bootstrap_cache import FILE_NAME, BootstrapCache, CacheEntry, CacheFile, CacheFormatError, prefix_of

NOW = 1_800_000_000.0


def public(i: int) -> tuple[str, int]:
    """A distinct public /24 for every i (synthetic addresses)."""
    return (f"{20 + i // 256}.{i % 256}.7.1", 4000)


def test_keeps_the_most_recent_up_to_capacity_on_disk_as_in_memory(tmp_path: Path) -> None:
    cache = BootstrapCache(capacity=200)
    for i in range(250):
        cache.reachable(public(i), NOW + i, fingerprint=f"{i:064x}")
    assert len(cache) == 200
    assert {e.addr for e in cache.entries()} == {public(i) for i in range(50, 250)}
    assert cache.entries()[0].addr == public(249)  # most recent first
    CacheFile(tmp_path).save(cache)
    reloaded = BootstrapCache(capacity=200)
    CacheFile(tmp_path).load(reloaded)
    assert reloaded.entries() == cache.entries()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME, FILE_NAME + ".lock"]  # no temporary left


def test_a_few_per_public_prefix() -> None:
    cache = BootstrapCache(per_prefix=4)
    for i in range(20):
        cache.reachable((f"20.7.7.{i + 1}", 4000), NOW + i)
    assert [e.addr[0] for e in cache.entries()] == [f"20.7.7.{i}" for i in (20, 19, 18, 17)]
    for i in range(20):  # a LAN or a test network shares one prefix: exempt
        cache.reachable((f"10.0.0.{i + 1}", 4000), NOW + i)
        cache.reachable(("127.0.0.1", 5000 + i), NOW + i)
    assert len(cache) == 4 + 20 + 20
    assert prefix_of("203.0.113.9") is None  # documentation and test ranges count as private
    assert prefix_of("2a00:1450:4001:81b::200e") == "2a00:1450:4001::/48"
    assert prefix_of("8.8.8.8") == "8.8.8.0/24"


def test_order_prefers_recent_answering_fast_peers() -> None:
    cache = BootstrapCache()
    cache.reachable(public(1), NOW - 3 * 86400)  # seen days ago
    cache.reachable(public(2), NOW, rtt=0.01)
    cache.reachable(public(3), NOW, rtt=0.5)
    cache.reachable(public(4), NOW, rtt=0.01)
    for _ in range(3):
        cache.unreachable(public(4))  # failed three times since
    order = [e.addr for e in cache.order(NOW, random.Random(1), first=10)]
    assert order[:2] == [public(2), public(3)] and order[-1] in (public(1), public(4))


def test_a_dead_favourite_sinks_and_exploration_reaches_the_rest() -> None:
    cache = BootstrapCache()
    for i in range(10):
        cache.reachable(public(i), NOW - i * 60, rtt=0.05)
    cache.unreachable(public(0))
    assert cache.order(NOW, random.Random(0), first=10)[0].addr == public(1)
    rng = random.Random(42)
    explored = sum(
        any(e.addr in {public(i) for i in range(5, 10)} for e in cache.order(NOW, rng, first=4)[:4])
        for _ in range(1000)
    )
    assert 120 < explored < 280  # about one start in five tries one peer from outside the best few


def test_merge_keeps_the_newer_entry() -> None:
    mine, theirs = BootstrapCache(), BootstrapCache()
    mine.reachable(public(1), NOW, rtt=0.1)
    theirs.reachable(public(1), NOW + 5, rtt=0.2)
    theirs.reachable(public(2), NOW)
    mine.merge(theirs.entries())
    assert mine.get(public(1)) == theirs.get(public(1)) and public(2) in mine


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"version": 1, "peers": [{"addr": ["1.2.3.4", 4000], "finger', id="truncated"),
        pytest.param(b"\x00\xff garbage \xfe", id="binary"),
        pytest.param(b'{"version": 2, "peers": []}', id="future-version"),
        pytest.param(b'{"version": 1, "peers": [{"addr": ["nope", 1]}]}', id="bad-entry"),
        pytest.param(b"[1, 2, 3]", id="not-a-cache"),
    ],
)
def test_a_damaged_file_is_set_aside_and_the_cache_starts_empty(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    cache = BootstrapCache()
    with caplog.at_level(logging.WARNING):
        CacheFile(tmp_path).load(cache)
    assert len(cache) == 0
    assert "damaged" in caplog.text
    (aside,) = tmp_path.glob(FILE_NAME + ".damaged-*")
    assert aside.read_bytes() == content and not (tmp_path / FILE_NAME).exists()
    cache.reachable(public(1), NOW)
    CacheFile(tmp_path).save(cache)  # and a sound file replaces it
    assert BootstrapCache.parse((tmp_path / FILE_NAME).read_text())[0].addr == public(1)


def test_parse_refuses_with_a_typed_error() -> None:
    with pytest.raises(CacheFormatError):
        BootstrapCache.parse(
            '{"version": 1, "peers": [{"addr": ["1.2.3.4", 0], "fingerprint": null, '
            '"last_seen": 1, "successes": 1, "failures": 0, "rtt": null}]}'
        )
    entry = CacheEntry(public(1), "ab" * 32, NOW, 3, 1, 0.02)
    assert CacheEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry


WRITER = """
import sys
from qp2p.bootstrap_cache import BootstrapCache, CacheFile
folder, first = sys.argv[1], int(sys.argv[2])
cache = BootstrapCache(capacity=1000)
for i in range(first, first + 100):
    cache.reachable((f"10.{i // 256}.{i % 256}.1", 4000), 1.8e9 + i)
    CacheFile(folder).save(cache)  # a write per new peer, racing the other process
"""


def test_two_processes_writing_one_folder_lose_nothing(tmp_path: Path) -> None:
    env = {**os.environ}
    writers = [
        subprocess.Popen([sys.executable, "-P", "-c", WRITER, str(tmp_path), str(first)], env=env)
        for first in (0, 1000)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    entries = BootstrapCache.parse((tmp_path / FILE_NAME).read_text())
    assert len(entries) == 200  # both processes' 100 peers each, none lost
