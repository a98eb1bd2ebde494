"""The bootstrap cache's rules, and its file: atomic, shared, and never trusted when damaged."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import qp2p
from qp2p import wire
from qp2p.bootstrap_cache import (
    FILE_NAME,
    MAX_CLOCK_SKEW,
    MAX_COUNT,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_HOST_CHARS,
    MAX_RTT,
    BootstrapCache,
    CacheEntry,
    CacheFile,
    CacheFormatError,
    prefix_of,
)

NOW = 1_700_000_000.0  # in the past: a file's entries may not lie in the future
MISSING, ENTRY = object(), object()  # in BAD_FIELDS: a field left out; the whole entry replaced


def public(i: int) -> tuple[str, int]:
    """A distinct public /24 for every i (synthetic addresses)."""
    return (f"{20 + i // 256}.{i % 256}.7.1", 4000)


def peer(**fields: Any) -> dict[str, Any]:
    """A sound entry of a cache file, seen a minute ago, with ``fields`` replacing some of its own."""
    sound = {
        "addr": ["20.0.7.1", 4000],
        "fingerprint": "ab" * 32,
        "last_seen": time.time() - 60,
        "successes": 3,
        "failures": 0,
        "rtt": 0.05,
    }
    return {**sound, **fields}


def write_cache(folder: Path, *peers: dict[str, Any]) -> None:
    """A version-1 cache file in ``folder`` holding ``peers``, as written by hand or by a bug."""
    (folder / FILE_NAME).write_text(json.dumps({"version": 1, "peers": list(peers)}))


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


def test_a_merge_keeps_what_the_same_peers_seen_one_by_one_would() -> None:
    seen = [(f"20.9.9.{i}", 4000) for i in range(1, 11)] + [public(i) for i in range(40)]
    random.Random(3).shuffle(seen)
    one_by_one, merged = BootstrapCache(capacity=20, per_prefix=2), BootstrapCache(capacity=20, per_prefix=2)
    for t, addr in enumerate(seen):
        one_by_one.reachable(addr, NOW + t)
    merged.merge([CacheEntry(addr, None, NOW + t) for t, addr in enumerate(seen)])
    assert merged.entries() == one_by_one.entries() and len(merged) == 20
    assert sum(e.addr[0].startswith("20.9.9.") for e in merged.entries()) <= 2


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"version": 1, "peers": [{"addr": ["1.2.3.4", 4000], "finger', id="truncated"),
        pytest.param(b"\x00\xff garbage \xfe", id="binary"),
        pytest.param(b'{"version": 2, "peers": []}', id="future-version"),
        pytest.param(b"[1, 2, 3]", id="not-a-cache"),
        pytest.param(b"[" * 100_000, id="nested-too-deep"),
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


BAD_FIELDS = {
    "rtt negative": {"rtt": -0.1},
    "rtt NaN": {"rtt": float("nan")},
    "rtt infinite": {"rtt": float("inf")},
    "rtt above the bound": {"rtt": MAX_RTT * 2},
    "rtt a string": {"rtt": "0.1"},
    "successes negative": {"successes": -2},
    "successes above the bound": {"successes": MAX_COUNT + 1},
    "successes a float": {"successes": 1.5},
    "successes a bool": {"successes": True},
    "successes a string": {"successes": "3"},
    "failures negative": {"failures": -5000},
    "failures above the bound": {"failures": 10**30},
    "fingerprint not hex": {"fingerprint": "zz" * 32},
    "fingerprint upper case": {"fingerprint": "AB" * 32},
    "fingerprint short": {"fingerprint": "ab" * 31},
    "fingerprint long": {"fingerprint": "ab" * 33},
    "fingerprint with a newline": {"fingerprint": "ab" * 32 + "\n"},
    "fingerprint a number": {"fingerprint": 7},
    "last_seen far future": {"last_seen": 1e300},
    "last_seen an hour ahead": {"last_seen": time.time() + 3600},
    "last_seen negative": {"last_seen": -1.0},
    "last_seen NaN": {"last_seen": float("nan")},
    "last_seen a string": {"last_seen": "yesterday"},
    "host not an IP": {"addr": ["nope", 4000]},
    "host a number": {"addr": [1234, 4000]},
    "host too long": {"addr": ["fe80::1%" + "x" * 100, 4000]},
    "port 0": {"addr": ["20.0.7.1", 0]},
    "port 65536": {"addr": ["20.0.7.1", 65536]},
    "port a string": {"addr": ["20.0.7.1", "4000"]},
    "port a bool": {"addr": ["20.0.7.1", True]},
    "addr of one": {"addr": ["20.0.7.1"]},
    "addr of three": {"addr": ["20.0.7.1", 4000, 1]},
    "addr a string": {"addr": "20.0.7.1:4000"},
    "a field missing": {"successes": MISSING},
    "not an object": {ENTRY: ["20.0.7.1", 4000]},
}


def bad_entry(fields: dict[Any, Any]) -> Any:
    """``peer`` with ``fields`` replaced, a field left out, or the whole entry replaced."""
    if ENTRY in fields:
        return fields[ENTRY]
    return {key: value for key, value in peer(**fields).items() if value is not MISSING}


@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_entry_is_refused_with_a_typed_error(fields: dict[Any, Any]) -> None:
    with pytest.raises(CacheFormatError, match="bad cache entry"):
        CacheEntry.from_json(json.loads(json.dumps(bad_entry(fields))))


@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_entry_is_dropped_and_the_rest_load(
    tmp_path: Path, fields: dict[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    write_cache(tmp_path, peer(addr=["20.0.8.1", 4000]), bad_entry(fields), peer(addr=["20.0.9.1", 4000]))
    cache = BootstrapCache()
    with caplog.at_level(logging.WARNING):
        CacheFile(tmp_path).load(cache)
    assert sorted(e.addr for e in cache.entries()) == [("20.0.8.1", 4000), ("20.0.9.1", 4000)]
    assert "dropped 1 bad entries" in caplog.text
    assert not list(tmp_path.glob(FILE_NAME + ".damaged-*"))  # the file is kept; the next save cleans it


def test_sound_entries_round_trip_at_their_bounds() -> None:
    for entry in (
        CacheEntry(public(1), "ab" * 32, NOW, 3, 1, 0.02),
        CacheEntry(("fe80::1%eth0", 65535), None, 0.0, 0, MAX_COUNT, MAX_RTT),
        CacheEntry(("::1", 1), "0" * 64, time.time() + MAX_CLOCK_SKEW / 2, MAX_COUNT, 0, 0.0),
    ):
        assert CacheEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry


@pytest.mark.parametrize(
    "report",
    [
        pytest.param({"addr": ("nope", 4000)}, id="host not an IP"),
        pytest.param({"addr": ("20.0.7.1", 0)}, id="port 0"),
        pytest.param({"fingerprint": "AB" * 32}, id="fingerprint upper case"),
        pytest.param({"fingerprint": "ab" * 16}, id="fingerprint short"),
        pytest.param({"rtt": -0.001}, id="rtt negative"),
        pytest.param({"rtt": float("nan")}, id="rtt NaN"),
        pytest.param({"rtt": float("inf")}, id="rtt infinite"),
        pytest.param({"now": float("nan")}, id="now NaN"),
        pytest.param({"now": -1.0}, id="now negative"),
    ],
)
@pytest.mark.parametrize("known", [False, True], ids=["new peer", "known peer"])
def test_reachable_refuses_what_no_connection_reports(report: dict[str, Any], known: bool) -> None:
    cache = BootstrapCache()
    sound: dict[str, Any] = {"addr": public(1), "now": NOW, "fingerprint": "ab" * 32, "rtt": 0.05}
    if known:
        cache.reachable(**sound)
    before = cache.entries()
    with pytest.raises(ValueError):
        cache.reachable(**{**sound, **report})
    assert cache.entries() == before


def test_a_slow_connection_counts_as_max_rtt_and_counts_stop_at_max_count() -> None:
    cache = BootstrapCache()
    cache.merge([CacheEntry(public(1), None, NOW, successes=MAX_COUNT, failures=MAX_COUNT)])
    cache.unreachable(public(1))
    assert cache.get(public(1)).failures == MAX_COUNT  # type: ignore[union-attr]
    cache.reachable(public(1), NOW + 1, rtt=MAX_RTT * 10)
    cache.reachable(public(2), NOW + 1, rtt=MAX_RTT * 10)
    assert cache.get(public(1)).successes == MAX_COUNT  # type: ignore[union-attr]
    assert [e.rtt for e in cache.entries()] == [MAX_RTT, MAX_RTT]
    reloaded = BootstrapCache.parse(json.dumps(cache.to_json()))  # what we save, we can load
    assert sorted(reloaded, key=lambda e: e.addr) == sorted(cache.entries(), key=lambda e: e.addr)


WRITER = """
import sys
from qp2p.bootstrap_cache import BootstrapCache, CacheFile
folder, first = sys.argv[1], int(sys.argv[2])
cache = BootstrapCache(capacity=1000)
for i in range(first, first + 100):
    cache.reachable((f"10.{i // 256}.{i % 256}.1", 4000), 1.7e9 + i)
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


@pytest.mark.parametrize("field", [{"rtt": -0.1}, {"successes": -2}, {"failures": -5000}], ids=repr)
async def test_impossible_numbers_in_the_file_do_not_break_bootstrap(
    make_endpoint: Any, tmp_path: Path, field: dict[str, Any]
) -> None:
    write_cache(tmp_path, peer(**field))
    node = await make_endpoint(bootstrap_cache_dir=str(tmp_path))
    with pytest.raises(qp2p.BootstrapError, match="empty"):  # the entry was dropped, nothing else to try
        await node.bootstrap()


def test_every_fingerprint_loaded_encodes_on_the_wire(tmp_path: Path) -> None:
    write_cache(tmp_path, peer(fingerprint="zz" * 32), peer(addr=["20.0.8.1", 4000]))
    cache = BootstrapCache()
    CacheFile(tmp_path).load(cache)
    known = tuple((e.addr, e.fingerprint) for e in cache.entries() if e.fingerprint is not None)
    wire.encode(wire.PeersResponse(known))  # what a node answers a PeersRequest with
    assert [addr for addr, _ in known] == [("20.0.8.1", 4000)]


def test_an_entry_from_the_far_future_does_not_stay_forever(tmp_path: Path) -> None:
    write_cache(tmp_path, peer(last_seen=1e300))
    cache = BootstrapCache(capacity=2)
    CacheFile(tmp_path).load(cache)
    cache.reachable(public(1), time.time())
    cache.reachable(public(2), time.time())
    assert {e.addr for e in cache.entries()} == {public(1), public(2)}


def private_folder(tmp_path: Path) -> Path:
    """A cache folder as CacheFile makes it: ours, 0o700."""
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    return folder


def test_a_planted_temporary_symlink_is_not_followed(tmp_path: Path) -> None:
    folder, victim = private_folder(tmp_path), tmp_path / "victim"
    victim.write_text("precious")
    planted = folder / f"{FILE_NAME}.{os.getpid()}.tmp"  # the name the temporary file used to have
    planted.symlink_to(victim)
    cache = BootstrapCache()
    cache.reachable(public(1), time.time())
    CacheFile(folder).save(cache)
    assert victim.read_text() == "precious"
    reloaded = BootstrapCache()
    CacheFile(folder).load(reloaded)
    assert public(1) in reloaded  # and the save worked
    assert sorted(p.name for p in folder.iterdir()) == sorted([FILE_NAME, FILE_NAME + ".lock", planted.name])


def test_a_symlink_in_place_of_the_cache_file_is_neither_read_nor_written_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, victim = private_folder(tmp_path), tmp_path / "victim"
    write_cache(tmp_path, peer())
    (tmp_path / FILE_NAME).rename(victim)
    precious = victim.read_text()
    (folder / FILE_NAME).symlink_to(victim)
    cache = BootstrapCache()
    with caplog.at_level(logging.WARNING):
        CacheFile(folder).load(cache)
    assert len(cache) == 0 and "damaged" in caplog.text  # the link was set aside, unread
    cache.reachable(public(1), time.time())
    CacheFile(folder).save(cache)
    assert victim.read_text() == precious
    assert not (folder / FILE_NAME).is_symlink() and public(1) in {e.addr for e in load_entries(folder)}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_in_place_of_the_cache_file_is_set_aside_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = private_folder(tmp_path)
    os.mkfifo(folder / FILE_NAME)  # opened blocking, it would wait for a writer forever
    with caplog.at_level(logging.WARNING):
        assert load_entries(folder) == []
    assert "not a regular file" in caplog.text and not (folder / FILE_NAME).exists()


def test_a_symlink_in_place_of_the_lock_fails_the_save_with_a_logged_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, victim = private_folder(tmp_path), tmp_path / "victim"
    (folder / (FILE_NAME + ".lock")).symlink_to(victim)
    cache = BootstrapCache()
    cache.reachable(public(1), time.time())
    with caplog.at_level(logging.WARNING):
        CacheFile(folder).save(cache)  # no exception
        CacheFile(folder).load(cache)
    assert "bootstrap cache not saved: CacheFileError" in caplog.text
    assert "bootstrap cache not loaded: CacheFileError" in caplog.text
    assert not victim.exists() and not (folder / FILE_NAME).exists()


def load_entries(folder: Path) -> list[CacheEntry]:
    """What a fresh cache loads from ``folder``."""
    cache = BootstrapCache()
    CacheFile(folder).load(cache)
    return cache.entries()


def symlinked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A symlink to a folder of ours: whoever can replace it chooses where we write."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cache").symlink_to(tmp_path / "elsewhere")
    return tmp_path / "cache"


def someone_elses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder owned by another user, as we see it once our uid is not its owner's."""
    ours = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: ours + 1)
    return private_folder(tmp_path)


def a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A regular file where the folder should be."""
    (tmp_path / "cache").write_text("not a folder")
    return tmp_path / "cache"


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and symlinks")
@pytest.mark.parametrize(
    ("make", "problem"),
    [(symlinked, "is a symlink"), (someone_elses, "not to us"), (a_file, "File exists")],
    ids=["symlink", "not ours", "a file"],
)
def test_a_folder_that_is_not_a_folder_of_ours_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, make: Any, problem: str
) -> None:
    folder = make(tmp_path, monkeypatch)
    cache = BootstrapCache()
    cache.reachable(public(1), time.time())
    with caplog.at_level(logging.WARNING):
        CacheFile(folder).save(cache)
    assert "bootstrap cache not saved: CacheFileError" in caplog.text and problem in caplog.text
    assert not list(tmp_path.glob(f"*/{FILE_NAME}*"))  # nothing written, through a link or not


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_the_folder_is_created_private(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "cache"
    CacheFile(folder).save(BootstrapCache())
    assert folder.stat().st_mode & 0o777 == 0o700 and (folder / FILE_NAME).stat().st_mode & 0o777 == 0o600


async def test_an_unusable_cache_folder_never_fails_the_endpoint(
    make_endpoint: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    contact = await make_endpoint()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cache").symlink_to(tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING):
        node = await make_endpoint(
            hard_coded_contacts=[contact.local_addr], bootstrap_cache_dir=str(tmp_path / "cache")
        )
        await node.bootstrap()
        assert node._membership.cache  # it learnt the contact, to save on close
        await node.close()
    assert "bootstrap cache not loaded" in caplog.text and "bootstrap cache not saved" in caplog.text
    assert not list((tmp_path / "elsewhere").iterdir())


WITHOUT_FCNTL = """
import json, logging, sys, time
sys.modules["fcntl"] = None  # what a Windows Python looks like to the import
import asyncio, subprocess  # before any fake msvcrt, which would make them take Windows' paths
{fake}
logging.basicConfig(format="%(levelname)s %(message)s")
import qp2p.endpoint
from qp2p.bootstrap_cache import LOCKING, BootstrapCache, CacheFile
cache = BootstrapCache()
cache.reachable(("20.0.7.1", 4000), time.time())
for _ in range(2):
    CacheFile(sys.argv[1]).save(cache)
reloaded = BootstrapCache()
CacheFile(sys.argv[1]).load(reloaded)
print(json.dumps({{"locking": LOCKING, "loaded": len(reloaded), "calls": globals().get("calls")}}))
"""

FAKE_MSVCRT = """
import errno, os, types
calls = []
def locking(fd, mode, nbytes):
    calls.append([mode, nbytes, os.lseek(fd, 0, os.SEEK_CUR)])
    if len(calls) == 1:
        raise OSError(errno.EDEADLK, "still locked after ten tries")  # as LK_LOCK gives up
msvcrt = types.ModuleType("msvcrt")
msvcrt.locking, msvcrt.LK_LOCK, msvcrt.LK_UNLCK = locking, 1, 0
sys.modules["msvcrt"] = msvcrt
"""


def run_without_fcntl(folder: Path, fake: str) -> tuple[dict[str, Any], str]:
    """What a process that cannot import fcntl reports after two saves and a load, and its log."""
    code = WITHOUT_FCNTL.format(fake=fake)
    result = subprocess.run(
        [sys.executable, "-P", "-c", code, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has msvcrt: the fallback is for neither")
def test_without_fcntl_or_msvcrt_the_package_imports_and_saves_unlocked_with_a_warning(
    tmp_path: Path,
) -> None:
    report, log = run_without_fcntl(tmp_path, fake="")
    assert report == {"locking": "none", "loaded": 1, "calls": None}
    assert log.count("no file locking on this platform") == 1  # once per process, not per save


def test_without_fcntl_the_msvcrt_lock_is_used_and_waited_for(tmp_path: Path) -> None:
    report, log = run_without_fcntl(tmp_path, fake=FAKE_MSVCRT)
    assert report["locking"] == "msvcrt" and report["loaded"] == 1 and not log
    lock, unlock = [1, 1, 0], [0, 1, 0]  # one byte, at the file's start
    assert report["calls"] == [lock, lock, unlock] + [lock, unlock] * 2  # the first try was retried


HOLDER = """
import json, sys, time
from qp2p.bootstrap_cache import FILE_NAME, BootstrapCache, CacheFile
folder = CacheFile(sys.argv[1])
cache = BootstrapCache()
cache.reachable(("20.0.1.1", 4000), time.time())
text = json.dumps(cache.to_json()).encode()
with folder._locked(), open(folder.path, "wb") as out:  # a write in progress, in two halves
    out.write(text[: len(text) // 2])
    out.flush()
    print("locked", flush=True)
    sys.stdin.readline()
    out.write(text[len(text) // 2 :])
"""

SAVER = """
import sys, time
from qp2p.bootstrap_cache import BootstrapCache, CacheFile
cache = BootstrapCache()
cache.reachable(("20.0.2.1", 4000), time.time())
CacheFile(sys.argv[1]).save(cache)
"""


def waiting_for_lock(pid: int, lock: Path) -> bool:
    """Whether process ``pid`` waits for a lock on ``lock`` (Linux lists waiters with "->")."""
    inode = f":{lock.stat().st_ino} "
    return any(
        line.split()[1:2] == ["->"] and line.split()[5] == str(pid) and inode in line
        for line in Path("/proc/locks").read_text().splitlines()
    )


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks to see a process wait")
def test_a_save_waits_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-P", "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "locked\n"
    saver = subprocess.Popen([sys.executable, "-P", "-c", SAVER, str(tmp_path)])
    deadline = time.monotonic() + 60
    while not waiting_for_lock(saver.pid, tmp_path / (FILE_NAME + ".lock")):
        assert saver.poll() is None, "the save went ahead while the lock was held"
        assert time.monotonic() < deadline, "the save never waited for the lock"
        time.sleep(0.01)
    holder.stdin.write("go\n")
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0 and saver.wait(timeout=60) == 0
    holder.stdout.close()
    entries = {e.addr for e in BootstrapCache.parse((tmp_path / FILE_NAME).read_text())}
    assert entries == {("20.0.1.1", 4000), ("20.0.2.1", 4000)}  # the save read the whole file, then merged
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME, FILE_NAME + ".lock"]  # nothing set aside


def padded_cache(size: int) -> bytes:
    """A sound cache file of one entry, padded with white space to ``size`` bytes."""
    text = json.dumps({"version": 1, "peers": [peer()]}).encode()
    return text + b" " * (size - len(text))


def test_a_file_over_the_size_cap_is_set_aside_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_bytes(padded_cache(MAX_FILE_BYTES))
    cache = BootstrapCache()
    CacheFile(tmp_path).load(cache)
    assert len(cache) == 1  # at the cap: read
    (tmp_path / FILE_NAME).write_bytes(padded_cache(MAX_FILE_BYTES + 1))
    cache = BootstrapCache()
    with caplog.at_level(logging.WARNING):
        CacheFile(tmp_path).load(cache)
    assert len(cache) == 0 and f"larger than {MAX_FILE_BYTES} bytes" in caplog.text
    assert len(list(tmp_path.glob(FILE_NAME + ".damaged-*"))) == 1


def test_entries_after_the_first_max_entries_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    peers = [peer(addr=["127.0.0.1", 1 + i], last_seen=now - MAX_ENTRIES + i) for i in range(MAX_ENTRIES + 5)]
    write_cache(tmp_path, *peers)  # the five beyond the cap are the most recent, and still go
    cache = BootstrapCache(capacity=MAX_ENTRIES)
    with caplog.at_level(logging.WARNING):
        CacheFile(tmp_path).load(cache)
    assert {e.addr[1] for e in cache.entries()} == set(range(1, MAX_ENTRIES + 1))
    assert f"dropped all after the first {MAX_ENTRIES}" in caplog.text


def test_a_full_cache_of_the_longest_entries_fits_in_the_file(tmp_path: Path) -> None:
    def host(i: int) -> str:
        """Link-local (no per-prefix limit), of the longest length allowed."""
        address = f"fe80:ffff:ffff:ffff:ffff:ffff:ffff:{i:04x}%"
        return address + "x" * (MAX_HOST_CHARS - len(address))

    now = time.time() - 1 / 3  # a long fraction
    cache = BootstrapCache(capacity=MAX_ENTRIES)
    cache.merge(
        [
            CacheEntry((host(i), 65535), "f" * 64, now, MAX_COUNT, MAX_COUNT, MAX_RTT / 3)
            for i in range(MAX_ENTRIES)
        ]
    )
    CacheFile(tmp_path).save(cache)
    assert (tmp_path / FILE_NAME).stat().st_size <= MAX_FILE_BYTES
    reloaded = BootstrapCache(capacity=MAX_ENTRIES)
    CacheFile(tmp_path).load(reloaded)
    assert len(reloaded) == MAX_ENTRIES


def test_a_cache_larger_than_a_file_may_hold_is_refused() -> None:
    with pytest.raises(ValueError):
        BootstrapCache(capacity=MAX_ENTRIES + 1)
    with pytest.raises(qp2p.ConfigError, match="bootstrap_cache_size"):
        qp2p.Config(bootstrap_cache_size=MAX_ENTRIES + 1)
    assert qp2p.Config(bootstrap_cache_size=MAX_ENTRIES).bootstrap_cache_size == MAX_ENTRIES
